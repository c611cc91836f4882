/**
 * Recoding bodies on their way into the cache: the origin's stream or a
 * stored entry piped through the runtime's {@link BodyCoder}, once per
 * variant, and the background job that re-compresses a node-made brotli
 * entry at a high level (`--brotli-background-level`) once it is hit: a
 * level-11 pass costs about 30 times the fill's, so objects requested once
 * never pay it. The decisions themselves are in `compression.ts`.
 */
import {
  addCodingVary,
  codedBy,
  codedLabel,
  compileTypeMatcher,
  CODED_FIELD,
  fillLevel,
  planCoding,
  recodedHeaders,
  withVaryMember,
  type BodyCoder,
  type Coding,
  type CodingAbilities,
  type CodingPlan,
  type ContentCoding,
} from './compression.js';
import { EdgeError } from './errors.js';
import { fillWhileStreaming } from './fill.js';
import type { EdgeOptions } from './options.js';
import type { PurgeLog } from './purge-log.js';
import type { CacheEntry, CacheEntryMeta, CacheStore } from './store/types.js';

/** Background re-compressions waiting at most; more are dropped (the entry keeps its fill-time level). */
const MAX_PENDING_RECOMPRESSIONS = 64;

/** Versions already queued or tried, remembered so a hit does not queue them again (cleared when full). */
const MAX_TRIED = 10_000;

export interface RecoderDeps {
  options: EdgeOptions;
  coder?: BodyCoder;
  store: CacheStore;
  purges: PurgeLog;
  now: () => number;
}

/** Where a representation made from a stored entry goes. */
export interface RecodeTarget {
  key: string;
  variant: string;
  /** For derived entries (pushed objects' codings): the source's key, so purges find them. */
  sourceKey?: string;
}

interface RecompressJob {
  key: string;
  variant: string;
  /** The version it was made from. */
  storedAt: number;
  /** Set when another fill of the key begins: its version must not be replaced by this one. */
  aborted: boolean;
}

export class Recoder {
  readonly abilities: CodingAbilities;
  readonly #deps: RecoderDeps;
  readonly #pending = new Map<string, RecompressJob[]>();
  readonly #tried = new Set<string>();
  #queued = 0;
  #running: Promise<void> = Promise.resolve();

  constructor(deps: RecoderDeps) {
    this.#deps = deps;
    this.abilities = { options: deps.options, coder: deps.coder, isCompressible: compileTypeMatcher(deps.options.compressTypes) };
  }

  /** See {@link planCoding}. */
  plan(response: { status: number; headers: Record<string, string>; size?: number }, wanted: Coding, mayEncode: boolean): CodingPlan {
    return planCoding(response, wanted, this.abilities, mayEncode);
  }

