/**
 * The pull tier on Workers: the Cache API (`caches.default`, or a named
 * cache from `caches.open()`), behind the `CacheStore` contract.
 *
 * Layout. Every entry of ours is a synthetic response under a synthetic
 * URL (`https://edge-cache.internal/...` by default), never the client's
 * URL, so the zone's own HTTP cache and ours cannot answer for each other:
 *
 * | URL                      | holds                                                      | kept for (Cache-Control) |
 * | ------------------------ | ---------------------------------------------------------- | ------------------------ |
 * | `i/<sha256(key)>`        | the key's index: each variant's metadata and body id (JSON) | the latest `expiresAt`   |
 * | `b/<sha256(key)>/<uuid>` | one body, written once, never rewritten                    | `bodyTtl`                |
 * | `d/<n>`                  | directory shard n: key, variant, tags, source key, size    | `bodyTtl`                |
 *
 * A body is streamed into the cache while the origin response streams to
 * the client; the entry becomes visible when `commit()` writes the index,
 * which points at the new body id, and the previous body is then deleted.
 * A reader therefore sees the old entry or the new one, never a mix; a
 * reader of a body that is gone gets a coded `EDGE_INTERNAL` stream error.
 * `updateMeta()` (after a 304) rewrites only the small index entry.
 *
 * Lifetimes. The index entry is stored with `max-age` up to the latest
 * `expiresAt` of its variants, so the Cache API keeps the entry exactly as
 * long as it is useful and then drops it by itself. Bodies are written
 * before their metadata is known, with `bodyTtl` (a year by default, and
 * `expiresAt` is clamped to it): a body outlives its index, never the other
 * way round, and is removed explicitly when replaced or deleted.
 *
 * Per location. The Cache API is local to one Cloudflare data center and
 * cannot be enumerated. `list()` (purge by tag or prefix, the objects
 * listing, derived-entry lookups) reads this location's directory, a few
 * sharded JSON entries maintained on every commit and delete. So:
 * - a purge reaches the data center that received the purge request, and
 *   within it the entries its directory lists; other data centers keep
 *   their copies until they expire. For a global purge, send the purge to
 *   every location that matters or use Cloudflare's zone purge: index
 *   entries carry the entry's tags in `Cache-Tag`, so a zone purge by tag
 *   (or Purge Everything) drops them everywhere, and a get then sees no
 *   entry (a miss);
 * - the directory is best effort: two isolates updating the same shard at
 *   once can lose one update, and the Cache API may evict a shard; an entry
 *   missing from the directory is still served, but escapes tag and prefix
 *   purges in that location until it expires (purge by URL, which goes
 *   through `get`/`delete` of the key itself, always reaches it).
 *
 * Limits: one body is at most `maxEntryBytes` (512 MB, the Cache API's
 * per-object limit on most plans); larger writers decline. The Cache API
 * does nothing on `*.workers.dev` and in the dashboard preview: deploy the
 * Worker on a route or custom domain.
 */
import { assertKey, assertMetaMatches, matchesFilter } from '../core/store/memory.js';
import type {
  CacheEntry,
  CacheEntryMeta,
  CacheListFilter,
  CacheStore,
  CacheStoreStats,
  CacheWriter,
} from '../core/store/types.js';
import { sha256Hex } from '../core/bytes.js';
import { parseCacheKey } from '../core/cache-key.js';
import { markerSelects, urlTagsOf, type PurgeMarker } from './purge-markers.js';
import { KeyedLock, LazyStoredBody, skipBytes } from './stored-body.js';
import { LRUCache } from 'lru-cache';

/** The part of the Workers `Cache` interface this tier uses (also what Miniflare's `getCaches()` returns). */
export interface CacheLike {
  match(request: Request | string): Promise<Response | undefined>;
  put(request: Request | string, response: Response): Promise<void>;
  delete(request: Request | string): Promise<boolean>;
}

