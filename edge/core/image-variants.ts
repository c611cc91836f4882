/**
 * Image variants: `/photo.jpg?width=400&format=auto` is answered with a
 * transformed copy of the source, cached like any response under a key
 * built from the source key and the *resolved* parameters (negotiated
 * format included, never the raw Accept string).
 *
 * The source is fetched through the pull path itself, so it is cached,
 * revalidated, collapsed and served from pushes exactly like a direct
 * request; a new width never refetches the original. A variant's freshness
 * is its source's, and it records the source's ETag so that once stale it
 * is refreshed without re-encoding when the source did not change.
 */
import { LRUCache } from 'lru-cache';
import { concatBytes, sha256Hex } from './bytes.js';
import type { CacheStatusFields } from './cache-status.js';
import { compileParamMatcher, derivedKey, pushedKey, REMEMBERED_QUERIES } from './cache-key.js';
import { FlightTable, waitForFlight } from './collapse.js';
import { EdgeError } from './errors.js';
import {
  hasImageParams,
  IMAGE_CONTENT_TYPES,
  IMAGE_PARAM_NAMES,
  isTransformableContentType,
  negotiateFormat,
  parseImageParams,
  resolveImageParams,
  sniffImageFormat,
  sourceFormatFromContentType,
  variantCacheSuffix,
  verifyImageSignature,
  widthsFromRange,
} from './image/params.js';
import type { ImageParams, ImageTransformer, ResolvedImageParams } from './image/types.js';
import type { EdgeOptions } from './options.js';
import type { EdgePolicy, PolicyFactory } from './policy.js';
import type { Described } from './describe.js';
import type { IncomingRequest, PullCache, PullRequest, RequestContext } from './pull.js';
import type { RequestLog } from './request.js';
import { hasBytes, type Answer } from './responder.js';
import type { CacheEntry, CacheEntryMeta, CacheStore } from './store/types.js';

export interface ImageVariantDeps {
  options: EdgeOptions;
  store: CacheStore;
  pull: PullCache;
  policies: PolicyFactory;
  /** Without one, parameters are still checked, then the untransformed source is served. */
  transformer?: ImageTransformer;
  now: () => number;
}

/** Cache-Status detail of image requests answered with the untransformed source. */
export const IMAGE_TRANSFORM_UNAVAILABLE = 'image-transform-unavailable';

/** Source fields a variant inherits: freshness and identity of what it was made from. */
const INHERITED_FIELDS = ['cache-control', 'expires', 'date', 'last-modified', 'cache-tag', 'surrogate-key', 'edge-cache-control', 'cdn-cache-control'];

const IMAGE_PARAM_SET = new Set(IMAGE_PARAM_NAMES);

const IMAGE_PATH = /\.(jpe?g|png|webp|avif|gif|tiff?)$/i;

const MAX_REMEMBERED_VARIANTS = 10_000;

/** Conditional and range fields: the source is fetched whole and unconditionally; and as is (identity), since its bytes are decoded as an image. */
const SOURCE_STRIPPED_FIELDS = new Set(['range', 'if-range', 'if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'accept-encoding']);

/**
 * Internal field recording the identity of the source a variant was made
 * from: its ETag, or for a source without one a SHA-256 of its bytes.
 */
const SOURCE_ETAG_FIELD = 'x-edge-source-etag';

/** Identity of a source without an ETag: SHA-256 of its bytes (Web Crypto, so Workers too). */
async function bytesIdentity(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  return `sha256:${(await sha256Hex(bytes)).slice(0, 32)}`;
}

/** FNV-1a, 2 x 32 bits: a cheap, stable ETag for a variant (identity, not security). */
function fnv64(text: string): string {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193 ^ text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 0x01000193);
    h2 = Math.imul(h2 ^ c, 0x01000193) ^ (h1 >>> 7);
  }
  return (h1 >>> 0).toString(16).padStart(8, '0') + (h2 >>> 0).toString(16).padStart(8, '0');
}

