/**
 * Pull mode: the caching reverse proxy. For GET/HEAD it looks the request
 * up in the store, serves fresh entries, revalidates stale ones
 * (conditionally, with stale-while-revalidate / stale-if-error), collapses
 * concurrent misses into one origin request and streams misses to the
 * client while they fill the cache. Other methods pass through and
 * invalidate the URL (RFC 9111 4.4).
 *
 * What a request means comes from `describe.ts` (key and origin request),
 * every answer leaves through `responder.ts`; this file decides between
 * them. `answerFreshHit()` is the same decision made synchronously, for
 * runtimes that can answer a fresh hit without Web objects.
 */
import { formatCacheStatus, type CacheOutcome, type CacheStatusFields, type ForwardReason } from './cache-status.js';
import { keyPath, MAX_KEY_LENGTH, pushedKey, variantFor, varyNames } from './cache-key.js';
import { FlightTable, waitForFlight, type FlightOutcome } from './collapse.js';
import { RequestDescriber, type Described } from './describe.js';
import { EdgeError } from './errors.js';
import { drainInBackground, fillWhileStreaming, sliceFill } from './fill.js';
import { forwardRequestHeaders, headersToRecord, originRequestHeaders, splitList, withoutHopByHop } from './headers.js';
import type { EdgeOptions } from './options.js';
import type { OriginClient } from './origin/types.js';
import { fieldsNotToStore, governingDirectives, parseCacheControl, type EdgePolicy, type PolicyFactory, type PolicyRequest } from './policy.js';
import {
  answerFromEntry,
  answerFromOrigin,
  answerGatewayTimeout,
  clientValidatorsMatch,
  decideRange,
  droppedResponseFields,
  notModifiedHeaders,
  statusAllowsBody,
  storedAnswerHeaders,
  type Answer,
} from './responder.js';
import type { RouteCacheRules } from './routes.js';
import type { CacheEntry, CacheEntryMeta, CacheStore } from './store/types.js';

/** Per-request facts recorded for the access log and metrics. */
export interface RequestLog {
  key?: string;
  outcome?: CacheOutcome;
  tier?: string;
  /** Time to the origin's response headers, ms. */
  originMs?: number;
  collapsed?: boolean;
  detail?: string;
}

/** What the runtime adapter provides for each request. */
export interface RequestContext {
  /** Address of the connected peer. */
  clientIp?: string;
  /** Keep background work (refreshes, cache fills) alive after the response is sent. */
  waitUntil(promise: Promise<unknown>): void;
  /** Relay a 103 Early Hints response to the client, where the runtime can. */
  sendEarlyHints?(headers: Record<string, string | string[]>): void;
  log: RequestLog;
}

/** A request as the pull path reads it: no Web `Request` needed. */
export interface IncomingRequest {
  method: string;
  /** Absolute URL. */
  url: string;
  /** Lower-case names, repeated fields joined with `, `. */
  headers: Record<string, string>;
  /** The request body (methods other than GET/HEAD). */
  body?: () => ReadableStream<Uint8Array> | null;
}

export interface PullDeps {
  options: EdgeOptions;
  store: CacheStore;
  origin: OriginClient;
  policies: PolicyFactory;
  now: () => number;
}

/** Conditional and range fields: a cache fill needs the whole, unconditional response. */
const FILL_STRIPPED_REQUEST_FIELDS = ['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range', 'range'];

/** Stored entries with a validator stay useful this long past freshness: they can be revalidated. */
const KEEP_WITH_VALIDATOR_SECONDS = 7 * 24 * 3600;

/**
 * What a stored entry needs on every hit, computed once per stored
 * metadata object (the memory tier hands back the same object each time).
 */
interface PreparedEntry {
  policy: EdgePolicy;
  vary: string[] | '*';
  /** Downstream headers without Age and Cache-Status. */
  headers: Record<string, string>;
  /** The origin said explicitly that this may be shared (`public`, `s-maxage`, a CDN-targeted field). */
  explicitlyShared: boolean;
}