/** Options for {@link CfCacheStore}. */
export interface CfCacheStoreOptions {
  /**
   * The cache to use.
   * @example caches.default
   * @example await caches.open('edge')
   */
  cache: CacheLike;
  /**
   * Largest body stored, in bytes; larger writers decline (`commit()` resolves false).
   * @default 512 * 1024 * 1024 (the Cache API's per-object limit)
   */
  maxEntryBytes?: number;
  /**
   * Seconds a body is kept by the Cache API; entries whose `expiresAt` lies
   * further ahead are clamped to it.
   * @default 31536000 (one year)
   */
  bodyTtl?: number;
  /**
   * Number of directory shards. More shards mean smaller directory
   * rewrites per commit and more lookups per `list()`. Changing it
   * orphans the directory written before (entries stay servable).
   * @default 16
   */
  directoryShards?: number;
  /**
   * Base of the synthetic URLs; must end with `/`.
   * @default 'https://edge-cache.internal/'
   */
  baseUrl?: string;
  /** Time source, ms since epoch (turns `expiresAt` into `max-age`). @default Date.now */
  clock?: () => number;
  /** Receives storage failures that are reported to callers as a declined write or a miss. @default ignore */
  onError?: (error: unknown) => void;
  /**
   * Store each pulled entry's index and bodies under its own URL on the
   * zone (`<scheme>://<host><path>?<query>&edge-cache=i.<hash>`), so that a
   * zone purge by host or prefix reaches them; pushed-derived entries and
   * this store's own documents stay under `baseUrl`. Off: everything under
   * `baseUrl`.
   * @default false (the Worker turns it on)
   */
  zoneUrls?: boolean;
  /**
   * Check once per isolate that the Cache API keeps what is put: after the
   * first entry's index is written, read it back (one call). Where it does
   * not (`*.workers.dev`, the dashboard preview, Miniflare with the cache
   * off), no commit counts as stored from then on (`storing` is false), so
   * `Cache-Status` does not say `stored`.
   * @default false (the Worker turns it on)
   */
  verifyPuts?: boolean;
  /**
   * Honour purge markers (`addPurgeMarker`): every index read also reads
   * this location's purge log (one more lookup, in parallel).
   * @default false (the Worker turns it on)
   */
  purgeMarkers?: boolean;
}

interface IndexVariant {
  /** Body id, the last segment of the body URL. */
  id: string;
  meta: CacheEntryMeta;
}

interface IndexDocument {
  key: string;
  variants: Record<string, IndexVariant>;
}

/** One directory record: what `list()` filters on before reading the key's index. */
interface DirectoryRecord {
  k: string;
  v: string;
  t?: string[];
  s?: string;
  p?: 1;
  /** expiresAt */
  x: number;
  /** size */
  z: number;
}

type DirectoryDocument = Record<string, DirectoryRecord>;

const SEP = '\u0000';
const MiB = 1024 * 1024;
/** Purge markers kept per location; older ones are folded into one "everything before" marker. */
const MAX_MARKERS = 256;
/** The query parameter that keeps our documents apart from anything else cached at the same URL. */
const MARK_PARAM = 'edge-cache';

interface PurgeLogDocument {
  markers: PurgeMarker[];
}
/** Index reads in flight at once while listing. */
const LIST_CONCURRENCY = 8;
/** Cloudflare reads at most this much of a Cache-Tag header; tags past it are left out. */
const MAX_CACHE_TAG_HEADER = 16 * 1024 - 1;

export class CfCacheStore implements CacheStore {
  readonly name = 'cache';
  /** Largest body this tier stores, in bytes. */
  readonly maxEntryBytes: number;
  readonly #cache: CacheLike;
  readonly #bodyTtl: number;
  readonly #shards: number;
  readonly #base: string;
  readonly #clock: () => number;
  readonly #onError: (error: unknown) => void;
  readonly #zoneUrls: boolean;
  readonly #purgeMarkers: boolean;
  readonly #locks = new KeyedLock();
  readonly #verifyPuts: boolean;
  /** Whether the Cache API kept the first index written (undefined: not known yet). */
  #storing: boolean | undefined;
  /** The latest commit outcome per key (resolved false when aborted or declined), for `Cache-Status`. */
  readonly #outcomes = new LRUCache<string, Promise<boolean>>({ max: 1000 });
  /** Entries and bytes per directory shard, as last read or written by this isolate (for `stats()`). */
  readonly #shardStats = new Map<number, { entries: number; bytes: number }>();