/** Let go of an answer's body without reading it. */
async function discard(answer: Answer): Promise<void> {
  if (answer.body instanceof ReadableStream) await answer.body.cancel();
}

async function readLimited(body: Answer['body'], limit: number): Promise<Uint8Array<ArrayBuffer>> {
  if (body === null) return new Uint8Array(0);
  if (body instanceof Uint8Array) {
    if (body.byteLength > limit) throw new EdgeError('EDGE_UNPROCESSABLE_IMAGE', `The source image is larger than the ${limit}-byte limit for transformation.`);
    return body.slice() as Uint8Array<ArrayBuffer>;
  }
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      throw new EdgeError('EDGE_UNPROCESSABLE_IMAGE', `The source image is larger than the ${limit}-byte limit for transformation.`);
    }
    chunks.push(value);
  }
  // Stream chunks are ArrayBuffer-backed (never shared memory).
  return concatBytes(chunks, size) as Uint8Array<ArrayBuffer>;
}

export class ImageVariants {
  private readonly deps: ImageVariantDeps;
  private readonly flights = new FlightTable();
  /** Request key (+ accept class) -> variant key, so repeated variant hits skip the source lookup. */
  private readonly variantKeys = new Map<string, string>();
  /** See fastParams(). */
  private readonly paramsBySearch = new LRUCache<string, ImageParams | false>({ max: REMEMBERED_QUERIES.max });
  private readonly answerMetas = new WeakMap<CacheEntryMeta, { negotiated?: CacheEntryMeta; fixed?: CacheEntryMeta }>();
  private readonly allowedWidths?: number[];
  /** `--ignore-query-params`: tolerated beside image parameters and not covered by `sig`. */
  private readonly ignoreParam: (name: string) => boolean;

  /**
   * `carried`: the image variants of the configuration this one replaces (a
   * reload): transforms under way there are joined, not started again.
   * Remembered variant keys are not carried (image options may have changed).
   */
  constructor(deps: ImageVariantDeps, carried?: ImageVariants) {
    this.deps = deps;
    if (carried) this.flights = carried.flights;
    if (deps.options.imageWidths) this.allowedWidths = widthsFromRange(deps.options.imageWidths);
    this.ignoreParam = compileParamMatcher(deps.options.ignoreQueryParams);
  }

  /**
   * Is this path an image URL, where width/w, q, f... are image parameters?
   * Only image file names (and configured `imagePaths` prefixes): an API's
   * `?q=search` or `?format=json` must reach the origin untouched.
   */
  applies(pathname: string): boolean {
    return IMAGE_PATH.test(pathname) || this.deps.options.imagePaths.some((prefix) => pathname.startsWith(prefix));
  }

  /** Parse and check the parameters; null when the request asks for no transformation. */
  async parse(url: URL): Promise<ImageParams | null> {
    if (!hasImageParams(url.searchParams)) return null;
    // The signature first (as imgproxy): an unsigned URL learns nothing about parameter rules.
    const key = this.deps.options.imageSigningKey;
    if (key && !(await verifyImageSignature(key, url.pathname, url.searchParams, this.ignoreParam))) {
      throw new EdgeError('EDGE_BAD_SIGNATURE', 'This image URL is not signed, or its signature (sig) does not match its parameters.');
    }
    return this.paramsOf(url.searchParams);
  }

  /** The parameters checked against this node's limits (throws EDGE_BAD_PARAM). */
  private paramsOf(query: URLSearchParams): ImageParams | null {
    return parseImageParams(query, {
      maxOutputSide: this.deps.options.imageMaxOutputSide,
      allowedWidths: this.allowedWidths,
      // A signed URL's expires and kid (access/signing.ts) sit beside image parameters; sig covers them.
      ignoreParam: (name) => name === 'expires' || name === 'kid' || this.ignoreParam(name),
    });
  }

