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
 * Writes stream (no whole-body buffer: the limit is R2's, not the isolate's).
 * R2 takes an object's custom metadata when its upload starts, and the
 * metadata (the ETag above all, a SHA-256 of the content) is only known at
 * the end, so a body larger than `inlineBytes` (1 MiB) goes to a staging
 * object first, `~s/<uuid>`: with a known length (`Content-Length`) as one
 * `put` of a `FixedLengthStream`, otherwise as a multipart upload of
 * `partBytes` (16 MiB) parts, at most `maxParts` of them. `commit()` then
 * streams the staging object into the entry's own name with the metadata
 * (R2 has no server-side copy in the Workers binding) and deletes it. A
 * reader sees the previous version until that `put` completes. Smaller
 * bodies are held until commit and stored with one `put`. `write()` returns
 * a promise while a part or chunk is on its way, so the push API reads the
 * upload no faster than R2 takes it. Staging objects of an isolate that died
 * mid-upload are left behind under `~s/` (an R2 lifecycle rule on that
 * prefix removes them).

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

/** An uploaded part (`R2UploadedPart`). */
export interface R2UploadedPartLike {
  partNumber: number;
  etag: string;
}

/** The part of `R2MultipartUpload` this tier uses. */
export interface R2MultipartUploadLike {
  uploadPart(partNumber: number, value: Uint8Array): Promise<R2UploadedPartLike>;
  complete(parts: R2UploadedPartLike[]): Promise<R2ObjectLike>;
  abort(): Promise<void>;
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
    value: ReadableStream<Uint8Array> | Uint8Array | ArrayBuffer | string | null,
    options?: { customMetadata?: Record<string, string>; httpMetadata?: { contentType?: string } },
  ): Promise<R2ObjectLike | null>;
  createMultipartUpload(key: string, options?: { customMetadata?: Record<string, string> }): Promise<R2MultipartUploadLike>;
  delete(keys: string | string[]): Promise<void>;
  list(options?: {
    prefix?: string;
    cursor?: string;
    startAfter?: string;
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
   * Largest entry, in bytes.
   * @default 5 GiB less 1 MiB (R2's single-upload limit, less room for metadata in front of the body)
   */
  maxEntryBytes?: number;
  /**
   * Bodies up to this size are held until commit and stored with one `put`;
   * larger ones stream to a staging object.
   * @default 1024 * 1024
   */
  inlineBytes?: number;
  /**
   * Part size of the multipart upload a body of unknown length streams into
   * (R2: at least 5 MiB, every part but the last the same size); at most
   * `partBytes` are held at once.
   * @default 16 * 1024 * 1024
   */
  partBytes?: number;
  /**
   * Most parts of one multipart upload: each is one subrequest, and a
   * Worker makes at most 50 per request on the Free plan. A body of unknown
   * length is declined past `partBytes * maxParts` (384 MiB by default).
   * @default 24
   */
  maxParts?: number;
  /**
   * Store variants other than '' (responses with `Vary`); lookups then
   * also list the key's variants.
   * @default false (pushed objects never vary)
   */
  variants?: boolean;
}

const MiB = 1024 * 1024;
/** R2's limit for one `put` (the staging object is copied with one). */
const R2_MAX_PUT = 5 * 1024 * MiB;
/** Where bodies stream before their metadata is known. */
const STAGING = '~s/';
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
  readonly #inlineBytes: number;
  readonly #partBytes: number;
  readonly #maxParts: number;
  /** Entry sizes this isolate has seen (written, read or listed), for `stats()`. */
  readonly #known = new Map<string, number>();

  constructor(options: R2PushStoreOptions) {
    if (!options.bucket || typeof options.bucket.get !== 'function') throw new TypeError('R2PushStore: bucket must be an R2 bucket binding');
    const maxEntryBytes = options.maxEntryBytes ?? R2_MAX_PUT - MiB;
    if (!Number.isSafeInteger(maxEntryBytes) || maxEntryBytes <= 0 || maxEntryBytes > R2_MAX_PUT - MiB) {
      throw new TypeError(`R2PushStore: maxEntryBytes must be a positive integer up to ${R2_MAX_PUT - MiB} (R2's single upload), got ${String(maxEntryBytes)}`);
    }
    const positive = (name: string, value: number, min = 1) => {
      if (!Number.isSafeInteger(value) || value < min) throw new TypeError(`R2PushStore: ${name} must be an integer of at least ${min}, got ${String(value)}`);
      return value;
    };
    this.#bucket = options.bucket;
    this.#prefix = options.prefix ?? '';
    this.#variants = options.variants ?? false;
    this.#inlineBytes = positive('inlineBytes', options.inlineBytes ?? MiB, 0);
    this.#partBytes = positive('partBytes', options.partBytes ?? 16 * MiB, 5 * MiB);
    this.#maxParts = positive('maxParts', options.maxParts ?? 24);
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

  /** Whether the key has an object (variant ''): one R2 `head`, no body. */
  async has(key: string): Promise<boolean> {
    return (await this.#bucket.head(await this.#objectName(key, ''))) !== null;
  }

  createWriter(key: string, variant: string, expectedSize?: number): CacheWriter {
    assertKey(key);
    const declined = (expectedSize !== undefined && expectedSize > this.maxEntryBytes) || (variant !== '' && !this.#variants);
    const limit = expectedSize === undefined ? Math.min(this.maxEntryBytes, this.#partBytes * this.#maxParts) : this.maxEntryBytes;
    return new R2Writer({
      key,
      variant,
      maxBytes: limit,
      declined,
      expectedSize,
      inlineBytes: this.#inlineBytes,
      partBytes: this.#partBytes,
      bucket: this.#bucket,
      stagingName: this.#prefix + STAGING + crypto.randomUUID(),
      store: (meta, body, size) => this.#put(meta, body, size),
    });
  }

  /** Stores the entry under its own name: `body` is the whole body (bytes, or a stream of exactly `size` bytes). */
  async #put(meta: CacheEntryMeta, body: Uint8Array | ReadableStream<Uint8Array>, size: number): Promise<boolean> {
    const stored: CacheEntryMeta = { ...meta, size };
    const { size: _size, ...rest } = stored;
    const json = JSON.stringify(rest);
    const contentType = meta.headers['content-type'];
    const metaBytes = encoder.encode(json);
    const inline = metaBytes.byteLength + 1 <= CUSTOM_METADATA_BUDGET;
    const customMetadata: Record<string, string> = inline ? { m: json } : { ml: String(metaBytes.byteLength) };
    let value: Uint8Array | ReadableStream<Uint8Array>;
    // Off workerd (the store driven through Miniflare's proxy from Node) there is no FixedLengthStream: bytes.
    if (!(body instanceof Uint8Array) && !fixedLengthStream()) body = new Uint8Array(await new Response(body).arrayBuffer());
    if (body instanceof Uint8Array) {
      if (inline) value = body;
      else {
        value = new Uint8Array(metaBytes.byteLength + body.byteLength);
        value.set(metaBytes, 0);
        value.set(body, metaBytes.byteLength);
      }
    } else {
      // R2 takes a stream only when its length is known: a FixedLengthStream says it (and fails a short one).
      value = knownLength(inline ? [body] : [metaBytes, body], (inline ? 0 : metaBytes.byteLength) + size);
    }
    await this.#bucket.put(await this.#objectName(meta.key, meta.variant), value, {
      customMetadata,
      httpMetadata: contentType ? { contentType } : undefined,
    });
    this.#known.set(meta.key + SEP + meta.variant, size);
    return true;
  }

  /** Rewrites the object with new metadata (R2 cannot change metadata in place), streaming its body; rare: soft purges of pushed objects. */
  async updateMeta(meta: CacheEntryMeta): Promise<boolean> {
    const name = await this.#objectName(meta.key, meta.variant);
    const object = await this.#bucket.get(name);
    if (!object || !('body' in object)) return false;
    const entry = await this.#entryOf(object);
    if (!entry || entry.meta.key !== meta.key) {
      await entry?.body.stream().cancel();
      return false;
    }
    return this.#put({ ...meta, size: entry.meta.size }, entry.body.stream(), entry.meta.size);
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
   * One page of the listing within `budget` R2 calls (a listing call brings
   * up to 1,000 names with their metadata; an object whose metadata is in
   * front of its body costs one more read): entries matching the filter, in
   * object-name order, after the object named `after`. `next` is the last
   * object name gone through when the scan stopped early (page full or
   * budget spent), undefined when the bucket was gone through.
   * `scan: 'hashed'` lists the keys too long for a name (`~h/`), which do
   * not sort under their prefix.
   */
  async listPage(
    filter: CacheListFilter,
    options: { after?: string; limit: number; budget: number; scan: 'plain' | 'hashed' },
  ): Promise<{ metas: CacheEntryMeta[]; next?: string; calls: number }> {
    const prefix = options.scan === 'hashed' ? this.#prefix + HASHED : this.#prefix + (filter.prefix ? encodeName(filter.prefix) : '');
    const metas: CacheEntryMeta[] = [];
    let calls = 0;
    let after = options.after;
    for (;;) {
      if (calls >= options.budget) return { metas, next: after ?? '', calls };
      calls++;
      const page = await this.#bucket.list({ prefix, startAfter: after, limit: Math.min(1000, options.limit - metas.length + 1), include: ['customMetadata', 'httpMetadata'] });
      for (const object of page.objects) {
        if (metas.length === options.limit) return { metas, next: after ?? '', calls };
        if (object.customMetadata?.m === undefined && object.customMetadata?.ml !== undefined) {
          if (calls >= options.budget) return { metas, next: after ?? '', calls };
          calls++;
        }
        after = object.key;
        const meta = await this.#metaOf(object);
        if (meta && matchesFilter(meta, filter)) metas.push(meta);
      }
      if (!page.truncated) return { metas, calls };
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

type FixedLengthStreamConstructor = new (length: number) => TransformStream<Uint8Array, Uint8Array>;

/** Workers' `FixedLengthStream`, or undefined off workerd. */
function fixedLengthStream(): FixedLengthStreamConstructor | undefined {
  return (globalThis as unknown as { FixedLengthStream?: FixedLengthStreamConstructor }).FixedLengthStream;
}

/** The parts, one after the other, as one stream R2 knows the length of. */
function knownLength(parts: (Uint8Array | ReadableStream<Uint8Array>)[], length: number): ReadableStream<Uint8Array> {
  const Fixed = fixedLengthStream();
  if (!Fixed) throw new TypeError('R2PushStore: streaming into R2 needs FixedLengthStream (workerd)');
  const fixed = new Fixed(length);
  void (async () => {
    for (const [i, part] of parts.entries()) {
      const last = i === parts.length - 1;
      if (part instanceof Uint8Array) {
        const writer = fixed.writable.getWriter();
        await writer.write(part);
        if (last) await writer.close();
        writer.releaseLock();
      } else {
        await part.pipeTo(fixed.writable, { preventClose: !last });
      }
    }
  })().catch((error: unknown) => fixed.writable.abort(error).catch(() => {}));
  return fixed.readable;
}

interface R2WriterOptions {
  key: string;
  variant: string;
  maxBytes: number;
  declined: boolean;
  expectedSize: number | undefined;
  inlineBytes: number;
  partBytes: number;
  bucket: R2BucketLike;
  /** Where a body larger than `inlineBytes` streams before commit. */
  stagingName: string;
  /** Stores the entry under its own name. */
  store: (meta: CacheEntryMeta, body: Uint8Array | ReadableStream<Uint8Array>, size: number) => Promise<boolean>;
}

/**
 * Small bodies are held until commit; larger ones stream to a staging
 * object (one `put` of a known length, or a multipart upload), copied into
 * place by `commit()` once the metadata is known.
 */
class R2Writer implements CacheWriter {
  readonly #o: R2WriterOptions;
  #mode: 'inline' | 'stream' | 'parts' | 'declined';
  #done = false;
  #size = 0;
  /** inline: the chunks so far; parts: the part being filled. */
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  /** stream: the staging `put`'s input. */
  #sink?: WritableStreamDefaultWriter<Uint8Array>;
  /** stream and parts: the staging upload, settled (never rejected). */
  #staged?: Promise<unknown>;
  #multipart?: Promise<R2MultipartUploadLike>;
  #parts: Promise<R2UploadedPartLike>[] = [];
  #failure: unknown;

  constructor(options: R2WriterOptions) {
    this.#o = options;
    this.#mode = options.declined ? 'declined' : 'inline';
    const expected = options.expectedSize;
    if (this.#mode === 'inline' && expected !== undefined && expected > options.inlineBytes && fixedLengthStream()) {
      const Fixed = fixedLengthStream()!;
      const fixed = new Fixed(expected);
      this.#sink = fixed.writable.getWriter();
      this.#staged = this.#settled(options.bucket.put(options.stagingName, fixed.readable, { customMetadata: { staging: '1' } }));
      this.#mode = 'stream';
    }
  }

  /** Settles, recording the first failure: a failed staging upload declines the commit. */
  #settled<T>(promise: Promise<T>): Promise<T | undefined> {
    return promise.catch((error: unknown) => {
      this.#failure ??= error;
      return undefined;
    });
  }

  write(chunk: Uint8Array): void | Promise<void> {
    if (this.#done) throw new TypeError('R2PushStore: write() after commit() or abort()');
    if (this.#mode === 'declined') return;
    this.#size += chunk.byteLength;
    if (this.#size > this.#o.maxBytes || this.#failure !== undefined) {
      void this.#decline();
      return;
    }
    // Straight on while streaming (workerd's streams do not detach it; the push API waits for it);
    // copied when held, as the caller may reuse or hand the buffer on.
    if (this.#mode === 'stream') return this.#settled(this.#sink!.write(chunk)).then(() => {});
    const copy = chunk.slice();
    this.#chunks.push(copy);
    this.#buffered += copy.byteLength;
    if (this.#mode === 'inline') {
      if (this.#buffered <= this.#o.inlineBytes) return;
      // Longer than it is worth holding, length unknown: a multipart upload from here on.
      this.#mode = 'parts';
      this.#multipart = this.#o.bucket.createMultipartUpload(this.#o.stagingName, { customMetadata: { staging: '1' } });
      this.#staged = this.#settled(this.#multipart);
    }
    if (this.#buffered >= this.#o.partBytes) return this.#uploadFullParts();
  }

  /** Uploads every full part held (a chunk may span several), one after the other. */
  async #uploadFullParts(): Promise<void> {
    while (this.#buffered >= this.#o.partBytes && this.#failure === undefined) await this.#uploadPart(false);
  }

  /** Uploads the next part (every part but the last exactly `partBytes` long); resolves when it is stored. */
  async #uploadPart(last: boolean): Promise<void> {
    const size = last ? this.#buffered : this.#o.partBytes;
    const part = new Uint8Array(size);
    let offset = 0;
    while (offset < size) {
      const chunk = this.#chunks[0]!;
      const take = Math.min(chunk.byteLength, size - offset);
      part.set(chunk.subarray(0, take), offset);
      offset += take;
      if (take === chunk.byteLength) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(take);
    }
    this.#buffered -= size;
    const partNumber = this.#parts.length + 1;
    const uploaded = this.#multipart!.then((upload) => upload.uploadPart(partNumber, part));
    this.#parts.push(uploaded);
    await this.#settled(uploaded);
  }

  async #decline(): Promise<void> {
    if (this.#mode === 'declined') return;
    const mode = this.#mode;
    this.#mode = 'declined';
    this.#chunks = [];
    this.#buffered = 0;
    if (mode === 'stream') {
      await this.#sink!.abort(new RangeError('declined')).catch(() => {});
      await this.#staged;
      await this.#o.bucket.delete(this.#o.stagingName).catch(() => {});
    } else if (mode === 'parts') {
      const upload = await this.#multipart!.catch(() => undefined);
      await Promise.allSettled(this.#parts);
      await upload?.abort().catch(() => {});
    }
  }

  async commit(meta: CacheEntryMeta): Promise<boolean> {
    if (this.#done) throw new TypeError('R2PushStore: commit() called twice or after abort()');
    this.#done = true;
    assertMetaMatches(meta, this.#o.key, this.#o.variant);
    if (this.#mode === 'declined') return false;
    if (this.#mode === 'inline') {
      const body = new Uint8Array(this.#buffered);
      let offset = 0;
      for (const chunk of this.#chunks) {
        body.set(chunk, offset);
        offset += chunk.byteLength;
      }
      this.#chunks = [];
      return this.#o.store(meta, body, this.#size);
    }
    if (this.#mode === 'stream') {
      await this.#settled(this.#sink!.close());
      await this.#staged;
    } else {
      await this.#uploadFullParts();
      // The last part may be shorter; an empty one is not sent (the body ended on a part boundary).
      if (this.#buffered > 0 || this.#parts.length === 0) await this.#uploadPart(true);
      const upload = await this.#multipart!.catch(() => undefined);
      const parts = await Promise.all(this.#parts.map((part) => this.#settled(part)));
      if (upload && this.#failure === undefined) await this.#settled(upload.complete(parts as R2UploadedPartLike[]));
      else await upload?.abort().catch(() => {});
    }
    const bucket = this.#o.bucket;
    try {
      if (this.#failure !== undefined) throw this.#failure;
      const staged = await bucket.get(this.#o.stagingName);
      if (!staged || !('body' in staged)) throw new Error(`R2PushStore: the staging object ${this.#o.stagingName} is missing`);
      return await this.#o.store(meta, staged.body, this.#size);
    } finally {
      await bucket.delete(this.#o.stagingName).catch(() => {});
    }
  }

  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#decline();
  }
}