/** A GET/HEAD on its way through the pull path. */
export interface PullRequest {
  described: Described;
  /** The key looked up and stored under (the described key, or an image variant's). */
  key: string;
  policyRequest: PolicyRequest;
  isHead: boolean;
  rules?: RouteCacheRules;
  ctx: RequestContext;
}

/** The freshness decision for a stored entry, as a typed outcome. */
type Decision =
  | { kind: 'serve'; outcome: 'hit' | 'stale'; fields: CacheStatusFields; refresh: boolean }
  | { kind: 'forward'; reason: ForwardReason };

interface OriginFetchPlan {
  reason: ForwardReason;
  /** The stale entry being revalidated, if any. */
  stale?: { entry: CacheEntry; policy: EdgePolicy };
  /** Lands the collapsing flight this request leads. */
  land?: (outcome: FlightOutcome) => void;
}

export class PullCache {
  private readonly deps: PullDeps;
  private readonly flights = new FlightTable();
  private readonly refreshing = new Set<string>();
  private readonly preparedMemo = new WeakMap<CacheEntryMeta, PreparedEntry>();
  readonly describer: RequestDescriber;
  /** Response fields no answer carries (see `droppedResponseFields`). */
  private readonly dropped: ReadonlySet<string>;
  /**
   * Paths that have a pushed object, so that requests for other paths skip
   * the pushed lookup. The admin API keeps it in step with the store;
   * `loadPushedIndex()` rebuilds it at start-up.
   */
  readonly pushedPaths = new Set<string>();

  constructor(deps: PullDeps) {
    this.deps = deps;
    this.describer = new RequestDescriber(deps.options);
    this.dropped = droppedResponseFields(deps.options.targetedCacheControl, deps.options.forwardCdnHeaders);
  }

  /** See {@link RequestDescriber.describe}. */
  describe(href: string, clientIp: string | undefined, headers: Record<string, string>): Described {
    return this.describer.describe(href, clientIp, headers);
  }

  /** Rebuild `pushedPaths` from the store (start-up). */
  async loadPushedIndex(): Promise<void> {
    for await (const meta of this.deps.store.list({ pushed: true })) this.pushedPaths.add(keyPath(meta.key));
  }

  async handle(request: IncomingRequest, ctx: RequestContext, described = this.describe(request.url, ctx.clientIp, request.headers)): Promise<Answer> {
    ctx.log.key = described.key;
    if (request.method !== 'GET' && request.method !== 'HEAD') return this.passUnsafe(request, ctx, described);
    const pull = this.requestFor(request.method === 'HEAD', ctx, described);
    if (pull.key.length > MAX_KEY_LENGTH || described.rules?.bypass) return this.fetchFromOrigin(pull, { reason: 'bypass' }, false);
    return this.serve(pull);
  }

  /** The pull-path view of a GET/HEAD request (for `key`, by default the described one). */
  requestFor(isHead: boolean, ctx: RequestContext, described: Described, key = described.key): PullRequest {
    return {
      described,
      key,
      // The request as the origin receives it: credentials and directives as forwarded.
      policyRequest: { url: described.upstreamPath, method: 'GET', headers: this.deps.options.honorRequestCacheControl ? described.upstream : withoutRequestDirectives(described.upstream) },
      isHead,
      rules: described.rules,
      ctx,
    };
  }

  /** Seconds a stale entry may stand in for a failing origin without stale-if-error. */
  private graceFor(pull: PullRequest): number {
    return pull.rules?.grace ?? pull.rules?.staleIfError ?? this.deps.options.staleGrace;
  }

