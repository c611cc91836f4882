/**
 * Going to the origin for the pull path: the conditional or unconditional
 * GET built from the described request (keyed path and query, allow-listed
 * headers), 304 handling (RFC 9111 4.3.4), the stale fallback on failure,
 * and storing what may be stored while the body streams to the client.
 * Answers from stored entries are made by the pull cache (`StoredAnswers`),
 * so there is still one way out.
 */
import { formatCacheStatus, type CacheStatusFields } from './cache-status.js';
import { variantFor, varyNames } from './cache-key.js';
import { addCodingVary, codedBy, originHeaders, recodedHeaders, VARY_ADDED_FIELD, type CodingPlan } from './compression.js';
import { EdgeError, isEdgeError } from './errors.js';
import { byteRange, fillWhileStreaming, sliceFill } from './fill.js';
import { headersToRecord, originRequestHeaders, splitList, withoutHopByHop } from './headers.js';
import { fieldsNotToStore, governingDirectives, parseCacheControl, type EdgePolicy } from './policy.js';
import { answerFromOrigin, clientValidatorsMatch, decideRange, notModifiedHeaders, statusAllowsBody, type Answer } from './responder.js';
import type { PurgeLog } from './purge-log.js';
import type { Recoder } from './recode.js';
import type { OriginFetchPlan, PullDeps, PullRequest } from './request.js';
import type { CacheEntry, CacheEntryMeta } from './store/types.js';

/** Fields that change when the node recodes a body (`compression.ts`), copied from the stored fields onto the answer. */
const CODING_FIELDS = ['content-encoding', 'content-length', 'etag', 'vary', 'content-md5', 'content-digest', 'repr-digest', 'digest'];

/** Conditional and range fields: a cache fill needs the whole, unconditional response. */
export const FILL_STRIPPED_REQUEST_FIELDS = ['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range', 'range'];

/** Largest error body handed to a flight's followers (error pages are small; the rest go upstream themselves). */
const MAX_SHARED_ERROR_BYTES = 64 * 1024;

/** Stored entries with a validator stay useful this long past freshness: they can be revalidated. */
export const KEEP_WITH_VALIDATOR_SECONDS = 7 * 24 * 3600;

/** What the origin fetch needs from the pull cache: its answers from stored entries. */
export interface StoredAnswers {
  /** Answer from a stored entry (validators, ranges, HEAD). */
  fromCache(pull: PullRequest, entry: CacheEntry, policy: EdgePolicy, fields: CacheStatusFields): Answer;
  /** Remember a just-updated entry's policy for later hits. */
  remember(meta: CacheEntryMeta, policy: EdgePolicy): void;
  /** Seconds a stale entry may stand in for a failing origin. */
  graceFor(pull: PullRequest): number;
  /** The stale entry as the answer when the origin failed and it may stand in. */
  staleFallback(pull: PullRequest, stale: OriginFetchPlan['stale'], fields: CacheStatusFields): Answer | undefined;
}

/** Large objects stored in pieces (`slice.ts`): a whole 200 over --max-object-size is offered to it before it passes uncached. */
export interface LargeObjects {
  sliceWhole(pull: PullRequest, plan: OriginFetchPlan, response: Response, split: ReturnType<OriginFetch['storedFields']>, length: number): Promise<Answer | undefined>;
}

export class OriginFetch {
  private readonly dropped: ReadonlySet<string>;
  /** Set by the pull cache when --slice-size is on. */
  largeObjects?: LargeObjects;

  constructor(
    private readonly deps: PullDeps,
    private readonly answers: StoredAnswers,
    dropped: ReadonlySet<string>,
    private readonly purges: PurgeLog,
    private readonly recoder: Recoder,
  ) {
    this.dropped = dropped;
  }