  /** The fields of `headers` once `plan` is applied (a copy; `headers` itself when nothing changes). */
  headers(headers: Record<string, string>, plan: CodingPlan): Record<string, string> {
    if (plan.recode) return recodedHeaders(headers, plan.to as Coding, plan.to === 'identity' ? 0 : fillLevel(this.#deps.options, plan.to as ContentCoding));
    if (!plan.varies || withVaryMember(headers.vary, 'Accept-Encoding') === headers.vary) return headers;
    const out = { ...headers };
    addCodingVary(out);
    return out;
  }

  /**
   * `body` recoded by `plan` as it streams. `expectedLength` is the length
   * the body must have before recoding (the origin's Content-Length): the
   * recoded stream fails on any other, since the fill can no longer tell.
   */
  body(body: ReadableStream<Uint8Array>, plan: CodingPlan, expectedLength?: number): ReadableStream<Uint8Array> {
    if (!plan.recode) return body;
    const coder = this.#deps.coder!;
    let out = expectedLength === undefined ? body : body.pipeThrough(lengthCheck(expectedLength));
    if (plan.from !== 'identity') out = out.pipeThrough(coder.decoder(plan.from as ContentCoding));
    if (plan.to !== 'identity') {
      const sizeHint = plan.from === 'identity' ? expectedLength : undefined;
      out = out.pipeThrough(coder.encoder(plan.to as ContentCoding, fillLevel(this.#deps.options, plan.to as ContentCoding), sizeHint));
    }
    return out;
  }

  /**
   * Fill `target` with `source` recoded by `plan` (`plan.from` must be the
   * source's coding). The new entry shares the source's freshness (its
   * policy, expiry and tags); `onSettled` says whether it was stored.
   * Returns its fields (size unknown yet) and the body for the client.
   */
  fillFromStored(
    source: CacheEntry,
    plan: CodingPlan,
    target: RecodeTarget,
    waitUntil: (promise: Promise<unknown>) => void,
    onSettled: (stored: boolean, error?: unknown) => void,
  ): { meta: CacheEntryMeta; body: ReadableStream<Uint8Array> } {
    const { store, purges, now, options } = this.#deps;
    const headers = this.headers(source.meta.headers, plan);
    const meta: CacheEntryMeta = {
      ...source.meta,
      key: target.key,
      variant: target.variant,
      headers,
      storedAt: now(),
      invalidated: false,
    };
    delete meta.pushed;
    if (target.sourceKey !== undefined) meta.sourceKey = target.sourceKey;
    this.noteFill(target.key, target.variant);
    const writer = store.createWriter(target.key, target.variant, plan.recode ? undefined : source.body.size);
    const fill = purges.begin();
    const body = fillWhileStreaming(this.body(source.body.stream(), plan, plan.recode && plan.from === 'identity' ? source.body.size : undefined), {
      writer,
      maxBytes: options.maxObjectSize,
      expectedSize: plan.recode ? undefined : source.body.size,
      waitUntil,
      commit: async (size) => {
        if (purges.purgedSince(fill.epoch, target.key, meta.tags) || (target.sourceKey !== undefined && purges.purgedSince(fill.epoch, target.sourceKey, meta.tags))) {
          await writer.abort();
          return false;
        }
        meta.size = size;
        // Soft-purged (it or its source) while it was being made: stored, but revalidated before its next use.
        if (purges.softPurgedSince(fill.epoch, target.key, meta.tags) || (target.sourceKey !== undefined && purges.softPurgedSince(fill.epoch, target.sourceKey, meta.tags))) meta.invalidated = true;
        return purges.landing(writer.commit(meta));
      },
      onSettled: (stored, error) => {
        fill.end();
        onSettled(stored, error);
      },
    });
    return { meta, body };
  }

  /** A fill of one variant of `key` begins: background work on an older version of it must not land. */
  noteFill(key: string, variant: string): void {
    const jobs = this.#pending.get(`${key}\u0000${variant}`);
    if (jobs) for (const job of jobs) job.aborted = true;
  }

  /** Is this a brotli entry the node made below `--brotli-background-level`? (Computed once per stored metadata by the pull cache.) */
  wantsRecompression(meta: CacheEntryMeta): boolean {
    const target = this.#deps.options.brotliBackgroundLevel;
    if (target === 0 || !this.#deps.coder?.encodes.includes('br')) return false;
    const by = codedBy(meta.headers);
    return by !== undefined && by.coding === 'br' && by.level < target;
  }

  /**
   * An entry for which {@link wantsRecompression} holds was hit: queue its
   * re-compression (once per version; one job at a time, so a burst never
   * takes more than one thread of the pool).
   */
  afterHit(meta: CacheEntryMeta): void {
    const id = `${meta.key}\u0000${meta.variant}\u0000${meta.storedAt}`;
    if (this.#tried.has(id) || this.#queued >= MAX_PENDING_RECOMPRESSIONS) return;
    if (this.#tried.size >= MAX_TRIED) this.#tried.clear();
    this.#tried.add(id);
    const target = this.#deps.options.brotliBackgroundLevel;
    const job: RecompressJob = { key: meta.key, variant: meta.variant, storedAt: meta.storedAt, aborted: false };
    const slot = `${job.key}\u0000${job.variant}`;
    const jobs = this.#pending.get(slot) ?? [];
    jobs.push(job);
    this.#pending.set(slot, jobs);
    this.#queued++;
    const run = this.#running.then(() => this.#recompress(job, target).catch(() => {})).finally(() => {
      this.#queued--;
      const left = this.#pending.get(slot)?.filter((other) => other !== job) ?? [];
      if (left.length === 0) this.#pending.delete(slot);
      else this.#pending.set(slot, left);
    });
    this.#running = run;
  }

  /** Resolves once no re-compression is queued or running (shutdown, tests). */
  async idle(): Promise<void> {
    while (this.#queued > 0) await this.#running;
  }

  /**
   * Decode the stored brotli body, encode it again at `level`, and replace
   * the entry when the result is smaller and nothing newer was filled or
   * purged meanwhile. Fields and freshness stay; the ETag is weak, so the
   * same tag may name the new bytes.
   */
  async #recompress(job: RecompressJob, level: number): Promise<void> {
    const { store, purges, coder } = this.#deps;
    const version = async () => (await store.get(job.key)).find((entry) => entry.meta.variant === job.variant && entry.meta.storedAt === job.storedAt);
    const entry = await version();
    if (!entry || job.aborted || !coder) return;
    const fill = purges.begin();
    const writer = store.createWriter(job.key, job.variant);
    let committed = false;
    try {
      const reader = entry.body.stream().pipeThrough(coder.decoder('br')).pipeThrough(coder.encoder('br', level)).getReader();
      let size = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        size += value.byteLength;
        if (size >= entry.meta.size) {
          await reader.cancel();
          return;
        }
        writer.write(value);
      }
      const current = await version();
      // Checked right before the commit, with no await in between: a fill that began meanwhile set `aborted`.
      if (!current || job.aborted || purges.purgedSince(fill.epoch, job.key, current.meta.tags)) return;
      const made = codedBy(current.meta.headers);
      if (!made || made.coding !== 'br') return;
      const headers = { ...current.meta.headers, [CODED_FIELD]: codedLabel('br', level, made.from) };
      committed = await purges.landing(writer.commit({ ...current.meta, headers, size }));
    } finally {
      fill.end();
      if (!committed) await writer.abort().catch(() => {});
    }
  }
}

/** Fails the stream unless exactly `expected` bytes pass (a recoded body's length cannot be checked later). */
function lengthCheck(expected: number): TransformStream<Uint8Array, Uint8Array> {
  let seen = 0;
  return new TransformStream({
    transform(chunk, controller) {
      seen += chunk.byteLength;
      if (seen > expected) throw new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', `The origin sent more than the ${expected} bytes its Content-Length announced.`);
      controller.enqueue(chunk);
    },
    flush() {
      if (seen !== expected) throw new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', `The origin's body ended after ${seen} of ${expected} bytes.`);
    },
  });
}
