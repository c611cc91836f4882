/**
 * Pushed objects on Workers: an R2 bucket behind the `CacheStore` contract.
 * Unlike the Cache API, R2 is durable, global and listable, so an object
 * pushed through any location is served by all of them, survives every
 * eviction, and purge by tag or prefix reaches every pushed object.
 *
 * Layout. One R2 object per entry, named after its key: the key itself,
 * with `%` written `%25` (e.g. `/assets/app.css push:`); other variants than
 * '' append `%00<variant, URI-encoded>`, and keys too long for an R2 name
 * live under `~h/<sha256(key)>`. The entry's metadata is JSON in the
 * object's custom metadata (`m`), where `list()` reads it without fetching
 * bodies; metadata too large for R2's custom-metadata limit (2 KB, e.g. a
 * hundred long tags) is stored in front of the body instead, its length in
 * `ml`. `Content-Type` goes to the object's HTTP metadata, so the bucket
 * reads well in the dashboard.
 *
 * Writes are buffered until `commit()` (R2 needs the metadata when an
 * upload starts, and the metadata is only known at the end), so one entry
 * is at most `maxEntryBytes`, 64 MB by default: a Worker has 128 MB of
 * memory. Larger pushes are declined (413 from the push API).
 *
 * Pushed objects never vary, so by default only variant '' is stored and a
 * lookup is one R2 read; `variants: true` stores other variants too, at the
 * price of one R2 listing per lookup.
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
import { LazyStoredBody, readPrefix } from './stored-body.js';

/** What this tier reads of an R2 object (`R2Object`). */
export interface R2ObjectLike {
  readonly key: string;
  readonly size: number;
  readonly etag: string;
  readonly customMetadata?: Record<string, string>;
}

/** An R2 object with its body (`R2ObjectBody`). */
export interface R2ObjectBodyLike extends R2ObjectLike {
  readonly body: ReadableStream<Uint8Array>;
}

export interface R2GetOptionsLike {
  range?: { offset: number; length?: number };
  onlyIf?: { etagMatches?: string };
}

/** The part of the Workers `R2Bucket` binding this tier uses. */
export interface R2BucketLike {
  get(key: string, options?: R2GetOptionsLike): Promise<R2ObjectBodyLike | R2ObjectLike | null>;
  head(key: string): Promise<R2ObjectLike | null>;
  put(
    key: string,
    value: Uint8Array | ArrayBuffer | string | null,
    options?: { customMetadata?: Record<string, string>; httpMetadata?: { contentType?: string } },
  ): Promise<R2ObjectLike | null>;
  delete(keys: string | string[]): Promise<void>;
  list(options?: {
    prefix?: string;
    cursor?: string;
    limit?: number;
    include?: ('httpMetadata' | 'customMetadata')[];
  }): Promise<{ objects: R2ObjectLike[]; truncated: boolean; cursor?: string }>;
}

/** Options for {@link R2PushStore}. */
export interface R2PushStoreOptions {
  /** The bucket binding, e.g. `env.PUSH_BUCKET`. */
  bucket: R2BucketLike;
  /**
   * Prefix of every object name, to share a bucket between deployments.
   * @default ''
   * @example 'edge/production/'
   */
  prefix?: string;
  /**
   * Largest entry, in bytes; it is held in memory until committed.
   * @default 64 * 1024 * 1024
   */
  maxEntryBytes?: number;
  /**
   * Store variants other than '' (responses with `Vary`); lookups then
   * also list the key's variants.
   * @default false (pushed objects never vary)
   */
  variants?: boolean;
}