  /**
   * A fresh hit on a variant this node remembers, decided synchronously for
   * the Node hit writer, as `handle()` would answer it. Undefined whenever
   * `handle()` must: signed image URLs (their check is asynchronous),
   * parameters that do not parse (it answers the 400), no transformer, a
   * variant not remembered, not in a tier read synchronously, or not fresh.
   * `described` comes from a plain request target, whose query
   * URLSearchParams reads as the URL parser would.
   */
  answerFreshHit(method: string, described: Described, log: RequestLog): Answer | undefined {
    const { store, options, transformer } = this.deps;
    if (!store.getSync || (method !== 'GET' && method !== 'HEAD') || options.imageSigningKey || !transformer || transformer.available?.() === false) {
      return undefined;
    }
    const params = this.fastParams(described.search);
    if (!params) return undefined;
    const memoized = this.variantKeys.get(this.memoKey(described.key, params, described.headers.accept ?? null));
    if (memoized === undefined) return undefined;
    const [entry] = store.getSync(memoized) ?? [];
    if (!entry || !hasBytes(entry)) return undefined;
    return this.rememberedHit(entry, memoized, method === 'HEAD', { log, waitUntil: () => {} }, params, described);
  }

  /**
   * The parameters of a raw query string for the fast path, remembered per
   * string (a site's image URLs repeat; parsing one took about 1.7 µs of a
   * 12 µs variant hit). Null for no parameters, and for parameters that do
   * not parse (not remembered: the general path answers the 400). Bounded
   * (REMEMBERED_QUERIES), least recently used out; built per configuration,
   * so reloaded limits apply at once.
   */
  private fastParams(search: string): ImageParams | null {
    const known = this.paramsBySearch.get(search);
    // `false` stands for "no image parameters" (lru-cache holds no null).
    if (known !== undefined) return known || null;
    let params: ImageParams | null;
    try {
      const query = new URLSearchParams(search);
      params = hasImageParams(query) ? this.paramsOf(query) : null;
    } catch {
      return null;
    }
    if (search.length <= REMEMBERED_QUERIES.maxLength) this.paramsBySearch.set(search, params ?? false);
    return params;
  }

  /** A remembered variant's entry answered as a hit; undefined when it is purged or not fresh. */
  private rememberedHit(
    entry: CacheEntry | undefined,
    variantKey: string,
    isHead: boolean,
    ctx: RequestContext,
    params: ImageParams,
    described: Described,
  ): Answer | undefined {
    if (!entry || entry.meta.invalidated) return undefined;
    const policy = this.deps.pull.policyOf(entry.meta);
    const freshness = policy.evaluate({ url: variantKey, method: 'GET', headers: described.upstream }, this.deps.options.honorRequestCacheControl);
    if (freshness !== 'fresh' && freshness !== 'stale-allowed') return undefined;
    ctx.log.key = variantKey;
    ctx.log.outcome = 'hit';
    return this.answer(isHead, ctx, params, entry, policy, { hit: true, ttl: policy.freshnessLifetime() - policy.age() }, described);
  }

