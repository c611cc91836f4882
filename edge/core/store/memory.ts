/**
 * In-memory cache tier on top of `lru-cache`, bounded by bytes.
 *
 * Runs unchanged on Node and Workers (no runtime imports). It holds whole
 * bodies as one `Uint8Array`, so hits are served without copying; on Node it
 * is the hot layer above the LMDB tier, on Workers the per-isolate layer.
 */
import { concatBytes } from '../bytes.js';
import { LRUCache } from 'lru-cache';
import type {
  CacheEntry,
  CacheEntryMeta,
  CacheListFilter,
  CacheStore,
  CacheStoreStats,
  CacheWriter,
  StoredBody,
} from './types.js';

const MiB = 1024 * 1024;

/** Options for {@link MemoryCacheStore}. */
export interface MemoryCacheStoreOptions {
  /**
   * Byte budget for bodies plus an estimate of their metadata; the least
   * recently used entries are evicted beyond it (expired ones first).
   * @example 256 * 1024 * 1024
   */
  maxBytes: number;
  /**
   * Largest single entry (body plus metadata estimate) the tier accepts;
   * larger writers resolve `commit()` to false and stop buffering early.
   * @default Math.min(maxBytes / 8, 8 MiB)
   */
  maxEntryBytes?: number;
  /**
   * Time source in ms since epoch, compared with `meta.expiresAt` to find
   * expired entries. Inject one in tests instead of sleeping.
   * @default Date.now
   */
  clock?: () => number;
}

interface MemoryEntry {
  meta: CacheEntryMeta;
  bytes: Uint8Array;
  /** What `get` hands out, built once: a hit allocates nothing here. */
  view?: CacheEntry;
}

// A primary key never contains NUL (validated on write), so the first NUL
// unambiguously separates it from the variant.
const SEP = '\u0000';

export class MemoryCacheStore implements CacheStore {
  readonly name = 'memory';
  /** Largest entry this tier accepts, in bytes; the tiered store uses it to skip promotions that cannot fit. */
  readonly maxEntryBytes: number;
  readonly #maxBytes: number;
  readonly #clock: () => number;
  readonly #lru: LRUCache<string, MemoryEntry>;
  /** Primary key → stored variants; maintained from `disposeAfter`, so evictions can never leave it stale. */
  readonly #variants = new Map<string, Set<string>>();
  /** Lower bound of every stored `expiresAt`; lets `set` skip the expiry scan until something can have expired. */
  #nextExpiry = Number.POSITIVE_INFINITY;

