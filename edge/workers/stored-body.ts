/**
 * `StoredBody` for the Workers tiers (Cache API and R2), whose bodies are
 * streams handed out once by a lookup. The stream from the lookup serves
 * the first whole-body read; ranges and later reads ask the backend again
 * (`refetch`), which either returns the same version or nothing: a body is
 * never spliced from two versions of an entry.
 */
import { EdgeError } from '../core/errors.js';
import { resolveRange } from '../core/store/memory.js';
import type { StoredBody } from '../core/store/types.js';

/**
 * Fetch the inclusive range `[start, end]` of the body again. Resolves to a
 * stream starting at `start` (it may run past `end`: it is cut here), or
 * undefined when the entry is gone or was replaced.
 */
export type RefetchBody = (start: number, end: number) => Promise<ReadableStream<Uint8Array> | undefined>;

export class LazyStoredBody implements StoredBody {
  #first: ReadableStream<Uint8Array> | undefined;

  constructor(
    readonly size: number,
    first: ReadableStream<Uint8Array> | undefined,
    private readonly refetch: RefetchBody,
  ) {
    this.#first = first;
  }

  stream(start?: number, end?: number): ReadableStream<Uint8Array> {
    // Throws RangeError for a range past the body, like every tier.
    const [from, to] = resolveRange(this.size, start, end);
    const length = to - from + 1;
    if (length <= 0) {
      this.#release();
      return new ReadableStream<Uint8Array>({ start: (controller) => controller.close() });
    }
    if (from === 0 && to === this.size - 1 && this.#first) {
      const first = this.#first;
      this.#first = undefined;
      return exactly(first, this.size);
    }
    this.#release();
    return deferred(async () => {
      const stream = await this.refetch(from, to);
      if (!stream) throw gone();
      return exactly(stream, length);
    });
  }

  /** Lets go of the lookup's stream when a range or a HEAD made it useless. */
  #release(): void {
    const first = this.#first;
    this.#first = undefined;
    first?.cancel().catch(() => {});
  }
}

function gone(cause?: unknown): EdgeError {
  return new EdgeError('EDGE_INTERNAL', 'The cached body is no longer available (evicted, purged or replaced while being read).', { cause });
}

/** A stream whose source is only opened when the consumer first reads. */
function deferred(open: () => Promise<ReadableStream<Uint8Array>>): ReadableStream<Uint8Array> {
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        try {
          reader ??= (await open()).getReader();
          const { done, value } = await reader.read();
          if (done) controller.close();
          else controller.enqueue(value);
        } catch (error) {
          controller.error(error);
        }
      },
      async cancel(reason) {
        await reader?.cancel(reason).catch(() => {});
      },
    },
    { highWaterMark: 0 },
  );
}

/**
 * The first `length` bytes of `source`, as a stream that errors with a coded
 * `EDGE_INTERNAL` when the source fails or ends early: a truncated body is
 * reported, never passed off as whole.
 */
export function exactly(source: ReadableStream<Uint8Array>, length: number): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  let remaining = length;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        if (remaining === 0) {
          controller.close();
          reader.cancel().catch(() => {});
          return;
        }
        let result: ReadableStreamReadResult<Uint8Array>;
        try {
          result = await reader.read();
        } catch (error) {
          controller.error(error && (error as { code?: unknown }).code === 'EDGE_INTERNAL' ? error : gone(error));
          return;
        }
        if (result.done) {
          controller.error(gone());
          return;
        }
        let chunk = result.value;
        if (chunk.byteLength > remaining) chunk = chunk.subarray(0, remaining);
        remaining -= chunk.byteLength;
        if (chunk.byteLength > 0) controller.enqueue(chunk);
        if (remaining === 0) {
          controller.close();
          reader.cancel().catch(() => {});
        }
      },
      async cancel(reason) {
        await reader.cancel(reason).catch(() => {});
      },
    },
    { highWaterMark: 0 },
  );
}

/** Drops the first `count` bytes of a stream (a backend that answered a range with the whole body). */
export function skipBytes(source: ReadableStream<Uint8Array>, count: number): ReadableStream<Uint8Array> {
  if (count === 0) return source;
  const reader = source.getReader();
  let toSkip = count;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) {
            controller.close();
            return;
          }
          if (toSkip >= value.byteLength) {
            toSkip -= value.byteLength;
            continue;
          }
          controller.enqueue(toSkip > 0 ? value.subarray(toSkip) : value);
          toSkip = 0;
          return;
        }
      },
      async cancel(reason) {
        await reader.cancel(reason).catch(() => {});
      },
    },
    { highWaterMark: 0 },
  );
}

/**
 * Reads the first `count` bytes of a stream and hands back the rest as a
 * stream (the R2 tier keeps oversized metadata in front of the body).
 */
export async function readPrefix(source: ReadableStream<Uint8Array>, count: number): Promise<[Uint8Array, ReadableStream<Uint8Array>]> {
  const reader = source.getReader();
  const prefix = new Uint8Array(count);
  let filled = 0;
  let leftover: Uint8Array | undefined;
  while (filled < count) {
    const { done, value } = await reader.read();
    if (done) throw gone();
    const take = Math.min(count - filled, value.byteLength);
    prefix.set(value.subarray(0, take), filled);
    filled += take;
    if (take < value.byteLength) leftover = value.subarray(take);
  }
  const rest = new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        if (leftover) {
          controller.enqueue(leftover);
          leftover = undefined;
          return;
        }
        const { done, value } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      async cancel(reason) {
        await reader.cancel(reason).catch(() => {});
      },
    },
    { highWaterMark: 0 },
  );
  return [prefix, rest];
}


/** Serialises async work per name (one isolate's read-modify-write of one index entry). */
export class KeyedLock {
  readonly #tails = new Map<string, Promise<unknown>>();

  run<T>(name: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(name) ?? Promise.resolve();
    const result = previous.then(work, work);
    const tail = result.catch(() => {});
    this.#tails.set(name, tail);
    void tail.then(() => {
      if (this.#tails.get(name) === tail) this.#tails.delete(name);
    });
    return result;
  }

  /** Resolves when all work started so far has finished. */
  async idle(): Promise<void> {
    while (this.#tails.size > 0) await Promise.all([...this.#tails.values()]);
  }
}