  /**
   * A fresh hit decided synchronously, for runtimes that write answers
   * without Web objects (the Node adapter). Undefined whenever the general
   * path is needed: a miss, anything stale, credentials, a body that is not
   * at hand as bytes, or a store that cannot read synchronously.
   */
  answerFreshHit(
    method: string,
    href: string,
    headers: Record<string, string>,
    clientIp: string | undefined,
    log: RequestLog,
    isContent: (described: Described) => boolean,
  ): Answer | undefined {
    const { store } = this.deps;
    if (!store.getSync || (method !== 'GET' && method !== 'HEAD')) return undefined;
    const described = this.describe(href, clientIp, headers);
    if (!isContent(described) || described.key.length > MAX_KEY_LENGTH || described.rules?.bypass || described.credentials === 'authorization') return undefined;
    const pull = this.requestFor(method === 'HEAD', { log, waitUntil: () => {} }, described);
    if (this.pushedPaths.has(described.pathname)) {
      const [entry] = store.getSync(pushedKey(described.pathname)) ?? [];
      if (!entry) return undefined;
      const policy = this.policyOf(entry.meta);
      if (!policy.isFresh() || entry.meta.invalidated || !hasBytes(entry)) return undefined;
      log.key = described.key;
      return this.answerPushed(pull, entry, policy);
    }
    const entries = store.getSync(described.key);
    if (!entries || entries.length === 0) return undefined;
    const entry = this.selectVariant(entries, described.upstream);
    if (!entry || !hasBytes(entry)) return undefined;
    const decision = this.decide(pull, entry);
    if (decision.kind !== 'serve' || decision.refresh) return undefined;
    log.key = described.key;
    log.outcome = decision.outcome;
    return this.fromCache(pull, entry, this.policyOf(entry.meta), decision.fields);
  }

  /**
   * RFC 9111 4.2 and 5.2.1 for one stored entry and one request: serve it
   * (possibly stale, possibly refreshing in the background) or go forward.
   */
  private decide(pull: PullRequest, entry: CacheEntry): Decision {
    const prepared = this.prepare(entry.meta);
    const { policy } = prepared;
    // A request with forwarded cookies takes only what the origin said may be shared.
    if (pull.described.credentials === 'cookie' && !prepared.explicitlyShared) return { kind: 'forward', reason: 'request' };
    const freshness = entry.meta.invalidated ? 'revalidate' : policy.evaluate(pull.policyRequest, this.deps.options.honorRequestCacheControl);
    const ttl = policy.freshnessLifetime() - policy.age();
    if (freshness === 'fresh') return { kind: 'serve', outcome: 'hit', fields: { hit: true, ttl }, refresh: false };
    if (freshness === 'stale-allowed') return { kind: 'serve', outcome: 'stale', fields: { hit: true, ttl }, refresh: false };
    if (freshness === 'stale-while-revalidate') {
      return { kind: 'serve', outcome: 'stale', fields: { hit: true, ttl, detail: 'stale-while-revalidate' }, refresh: true };
    }
    // RFC 9211 2.2: fwd=request when the entry was fresh but the request asked to go forward.
    return { kind: 'forward', reason: !entry.meta.invalidated && policy.isFresh() ? 'request' : 'stale' };
  }

