/**
 * Stream a body to the client while it fills the cache.
 *
 * The origin is read only as fast as the client reads (backpressure), so a
 * large object is never held whole in memory. Each chunk goes to the cache
 * writer before it goes to the client; the entry is committed when the
 * body ended cleanly with the announced length, and aborted otherwise, so
 * a truncated body is never stored. If the client goes away, the rest is
 * still read into the cache in the background: the next request is a hit.
 */
import { EdgeError, isEdgeError } from './errors.js';
import type { CacheWriter } from './store/types.js';

export interface FillOptions {
  writer: CacheWriter;
  /** Stop storing (but keep streaming) past this many bytes. */
  maxBytes: number;
  /** Content-Length announced by the origin, if any: a mismatch is not stored. */
  expectedSize?: number;
  /** Build the entry's metadata once the size is known; returning undefined declines the commit. */
  commit: (size: number) => Promise<boolean>;
  /**
   * Called exactly once with whether the entry was stored. A failure of the
   * body itself comes as an `EdgeError` (502 or 504), whatever the origin
   * client threw, so requests collapsed behind this fill answer like any
   * other origin failure rather than with a 500.
   */
  onSettled: (stored: boolean, error?: unknown) => void;
  /** Keeps background work alive after the response (Workers' waitUntil). */
  waitUntil: (promise: Promise<unknown>) => void;
}

export function fillWhileStreaming(source: ReadableStream<Uint8Array>, options: FillOptions): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  let size = 0;
  let writing = true;
  let settled = false;
  let markSettled!: () => void;
  // Registered with waitUntil so shutdown (and tests) can wait for every fill to land.
  options.waitUntil(new Promise<void>((resolve) => (markSettled = resolve)));

  const settle = (stored: boolean, error?: unknown) => {
    if (settled) return;
    settled = true;
    markSettled();
    options.onSettled(stored, error);
  };

  const stopWriting = async () => {
    if (!writing) return;
    writing = false;
    await options.writer.abort().catch(() => {});
  };

  const accept = (chunk: Uint8Array) => {
    size += chunk.byteLength;
    if (!writing) return;
    if (size > options.maxBytes) {
      void stopWriting();
      return;
    }
    try {
      options.writer.write(chunk);
    } catch {
      void stopWriting();
    }
  };

  const finish = async () => {
    if (!writing) return settle(false);
    if (options.expectedSize !== undefined && size !== options.expectedSize) {
      await stopWriting();
      return settle(false);
    }
    writing = false;
    try {
      settle(await options.commit(size));
    } catch (error) {
      await options.writer.abort().catch(() => {});
      settle(false, error);
    }
  };

  const fail = async (error: unknown) => {
    await stopWriting();
    settle(false, error);
  };

  /** A body that failed to arrive is the origin's failure (the origin client's own error kept as the cause). */
  const originError = (error: unknown) =>
    isEdgeError(error) ? error : new EdgeError('EDGE_ORIGIN_UNREACHABLE', "The origin's body broke off before its end.", { cause: error });

  /** Read the rest into the cache after the client left. */
  const drain = async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        accept(value);
        if (!writing) {
          await reader.cancel();
          return settle(false);
        }
      }
      await finish();
    } catch (error) {
      await fail(originError(error));
    }
  };

  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        let result: ReadableStreamReadResult<Uint8Array>;
        try {
          result = await reader.read();
        } catch (caught) {
          const error = originError(caught);
          await fail(error);
          controller.error(error);
          return;
        }
        if (result.done) {
          // Commit before ending the response, so that a request made right
          // after this one completes is a hit.
          await finish();
          controller.close();
          return;
        }
        accept(result.value);
        // With a known length, commit before handing over the last bytes: a
        // client that has the whole body can count on the next request hitting.
        if (writing && options.expectedSize !== undefined && size === options.expectedSize) await finish();
        controller.enqueue(result.value);
      },
      cancel(reason) {
        if (writing) {
          options.waitUntil(drain());
        } else {
          settle(false);
          return reader.cancel(reason);
        }
      },
    },
    { highWaterMark: 0 },
  );
}

/** Consume a fill stream fully (HEAD requests, background refreshes, 304s to clients). */
export function drainInBackground(stream: ReadableStream<Uint8Array>, waitUntil: (p: Promise<unknown>) => void): void {
  drainReader(stream.getReader(), waitUntil);
}

function drainReader(reader: ReadableStreamDefaultReader<Uint8Array>, waitUntil: (p: Promise<unknown>) => void): void {
  waitUntil(
    (async () => {
      try {
        for (;;) {
          const { done } = await reader.read();
          if (done) break;
        }
      } catch {
        // The fill already recorded the failure; nothing is stored.
      }
    })(),
  );
}

/**
 * The inclusive byte range `[start, end]` of a fill stream, for a Range
 * request that misses: the client gets its 206 as the bytes arrive, and the
 * rest of the body is still read into the cache after the range is sent.
 */
export function sliceFill(
  fill: ReadableStream<Uint8Array>,
  start: number,
  end: number,
  waitUntil: (p: Promise<unknown>) => void,
): ReadableStream<Uint8Array> {
  const reader = fill.getReader();
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    drainReader(reader, waitUntil);
  };
  // A fill that ends short has already failed its commit; the client's answer just ends.
  return byteRange(reader, start, end, { after: release, short: () => undefined });
}

/**
 * The inclusive byte range `[start, end]` of what `reader` yields, sent as the
 * bytes arrive. `after` runs once the range is sent or the client cancels
 * (drain the rest, or cancel it); a body that ends before `end` ends the
 * range with `short()`'s error, or closes it when that gives none.
 */
export function byteRange(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  start: number,
  end: number,
  on: { after: (reason?: unknown) => void; short: () => Error | undefined },
): ReadableStream<Uint8Array> {
  let position = 0;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) {
            const error = on.short();
            if (error) controller.error(error);
            else controller.close();
            return;
          }
          const chunkStart = position;
          position += value.byteLength;
          if (position <= start) continue;
          controller.enqueue(value.subarray(Math.max(0, start - chunkStart), Math.min(value.byteLength, end + 1 - chunkStart)));
          if (position > end) {
            controller.close();
            on.after();
          }
          return;
        }
      },
      cancel(reason) {
        on.after(reason);
      },
    },
    { highWaterMark: 0 },
  );
}