  /**
   * Go to the origin for a GET (HEAD is sent as GET so the cache fills),
   * conditionally when revalidating, and store what may be stored. The
   * origin request is built from the described request only: keyed path
   * and query, allow-listed headers.
   */
  async fetch(pull: PullRequest, plan: OriginFetchPlan, mayStore = true): Promise<Answer> {
    // What the origin answers may predate a purge made while it was asked: purges from the moment
    // the request goes out count against storing the answer (or a revalidation's 304).
    const asked = this.purges.begin();
    try {
      return await this.fetchAsked(pull, plan, mayStore, asked.epoch);
    } finally {
      asked.end();
    }
  }

  private async fetchAsked(pull: PullRequest, plan: OriginFetchPlan, mayStore: boolean, askedEpoch: number): Promise<Answer> {
    const { origin, policies, store, now } = this.deps;
    const { described } = pull;
    const headers = originRequestHeaders(described.upstream, described.headers, described.forwarding);
    for (const name of FILL_STRIPPED_REQUEST_FIELDS) headers.delete(name);
    if (plan.forwardRange) {
      // Nothing will be stored: the origin sends only the range (its 206 or 416 passes as it is).
      for (const name of ['range', 'if-range']) {
        const value = described.headers[name];
        if (value !== undefined) headers.set(name, value);
      }
    }
    const stale = plan.stale;
    if (stale) {
      // The origin's validators, not those of a coding the node made from its answer.
      const stored = originHeaders(stale.entry.meta.headers);
      if (stored.etag !== undefined) headers.set('if-none-match', stored.etag);
      if (stored['last-modified'] !== undefined) headers.set('if-modified-since', stored['last-modified']);
    }

    const started = now();
    let response: Response;
    try {
      response = await origin.fetch({
        method: plan.method ?? 'GET',
        pathAndQuery: described.upstreamPath,
        headers,
        cacheKey: pull.key,
        onInformational: (status, info) => {
          if (status === 103) pull.ctx.sendEarlyHints?.(info);
        },
      });
    } catch (error) {
      pull.ctx.log.originMs = now() - started;
      plan.land?.({ kind: 'failed', error });
      const fallback = this.answers.staleFallback(pull, stale, {});
      if (fallback) return fallback;
      pull.ctx.log.outcome = 'error';
      throw error;
    }
    pull.ctx.log.originMs = now() - started;

    if (stale && response.status === 304) {
      await response.body?.cancel();
      const storedHeaders = stale.entry.meta.headers;
      const freshened = policies.freshen(stale.policy, originHeaders(storedHeaders), stale.entry.meta.status, pull.policyRequest, {
        status: 304,
        headers: this.storableHeaders(response.headers).stored,
      });
      if (freshened) {
        const { tags } = stale.entry.meta;
        // Purged meanwhile: this client has its answer, the store keeps the purge (none, or marked to revalidate).
        const purged = this.purges.purgedSince(askedEpoch, pull.key, tags);
        const meta: CacheEntryMeta = {
          ...stale.entry.meta,
          headers: recodedAgain(storedHeaders, freshened.headers),
          policy: freshened.policy.toObject(),
          storedAt: now(),
          expiresAt: freshened.policy.usefulUntil(this.answers.graceFor(pull), KEEP_WITH_VALIDATOR_SECONDS),
          invalidated: this.purges.softPurgedSince(askedEpoch, pull.key, tags),
        };
        if (!purged) await this.purges.landing(store.updateMeta(meta));
        this.answers.remember(meta, freshened.policy);
        plan.land?.({ kind: 'stored' });
        pull.ctx.log.outcome = 'revalidated';
        return this.answers.fromCache(pull, { meta, body: stale.entry.body, tier: stale.entry.tier }, freshened.policy, {
          fwd: plan.reason,
          fwdStatus: 304,
          ttl: freshened.policy.freshnessLifetime() - freshened.policy.age(),
        });
      }
      // The 304 does not describe what we hold (RFC 9111 4.3.3): ask again, unconditionally.
      return this.fetch(pull, { reason: plan.reason, land: plan.land }, mayStore);
    }

    if (stale && response.status >= 500) {
      const fallback = this.answers.staleFallback(pull, stale, { fwdStatus: response.status });
      if (fallback) {
        await response.body?.cancel();
        plan.land?.({ kind: 'failed', error: new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', `The origin answered ${response.status}.`) });
        return fallback;
      }
    }

    return this.storeAndRespond(pull, plan, response, mayStore, askedEpoch);
  }

  /** Split the origin's headers into what the client gets and what is stored. */
  private storableHeaders(originHeaders: Headers) {
    const clean = withoutHopByHop(originHeaders);
    const upstreamStatus = clean.get('cache-status');
    clean.delete('cache-status');
    const setCookies = clean.getSetCookie();
    const stored = headersToRecord(clean);
    for (const field of fieldsNotToStore(stored, this.targetedFields())) delete stored[field];
    return { clean, stored, setCookies, upstreamStatus };
  }

  /**
   * A route's edge TTL, written as this node's targeted cache-control field
   * (RFC 9213) on the stored copy: it then governs this cache only, is never
   * sent downstream, and needs no second freshness code path. Applied when
   * the origin gave no freshness, or always with `overrideTtl`.
   */
  private applyRouteTtl(stored: Record<string, string>, ttl: number, override: boolean, staleIfError: number | undefined): void {
    // A targeted field counts only when it parses (RFC 9213: an invalid one is ignored).
    const { field, cc } = governingDirectives(stored, this.targetedFields());
    const explicit = field !== 'cache-control' || cc.has('max-age') || cc.has('s-maxage') || stored.expires !== undefined;
    if (explicit && !override) return;
    stored[this.deps.options.targetedCacheControl] = `max-age=${ttl}${staleIfError ? `, stale-if-error=${staleIfError}` : ''}`;
  }

  /**
   * The body of a 5xx that may be shared with a flight's followers (not
   * private or no-store, and small): read whole, so each follower gets the
   * same bytes. Undefined when it may not be shared; the body is untouched then.
   */
  private async shareableError(response: Response, stored: Record<string, string>, contentLength: number | undefined): Promise<Uint8Array | undefined> {
    const cc = parseCacheControl(stored['cache-control']);
    if (cc.has('private') || cc.has('no-store')) return undefined;
    if (response.body === null) return new Uint8Array(0);
    if (contentLength === undefined || contentLength > MAX_SHARED_ERROR_BYTES) return undefined;
    try {
      return new Uint8Array(await response.arrayBuffer());
    } catch (cause) {
      throw new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', 'The origin failed while sending its answer.', { cause });
    }
  }

  /** Keep at most --max-variants variants of a key: the least recently stored go first. */
  async boundVariants(key: string): Promise<void> {
    const { store, options } = this.deps;
    const entries = await store.get(key);
    if (entries.length <= options.maxVariants) return;
    const oldest = entries.map((entry) => entry.meta).sort((a, b) => a.storedAt - b.storedAt);
    for (const meta of oldest.slice(0, entries.length - options.maxVariants)) await store.delete(key, meta.variant);
  }

  private targetedFields(): string[] {
    return [this.deps.options.targetedCacheControl, 'cdn-cache-control'];
  }

  /** `public`, `s-maxage` or a CDN-targeted field: the origin said a shared cache may keep it. */
  explicitlyShared(headers: Record<string, string>): boolean {
    const cc = parseCacheControl(headers['cache-control']);
    return cc.has('public') || cc.has('s-maxage') || governingDirectives(headers, this.targetedFields()).field !== 'cache-control';
  }

  /**
   * The origin's fields split into what the client gets and what is stored
   * for `pull`: hop-by-hop and unstorable fields removed, `Date` supplied,
   * the route's edge TTL applied. `explicitlyShared` is judged before the TTL.
   */
  storedFields(pull: PullRequest, headers: Headers) {
    const split = this.storableHeaders(headers);
    const explicitlyShared = this.explicitlyShared(split.stored);
    if (split.stored.date === undefined) split.stored.date = new Date(this.deps.now()).toUTCString();
    if (pull.rules?.ttl !== undefined) this.applyRouteTtl(split.stored, pull.rules.ttl, pull.rules.overrideTtl, pull.rules.staleIfError);
    return { ...split, explicitlyShared };
  }

  /**
   * An origin response already in hand (a slicing probe the origin answered
   * with a whole 200 or an error, `slice.ts`), stored and answered like any fill.
   */
  respond(pull: PullRequest, plan: OriginFetchPlan, response: Response, mayStore = true): Promise<Answer> {
    return this.storeAndRespond(pull, plan, response, mayStore);
  }

  /** `askedEpoch`: the purge log's epoch when the origin was asked (by default now): purges since then keep the answer out. */
  private async storeAndRespond(pull: PullRequest, plan: OriginFetchPlan, response: Response, mayStore: boolean, askedEpoch?: number): Promise<Answer> {
    const { options, policies, store, now } = this.deps;
    const { described } = pull;
    const split = this.storedFields(pull, response.headers);
    const { clean, setCookies, upstreamStatus, explicitlyShared } = split;
    let stored = split.stored;
    const status = response.status;
    const policy = policies.fromResponse(pull.policyRequest, { status, headers: stored });
    const contentLength = response.headers.has('content-length') ? Number(response.headers.get('content-length')) : undefined;
    if (this.largeObjects && status === 200 && mayStore && contentLength !== undefined && contentLength > options.maxObjectSize) {
      // Too large to store whole, but it may be stored in pieces as it streams.
      const sliced = await this.largeObjects.sliceWhole(pull, plan, response, split, contentLength);
      if (sliced) {
        pull.ctx.log.outcome = 'miss';
        return sliced;
      }
    }
    let storable =
      mayStore &&
      policy.storable() &&
      (setCookies.length === 0 || options.cacheSetCookie) &&
      // A response to a request with forwarded cookies is shared only when the origin says so explicitly.
      (described.credentials !== 'cookie' || explicitlyShared) &&
      // No freshness and no validator: storing it could never save a fetch.
      (policy.freshnessLifetime() > 0 || policy.hasValidator()) &&
      !(contentLength !== undefined && contentLength > options.maxObjectSize) &&
      response.body !== null === statusAllowsBody(status) &&
      varyNames(stored.vary) !== '*';

    // Compressed (or decoded) once, here, for everyone who negotiates this
    // coding; what passes unstored is only ever decoded, never compressed.
    const coding = this.recoder.plan({ status, headers: stored, size: contentLength }, described.coding, storable);
    if (!coding.storable) storable = false;
    if (coding.recode || coding.varies) stored = this.recoder.headers(stored, coding);
    syncCodingFields(clean, stored, coding);
    const vary = varyNames(stored.vary);
    const originBody = response.body && coding.recode ? this.recoder.body(response.body, coding, contentLength) : response.body;

    if (plan.stale && !storable) pull.ctx.waitUntil(store.delete(pull.key, plan.stale.entry.meta.variant));

    // `stored` is said only when it is known at header time: the length is
    // known (a truncated body then breaks the client's connection too) or the
    // answer waits for the fill (HEAD). A chunked body may still exceed
    // --max-object-size, so its Cache-Status does not promise it.
    const bodyless = !statusAllowsBody(status);
    const promised = storable && (bodyless || contentLength !== undefined);
    const fields: CacheStatusFields = plan.stale
      ? { fwd: plan.reason, fwdStatus: status, stored: promised }
      : { fwd: plan.reason, stored: promised };
    if (storable) fields.ttl = policy.freshnessLifetime() - policy.age();
    const answer = (body: ReadableStream<Uint8Array> | null, answerStatus = status) =>
      answerFromOrigin(answerStatus, clean, body, formatCacheStatus(options.name, fields, upstreamStatus), {
        dropped: this.dropped,
        name: options.name,
      });
    pull.ctx.log.outcome = plan.reason === 'bypass' || plan.reason === 'request' ? 'bypass' : plan.stale ? 'stale' : 'miss';

    if (!storable) {
      let shared: Uint8Array | undefined;
      try {
        shared = plan.land && status >= 500 ? await this.shareableError(response, stored, contentLength) : undefined;
      } catch (error) {
        plan.land?.({ kind: 'failed', error });
        throw error;
      }
      if (shared) {
        const out = answer(null);
        delete out.headers['cache-status'];
        plan.land!({ kind: 'shared', answer: { status, headers: out.headers, body: shared, upstreamStatus } });
        return { ...answer(null), body: pull.isHead ? null : shared };
      }
      plan.land?.({ kind: 'uncacheable' });
      if (pull.isHead) {
        await response.body?.cancel();
        return answer(null);
      }
      // A Range request for what will not be stored (too large, say): the
      // client gets its range, and the origin is read no further than its end.
      const ranged = originBody && this.rangeOf(pull, status, stored, contentLength, coding);
      if (ranged) {
        if (ranged.kind === 'partial') return partialAnswer(answer, sliceAndStop(originBody, ranged.start, ranged.end), ranged, contentLength!);
        await originBody.cancel();
        return unsatisfiableAnswer(answer, contentLength!);
      }
      return answer(originBody);
    }

    const variant = variantFor(vary as string[], described.upstream);
    const tags = storedTags(stored);
    // A status without a body has none to store, whatever Content-Length says
    // (RFC 9110 8.6); a recoded body's length is known at its end.
    const expectedSize = bodyless ? 0 : coding.recode ? undefined : contentLength;
    this.recoder.noteFill(pull.key, variant);
    const writer = store.createWriter(pull.key, variant, expectedSize);
    const body = originBody ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() });
    const fill = this.purges.begin();
    const epoch = askedEpoch ?? fill.epoch;
    /** The fill was turned away by a purge: storable, so the key is not remembered as uncacheable. */
    let purgedMidway = false;
    const filled = fillWhileStreaming(body, {
      writer,
      maxBytes: options.maxObjectSize,
      expectedSize,
      waitUntil: pull.ctx.waitUntil,
      commit: async (size) => {
        // Purged while it was on its way: the client has it, the cache does not.
        if (this.purges.purgedSince(epoch, pull.key, tags)) {
          purgedMidway = true;
          await writer.abort();
          return false;
        }
        return this.purges.landing(writer.commit({
          key: pull.key,
          variant,
          status,
          headers: stored,
          policy: policy.toObject(),
          size,
          tags,
          storedAt: now(),
          expiresAt: policy.usefulUntil(this.answers.graceFor(pull), KEEP_WITH_VALIDATOR_SECONDS),
          // Soft-purged while it was on its way: stored, but revalidated before its next use.
          ...(this.purges.softPurgedSince(epoch, pull.key, tags) ? { invalidated: true } : {}),
        }));
      },
      onSettled: (ok, error) => {
        fill.end();
        if (ok && variant !== '') pull.ctx.waitUntil(this.boundVariants(pull.key));
        if (ok) plan.land?.({ kind: 'stored' });
        // An origin failure (an EdgeError: 502/504) is the followers' too; a
        // store that could not commit is not: they go upstream themselves.
        else if (error !== undefined && isEdgeError(error)) plan.land?.({ kind: 'failed', error });
        else plan.land?.(purgedMidway ? { kind: 'uncacheable', purged: true } : { kind: 'uncacheable' });
      },
    });

    if (pull.isHead || !statusAllowsBody(status)) {
      // No client reads this body: the fill goes on alone, and stops the
      // origin at once if the body turns out too large to store.
      void filled.cancel();
      return answer(null);
    }
    const requestHeaders = described.headers;
    if (status === 200 && clientValidatorsMatch(requestHeaders, stored)) {
      void filled.cancel();
      const full = answer(null);
      return { ...full, status: 304, headers: notModifiedHeaders(full.headers) };
    }
    // A Range request that misses: the origin sent the whole object (it fills
    // the cache); the client gets its range from that stream.
    const ranged = this.rangeOf(pull, status, stored, contentLength, coding);
    if (ranged?.kind === 'unsatisfiable') {
      void filled.cancel();
      return unsatisfiableAnswer(answer, contentLength!);
    }
    if (ranged?.kind === 'partial') return partialAnswer(answer, sliceFill(filled, ranged.start, ranged.end, pull.ctx.waitUntil), ranged, contentLength!);
    return answer(filled);
  }