  /** Look up, then hit, revalidate or miss. */
  async serve(pull: PullRequest): Promise<Answer> {
    const { described } = pull;
    if (described.credentials === 'authorization') {
      // A request with credentials is not answered from the shared cache; its
      // response may still be stored if the origin marks it public (RFC 9111 3.5).
      return this.fetchFromOrigin(pull, { reason: 'request' });
    }
    if (this.pushedPaths.has(described.pathname)) {
      const pushed = await this.servePushed(pull);
      if (pushed) return pushed;
    }
    const entries = await this.deps.store.get(pull.key);
    const entry = this.selectVariant(entries, described.upstream);
    if (entry) {
      const decision = this.decide(pull, entry);
      if (decision.kind === 'serve') {
        pull.ctx.log.outcome = decision.outcome;
        if (decision.refresh) this.refreshInBackground(pull, entry, this.policyOf(entry.meta));
        return this.fromCache(pull, entry, this.policyOf(entry.meta), decision.fields);
      }
      if (this.onlyIfCached(pull)) return this.gatewayTimeout(pull, 'stale');
      // Cookie-bearing requests for entries not explicitly shared go forward alone, never stored over the shared copy.
      if (described.credentials === 'cookie' && decision.reason === 'request' && !this.prepare(entry.meta).explicitlyShared) {
        return this.fetchFromOrigin(pull, { reason: 'request' }, false);
      }
      return this.collapsed(pull, `${pull.key}\u0000${entry.meta.variant}`, { reason: decision.reason, stale: { entry, policy: this.policyOf(entry.meta) } });
    }
    if (this.onlyIfCached(pull)) return this.gatewayTimeout(pull, 'miss');
    // Private requests never lead or follow a shared flight: their answer is theirs.
    if (described.credentials === 'cookie') return this.fetchFromOrigin(pull, { reason: entries.length > 0 ? 'vary-miss' : 'uri-miss' });
    return this.collapsed(pull, pull.key, { reason: entries.length > 0 ? 'vary-miss' : 'uri-miss' });
  }

  /**
   * Pushed objects answer without ever asking the origin until they
   * expire; client Cache-Control cannot force a revalidation (there is
   * nothing upstream to revalidate with).
   */
  private async servePushed(pull: PullRequest): Promise<Answer | undefined> {
    const [entry] = await this.deps.store.get(pushedKey(pull.described.pathname));
    if (!entry) return undefined;
    const policy = this.policyOf(entry.meta);
    // Soft-purged or expired: fall through to the pull path.
    if (!policy.isFresh() || entry.meta.invalidated) return undefined;
    return this.answerPushed(pull, entry, policy);
  }

  private answerPushed(pull: PullRequest, entry: CacheEntry, policy: EdgePolicy): Answer {
    pull.ctx.log.outcome = 'hit';
    pull.ctx.log.detail = 'pushed';
    return this.fromCache(pull, entry, policy, { hit: true, ttl: policy.freshnessLifetime() - policy.age(), detail: 'pushed' });
  }

  private onlyIfCached(pull: PullRequest): boolean {
    return this.deps.options.honorRequestCacheControl && parseCacheControl(pull.described.headers['cache-control']).has('only-if-cached');
  }

  /** RFC 9111 5.2.1.7: only-if-cached with nothing usable stored. */
  private gatewayTimeout(pull: PullRequest, fwd: ForwardReason): Answer {
    pull.ctx.log.outcome = 'miss';
    return answerGatewayTimeout(this.deps.options.name, { fwd, detail: 'only-if-cached' });
  }

  /**
   * The one stale fallback: when the origin failed (an error or a 5xx) and
   * the stale entry may stand in (stale-if-error or grace), answer with it.
   */
  private staleFallback(pull: PullRequest, stale: OriginFetchPlan['stale'], fields: CacheStatusFields): Answer | undefined {
    if (!stale || !stale.policy.canServeStaleOnError(this.graceFor(pull))) return undefined;
    pull.ctx.log.outcome = 'stale';
    return this.fromCache(pull, stale.entry, stale.policy, { fwd: 'stale', ...fields, detail: 'stale-if-error' });
  }