  constructor(options: CfCacheStoreOptions) {
    if (!options.cache || typeof options.cache.match !== 'function') throw new TypeError('CfCacheStore: cache must be a Cache (e.g. caches.default)');
    const maxEntryBytes = options.maxEntryBytes ?? 512 * MiB;
    if (!Number.isSafeInteger(maxEntryBytes) || maxEntryBytes <= 0) {
      throw new TypeError(`CfCacheStore: maxEntryBytes must be a positive integer, got ${String(maxEntryBytes)}`);
    }
    const bodyTtl = options.bodyTtl ?? 31_536_000;
    if (!Number.isSafeInteger(bodyTtl) || bodyTtl <= 0) throw new TypeError(`CfCacheStore: bodyTtl must be a positive whole number of seconds, got ${String(bodyTtl)}`);
    const shards = options.directoryShards ?? 16;
    if (!Number.isInteger(shards) || shards < 1 || shards > 256) throw new TypeError(`CfCacheStore: directoryShards must be 1..256, got ${String(shards)}`);
    const base = options.baseUrl ?? 'https://edge-cache.internal/';
    if (!/^https?:\/\/[^/]+\/(.*\/)?$/.test(base)) throw new TypeError(`CfCacheStore: baseUrl must be an http(s) URL ending with /, got ${JSON.stringify(base)}`);
    this.#cache = options.cache;
    this.maxEntryBytes = maxEntryBytes;
    this.#bodyTtl = bodyTtl;
    this.#shards = shards;
    this.#base = base;
    this.#clock = options.clock ?? Date.now;
    this.#onError = options.onError ?? (() => {});
    this.#zoneUrls = options.zoneUrls ?? false;
    this.#purgeMarkers = options.purgeMarkers ?? false;
    this.#verifyPuts = options.verifyPuts ?? false;
  }

  /** False once the Cache API was found keeping nothing (see `verifyPuts`); undefined until known. */
  get storing(): boolean | undefined {
    return this.#storing;
  }

  /**
   * Whether the latest write of `key` in this isolate was stored: resolves
   * when its commit settles (false: declined, aborted, a put that failed or
   * was not kept). Undefined when this isolate wrote no such key lately.
   */
  outcomeOf(key: string): Promise<boolean> | undefined {
    return this.#outcomes.get(key);
  }

  async get(key: string): Promise<CacheEntry[]> {
    const hash = await sha256Hex(key);
    const index = await this.#readIndex(hash, key);
    if (!index) return [];
    const found = await Promise.all(
      Object.entries(index.variants).map(async ([variant, { id, meta }]) => {
        const url = this.#bodyUrl(hash, id, key);
        const response = await this.#cache.match(url);
        // Evicted (or purged at the zone) while the index stayed: a miss.
        if (!response) return undefined;
        const refetch = async (start: number, end: number) => {
          const again = await this.#cache.match(new Request(url, { headers: { range: `bytes=${start}-${end}` } }));
          if (!again?.body) return undefined;
          return again.status === 206 ? again.body : skipBytes(again.body, start);
        };
        const entry: CacheEntry = { meta: { ...meta, variant }, body: new LazyStoredBody(meta.size, response.body ?? undefined, refetch), tier: this.name };
        return entry;
      }),
    );
    return found.filter((entry): entry is CacheEntry => entry !== undefined);
  }

  createWriter(key: string, variant: string, expectedSize?: number): CacheWriter {
    assertKey(key);
    if (expectedSize !== undefined && expectedSize > this.maxEntryBytes) {
      this.#outcomes.set(key, Promise.resolve(false));
      return new DeclinedWriter(key, variant);
    }
    let settle!: (stored: boolean) => void;
    this.#outcomes.set(key, new Promise<boolean>((resolve) => (settle = resolve)));
    const id = crypto.randomUUID();
    const hashed = sha256Hex(key);
    return new CfCacheWriter(key, variant, this.maxEntryBytes, async (body) => {
      const hash = await hashed;
      const headers: Record<string, string> = { 'content-type': 'application/octet-stream', 'cache-control': `public, max-age=${this.#bodyTtl}` };
      // The URL tags (known from the key) let a zone purge by URL reach bodies too; the entry's own tags are known at commit.
      const tags = cacheTagHeader(await urlTagsOf(key));
      if (tags) headers['cache-tag'] = tags;
      let stream = body;
      const Fixed = (globalThis as unknown as { FixedLengthStream?: new (length: number) => TransformStream<Uint8Array, Uint8Array> }).FixedLengthStream;
      if (Fixed && expectedSize !== undefined && Number.isSafeInteger(expectedSize) && expectedSize >= 0) {
        // A known length: the Cache API gets Content-Length and the whole body up front, and a body that
        // ends short or runs long fails the put instead of storing a wrong one.
        const fixed = new Fixed(expectedSize);
        body.pipeTo(fixed.writable).catch(() => {});
        stream = fixed.readable;
        headers['content-length'] = String(expectedSize);
      }
      await this.#cache.put(this.#bodyUrl(hash, id, key), new Response(stream, { headers }));
    }, async (meta, size) => this.#publish(await hashed, id, meta, size), async () => {
      await this.#cache.delete(this.#bodyUrl(await hashed, id, key)).catch(() => false);
    }, this.#onError, settle);
  }

