/**
 * The storage contract every cache tier implements (memory, LMDB, tiered,
 * and later the Workers Cache API / R2).
 *
 * Modelled on undici's three-verb cache store (`get`, `createWriteStream`,
 * `delete`): reads hand back metadata plus a lazily-read body, writes go
 * through a writer that only becomes visible on `commit()`, so a body that
 * fails half-way is never stored (atomic writes).
 *
 * Readers get whole versions: a body stream that has started keeps
 * yielding the version it was looked up with, to its last byte, even when
 * the entry is replaced, deleted or evicted meanwhile (the disk tier defers
 * removing a body until its last reader is done). A tier that cannot keep
 * a version fails the stream with a coded `EDGE_INTERNAL` instead: a body
 * is never cut short silently, nor spliced from two versions.
 *
 * Keys: `key` is the primary cache key (see `cache-key.ts`); `variant` is
 * the secondary key derived from the response's `Vary` header ('' when the
 * response has no `Vary`). A primary key holds at most a handful of variants.
 */

/** Serialised `http-cache-semantics` CachePolicy (`toObject()`), plain JSON. */
export type SerializedPolicy = Record<string, unknown>;

export interface CacheEntryMeta {
  /** Primary cache key. */
  key: string;
  /** Secondary key built from the request headers named in `Vary`; '' when none. */
  variant: string;
  /** Response status code as received from the origin (or 200 for pushes). */
  status: number;
  /**
   * Response headers as stored: lower-case names, multi-valued fields joined
   * with `, `, hop-by-hop fields removed. Downstream-only transforms (Age,
   * Cache-Status, removal of targeted cache-control fields) happen on output.
   */
  headers: Record<string, string>;
  /** Freshness state, `CachePolicy.toObject()`. */
  policy: SerializedPolicy;
  /** Body length in bytes. */
  size: number;
  /** Surrogate keys from `Cache-Tag` / `Surrogate-Key` or the push API. */
  tags: string[];
  /** When the entry was written, ms since epoch. */
  storedAt: number;
  /**
   * When the entry stops being useful even stale (freshness plus any
   * stale-while-revalidate / stale-if-error / grace window), ms since epoch.
   * Eviction removes such entries first.
   */
  expiresAt: number;
  /** Pushed through the admin API: never asks the origin, not evicted by pull pressure. */
  pushed?: boolean;
  /** For derived entries (image variants): the primary key of the source object. */
  sourceKey?: string;
  /** Soft-purged: kept, but must be revalidated before it is served again. */
  invalidated?: boolean;
  /**
   * The record of a sliced object (`slice.ts`): its pieces are separate
   * entries, `length` bytes in all, each `pieceSize` long but the last.
   * The record itself has no body.
   */
  sliced?: { pieceSize: number; length: number };
}

/** A stored body: whole bytes when the tier keeps them in memory, otherwise a stream. */
export interface StoredBody {
  readonly size: number;
  /** The whole body, when the tier holds it in memory (the fast path for hits). */
  readonly bytes?: Uint8Array;
  /**
   * The whole body read at once, for tiers where that is cheap (an LMDB body
   * that fits one chunk is a single memory-mapped read). Returns undefined
   * when the body is gone (replaced or evicted) or too large to read at once.
   * Spares small disk hits a stream per response.
   */
  readAll?(): Uint8Array | undefined;
  /**
   * Stream the body, or the inclusive byte range `[start, end]` of it.
   * Reads are lazy: nothing is read until the stream is pulled. The stream
   * yields the version this body belongs to, whole, whatever happens to
   * the entry after it was created; read it to the end or cancel it, so
   * the tier can let go of that version.
   */
  stream(start?: number, end?: number): ReadableStream<Uint8Array>;
}

export interface CacheEntry {
  meta: CacheEntryMeta;
  body: StoredBody;
  /** Which tier answered (`memory`, `disk`, ...), for logs and metrics. Set by tiers that know. */
  tier?: string;
}

/**
 * Accepts a body chunk by chunk. Nothing is visible to readers until
 * `commit()` resolves; `abort()` discards everything written so far and
 * leaves any previous version of the entry intact.
 */
export interface CacheWriter {
  /**
   * Takes the chunk (the writer copies what it keeps). A writer that streams
   * to remote storage may return a promise: callers that can pause their
   * source (the push API) wait for it, so an upload is read no faster than
   * it is stored; others may ignore it.
   */
  write(chunk: Uint8Array): void | Promise<void>;
  /**
   * Make the entry visible, replacing any previous version atomically.
   * Resolves false if the tier declined it (e.g. too large). Rejects with
   * code `EDGE_INSUFFICIENT_STORAGE` when `options.maxPushedBytes` refuses
   * a pushed entry; the previous version then stays, in every tier.
   */
  commit(meta: CacheEntryMeta, options?: CommitOptions): Promise<boolean>;
  abort(): Promise<void>;
}

export interface CommitOptions {
  /**
   * Budget for pushed bodies in tiers that count them (those with
   * {@link CacheStore.pushedBytes}): a pushed entry is refused when,
   * with it in place of its previous version, pushed bytes would exceed
   * this and grow. The check and the write are one transaction, so
   * concurrent pushes cannot overshoot it together. Other tiers ignore it.
   * @example Math.floor(diskSize * pushDiskShare)
   */
  maxPushedBytes?: number;
}

export interface CacheListFilter {
  /** Primary keys starting with this string. */
  prefix?: string;
  /** Entries carrying this tag. */
  tag?: string;
  /** Entries derived from this source key (image variants). */
  sourceKey?: string;
  /** Only pushed (true) or only pulled (false) entries. */
  pushed?: boolean;
}

export interface CacheStoreStats {
  entries: number;
  bytes: number;
  maxBytes: number;
}

export interface CacheStore {
  /** Short tier name used in logs and metrics, e.g. `memory`, `disk`. */
  readonly name: string;
  /** All stored variants of a primary key (possibly none). */
  get(key: string): Promise<CacheEntry[]>;
  /**
   * The same read, synchronously, for tiers whose reads are synchronous
   * (memory, LMDB): lets a runtime answer a fresh hit without awaiting.
   * Promotions between tiers it triggers happen in the background.
   */
  getSync?(key: string, wanted?: (entry: CacheEntry) => boolean): CacheEntry[];
  /** Start writing one variant of a key; see {@link CacheWriter}. */
  createWriter(key: string, variant: string, expectedSize?: number): CacheWriter;
  /** Replace an entry's metadata (e.g. after a 304); false if the entry is gone. */
  updateMeta(meta: CacheEntryMeta): Promise<boolean>;
  /** Delete one variant, or every variant of a key; resolves to the number removed. */
  delete(key: string, variant?: string): Promise<number>;
  /** Iterate entry metadata matching a filter (all entries when empty). */
  list(filter?: CacheListFilter): AsyncIterable<CacheEntryMeta>;
  stats(): CacheStoreStats;
  /**
   * Bytes of pushed bodies (`meta.pushed`), also counted in `stats().bytes`,
   * kept right across replacement, deletion, eviction and restart. Only
   * tiers that hold pushed entries against their budget have it (the disk
   * tier, and a tiered store over one); the push budget applies to them.
   */
  pushedBytes?(): number;
  close(): Promise<void>;
}