  constructor(options: MemoryCacheStoreOptions) {
    const { maxBytes } = options;
    if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) {
      throw new TypeError(`MemoryCacheStore: maxBytes must be a positive integer, got ${String(maxBytes)}`);
    }
    const maxEntryBytes = options.maxEntryBytes ?? Math.max(1, Math.min(Math.floor(maxBytes / 8), 8 * MiB));
    if (!Number.isSafeInteger(maxEntryBytes) || maxEntryBytes <= 0 || maxEntryBytes > maxBytes) {
      throw new TypeError(
        `MemoryCacheStore: maxEntryBytes must be a positive integer no larger than maxBytes, got ${String(maxEntryBytes)}`,
      );
    }
    this.maxEntryBytes = maxEntryBytes;
    this.#maxBytes = maxBytes;
    this.#clock = options.clock ?? Date.now;
    this.#lru = new LRUCache<string, MemoryEntry>({
      maxSize: maxBytes,
      maxEntrySize: maxEntryBytes,
      sizeCalculation: entrySize,
      // After, not before, removal: an overwrite also reports reason 'set',
      // so only the final state of the LRU tells whether the variant is gone.
      disposeAfter: (_value, storageKey) => {
        if (this.#lru.has(storageKey)) return;
        const sep = storageKey.indexOf(SEP);
        const key = storageKey.slice(0, sep);
        const variants = this.#variants.get(key);
        if (!variants) return;
        variants.delete(storageKey.slice(sep + 1));
        if (variants.size === 0) this.#variants.delete(key);
      },
    });
  }

  async get(key: string): Promise<CacheEntry[]> {
    return this.getSync(key);
  }

  getSync(key: string): CacheEntry[] {
    const variants = this.#variants.get(key);
    if (!variants) return [];
    const entries: CacheEntry[] = [];
    // lru.get may evict (and so edit `variants`) while we iterate: copy only when there are several.
    for (const variant of variants.size === 1 ? variants : [...variants]) {
      const entry = this.#lru.get(key + SEP + variant);
      if (entry) entries.push((entry.view ??= { meta: entry.meta, body: new MemoryBody(entry.bytes), tier: 'memory' }));
    }
    return entries;
  }

  createWriter(key: string, variant: string, expectedSize?: number): CacheWriter {
    assertKey(key);
    return new MemoryWriter(key, variant, this.maxEntryBytes, expectedSize, (meta, bytes) => this.#store(meta, bytes));
  }

  #store(meta: CacheEntryMeta, bytes: Uint8Array): boolean {
    const entry: MemoryEntry = { meta: structuredClone({ ...meta, size: bytes.byteLength }), bytes };
    const size = entrySize(entry);
    if (size > this.maxEntryBytes) return false;
    this.#makeRoom(size);
    this.#set(entry);
    return true;
  }

  async updateMeta(meta: CacheEntryMeta): Promise<boolean> {
    const storageKey = meta.key + SEP + meta.variant;
    const current = this.#lru.get(storageKey);
    if (!current) return false;
    const entry: MemoryEntry = { meta: structuredClone({ ...meta, size: current.bytes.byteLength }), bytes: current.bytes };
    if (entrySize(entry) > this.maxEntryBytes) {
      // Bigger headers can push an entry over the limit; dropping it is
      // safer than serving the old metadata.
      this.#lru.delete(storageKey);
      return false;
    }
    this.#set(entry);
    return true;
  }

  async delete(key: string, variant?: string): Promise<number> {
    const variants = variant === undefined ? [...(this.#variants.get(key) ?? [])] : [variant];
    let removed = 0;
    for (const v of variants) if (this.#lru.delete(key + SEP + v)) removed++;
    return removed;
  }

  async *list(filter: CacheListFilter = {}): AsyncIterable<CacheEntryMeta> {
    // Snapshot first: callers often delete while iterating (purge by tag).
    const metas: CacheEntryMeta[] = [];
    for (const entry of this.#lru.values()) if (matchesFilter(entry.meta, filter)) metas.push(entry.meta);
    yield* metas;
  }

  stats(): CacheStoreStats {
    return { entries: this.#lru.size, bytes: this.#lru.calculatedSize, maxBytes: this.#maxBytes };
  }

  /** Resolves when background work is done; this tier has none, so at once. */
  async settled(): Promise<void> {}

  async close(): Promise<void> {
    this.#lru.clear();
  }

  #set(entry: MemoryEntry): void {
    const { key, variant, expiresAt } = entry.meta;
    this.#lru.set(key + SEP + variant, entry);
    let variants = this.#variants.get(key);
    if (!variants) this.#variants.set(key, (variants = new Set()));
    variants.add(variant);
    if (expiresAt < this.#nextExpiry) this.#nextExpiry = expiresAt;
  }

  /**
   * lru-cache evicts strictly by recency; drop expired entries first so a
   * dead entry never pushes out a live one. The scan is O(n), but runs only
   * when the budget is exceeded and something can actually have expired.
   */
  #makeRoom(incoming: number): void {
    if (this.#lru.calculatedSize + incoming <= this.#maxBytes) return;
    const now = this.#clock();
    if (now < this.#nextExpiry) return;
    const expired: string[] = [];
    let nextExpiry = Number.POSITIVE_INFINITY;
    for (const [storageKey, entry] of this.#lru.entries()) {
      if (entry.meta.expiresAt < now) expired.push(storageKey);
      else if (entry.meta.expiresAt < nextExpiry) nextExpiry = entry.meta.expiresAt;
    }
    for (const storageKey of expired) this.#lru.delete(storageKey);
    this.#nextExpiry = nextExpiry;
  }
}

class MemoryWriter implements CacheWriter {
  readonly #chunks: Uint8Array[] = [];
  #size = 0;
  #declined: boolean;
  #done = false;

  constructor(
    private readonly key: string,
    private readonly variant: string,
    private readonly maxEntryBytes: number,
    expectedSize: number | undefined,
    private readonly store: (meta: CacheEntryMeta, bytes: Uint8Array) => boolean,
  ) {
    this.#declined = expectedSize !== undefined && expectedSize > maxEntryBytes;
  }

  write(chunk: Uint8Array): void {
    if (this.#done) throw new TypeError('MemoryCacheStore: write() after commit() or abort()');
    if (this.#declined) return;
    this.#size += chunk.byteLength;
    if (this.#size > this.maxEntryBytes) {
      // Stop holding the body as soon as it cannot fit; commit() reports false.
      this.#declined = true;
      this.#chunks.length = 0;
      return;
    }
    this.#chunks.push(chunk);
  }

  async commit(meta: CacheEntryMeta): Promise<boolean> {
    if (this.#done) throw new TypeError('MemoryCacheStore: commit() called twice or after abort()');
    this.#done = true;
    assertMetaMatches(meta, this.key, this.variant);
    if (this.#declined) return false;
    const bytes = concatBytes(this.#chunks, this.#size);
    this.#chunks.length = 0;
    return this.store(meta, bytes);
  }

  async abort(): Promise<void> {
    this.#done = true;
    this.#chunks.length = 0;
  }
}

class MemoryBody implements StoredBody {
  constructor(readonly bytes: Uint8Array) {}

  get size(): number {
    return this.bytes.byteLength;
  }

  stream(start?: number, end?: number): ReadableStream<Uint8Array> {
    const [from, to] = resolveRange(this.size, start, end);
    const bytes = this.bytes;
    return new ReadableStream<Uint8Array>(
      {
        pull(controller) {
          // A view, not a copy: the stored bytes are never mutated in place.
          if (to >= from) controller.enqueue(bytes.subarray(from, to + 1));
          controller.close();
        },
      },
      // Zero so that nothing happens before the consumer reads.
      { highWaterMark: 0 },
    );
  }
}

/** Approximate heap cost of an entry: the body plus its metadata as JSON. */
function entrySize(entry: MemoryEntry): number {
  return entry.bytes.byteLength + JSON.stringify(entry.meta).length + 64;
}


/**
 * Normalises an inclusive byte range against a body size. `end` is clamped
 * to the last byte (as HTTP does for `bytes=0-999999`); a start past the end
 * of the body is a caller bug, since ranges are validated before reaching
 * the store.
 */
export function resolveRange(size: number, start = 0, end = size - 1): [number, number] {
  const to = Math.min(end, size - 1);
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || start > to + 1) {
    throw new RangeError(`Invalid byte range ${start}-${end} for a body of ${size} bytes`);
  }
  return [start, to];
}

/** Shared by every tier so filters mean the same thing everywhere. */
export function matchesFilter(meta: CacheEntryMeta, filter: CacheListFilter): boolean {
  if (filter.prefix !== undefined && !meta.key.startsWith(filter.prefix)) return false;
  if (filter.tag !== undefined && !meta.tags.includes(filter.tag)) return false;
  if (filter.sourceKey !== undefined && meta.sourceKey !== filter.sourceKey) return false;
  if (filter.pushed !== undefined && Boolean(meta.pushed) !== filter.pushed) return false;
  return true;
}

/** Tiers join key and variant with NUL, so a key containing one could collide with another entry. */
export function assertKey(key: string): void {
  if (key.includes(SEP)) throw new TypeError('Cache keys must not contain NUL characters');
}

export function assertMetaMatches(meta: CacheEntryMeta, key: string, variant: string): void {
  if (meta.key !== key || meta.variant !== variant) {
    throw new TypeError(
      `Writer for ${JSON.stringify(key)} (variant ${JSON.stringify(variant)}) committed with metadata for ${JSON.stringify(meta.key)} (variant ${JSON.stringify(meta.variant)})`,
    );
  }
}