  /**
   * The client's range of a whole 200 the origin sent (RFC 9110 14.2), or
   * undefined for the whole body: no Range, no known length, or a body
   * being recoded (its length is known only at its end).
   */
  private rangeOf(
    pull: PullRequest,
    status: number,
    stored: Record<string, string>,
    contentLength: number | undefined,
    coding: CodingPlan,
  ): { kind: 'partial'; start: number; end: number } | { kind: 'unsatisfiable' } | undefined {
    const requestHeaders = pull.described.headers;
    if (status !== 200 || requestHeaders.range === undefined || contentLength === undefined || coding.recode) return undefined;
    const range = decideRange(requestHeaders, stored, contentLength);
    return range.kind === 'full' ? undefined : range;
  }

}

/** Surrogate keys of a stored response: `Cache-Tag` and `Surrogate-Key` members. */
export function storedTags(stored: Record<string, string>): string[] {
  return [...splitList(stored['cache-tag']), ...(stored['surrogate-key'] ?? '').split(/\s+/).filter(Boolean)];
}

type OriginAnswer = (body: ReadableStream<Uint8Array> | null, status?: number) => Answer;

/** A 206 of `body`, the range `[start, end]` of a representation of `size` bytes. */
function partialAnswer(answer: OriginAnswer, body: ReadableStream<Uint8Array>, range: { start: number; end: number }, size: number): Answer {
  const out = answer(body, 206);
  out.headers['content-range'] = `bytes ${range.start}-${range.end}/${size}`;
  out.headers['content-length'] = String(range.end - range.start + 1);
  return out;
}