  /** One origin request per flight key; others wait and then read the cache. */
  private async collapsed(pull: PullRequest, flightKey: string, plan: OriginFetchPlan): Promise<Answer> {
    const joinedAt = this.deps.now();
    const flight = this.flights.join(flightKey);
    if (!flight) return this.fetchFromOrigin(pull, { ...plan, land: this.flights.lead(flightKey) });

    const outcome = await waitForFlight(flight, this.deps.options.collapseTimeout);
    pull.ctx.log.collapsed = true;
    if (outcome !== 'timeout') {
      if (outcome.kind === 'failed') {
        const fallback = this.staleFallback(pull, plan.stale, { collapsed: true });
        if (fallback) return fallback;
        throw outcome.error;
      }
      if (outcome.kind === 'stored') {
        const entry = this.selectVariant(await this.deps.store.get(pull.key), pull.described.upstream);
        // The entry the leader just stored answers its followers even when it
        // was stale on arrival (max-age=0): they asked at the same moment.
        if (entry && !entry.meta.invalidated && entry.meta.storedAt >= joinedAt - 1) {
          const policy = this.policyOf(entry.meta);
          pull.ctx.log.outcome = plan.stale ? 'revalidated' : 'miss';
          return this.fromCache(pull, entry, policy, { fwd: plan.reason, collapsed: true, ttl: policy.freshnessLifetime() - policy.age() });
        }
      }
    }
    return this.fetchFromOrigin(pull, { reason: plan.reason, stale: plan.stale });
  }

  /** Stale-while-revalidate: one background refresh per entry at a time. */
  private refreshInBackground(pull: PullRequest, entry: CacheEntry, policy: EdgePolicy): void {
    const refreshKey = `${pull.key}\u0000${entry.meta.variant}`;
    if (this.refreshing.has(refreshKey)) return;
    this.refreshing.add(refreshKey);
    // The refresh counts as under way until its cache fill lands, not just
    // until the origin answers: otherwise a request in between starts another.
    const fills: Promise<unknown>[] = [];
    const waitUntil = (promise: Promise<unknown>) => {
      fills.push(promise);
      pull.ctx.waitUntil(promise);
    };
    const background: PullRequest = { ...pull, isHead: true, ctx: { ...pull.ctx, log: {}, sendEarlyHints: undefined, waitUntil } };
    const work = this.fetchFromOrigin(background, { reason: 'stale', stale: { entry, policy } })
      .then((answer) => (answer.body instanceof ReadableStream ? answer.body.cancel() : undefined))
      .then(() => Promise.allSettled(fills))
      .catch(() => {
        // A failed refresh leaves the stale entry; the next request retries.
      })
      .finally(() => this.refreshing.delete(refreshKey));
    pull.ctx.waitUntil(work);
  }