  /**
   * Answer an image request. `described` is the pull path's description of
   * this request, when the caller has it (saves describing it again on a hit).
   */
  async handle(request: IncomingRequest, ctx: RequestContext, params: ImageParams, described: Described): Promise<Answer> {
    if (!this.deps.transformer || this.deps.transformer.available?.() === false) return this.untransformed(request, ctx);
    const { options, store } = this.deps;
    const isHead = request.method === 'HEAD';
    // A repeated request for a known variant: one lookup, no source lookup.
    const memoKey = this.memoKey(described.key, params, described.headers.accept ?? null);
    const memoized = this.variantKeys.get(memoKey);
    if (memoized !== undefined) {
      const [entry] = await store.get(memoized);
      const hit = this.rememberedHit(entry, memoized, isHead, ctx, params, described);
      if (hit) return hit;
    }
    const sourceUrl = new URL(described.href);
    // One rewrite of the query (each searchParams.delete re-serialises the URL).
    const kept = [...sourceUrl.searchParams].filter(([name]) => !IMAGE_PARAM_SET.has(name));
    sourceUrl.search = kept.length > 0 ? new URLSearchParams(kept).toString() : '';
    const requestHeaders = described.headers;
    // The source request: same client headers, but whole and unconditional.
    const sourceRecord: Record<string, string> = {};
    for (const name in requestHeaders) if (!SOURCE_STRIPPED_FIELDS.has(name)) sourceRecord[name] = requestHeaders[name]!;
    const source = this.deps.pull.describe(sourceUrl.href, ctx.clientIp, sourceRecord);
    const sourceKey = this.deps.pull.pushedPaths.has(sourceUrl.pathname) ? pushedKey(sourceUrl.pathname) : source.key;
    const accept = requestHeaders.accept ?? null;
    const sourceRequest = (): IncomingRequest => ({ method: 'GET', url: sourceUrl.href, headers: sourceRecord });

    // Knowing the source's type from the cache gives the exact variant key
    // without reading a byte of the source.
    const known = await this.sourceContentType(sourceKey, source.upstream);
    let variantKey: string | undefined;
    let stale: { entry: CacheEntry; policy: EdgePolicy } | undefined;
    if (known !== undefined) {
      this.assertTransformable(known);
      const resolved = this.resolve(params, accept, sourceFormatFromContentType(known));
      variantKey = this.variantKey(sourceKey, resolved);
      this.remember(memoKey, variantKey);
      ctx.log.key = variantKey;
      const [entry] = await store.get(variantKey);
      if (entry) {
        const policy = this.deps.pull.policyOf(entry.meta);
        const freshness = entry.meta.invalidated ? 'revalidate' : policy.evaluate({ url: variantKey, method: 'GET', headers: requestHeaders }, options.honorRequestCacheControl);
        if (freshness === 'fresh' || freshness === 'stale-allowed') {
          ctx.log.outcome = 'hit';
          return this.answer(isHead, ctx, params, { meta: entry.meta, body: entry.body, tier: entry.tier }, policy, {
            hit: true,
            ttl: policy.freshnessLifetime() - policy.age(),
          }, described);
        }
        stale = { entry, policy };
      }
    }

    // Not a cache key: the flight of a variant whose key is not known yet (the source's type decides it).
    const flightKey = variantKey ?? `${sourceKey}\u0000pending:${new URLSearchParams([...new URL(described.href).searchParams].sort()).toString()}`;
    const flight = this.flights.join(flightKey);
    if (flight) {
      const outcome = await waitForFlight(flight, options.collapseTimeout);
      if (outcome !== 'timeout' && outcome.kind === 'failed') {
        if (this.deps.transformer?.available?.() === false) return this.untransformed(request, ctx);
        throw outcome.error;
      }
      if (outcome !== 'timeout' && outcome.kind === 'stored') return this.handle(request, ctx, params, described);
    }
    const land = flight ? undefined : this.flights.lead(flightKey);
    try {
      const work = this.deps.pull.purges.begin();
      const produced = await this.produce(ctx, params, { sourceRequest, sourceKey, memoKey, accept, isHead, requestHeaders, stale, described, purgeEpoch: work.epoch }).finally(work.end);
      land?.({ kind: produced.stored ? 'stored' : 'uncacheable' });
      return produced.answer;
    } catch (error) {
      land?.({ kind: 'failed', error });
      // The transformer found itself unusable on this request: the source, as without one.
      if (this.deps.transformer?.available?.() === false) return this.untransformed(request, ctx);
      throw error;
    }
  }