const MiB = 1024 * 1024;
/** R2 object names are at most 1024 bytes of UTF-8. */
const MAX_NAME_BYTES = 1024;
/** R2 (and Miniflare) refuse custom metadata over 2048 bytes, names and values together. */
const CUSTOM_METADATA_BUDGET = 2000;
const VARIANT_SEP = '%00';
const HASHED = '~h/';
const SEP = '\u0000';
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class R2PushStore implements CacheStore {
  readonly name = 'r2';
  /** Largest entry this tier stores, in bytes. */
  readonly maxEntryBytes: number;
  readonly #bucket: R2BucketLike;
  readonly #prefix: string;
  readonly #variants: boolean;
  /** Entry sizes this isolate has seen (written, read or listed), for `stats()`. */
  readonly #known = new Map<string, number>();

  constructor(options: R2PushStoreOptions) {
    if (!options.bucket || typeof options.bucket.get !== 'function') throw new TypeError('R2PushStore: bucket must be an R2 bucket binding');
    const maxEntryBytes = options.maxEntryBytes ?? 64 * MiB;
    if (!Number.isSafeInteger(maxEntryBytes) || maxEntryBytes <= 0) {
      throw new TypeError(`R2PushStore: maxEntryBytes must be a positive integer, got ${String(maxEntryBytes)}`);
    }
    this.#bucket = options.bucket;
    this.#prefix = options.prefix ?? '';
    this.#variants = options.variants ?? false;
    this.maxEntryBytes = maxEntryBytes;
  }

  async get(key: string): Promise<CacheEntry[]> {
    const base = await this.#objectName(key, '');
    const [plain, others] = await Promise.all([
      this.#bucket.get(base),
      this.#variants ? this.#listAll(base + VARIANT_SEP) : Promise.resolve([]),
    ]);
    const objects: R2ObjectLike[] = plain ? [plain] : [];
    if (others.length > 0) {
      const fetched = await Promise.all(others.map((object) => this.#bucket.get(object.key)));
      for (const object of fetched) if (object) objects.push(object);
    }
    const entries: CacheEntry[] = [];
    for (const object of objects) {
      const entry = await this.#entryOf(object);
      if (entry && entry.meta.key === key) entries.push(entry);
    }
    return entries;
  }

  createWriter(key: string, variant: string, expectedSize?: number): CacheWriter {
    assertKey(key);
    const declined = (expectedSize !== undefined && expectedSize > this.maxEntryBytes) || (variant !== '' && !this.#variants);
    return new R2Writer(key, variant, this.maxEntryBytes, declined, (meta, body) => this.#put(meta, body));
  }

  async #put(meta: CacheEntryMeta, body: Uint8Array): Promise<boolean> {
    const stored: CacheEntryMeta = { ...meta, size: body.byteLength };
    const { size: _size, ...rest } = stored;
    const json = JSON.stringify(rest);
    const contentType = meta.headers['content-type'];
    let customMetadata: Record<string, string>;
    let value: Uint8Array = body;
    if (encoder.encode(json).byteLength + 1 <= CUSTOM_METADATA_BUDGET) {
      customMetadata = { m: json };
    } else {
      const metaBytes = encoder.encode(json);
      value = new Uint8Array(metaBytes.byteLength + body.byteLength);
      value.set(metaBytes, 0);
      value.set(body, metaBytes.byteLength);
      customMetadata = { ml: String(metaBytes.byteLength) };
    }
    await this.#bucket.put(await this.#objectName(meta.key, meta.variant), value, {
      customMetadata,
      httpMetadata: contentType ? { contentType } : undefined,
    });
    this.#known.set(meta.key + SEP + meta.variant, body.byteLength);
    return true;
  }

  /** Rewrites the object with new metadata (R2 cannot change metadata in place); rare: soft purges of pushed objects. */
  async updateMeta(meta: CacheEntryMeta): Promise<boolean> {
    const name = await this.#objectName(meta.key, meta.variant);
    const object = await this.#bucket.get(name);
    if (!object || !('body' in object)) return false;
    const entry = await this.#entryOf(object);
    if (!entry || entry.meta.key !== meta.key) return false;
    const body = new Uint8Array(await new Response(entry.body.stream()).arrayBuffer());
    return this.#put({ ...meta, size: body.byteLength }, body);
  }

  async delete(key: string, variant?: string): Promise<number> {
    const names: string[] = [];
    if (variant !== undefined) {
      const name = await this.#objectName(key, variant);
      if (await this.#bucket.head(name)) names.push(name);
    } else {
      const base = await this.#objectName(key, '');
      const [plain, others] = await Promise.all([this.#bucket.head(base), this.#variants ? this.#listAll(base + VARIANT_SEP) : Promise.resolve([])]);
      if (plain) names.push(base);
      for (const object of others) names.push(object.key);
    }
    if (names.length === 0) return 0;
    await this.#bucket.delete(names);
    for (const known of [...this.#known.keys()]) {
      if (known.startsWith(key + SEP) && (variant === undefined || known === key + SEP + variant)) this.#known.delete(known);
    }
    return names.length;
  }

  /** Pages through the bucket (1000 names a page); metadata comes with the listing unless it was too large for it. */
  async *list(filter: CacheListFilter = {}): AsyncIterable<CacheEntryMeta> {
    const scans = [this.#prefix + (filter.prefix ? encodeName(filter.prefix) : '')];
    // Hashed names do not sort under their key's prefix.
    if (filter.prefix) scans.push(this.#prefix + HASHED);
    for (const scan of scans) {
      let cursor: string | undefined;
      do {
        const page = await this.#bucket.list({ prefix: scan, cursor, include: ['customMetadata', 'httpMetadata'] });
        const metas: CacheEntryMeta[] = [];
        for (const object of page.objects) {
          const meta = await this.#metaOf(object);
          if (!meta) continue;
          this.#known.set(meta.key + SEP + meta.variant, meta.size);
          if (matchesFilter(meta, filter)) metas.push(meta);
        }
        yield* metas;
        cursor = page.truncated ? page.cursor : undefined;
      } while (cursor);
    }
  }

  /**
   * Delete (or, `soft`, mark invalidated) the entries `select` picks, within
   * `budget` R2 calls: one listing page (1,000 names, metadata included) or
   * one batch delete (up to 1,000 names) per call; a soft purge rewrites each
   * object (two calls). Returns the selected entries handled and whether the
   * whole bucket was gone through; the caller reports an unfinished purge.
   */
  async purgeWhere(
    select: (meta: CacheEntryMeta) => boolean,
    options: { budget: number; soft?: boolean },
  ): Promise<{ purged: CacheEntryMeta[]; complete: boolean; calls: number }> {
    let calls = 0;
    const purged: CacheEntryMeta[] = [];
    let cursor: string | undefined;
    const names: string[] = [];
    let complete = true;
    do {
      // Keep room for the deletes of what was found so far.
      if (calls + 1 + Math.ceil((names.length + 1000) / 1000) > options.budget) {
        complete = false;
        break;
      }
      calls++;
      const page = await this.#bucket.list({ prefix: this.#prefix, cursor, include: ['customMetadata', 'httpMetadata'] });
      for (const object of page.objects) {
        // Metadata too large for custom metadata needs a read each: left to the next purge when over budget.
        const custom = object.customMetadata ?? {};
        if (custom.m === undefined && calls + 1 > options.budget) {
          complete = false;
          continue;
        }
        if (custom.m === undefined) calls++;
        const meta = await this.#metaOf(object);
        if (!meta || !select(meta)) continue;
        if (options.soft) {
          if (calls + 2 > options.budget) {
            complete = false;
            continue;
          }
          calls += 2;
          if (await this.updateMeta({ ...meta, invalidated: true })) purged.push(meta);
        } else {
          names.push(object.key);
          purged.push(meta);
        }
      }
      cursor = page.truncated ? page.cursor : undefined;
    } while (cursor);
    if (cursor) complete = false;
    for (let i = 0; i < names.length; i += 1000) {
      calls++;
      await this.#bucket.delete(names.slice(i, i + 1000));
    }
    for (const meta of purged) if (!options.soft) this.#known.delete(meta.key + SEP + meta.variant);
    return { purged, complete, calls };
  }

  /** Entries this isolate has written, read or listed (R2 keeps no count); `maxBytes` 0: no budget. */
  stats(): CacheStoreStats {
    let bytes = 0;
    for (const size of this.#known.values()) bytes += size;
    return { entries: this.#known.size, bytes, maxBytes: 0 };
  }

  async close(): Promise<void> {}

  async #listAll(prefix: string): Promise<R2ObjectLike[]> {
    const objects: R2ObjectLike[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.#bucket.list({ prefix, cursor, include: ['customMetadata'] });
      objects.push(...page.objects);
      cursor = page.truncated ? page.cursor : undefined;
    } while (cursor);
    return objects;
  }

  async #objectName(key: string, variant: string): Promise<string> {
    const suffix = variant === '' ? '' : VARIANT_SEP + encodeURIComponent(variant);
    const plain = this.#prefix + encodeName(key) + suffix;
    if (encoder.encode(plain).byteLength <= MAX_NAME_BYTES) return plain;
    return this.#prefix + HASHED + (await sha256Hex(key)) + suffix;
  }

  /** Metadata of a listed object: from its custom metadata, or read from in front of its body. */
  async #metaOf(object: R2ObjectLike): Promise<CacheEntryMeta | undefined> {
    const custom = object.customMetadata ?? {};
    if (custom.m !== undefined) return { ...(JSON.parse(custom.m) as Omit<CacheEntryMeta, 'size'>), size: object.size };
    const length = Number(custom.ml);
    if (!Number.isSafeInteger(length) || length <= 0) return undefined;
    const head = await this.#bucket.get(object.key, { range: { offset: 0, length }, onlyIf: { etagMatches: object.etag } });
    if (!head || !('body' in head)) return undefined;
    const json = decoder.decode(await new Response(head.body).arrayBuffer());
    return { ...(JSON.parse(json) as Omit<CacheEntryMeta, 'size'>), size: object.size - length };
  }

  async #entryOf(object: R2ObjectLike | R2ObjectBodyLike): Promise<CacheEntry | undefined> {
    if (!('body' in object)) return undefined;
    const custom = object.customMetadata ?? {};
    let meta: CacheEntryMeta;
    let body = object.body;
    let offset = 0;
    if (custom.m !== undefined) {
      meta = { ...(JSON.parse(custom.m) as Omit<CacheEntryMeta, 'size'>), size: object.size };
    } else {
      offset = Number(custom.ml);
      if (!Number.isSafeInteger(offset) || offset <= 0) {
        await body.cancel();
        return undefined;
      }
      const [prefix, rest] = await readPrefix(body, offset);
      meta = { ...(JSON.parse(decoder.decode(prefix)) as Omit<CacheEntryMeta, 'size'>), size: object.size - offset };
      body = rest;
    }
    this.#known.set(meta.key + SEP + meta.variant, meta.size);
    const name = object.key;
    const etag = object.etag;
    const refetch = async (start: number, end: number) => {
      // Only the version this entry describes: a replaced object is not spliced in.
      const again = await this.#bucket.get(name, { range: { offset: offset + start, length: end - start + 1 }, onlyIf: { etagMatches: etag } });
      return again && 'body' in again ? again.body : undefined;
    };
    return { meta, body: new LazyStoredBody(meta.size, body, refetch), tier: this.name };
  }
}

/** Object names keep keys readable: only `%` (the variant separator's lead) and a leading `~` (hashed names) are escaped. */
function encodeName(key: string): string {
  const escaped = key.replace(/%/g, '%25');
  return escaped.startsWith('~') ? '%7E' + escaped.slice(1) : escaped;
}

/** Buffers the body until commit: R2 takes the custom metadata with the upload. */
class R2Writer implements CacheWriter {
  readonly #chunks: Uint8Array[] = [];
  #size = 0;
  #declined: boolean;
  #done = false;

  constructor(
    private readonly key: string,
    private readonly variant: string,
    private readonly maxBytes: number,
    declined: boolean,
    private readonly store: (meta: CacheEntryMeta, body: Uint8Array) => Promise<boolean>,
  ) {
    this.#declined = declined;
  }

  write(chunk: Uint8Array): void {
    if (this.#done) throw new TypeError('R2PushStore: write() after commit() or abort()');
    if (this.#declined) return;
    this.#size += chunk.byteLength;
    if (this.#size > this.maxBytes) {
      this.#declined = true;
      this.#chunks.length = 0;
      return;
    }
    // Copied: the caller may reuse or hand the buffer on.
    this.#chunks.push(chunk.slice());
  }

  async commit(meta: CacheEntryMeta): Promise<boolean> {
    if (this.#done) throw new TypeError('R2PushStore: commit() called twice or after abort()');
    this.#done = true;
    assertMetaMatches(meta, this.key, this.variant);
    if (this.#declined) return false;
    const body = new Uint8Array(this.#size);
    let offset = 0;
    for (const chunk of this.#chunks) {
      body.set(chunk, offset);
      offset += chunk.byteLength;
    }
    this.#chunks.length = 0;
    return this.store(meta, body);
  }

  async abort(): Promise<void> {
    this.#done = true;
    this.#chunks.length = 0;
  }
}