  /** Points the key's index at a freshly written body, then retires the body it replaced. */
  async #publish(hash: string, id: string, meta: CacheEntryMeta, size: number): Promise<boolean> {
    const stored: CacheEntryMeta = { ...structuredClone(meta), size, expiresAt: this.#clampExpiry(meta.expiresAt) };
    let replaced: string | undefined;
    try {
      await this.#locks.run(`i/${hash}`, async () => {
        const index = (await this.#readIndex(hash, meta.key)) ?? { key: meta.key, variants: {} };
        replaced = index.variants[meta.variant]?.id;
        index.variants[meta.variant] = { id, meta: stored };
        await this.#writeIndex(hash, index);
      });
      if (this.#verifyPuts && this.#storing === undefined) {
        // The first entry of this isolate: is the Cache API keeping anything here?
        this.#storing = (await this.#cache.match(this.#indexUrl(hash, meta.key))) !== undefined;
        if (!this.#storing) this.#onError(new Error('the Cache API keeps nothing here (*.workers.dev or preview?): entries are not stored'));
      }
    } catch (error) {
      this.#onError(error);
      await this.#cache.delete(this.#bodyUrl(hash, id, meta.key)).catch(() => false);
      return false;
    }
    if (replaced !== undefined && replaced !== id) await this.#cache.delete(this.#bodyUrl(hash, replaced, meta.key)).catch(() => false);
    await this.#updateDirectory(hash, [[meta.key + SEP + meta.variant, recordOf(stored)]]);
    return this.#storing !== false;
  }