  private async produce(
    ctx: RequestContext,
    params: ImageParams,
    job: {
      sourceRequest: () => IncomingRequest;
      sourceKey: string;
      memoKey?: string;
      accept: string | null;
      isHead: boolean;
      requestHeaders: Record<string, string>;
      stale?: { entry: CacheEntry; policy: EdgePolicy };
      described: Described;
      /** When the work began, for purges made meanwhile. */
      purgeEpoch: number;
    },
  ): Promise<{ answer: Answer; stored: boolean }> {
    const { options, store, policies, now } = this.deps;
    const transformer = this.deps.transformer!;
    const sourceCtx: RequestContext = { ...ctx, log: {}, sendEarlyHints: undefined };
    const sourceResponse = await this.deps.pull.handle(job.sourceRequest(), sourceCtx);
    ctx.log.originMs = sourceCtx.log.originMs;
    if (sourceResponse.status !== 200) {
      // Not an image to work on (404, 5xx, redirects...): the client sees what the source is.
      ctx.log.outcome = sourceCtx.log.outcome;
      return { answer: sourceResponse, stored: false };
    }
    const contentType = sourceResponse.headers['content-type'] ?? null;
    try {
      this.assertTransformable(contentType);
    } catch (error) {
      await discard(sourceResponse);
      throw error;
    }
    const declared = Number(sourceResponse.headers['content-length'] ?? '0');
    if (declared > options.imageMaxSourceSize) {
      await discard(sourceResponse);
      throw new EdgeError('EDGE_UNPROCESSABLE_IMAGE', `The source image is larger than the ${options.imageMaxSourceSize}-byte limit for transformation.`);
    }
    const resolved = this.resolve(params, job.accept, sourceFormatFromContentType(contentType));
    const variantKey = this.variantKey(job.sourceKey, resolved);
    this.remember(job.memoKey, variantKey);
    ctx.log.key = variantKey;
    const sourceHeaders = sourceResponse.headers;
    const sourceEtag = sourceHeaders.etag;
    const sourceAge = Number(sourceHeaders.age ?? '0');

    const headers: Record<string, string> = {};
    for (const field of INHERITED_FIELDS) if (sourceHeaders[field] !== undefined) headers[field] = sourceHeaders[field]!;
    if (sourceAge > 0) headers.age = String(sourceAge);
    if (headers.date === undefined) headers.date = new Date(now()).toUTCString();
    if (sourceEtag !== undefined) headers[SOURCE_ETAG_FIELD] = sourceEtag;
    const policyRequest = { url: variantKey, method: 'GET', headers: job.requestHeaders };

    // A stale variant of an unchanged source only needs its freshness renewed.
    const refresh = async (stale: CacheEntry): Promise<{ answer: Answer; stored: boolean }> => {
      const merged = { ...stale.meta.headers, ...headers };
      const policy = policies.fromResponse(policyRequest, { status: 200, headers: merged });
      const meta: CacheEntryMeta = {
        ...stale.meta,
        headers: merged,
        policy: policy.toObject(),
        storedAt: now(),
        expiresAt: policy.usefulUntil(options.staleGrace, 7 * 24 * 3600),
        invalidated: false,
      };
      const stored = await store.updateMeta(meta);
      ctx.log.outcome = 'revalidated';
      ctx.log.detail = 'source-unchanged';
      return {
        answer: this.answer(job.isHead, ctx, params, { meta, body: stale.body }, policy, {
          fwd: 'stale',
          detail: 'source-unchanged',
          ttl: policy.freshnessLifetime() - policy.age(),
        }, job.described),
        stored,
      };
    };
    if (job.stale && sourceEtag !== undefined && job.stale.entry.meta.headers[SOURCE_ETAG_FIELD] === sourceEtag) {
      await discard(sourceResponse);
      return refresh(job.stale.entry);
    }

    const sourceBytes = await readLimited(sourceResponse.body, options.imageMaxSourceSize);
    const sniffed = sniffImageFormat(sourceBytes);
    if (sniffed === undefined) {
      throw new EdgeError('EDGE_UNPROCESSABLE_IMAGE', 'The source is not a decodable image (its bytes match no supported image format).');
    }
    // Without an ETag, the source is identified by its bytes: a changed
    // source of the same size must not keep the old variant's ETag.
    const sourceIdentity = sourceEtag ?? (await bytesIdentity(sourceBytes));
    headers[SOURCE_ETAG_FIELD] = sourceIdentity;
    if (job.stale && sourceEtag === undefined && job.stale.entry.meta.headers[SOURCE_ETAG_FIELD] === sourceIdentity) {
      return refresh(job.stale.entry);
    }
    const output = await transformer.transform(sourceBytes, resolved);

    headers['content-type'] = IMAGE_CONTENT_TYPES[output.format];
    headers['content-length'] = String(output.body.byteLength);
    headers.etag = `"${fnv64(`${sourceIdentity}|${variantCacheSuffix(resolved)}`)}"`;
    const policy = policies.fromResponse(policyRequest, { status: 200, headers });
    const storable = policy.storable() && (policy.freshnessLifetime() > 0 || policy.hasValidator());
    const meta: CacheEntryMeta = {
      key: variantKey,
      variant: '',
      status: 200,
      headers,
      policy: policy.toObject(),
      size: output.body.byteLength,
      tags: job.stale?.entry.meta.tags ?? [],
      storedAt: now(),
      expiresAt: policy.usefulUntil(options.staleGrace, 7 * 24 * 3600),
      sourceKey: job.sourceKey,
    };
    const sourceTags = [...(sourceHeaders['cache-tag'] ?? '').split(','), ...(sourceHeaders['surrogate-key'] ?? '').split(/\s+/)]
      .map((t) => t.trim())
      .filter(Boolean);
    meta.tags = sourceTags;
    let stored = false;
    // A purge of the source (or its tags) since this work began: the client gets the variant, the cache does not.
    if (storable && !this.deps.pull.purges.purgedSince(job.purgeEpoch, variantKey, meta.tags)) {
      // A soft purge meanwhile: stored, but revalidated before its next use.
      if (this.deps.pull.purges.softPurgedSince(job.purgeEpoch, variantKey, meta.tags)) meta.invalidated = true;
      const writer = store.createWriter(variantKey, '', output.body.byteLength);
      writer.write(output.body);
      stored = await this.deps.pull.purges.landing(writer.commit(meta));
    }
    ctx.log.outcome = job.stale ? 'stale' : 'miss';
    ctx.log.detail = 'transformed';
    const bytes = output.body;
    return {
      answer: this.answer(
        job.isHead,
        ctx,
        params,
        { meta, body: { size: bytes.byteLength, bytes, stream: () => new Response(bytes as unknown as BodyInit).body! } },
        policy,
        { fwd: job.stale ? 'stale' : 'miss', stored, detail: 'transformed', ttl: stored ? policy.freshnessLifetime() - policy.age() : undefined },
        job.described,
      ),
      stored,
    };
  }