/** A 416 for a representation of `size` bytes (RFC 9110 15.5.17). */
function unsatisfiableAnswer(answer: OriginAnswer, size: number): Answer {
  const out = answer(null, 416);
  out.headers['content-range'] = `bytes */${size}`;
  delete out.headers['content-length'];
  return out;
}

/**
 * The inclusive byte range `[start, end]` of an origin body that will not be
 * stored. Unlike `sliceFill` (whose rest fills the cache) the origin body is
 * cancelled once the range is sent, so the rest of a large object never
 * crosses the network. A body that ends before `end` fails the answer
 * rather than cut it short of its Content-Length.
 */
function sliceAndStop(source: ReadableStream<Uint8Array>, start: number, end: number): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  return byteRange(reader, start, end, {
    after: (reason) => void reader.cancel(reason).catch(() => {}),
    short: () => new EdgeError('EDGE_ORIGIN_UNREACHABLE', "The origin's body broke off before its end."),
  });
}

/**
 * The fields of a stored entry after a 304 freshened them (computed on the
 * origin's view, see `originHeaders`): a representation the node made gets
 * its own labels back, and a node-added `Vary: Accept-Encoding` stays even
 * when the 304 sends the origin's Vary.
 */
function recodedAgain(before: Record<string, string>, after: Record<string, string>): Record<string, string> {
  const by = codedBy(before);
  if (by) return recodedHeaders(after, by.coding, by.level);
  if (before[VARY_ADDED_FIELD] === undefined) return after;
  const out = { ...after };
  addCodingVary(out);
  return out;
}

/** The answer's coding fields as stored after `coding` (only Vary, when the body passes as it came). */
function syncCodingFields(clean: Headers, stored: Record<string, string>, coding: CodingPlan): void {
  for (const name of coding.recode ? CODING_FIELDS : coding.varies ? ['vary'] : []) {
    const value = stored[name];
    if (value === undefined) clean.delete(name);
    else clean.set(name, value);
  }
}