  async updateMeta(meta: CacheEntryMeta): Promise<boolean> {
    const hash = await sha256Hex(meta.key);
    let updated: CacheEntryMeta | undefined;
    await this.#locks.run(`i/${hash}`, async () => {
      const index = await this.#readIndex(hash, meta.key);
      const current = index?.variants[meta.variant];
      if (!index || !current) return;
      updated = { ...structuredClone(meta), size: current.meta.size, expiresAt: this.#clampExpiry(meta.expiresAt) };
      index.variants[meta.variant] = { id: current.id, meta: updated };
      await this.#writeIndex(hash, index);
    });
    if (!updated) return false;
    await this.#updateDirectory(hash, [[meta.key + SEP + meta.variant, recordOf(updated)]]);
    return true;
  }

  async delete(key: string, variant?: string): Promise<number> {
    const hash = await sha256Hex(key);
    const removed: IndexVariant[] = [];
    const gone: string[] = [];
    await this.#locks.run(`i/${hash}`, async () => {
      const index = await this.#readIndex(hash, key);
      if (!index) return;
      for (const name of variant === undefined ? Object.keys(index.variants) : [variant]) {
        const entry = index.variants[name];
        if (!entry) continue;
        removed.push(entry);
        gone.push(name);
        delete index.variants[name];
      }
      if (removed.length > 0) await this.#writeIndex(hash, index);
    });
    if (removed.length === 0) return 0;
    await Promise.all(removed.map(({ id }) => this.#cache.delete(this.#bodyUrl(hash, id, key)).catch(() => false)));
    await this.#updateDirectory(
      hash,
      gone.map((name) => [key + SEP + name, null]),
    );
    return removed.length;
  }

  /**
   * Entries this location's directory knows of that match the filter, with
   * their current metadata (read from each key's index). A snapshot of the
   * directory is taken first, so callers may delete while iterating.
   */
  async *list(filter: CacheListFilter = {}): AsyncIterable<CacheEntryMeta> {
    const shards = await Promise.all(Array.from({ length: this.#shards }, (_, n) => this.#readShard(n)));
    const keys = new Map<string, Set<string>>();
    for (const shard of shards) {
      for (const record of Object.values(shard)) {
        if (!recordMatches(record, filter)) continue;
        let variants = keys.get(record.k);
        if (!variants) keys.set(record.k, (variants = new Set()));
        variants.add(record.v);
      }
    }
    const pending = [...keys.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const stale: [string, string][] = [];
    const markers = pending.length > 0 && this.#purgeMarkers ? await this.#readMarkers() : [];
    for (let i = 0; i < pending.length; i += LIST_CONCURRENCY) {
      const batch = pending.slice(i, i + LIST_CONCURRENCY);
      const indexes = await Promise.all(batch.map(async ([key]) => this.#readIndex(await sha256Hex(key), key, markers)));
      for (let j = 0; j < batch.length; j++) {
        const [key, variants] = batch[j]!;
        const index = indexes[j];
        for (const variant of [...variants].sort()) {
          const entry = index?.variants[variant];
          if (!entry) {
            stale.push([key, variant]);
            continue;
          }
          const meta = { ...entry.meta, variant };
          if (matchesFilter(meta, filter)) yield meta;
        }
      }
    }
    // Entries whose index expired or was evicted: drop their directory records.
    for (const [key, variant] of stale) {
      const hash = await sha256Hex(key);
      await this.#updateDirectory(hash, [[key + SEP + variant, null]], true);
    }
  }

  /**
   * The entries derived from `sourceKey` (image variants, codings), for a
   * caller that is about to delete them (a push replacing the source, its
   * delete, an invalidation): read from this location's directory (one
   * call per shard) and returned when there are at most `max`; past that,
   * one purge marker retires them all (two calls, however many there are:
   * each delete is six) and nothing is returned. Needs `purgeMarkers`.
   */
  async findOrRetireDerived(sourceKey: string, max: number): Promise<CacheEntryMeta[]> {
    const shards = await Promise.all(Array.from({ length: this.#shards }, (_, n) => this.#readShard(n)));
    const records: DirectoryRecord[] = [];
    for (const shard of shards) for (const record of Object.values(shard)) if (record.s === sourceKey) records.push(record);
    if (records.length === 0) return [];
    if (records.length > max && this.#purgeMarkers) {
      await this.addPurgeMarker({ at: this.#clock(), sources: [sourceKey] });
      return [];
    }
    const markers = this.#purgeMarkers ? await this.#readMarkers() : [];
    const metas: CacheEntryMeta[] = [];
    for (const record of records) {
      const entry = (await this.#readIndex(await sha256Hex(record.k), record.k, markers))?.variants[record.v];
      if (entry) metas.push({ ...entry.meta, variant: record.v });
    }
    return metas;
  }

  /**
   * One page of the listing within `budget` Cache API calls: the directory
   * (one call per shard), this location's purge log (one), then the index
   * of each listed key (one each), in storage-key order (`key`, NUL,
   * `variant`) after `after`. `next` is the last storage key gone through
   * when more remain. Entries the directory lists but whose index is gone
   * are skipped.
   */
  async listPage(filter: CacheListFilter, options: { after?: string; limit: number; budget: number }): Promise<{ metas: CacheEntryMeta[]; next?: string; calls: number }> {
    const shards = await Promise.all(Array.from({ length: this.#shards }, (_, n) => this.#readShard(n)));
    let calls = this.#shards;
    const records: [string, DirectoryRecord][] = [];
    for (const shard of shards) {
      for (const [storageKey, record] of Object.entries(shard)) {
        if (options.after !== undefined && storageKey <= options.after) continue;
        if (recordMatches(record, filter)) records.push([storageKey, record]);
      }
    }
    records.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const metas: CacheEntryMeta[] = [];
    if (records.length === 0) return { metas, calls };
    const markers = this.#purgeMarkers ? await this.#readMarkers() : [];
    if (this.#purgeMarkers) calls++;
    const room = Math.max(0, Math.min(options.limit, options.budget - calls));
    const taken = records.slice(0, room);
    for (let i = 0; i < taken.length; i += LIST_CONCURRENCY) {
      const batch = taken.slice(i, i + LIST_CONCURRENCY);
      const indexes = await Promise.all(batch.map(async ([, record]) => this.#readIndex(await sha256Hex(record.k), record.k, markers)));
      calls += batch.length;
      for (let j = 0; j < batch.length; j++) {
        const record = batch[j]![1];
        const entry = indexes[j]?.variants[record.v];
        if (!entry) continue;
        const meta = { ...entry.meta, variant: record.v };
        if (matchesFilter(meta, filter)) metas.push(meta);
      }
    }
    return { metas, next: taken.length < records.length ? taken.at(-1)?.[0] ?? options.after ?? '' : undefined, calls };
  }

  /** Entries and bytes in this location's directory, as this isolate last saw it; `maxBytes` 0: the Cache API's budget is not ours. */
  stats(): CacheStoreStats {
    let entries = 0;
    let bytes = 0;
    for (const shard of this.#shardStats.values()) {
      entries += shard.entries;
      bytes += shard.bytes;
    }
    return { entries, bytes, maxBytes: 0 };
  }

  /** Resolves when this isolate's index and directory updates have finished. */
  async settled(): Promise<void> {
    await this.#locks.idle();
  }

  async close(): Promise<void> {
    await this.settled();
  }

  /**
   * Where the key's documents live: under the key's own URL on the zone
   * (zone mode, pulled keys), else under `baseUrl`.
   */
  #siteUrl(key: string): string | undefined {
    if (!this.#zoneUrls) return undefined;
    const parsed = parseCacheKey(key);
    if (!parsed || parsed.kind !== 'pulled') return undefined;
    const url = `${parsed.scheme}://${parsed.host}${parsed.path}`;
    return url + (parsed.path.includes('?') ? '&' : '?') + MARK_PARAM + '=';
  }

  #bodyUrl(hash: string, id: string, key: string): string {
    const site = this.#siteUrl(key);
    return site ? `${site}b.${hash}.${id}` : `${this.#base}b/${hash}/${id}`;
  }

  #indexUrl(hash: string, key: string): string {
    const site = this.#siteUrl(key);
    return site ? `${site}i.${hash}` : `${this.#base}i/${hash}`;
  }

  /** This location's purge markers, newest last. */
  async #readMarkers(): Promise<PurgeMarker[]> {
    const response = await this.#cache.match(`${this.#base}p`);
    if (!response) return [];
    try {
      return ((await response.json()) as PurgeLogDocument).markers ?? [];
    } catch (error) {
      this.#onError(error);
      return [];
    }
  }

  /**
   * Record a purge in this location: from now on, entries it selects that
   * were stored at or before `marker.at` are misses (soft: must revalidate).
   * Two lookups whatever the number of entries. Concurrent purges in one
   * location can lose one marker (last write wins), as the directory can.
   */
  async addPurgeMarker(marker: PurgeMarker): Promise<void> {
    if (!this.#purgeMarkers) throw new TypeError('CfCacheStore: addPurgeMarker() needs the purgeMarkers option');
    await this.#locks.run('p', async () => {
      let markers = [...(await this.#readMarkers()), marker];
      if (markers.length > MAX_MARKERS) {
        // Folded: everything stored before the oldest kept marker counts as purged (more, never less).
        const dropped = markers.slice(0, markers.length - MAX_MARKERS + 1);
        markers = [{ at: Math.max(...dropped.map((m) => m.at)), all: true }, ...markers.slice(markers.length - MAX_MARKERS + 1)];
      }
      await this.#cache.put(
        `${this.#base}p`,
        new Response(JSON.stringify({ markers } satisfies PurgeLogDocument), {
          headers: { 'content-type': 'application/json', 'cache-control': `public, max-age=${this.#bodyTtl}` },
        }),
      );
    });
  }

  /**
   * Directory records selected by `select` (key, tags), read from this
   * location's directory shards (one lookup per shard, in parallel): the
   * count a purge reports. Best effort, like the directory.
   */
  async countListed(select: (key: string, tags: readonly string[]) => boolean): Promise<number> {
    const shards = await Promise.all(Array.from({ length: this.#shards }, (_, n) => this.#readShard(n)));
    let count = 0;
    for (const shard of shards) for (const record of Object.values(shard)) if (select(record.k, record.t ?? [])) count++;
    return count;
  }

  #clampExpiry(expiresAt: number): number {
    return Math.min(expiresAt, this.#clock() + this.#bodyTtl * 1000);
  }

  /** Seconds from now until `ms`, at least 1 (a max-age of 0 would not be stored at all). */
  #maxAge(ms: number): number {
    return Math.max(1, Math.min(this.#bodyTtl, Math.ceil((ms - this.#clock()) / 1000)));
  }

  /** The key's index, without the variants a later purge marker selects (soft ones marked invalidated). */
  async #readIndex(hash: string, key: string, known?: PurgeMarker[]): Promise<IndexDocument | undefined> {
    const [response, markers] = await Promise.all([this.#cache.match(this.#indexUrl(hash, key)), known ?? (this.#purgeMarkers ? this.#readMarkers() : [])]);
    if (!response) return undefined;
    let index: IndexDocument;
    try {
      index = (await response.json()) as IndexDocument;
    } catch (error) {
      this.#onError(error);
      return undefined;
    }
    // A SHA-256 collision is not expected; a foreign document is treated as absent all the same.
    if (index.key !== key || !index.variants) return undefined;
    for (const [name, variant] of Object.entries(index.variants)) {
      for (const marker of markers) {
        if (variant.meta.storedAt > marker.at || !markerSelects(marker, key, variant.meta.tags)) continue;
        if (marker.soft) variant.meta = { ...variant.meta, invalidated: true };
        else {
          delete index.variants[name];
          break;
        }
      }
    }
    return index;
  }

  async #writeIndex(hash: string, index: IndexDocument): Promise<void> {
    const url = this.#indexUrl(hash, index.key);
    const variants = Object.values(index.variants);
    if (variants.length === 0) {
      await this.#cache.delete(url);
      return;
    }
    const latest = Math.max(...variants.map(({ meta }) => meta.expiresAt));
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      'cache-control': `public, max-age=${this.#maxAge(latest)}`,
    };
    // The entry's tags (origin Cache-Tag / Surrogate-Key, push tags) and its URL tags: what a zone purge selects by.
    const tags = cacheTagHeader([...(await urlTagsOf(index.key)), ...variants.flatMap(({ meta }) => meta.tags)]);
    if (tags) headers['cache-tag'] = tags;
    await this.#cache.put(url, new Response(JSON.stringify(index), { headers }));
  }

  #shardOf(hash: string): number {
    return parseInt(hash.slice(0, 4), 16) % this.#shards;
  }

  async #readShard(n: number): Promise<DirectoryDocument> {
    const response = await this.#cache.match(`${this.#base}d/${n}`);
    let shard: DirectoryDocument = {};
    if (response) {
      try {
        shard = (await response.json()) as DirectoryDocument;
      } catch (error) {
        this.#onError(error);
      }
    }
    this.#noteShard(n, shard);
    return shard;
  }

  #noteShard(n: number, shard: DirectoryDocument): void {
    let entries = 0;
    let bytes = 0;
    for (const record of Object.values(shard)) {
      entries++;
      bytes += record.z;
    }
    this.#shardStats.set(n, { entries, bytes });
  }

  /** Apply record changes (null removes) to the key's shard; `onlyIfPresent` never resurrects a removed record. */
  async #updateDirectory(hash: string, changes: [string, DirectoryRecord | null][], onlyIfPresent = false): Promise<void> {
    const n = this.#shardOf(hash);
    try {
      await this.#locks.run(`d/${n}`, async () => {
        const shard = await this.#readShard(n);
        let changed = false;
        for (const [storageKey, record] of changes) {
          if (record) {
            if (onlyIfPresent && !(storageKey in shard)) continue;
            shard[storageKey] = record;
            changed = true;
          } else if (storageKey in shard) {
            delete shard[storageKey];
            changed = true;
          }
        }
        if (!changed) return;
        this.#noteShard(n, shard);
        await this.#cache.put(
          `${this.#base}d/${n}`,
          new Response(JSON.stringify(shard), {
            headers: { 'content-type': 'application/json', 'cache-control': `public, max-age=${this.#bodyTtl}` },
          }),
        );
      });
    } catch (error) {
      // The entry itself is stored; only listing (tag and prefix purge) misses it.
      this.#onError(error);
    }
  }
}

function recordOf(meta: CacheEntryMeta): DirectoryRecord {
  const record: DirectoryRecord = { k: meta.key, v: meta.variant, x: meta.expiresAt, z: meta.size };
  if (meta.tags.length > 0) record.t = meta.tags;
  if (meta.sourceKey !== undefined) record.s = meta.sourceKey;
  if (meta.pushed) record.p = 1;
  return record;
}

function recordMatches(record: DirectoryRecord, filter: CacheListFilter): boolean {
  if (filter.prefix !== undefined && !record.k.startsWith(filter.prefix)) return false;
  if (filter.tag !== undefined && !(record.t ?? []).includes(filter.tag)) return false;
  if (filter.sourceKey !== undefined && record.s !== filter.sourceKey) return false;
  if (filter.pushed !== undefined && Boolean(record.p) !== filter.pushed) return false;
  return true;
}

/** Tags as a `Cache-Tag` value: printable ASCII without commas only, within Cloudflare's length limit. */
function cacheTagHeader(tags: string[]): string {
  let header = '';
  for (const tag of new Set(tags)) {
    if (!/^[\x21-\x2b\x2d-\x7e]+$/.test(tag)) continue;
    const next = header ? `${header},${tag}` : tag;
    if (next.length > MAX_CACHE_TAG_HEADER) break;
    header = next;
  }
  return header;
}

/** A writer for a body announced as too large: buffers nothing, stores nothing. */
class DeclinedWriter implements CacheWriter {
  #done = false;
  constructor(
    private readonly key: string,
    private readonly variant: string,
  ) {}
  write(): void {
    if (this.#done) throw new TypeError('CfCacheStore: write() after commit() or abort()');
  }
  async commit(meta: CacheEntryMeta): Promise<boolean> {
    if (this.#done) throw new TypeError('CfCacheStore: commit() called twice or after abort()');
    this.#done = true;
    assertMetaMatches(meta, this.key, this.variant);
    return false;
  }
  async abort(): Promise<void> {
    this.#done = true;
  }
}

/**
 * Streams the body into the Cache API as it arrives (a Worker has 128 MB of
 * memory; bodies may be larger). Chunks are copied: the caller hands the
 * same chunk to the client response, whose sink may take the buffer over.
 */
class CfCacheWriter implements CacheWriter {
  readonly #controller: ReadableStreamDefaultController<Uint8Array>;
  readonly #written: Promise<unknown>;
  #size = 0;
  #declined = false;
  #done = false;

  constructor(
    private readonly key: string,
    private readonly variant: string,
    private readonly maxBytes: number,
    writeBody: (body: ReadableStream<Uint8Array>) => Promise<void>,
    private readonly publish: (meta: CacheEntryMeta, size: number) => Promise<boolean>,
    private readonly discard: () => Promise<void>,
    private readonly onError: (error: unknown) => void,
    private readonly settle: (stored: boolean) => void = () => {},
  ) {
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const body = new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) });
    this.#controller = controller;
    // Settled (never rejected) so an abandoned write cannot become an unhandled rejection.
    this.#written = writeBody(body).then(
      () => undefined,
      (error: unknown) => ({ error }),
    );
  }

  write(chunk: Uint8Array): void {
    if (this.#done) throw new TypeError('CfCacheStore: write() after commit() or abort()');
    if (this.#declined) return;
    this.#size += chunk.byteLength;
    if (this.#size > this.maxBytes) {
      this.#declined = true;
      this.#controller.error(new RangeError(`body larger than ${this.maxBytes} bytes`));
      return;
    }
    this.#controller.enqueue(chunk.slice());
  }

  async commit(meta: CacheEntryMeta): Promise<boolean> {
    if (this.#done) throw new TypeError('CfCacheStore: commit() called twice or after abort()');
    this.#done = true;
    assertMetaMatches(meta, this.key, this.variant);
    let stored = false;
    try {
      stored = await this.#commit(meta);
      return stored;
    } finally {
      this.settle(stored);
    }
  }

  async #commit(meta: CacheEntryMeta): Promise<boolean> {
    if (this.#declined) {
      await this.#written;
      return false;
    }
    this.#controller.close();
    const outcome = (await this.#written) as { error: unknown } | undefined;
    if (outcome) {
      this.onError(outcome.error);
      await this.discard();
      return false;
    }
    return this.publish(meta, this.#size);
  }

  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    this.settle(false);
    if (!this.#declined) this.#controller.error(new Error('cache write aborted'));
    await this.#written;
    await this.discard();
  }
}