  /** No transformer on this runtime: the source itself, from one cached copy, saying so. */
  private async untransformed(request: IncomingRequest, ctx: RequestContext): Promise<Answer> {
    const sourceUrl = new URL(request.url);
    for (const name of IMAGE_PARAM_NAMES) sourceUrl.searchParams.delete(name);
    const answer = await this.deps.pull.handle({ ...request, url: sourceUrl.href }, ctx);
    ctx.log.detail ??= IMAGE_TRANSFORM_UNAVAILABLE;
    const status = answer.headers['cache-status'];
    const member = status?.slice(status.lastIndexOf(',') + 1) ?? '';
    if (status !== undefined && !/;\s*detail=/.test(member)) answer.headers['cache-status'] = `${status}; detail=${IMAGE_TRANSFORM_UNAVAILABLE}`;
    return answer;
  }

  private answer(
    isHead: boolean,
    ctx: RequestContext,
    params: ImageParams,
    entry: CacheEntry,
    policy: EdgePolicy,
    fields: CacheStatusFields,
    described: Described,
  ): Answer {
    const pull: PullRequest = this.deps.pull.requestFor(isHead, ctx, described, entry.meta.key);
    return this.deps.pull.fromCache(pull, { ...entry, meta: this.answerMeta(entry.meta, params.format === 'auto') }, policy, fields);
  }