  /**
   * Go to the origin for a GET (HEAD is sent as GET so the cache fills),
   * conditionally when revalidating, and store what may be stored. The
   * origin request is built from the described request only: keyed path
   * and query, allow-listed headers.
   */
  async fetchFromOrigin(pull: PullRequest, plan: OriginFetchPlan, mayStore = true): Promise<Answer> {
    const { origin, policies, store, now } = this.deps;
    const { described } = pull;
    const headers = originRequestHeaders(described.upstream, described.headers, described.forwarding);
    for (const name of FILL_STRIPPED_REQUEST_FIELDS) headers.delete(name);
    const stale = plan.stale;
    if (stale) {
      const stored = stale.entry.meta.headers;
      if (stored.etag !== undefined) headers.set('if-none-match', stored.etag);
      if (stored['last-modified'] !== undefined) headers.set('if-modified-since', stored['last-modified']);
    }

    const started = now();
    let response: Response;
    try {
      response = await origin.fetch({
        method: 'GET',
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
      const fallback = this.staleFallback(pull, stale, {});
      if (fallback) return fallback;
      pull.ctx.log.outcome = 'error';
      throw error;
    }
    pull.ctx.log.originMs = now() - started;

    if (stale && response.status === 304) {
      await response.body?.cancel();
      const freshened = policies.freshen(stale.policy, stale.entry.meta.headers, stale.entry.meta.status, pull.policyRequest, {
        status: 304,
        headers: this.storableHeaders(response.headers).stored,
      });
      if (freshened) {
        const meta: CacheEntryMeta = {
          ...stale.entry.meta,
          headers: freshened.headers,
          policy: freshened.policy.toObject(),
          storedAt: now(),
          expiresAt: freshened.policy.usefulUntil(this.graceFor(pull), KEEP_WITH_VALIDATOR_SECONDS),
          invalidated: false,
        };
        await store.updateMeta(meta);
        this.prepare(meta, freshened.policy);
        plan.land?.({ kind: 'stored' });
        pull.ctx.log.outcome = 'revalidated';
        return this.fromCache(pull, { meta, body: stale.entry.body, tier: stale.entry.tier }, freshened.policy, {
          fwd: plan.reason,
          fwdStatus: 304,
          ttl: freshened.policy.freshnessLifetime() - freshened.policy.age(),
        });
      }
      // The 304 does not describe what we hold (RFC 9111 4.3.3): ask again, unconditionally.
      return this.fetchFromOrigin(pull, { reason: plan.reason, land: plan.land }, mayStore);
    }

    if (stale && response.status >= 500) {
      const fallback = this.staleFallback(pull, stale, { fwdStatus: response.status });
      if (fallback) {
        await response.body?.cancel();
        plan.land?.({ kind: 'failed', error: new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', `The origin answered ${response.status}.`) });
        return fallback;
      }
    }

    return this.storeAndRespond(pull, plan, response, mayStore);
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

  private targetedFields(): string[] {
    return [this.deps.options.targetedCacheControl, 'cdn-cache-control'];
  }

  /** `public`, `s-maxage` or a CDN-targeted field: the origin said a shared cache may keep it. */
  private explicitlyShared(headers: Record<string, string>): boolean {
    const cc = parseCacheControl(headers['cache-control']);
    return cc.has('public') || cc.has('s-maxage') || governingDirectives(headers, this.targetedFields()).field !== 'cache-control';
  }

  private async storeAndRespond(pull: PullRequest, plan: OriginFetchPlan, response: Response, mayStore: boolean): Promise<Answer> {
    const { options, policies, store, now } = this.deps;
    const { described } = pull;
    const { clean, stored, setCookies, upstreamStatus } = this.storableHeaders(response.headers);
    const status = response.status;
    const explicitlyShared = this.explicitlyShared(stored);
    if (stored.date === undefined) stored.date = new Date(now()).toUTCString();
    if (pull.rules?.ttl !== undefined) this.applyRouteTtl(stored, pull.rules.ttl, pull.rules.overrideTtl, pull.rules.staleIfError);
    const policy = policies.fromResponse(pull.policyRequest, { status, headers: stored });
    const vary = varyNames(stored.vary);
    const contentLength = response.headers.has('content-length') ? Number(response.headers.get('content-length')) : undefined;
    const storable =
      mayStore &&
      policy.storable() &&
      vary !== '*' &&
      (setCookies.length === 0 || options.cacheSetCookie) &&
      // A response to a request with forwarded cookies is shared only when the origin says so explicitly.
      (described.credentials !== 'cookie' || explicitlyShared) &&
      // No freshness and no validator: storing it could never save a fetch.
      (policy.freshnessLifetime() > 0 || policy.hasValidator()) &&
      !(contentLength !== undefined && contentLength > options.maxObjectSize) &&
      response.body !== null === statusAllowsBody(status);

    if (plan.stale && !storable) pull.ctx.waitUntil(store.delete(pull.key, plan.stale.entry.meta.variant));

    const fields: CacheStatusFields = plan.stale
      ? { fwd: plan.reason, fwdStatus: status, stored: storable }
      : { fwd: plan.reason, stored: storable };
    if (storable) fields.ttl = policy.freshnessLifetime() - policy.age();
    const answer = (body: ReadableStream<Uint8Array> | null, answerStatus = status) =>
      answerFromOrigin(answerStatus, clean, body, formatCacheStatus(options.name, fields, upstreamStatus), {
        dropped: this.dropped,
        name: options.name,
      });
    pull.ctx.log.outcome = plan.reason === 'bypass' || plan.reason === 'request' ? 'bypass' : plan.stale ? 'stale' : 'miss';

    if (!storable) {
      plan.land?.({ kind: 'uncacheable' });
      if (pull.isHead) {
        await response.body?.cancel();
        return answer(null);
      }
      return answer(response.body);
    }

    const variant = variantFor(vary as string[], described.upstream);
    const tags = [...splitList(stored['cache-tag']), ...(stored['surrogate-key'] ?? '').split(/\s+/).filter(Boolean)];
    const writer = store.createWriter(pull.key, variant, contentLength);
    const body = response.body ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() });
    const filled = fillWhileStreaming(body, {
      writer,
      maxBytes: options.maxObjectSize,
      expectedSize: contentLength,
      waitUntil: pull.ctx.waitUntil,
      commit: (size) =>
        writer.commit({
          key: pull.key,
          variant,
          status,
          headers: stored,
          policy: policy.toObject(),
          size,
          tags,
          storedAt: now(),
          expiresAt: policy.usefulUntil(this.graceFor(pull), KEEP_WITH_VALIDATOR_SECONDS),
        }),
      onSettled: (ok, error) => {
        if (ok) plan.land?.({ kind: 'stored' });
        else if (error !== undefined) plan.land?.({ kind: 'failed', error });
        else plan.land?.({ kind: 'uncacheable' });
      },
    });

    if (pull.isHead || !statusAllowsBody(status)) {
      drainInBackground(filled, pull.ctx.waitUntil);
      return answer(null);
    }
    const requestHeaders = described.headers;
    if (status === 200 && clientValidatorsMatch(requestHeaders, stored)) {
      drainInBackground(filled, pull.ctx.waitUntil);
      const full = answer(null);
      return { ...full, status: 304, headers: notModifiedHeaders(full.headers) };
    }
    // A Range request that misses: the origin sent the whole object (it fills
    // the cache); the client gets its range from that stream.
    if (status === 200 && requestHeaders.range !== undefined && contentLength !== undefined) {
      const range = decideRange(requestHeaders, stored, contentLength);
      if (range.kind === 'unsatisfiable') {
        drainInBackground(filled, pull.ctx.waitUntil);
        const out = answer(null, 416);
        out.headers['content-range'] = `bytes */${contentLength}`;
        delete out.headers['content-length'];
        return out;
      }
      if (range.kind === 'partial') {
        const out = answer(sliceFill(filled, range.start, range.end, pull.ctx.waitUntil), 206);
        out.headers['content-range'] = `bytes ${range.start}-${range.end}/${contentLength}`;
        out.headers['content-length'] = String(range.end - range.start + 1);
        return out;
      }
    }
    return answer(filled);
  }

  /** Answer from a stored entry: validators, ranges, HEAD. */
  fromCache(pull: PullRequest, entry: CacheEntry, policy: EdgePolicy, fields: CacheStatusFields): Answer {
    if (entry.tier) pull.ctx.log.tier = entry.tier;
    return answerFromEntry(
      entry,
      this.prepare(entry.meta).headers,
      { isHead: pull.isHead, headers: pull.described.headers },
      policy.age(),
      formatCacheStatus(this.deps.options.name, fields),
    );
  }

  /** The stored variant matching the request's Vary-named headers (RFC 9111 4.1), as the origin would receive them. */
  selectVariant(entries: CacheEntry[], upstreamHeaders: Record<string, string>): CacheEntry | undefined {
    if (entries.length === 1 && entries[0]!.meta.variant === '') {
      const { vary } = this.prepare(entries[0]!.meta);
      if (vary !== '*' && vary.length === 0) return entries[0];
    }
    let best: CacheEntry | undefined;
    for (const entry of entries) {
      const names = this.prepare(entry.meta).vary;
      if (names === '*') continue;
      if (variantFor(names, upstreamHeaders) !== entry.meta.variant) continue;
      // Several matches (Vary changed over time): the most recent wins (RFC 9111 4.1).
      if (!best || entry.meta.storedAt > best.meta.storedAt) best = entry;
    }
    return best;
  }

  policyOf(meta: CacheEntryMeta): EdgePolicy {
    return this.prepare(meta).policy;
  }

  private prepare(meta: CacheEntryMeta, policy?: EdgePolicy): PreparedEntry {
    let prepared = policy ? undefined : this.preparedMemo.get(meta);
    if (!prepared) {
      const { options } = this.deps;
      prepared = {
        policy: policy ?? this.deps.policies.fromStored(meta.policy, meta.headers),
        vary: varyNames(meta.headers.vary),
        headers: storedAnswerHeaders(meta, this.dropped, options.name),
        explicitlyShared: meta.pushed === true || this.explicitlyShared(meta.headers),
      };
      this.preparedMemo.set(meta, prepared);
    }
    return prepared;
  }

  /**
   * Methods other than GET/HEAD: pass through (every end-to-end header but
   * client-sent forwarding fields: nothing here is stored), then invalidate
   * what they changed.
   */
  private async passUnsafe(request: IncomingRequest, ctx: RequestContext, described: Described): Promise<Answer> {
    const { key, forwarding, pathname, search, headers: requestHeaders } = described;
    const headers = forwardRequestHeaders(new Headers(requestHeaders), forwarding);
    const started = this.deps.now();
    let response: Response;
    try {
      response = await this.deps.origin.fetch({
        method: request.method,
        pathAndQuery: pathname + search,
        headers,
        body: request.body?.() ?? null,
        cacheKey: key,
        onInformational: (status, info) => {
          if (status === 103) ctx.sendEarlyHints?.(info);
        },
      });
    } catch (error) {
      ctx.log.outcome = 'error';
      throw error;
    }
    ctx.log.originMs = this.deps.now() - started;
    ctx.log.outcome = 'bypass';
    if (response.status < 400) {
      // RFC 9111 4.4: a non-error response to an unsafe method invalidates
      // the target URI and same-origin Location / Content-Location.
      const targets = new Set([key]);
      for (const field of ['location', 'content-location']) {
        const value = response.headers.get(field);
        if (!value) continue;
        try {
          const target = new URL(value, described.href);
          if (target.host !== new URL(described.href).host) continue;
          targets.add(this.describe(target.href, ctx.clientIp, requestHeaders).key);
        } catch {
          // An unparsable Location invalidates nothing.
        }
      }
      await Promise.all([...targets].map((target) => this.invalidate(target)));
    }
    const clean = withoutHopByHop(response.headers);
    const upstreamStatus = clean.get('cache-status');
    clean.delete('cache-status');
    return answerFromOrigin(response.status, clean, response.body, formatCacheStatus(this.deps.options.name, { fwd: 'method' }, upstreamStatus), {
      dropped: this.dropped,
      name: this.deps.options.name,
    });
  }

  /** Remove a key, every variant of it, and everything derived from it (image variants). */
  async invalidate(key: string): Promise<number> {
    const { store } = this.deps;
    let removed = await store.delete(key);
    const derived: string[] = [];
    for await (const meta of store.list({ sourceKey: key })) derived.push(meta.key);
    for (const derivedKey of new Set(derived)) removed += await store.delete(derivedKey);
    return removed;
  }
}

/** With `--honor-request-cache-control false`, a client's no-store cannot keep a response out of the cache either. */
function withoutRequestDirectives(headers: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name in headers) if (name !== 'cache-control' && name !== 'pragma') out[name] = headers[name]!;
  return out;
}

/** A body the fast path can write at once. */
function hasBytes(entry: CacheEntry): boolean {
  return entry.body.bytes !== undefined || entry.body.size === 0 || entry.body.readAll !== undefined;
}