  /**
   * The stored metadata as clients see it: internal field gone, `Vary:
   * Accept` when the format was negotiated. Set on the entry rather than on
   * the Response (reading `response.headers` turns the Node adapter's
   * lightweight Response into a full one), and built once per stored
   * metadata object, so the pull path's per-entry preparation is reused.
   */
  private answerMeta(meta: CacheEntryMeta, negotiated: boolean): CacheEntryMeta {
    let forms = this.answerMetas.get(meta);
    if (!forms) this.answerMetas.set(meta, (forms = {}));
    const slot = negotiated ? 'negotiated' : 'fixed';
    let answer = forms[slot];
    if (!answer) {
      const headers: Record<string, string> = {};
      for (const name in meta.headers) if (name !== SOURCE_ETAG_FIELD) headers[name] = meta.headers[name]!;
      if (negotiated) headers.vary = 'Accept';
      answer = forms[slot] = { ...meta, headers };
    }
    return answer;
  }

  private resolve(params: ImageParams, accept: string | null, sourceFormat: ReturnType<typeof sourceFormatFromContentType>): ResolvedImageParams {
    const format = negotiateFormat(params.format, accept, sourceFormat);
    return resolveImageParams(params, format, { quality: this.deps.options.imageQuality, maxOutputSide: this.deps.options.imageMaxOutputSide });
  }

  /**
   * What decides a variant besides the source: the request's own key (path,
   * image parameters, host) and, for `format=auto`, which of AVIF and WebP
   * the client accepts (GIF sources pick differently, so both are probed).
   */
  private memoKey(requestKey: string, params: ImageParams, accept: string | null): string {
    if (params.format !== 'auto') return requestKey;
    return `${requestKey}\n${negotiateFormat('auto', accept, 'jpeg')}/${negotiateFormat('auto', accept, 'gif')}`;
  }

  /** Bounded: the oldest half is dropped when full (a miss here only costs the source lookup). */
  private remember(memoKey: string | undefined, variantKey: string): void {
    if (memoKey === undefined) return;
    if (this.variantKeys.size >= MAX_REMEMBERED_VARIANTS) {
      let drop = MAX_REMEMBERED_VARIANTS / 2;
      for (const key of this.variantKeys.keys()) {
        this.variantKeys.delete(key);
        if (--drop === 0) break;
      }
    }
    this.variantKeys.set(memoKey, variantKey);
  }

  /** Variant key: after the source key, so prefix purges of the path cover it. */
  private variantKey(sourceKey: string, resolved: ResolvedImageParams): string {
    return derivedKey(sourceKey, { kind: 'image', params: variantCacheSuffix(resolved) });
  }

  private assertTransformable(contentType: string | null): void {
    if (isTransformableContentType(contentType)) return;
    const svg = /image\/svg/i.test(contentType ?? '');
    throw new EdgeError(
      'EDGE_UNSUPPORTED_MEDIA_TYPE',
      svg
        ? 'SVG sources are not rasterised (untrusted SVG is a script and XML-entity risk); request the SVG without image parameters.'
        : `The source is ${contentType ?? 'of unknown type'}, not a JPEG, PNG, WebP, AVIF, GIF or TIFF image; image parameters apply only to images.`,
      { details: { contentType } },
    );
  }

  /** The content type of the cached source, if the source is cached. */
  private async sourceContentType(sourceKey: string, requestHeaders: Record<string, string>): Promise<string | null | undefined> {
    const entries = await this.deps.store.get(sourceKey);
    const entry = this.deps.pull.selectVariant(entries, requestHeaders);
    if (!entry || entry.meta.status !== 200) return undefined;
    return entry.meta.headers['content-type'] ?? null;
  }
}

