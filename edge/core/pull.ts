/**
 * Pull mode: the caching reverse proxy. For GET/HEAD it looks the request
 * up in the store, serves fresh entries, revalidates stale ones
 * (conditionally, with stale-while-revalidate / stale-if-error), collapses
 * concurrent misses into one origin request and streams misses to the
 * client while they fill the cache. Other methods pass through and
 * invalidate the URL (RFC 9111 4.4).
 */
import { formatCacheStatus, type CacheOutcome, type CacheStatusFields, type ForwardReason } from './cache-status.js';
import { compileParamMatcher, keyPath, MAX_KEY_LENGTH, normaliseQuery, primaryKey, pushedKey, variantFor, varyNames } from './cache-key.js';
import { FlightTable, waitForFlight, type FlightOutcome } from './collapse.js';
import { EdgeError } from './errors.js';
import { drainInBackground, fillWhileStreaming, sliceFill } from './fill.js';
import { appendVia, forwardRequestHeaders, headersToRecord, splitList, withoutHopByHop, type ForwardingOptions } from './headers.js';
import type { EdgeOptions } from './options.js';
import type { OriginClient } from './origin/types.js';
import { fieldsNotToStore, parseCacheControl, type EdgePolicy, type PolicyFactory, type PolicyRequest } from './policy.js';
import {
  clientValidatorsMatch,
  decideRange,
  downstreamHeaders,
  entryBody,
  INTERNAL_RESPONSE_FIELDS,
  notModifiedHeaders,
  statusAllowsBody,
} from './respond.js';
import type { ImageVariants } from './image-variants.js';
import { matchRoute, type RouteCacheRules, type RouteConfig } from './routes.js';
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
  /**
   * The request's headers as a lower-case record, when the runtime already
   * has them parsed (Node's `IncomingMessage.headers`): reading
   * `request.headers` on @hono/node-server's lazy Request builds a full
   * Fetch Request, which costs more than the rest of a cache hit.
   */
  requestHeaders?: Record<string, string>;
  /** Relay a 103 Early Hints response to the client, where the runtime can. */
  sendEarlyHints?(headers: Record<string, string | string[]>): void;
  log: RequestLog;
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

/** A GET/HEAD on its way through the pull path. */
/** The first member of a comma-separated forwarding field, trimmed. */
function firstMember(value: string): string {
  const comma = value.indexOf(',');
  return (comma === -1 ? value : value.slice(0, comma)).trim();
}

/**
 * What a stored entry needs on every hit, computed once per stored
 * metadata object (the memory tier hands back the same object each time).
 */
interface PreparedEntry {
  policy: EdgePolicy;
  vary: string[] | '*';
  /** Downstream headers without Age and Cache-Status. */
  headers: Record<string, string>;
}

/** What `describe()` derives from a request. */
export interface Described {
  /** The request URL's path (percent-encoded as the URL parser left it). */
  pathname: string;
  /** `?query` as sent, or ''. */
  search: string;
  /** The absolute request URL. */
  href: string;
  key: string;
  pathAndQuery: string;
  forwarding: ForwardingOptions;
  headers: Record<string, string>;
  /** Cache rules of the matching route, if any. */
  rules?: RouteCacheRules;
}

export interface PullRequest {
  request: Request;
  pathname: string;
  key: string;
  pathAndQuery: string;
  headers: Record<string, string>;
  policyRequest: PolicyRequest;
  isHead: boolean;
  forwarding: ForwardingOptions;
  rules?: RouteCacheRules;
  ctx: RequestContext;
}

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
  private readonly ignoreParam: (name: string) => boolean;
  private readonly trusted: Set<string>;
  private readonly routes: readonly RouteConfig[];
  private readonly preparedMemo = new WeakMap<CacheEntryMeta, PreparedEntry>();
  /**
   * Paths that have a pushed object, so that requests for other paths skip
   * the pushed lookup. The admin API keeps it in step with the store;
   * `loadPushedIndex()` rebuilds it at start-up.
   */
  readonly pushedPaths = new Set<string>();
  /** Image transformation, when the runtime has a transformer (set by createEdgeApp). */
  images?: ImageVariants;

  constructor(deps: PullDeps) {
    this.deps = deps;
    this.ignoreParam = compileParamMatcher(deps.options.ignoreQueryParams);
    this.trusted = new Set(deps.options.trustedProxies);
    this.routes = deps.options.origins?.routes.filter((route) => route.cache !== undefined) ?? [];
  }

  /**
   * Everything the node derives from a request before looking anything up:
   * the primary cache key (query normalised; route rules may keep only some
   * parameters or add request headers), forwarding facts, and the cache
   * rules of the route it matches.
   */
  describe(href: string, clientIp: string | undefined, headers: Record<string, string>): Described {
    // `href` is a Request.url or URL.href: absolute, parser-normalised, without
    // a fragment. Slicing it is exact and spares a URL object on the hit path.
    const schemeEnd = href.indexOf('://');
    const pathStart = href.indexOf('/', schemeEnd + 3);
    const queryStart = pathStart === -1 ? -1 : href.indexOf('?', pathStart);
    const pathname = pathStart === -1 ? '/' : queryStart === -1 ? href.slice(pathStart) : href.slice(pathStart, queryStart);
    const search = queryStart === -1 ? '' : href.slice(queryStart);
    const trustedPeer = clientIp !== undefined && this.trusted.has(clientIp);
    const forwardedProto = trustedPeer ? headers['x-forwarded-proto'] : undefined;
    const forwardedHost = trustedPeer ? headers['x-forwarded-host'] : undefined;
    const proto = firstMember(forwardedProto ?? href.slice(0, schemeEnd));
    const host = firstMember(forwardedHost ?? headers.host ?? href.slice(schemeEnd + 3, pathStart === -1 ? undefined : pathStart));
    const rules = this.routes.length > 0 ? matchRoute(this.routes, { pathname, host, headers })?.cache : undefined;
    const keepOnly = rules?.queryParams ? new Set(rules.queryParams) : undefined;
    const query = normaliseQuery(search, this.ignoreParam, this.deps.options.sortQuery, keepOnly ? (name) => !keepOnly.has(name) : undefined);
    let key = primaryKey(pathname + query, proto, host);
    if (rules?.keyHeaders?.length) {
      // A node-side Vary: the named request headers become part of the key.
      key += '#h:' + rules.keyHeaders.map((name) => `${name}=${encodeURIComponent(headers[name] ?? '')}`).join('&');
    }
    const colon = host.lastIndexOf(':');
    const port = colon > host.lastIndexOf(']') ? host.slice(colon + 1) : undefined;
    const forwarding: ForwardingOptions = { clientIp, trustedPeer, proto, host, port, via: this.deps.options.name };
    return { pathname, search, href, key, forwarding, pathAndQuery: pathname + search, headers, rules };
  }

  /** Rebuild `pushedPaths` from the store (start-up). */
  async loadPushedIndex(): Promise<void> {
    for await (const meta of this.deps.store.list({ pushed: true })) this.pushedPaths.add(keyPath(meta.key));
  }

  async handle(request: Request, ctx: RequestContext): Promise<Response> {
    const described = this.describe(request.url, ctx.clientIp, ctx.requestHeaders ?? headersToRecord(request.headers));
    const { key } = described;
    ctx.log.key = key;
    if (request.method !== 'GET' && request.method !== 'HEAD') return this.passUnsafe(request, ctx, described);
    if (this.images && described.search !== '' && this.images.applies(described.pathname)) {
      const params = await this.images.parse(new URL(described.href));
      if (params) return this.images.handle(request, ctx, params, described);
    }
    const pull = this.requestFor(request, ctx, described);
    if (key.length > MAX_KEY_LENGTH || described.rules?.bypass) return this.fetchFromOrigin(pull, { reason: 'bypass' }, false);
    // A request with credentials is not answered from the shared cache; its
    // response may still be stored if the origin marks it public (RFC 9111 3.5).
    if (pull.headers.authorization !== undefined) return this.fetchFromOrigin(pull, { reason: 'request' });
    return this.serve(pull);
  }

  /** The pull-path view of a GET/HEAD request (for `key`, by default the described one). */
  requestFor(request: Request, ctx: RequestContext, described: Described, key = described.key): PullRequest {
    const { headers } = described;
    return {
      request,
      pathname: described.pathname,
      key,
      pathAndQuery: described.pathAndQuery,
      headers,
      policyRequest: { url: described.pathAndQuery, method: 'GET', headers },
      isHead: request.method === 'HEAD',
      forwarding: described.forwarding,
      rules: described.rules,
      ctx,
    };
  }

  /** Seconds a stale entry may stand in for a failing origin without stale-if-error. */
  private graceFor(pull: PullRequest): number {
    return pull.rules?.grace ?? pull.rules?.staleIfError ?? this.deps.options.staleGrace;
  }

  /** Look up, then hit, revalidate or miss. */
  async serve(pull: PullRequest): Promise<Response> {
    if (this.pushedPaths.has(pull.pathname)) {
      const pushed = await this.servePushed(pull);
      if (pushed) return pushed;
    }
    const entries = await this.deps.store.get(pull.key);
    const entry = this.selectVariant(entries, pull.headers);
    if (entry) {
      const policy = this.policyOf(entry.meta);
      const freshness = entry.meta.invalidated ? 'revalidate' : policy.evaluate(pull.policyRequest, this.deps.options.honorRequestCacheControl);
      if (freshness === 'fresh' || freshness === 'stale-allowed') {
        pull.ctx.log.outcome = freshness === 'fresh' ? 'hit' : 'stale';
        return this.fromCache(pull, entry, policy, { hit: true, ttl: policy.freshnessLifetime() - policy.age() });
      }
      if (freshness === 'stale-while-revalidate') {
        pull.ctx.log.outcome = 'stale';
        this.refreshInBackground(pull, entry, policy);
        return this.fromCache(pull, entry, policy, {
          hit: true,
          ttl: policy.freshnessLifetime() - policy.age(),
          detail: 'stale-while-revalidate',
        });
      }
      if (this.onlyIfCached(pull)) {
        pull.ctx.log.outcome = 'miss';
        return this.gatewayTimeout('stale');
      }
      // RFC 9211 2.2: fwd=request when the entry was fresh but the request asked to go forward.
      const reason = !entry.meta.invalidated && policy.isFresh() ? 'request' : 'stale';
      return this.collapsed(pull, `${pull.key}\u0000${entry.meta.variant}`, { reason, stale: { entry, policy } });
    }
    if (this.onlyIfCached(pull)) {
      pull.ctx.log.outcome = 'miss';
      return this.gatewayTimeout('miss');
    }
    return this.collapsed(pull, pull.key, { reason: entries.length > 0 ? 'vary-miss' : 'uri-miss' });
  }

  /**
   * Pushed objects answer without ever asking the origin until they
   * expire; client Cache-Control cannot force a revalidation (there is
   * nothing upstream to revalidate with).
   */
  private async servePushed(pull: PullRequest): Promise<Response | undefined> {
    const [entry] = await this.deps.store.get(pushedKey(pull.pathname));
    if (!entry) return undefined;
    const policy = this.policyOf(entry.meta);
    // Soft-purged or expired: fall through to the pull path.
    if (!policy.isFresh() || entry.meta.invalidated) return undefined;
    pull.ctx.log.outcome = 'hit';
    pull.ctx.log.detail = 'pushed';
    return this.fromCache(pull, entry, policy, { hit: true, ttl: policy.freshnessLifetime() - policy.age(), detail: 'pushed' });
  }

  private onlyIfCached(pull: PullRequest): boolean {
    return this.deps.options.honorRequestCacheControl && parseCacheControl(pull.headers['cache-control']).has('only-if-cached');
  }

  /** RFC 9111 5.2.1.7: only-if-cached with nothing usable stored. */
  private gatewayTimeout(fwd: ForwardReason): Response {
    return new Response(null, {
      status: 504,
      headers: { 'cache-status': formatCacheStatus(this.deps.options.name, { fwd, detail: 'only-if-cached' }) },
    });
  }

  /** One origin request per flight key; others wait and then read the cache. */
  private async collapsed(pull: PullRequest, flightKey: string, plan: OriginFetchPlan): Promise<Response> {
    const joinedAt = this.deps.now();
    const flight = this.flights.join(flightKey);
    if (!flight) return this.fetchFromOrigin(pull, { ...plan, land: this.flights.lead(flightKey) });

    const outcome = await waitForFlight(flight, this.deps.options.collapseTimeout);
    pull.ctx.log.collapsed = true;
    if (outcome !== 'timeout') {
      if (outcome.kind === 'failed') {
        if (plan.stale && plan.stale.policy.canServeStaleOnError(this.graceFor(pull))) {
          pull.ctx.log.outcome = 'stale';
          return this.fromCache(pull, plan.stale.entry, plan.stale.policy, { fwd: 'stale', collapsed: true, detail: 'stale-if-error' });
        }
        throw outcome.error;
      }
      if (outcome.kind === 'stored') {
        const entry = this.selectVariant(await this.deps.store.get(pull.key), pull.headers);
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
      .then((response) => response.body?.cancel())
      .then(() => Promise.allSettled(fills))
      .catch(() => {
        // A failed refresh leaves the stale entry; the next request retries.
      })
      .finally(() => this.refreshing.delete(refreshKey));
    pull.ctx.waitUntil(work);
  }

  /**
   * Go to the origin for a GET (HEAD is sent as GET so the cache fills),
   * conditionally when revalidating, and store what may be stored.
   */
  async fetchFromOrigin(pull: PullRequest, plan: OriginFetchPlan, mayStore = true): Promise<Response> {
    const { options, origin, policies, store, now } = this.deps;
    const headers = forwardRequestHeaders(pull.request.headers, pull.forwarding);
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
        pathAndQuery: pull.pathAndQuery,
        headers,
        cacheKey: pull.key,
        onInformational: (status, info) => {
          if (status === 103) pull.ctx.sendEarlyHints?.(info);
        },
      });
    } catch (error) {
      pull.ctx.log.originMs = now() - started;
      if (stale && stale.policy.canServeStaleOnError(this.graceFor(pull))) {
        plan.land?.({ kind: 'failed', error });
        pull.ctx.log.outcome = 'stale';
        return this.fromCache(pull, stale.entry, stale.policy, { fwd: 'stale', detail: 'stale-if-error' });
      }
      plan.land?.({ kind: 'failed', error });
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
        return this.fromCache(pull, { meta, body: stale.entry.body }, freshened.policy, {
          fwd: plan.reason,
          fwdStatus: 304,
          ttl: freshened.policy.freshnessLifetime() - freshened.policy.age(),
        });
      }
      // The 304 does not describe what we hold (RFC 9111 4.3.3): ask again, unconditionally.
      return this.fetchFromOrigin(pull, { reason: plan.reason, land: plan.land }, mayStore);
    }

    if (stale && response.status >= 500 && stale.policy.canServeStaleOnError(this.graceFor(pull))) {
      await response.body?.cancel();
      plan.land?.({ kind: 'failed', error: new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', `The origin answered ${response.status}.`) });
      pull.ctx.log.outcome = 'stale';
      return this.fromCache(pull, stale.entry, stale.policy, { fwd: 'stale', fwdStatus: response.status, detail: 'stale-if-error' });
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
    const cc = parseCacheControl(stored['cache-control']);
    const targeted = this.targetedFields().some((field) => stored[field] !== undefined);
    const explicit = targeted || cc.has('max-age') || cc.has('s-maxage') || stored.expires !== undefined;
    if (explicit && !override) return;
    stored[this.deps.options.targetedCacheControl] = `max-age=${ttl}${staleIfError ? `, stale-if-error=${staleIfError}` : ''}`;
  }

  private targetedFields(): string[] {
    return [this.deps.options.targetedCacheControl, 'cdn-cache-control'];
  }

  private async storeAndRespond(pull: PullRequest, plan: OriginFetchPlan, response: Response, mayStore: boolean): Promise<Response> {
    const { options, policies, store, now } = this.deps;
    const { clean, stored, setCookies, upstreamStatus } = this.storableHeaders(response.headers);
    const status = response.status;
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
      // No freshness and no validator: storing it could never save a fetch.
      (policy.freshnessLifetime() > 0 || policy.hasValidator()) &&
      !(contentLength !== undefined && contentLength > options.maxObjectSize) &&
      response.body !== null === statusAllowsBody(status);

    if (plan.stale && !storable) pull.ctx.waitUntil(store.delete(pull.key, plan.stale.entry.meta.variant));

    const fields: CacheStatusFields = plan.stale
      ? { fwd: plan.reason, fwdStatus: status, stored: storable }
      : { fwd: plan.reason, stored: storable };
    if (storable) fields.ttl = policy.freshnessLifetime() - policy.age();
    const clientHeaders = this.downstream(clean, formatCacheStatus(options.name, fields, upstreamStatus));
    pull.ctx.log.outcome = plan.reason === 'bypass' || plan.reason === 'request' ? 'bypass' : plan.stale ? 'stale' : 'miss';

    if (!storable) {
      plan.land?.({ kind: 'uncacheable' });
      if (pull.isHead) {
        await response.body?.cancel();
        return new Response(null, { status, headers: clientHeaders });
      }
      return new Response(response.body, { status, headers: clientHeaders });
    }

    const variant = variantFor(vary as string[], pull.headers);
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

    if (pull.isHead) {
      drainInBackground(filled, pull.ctx.waitUntil);
      return new Response(null, { status, headers: clientHeaders });
    }
    if (!statusAllowsBody(status)) {
      drainInBackground(filled, pull.ctx.waitUntil);
      return new Response(null, { status, headers: clientHeaders });
    }
    if (status === 200 && clientValidatorsMatch(pull.headers, stored)) {
      drainInBackground(filled, pull.ctx.waitUntil);
      return new Response(null, { status: 304, headers: notModifiedHeaders(headersToRecord(clientHeaders)) });
    }
    // A Range request that misses: the origin sent the whole object (it fills
    // the cache); the client gets its range from that stream.
    if (status === 200 && pull.headers.range !== undefined && contentLength !== undefined) {
      const range = decideRange(pull.headers, stored, contentLength);
      if (range.kind === 'unsatisfiable') {
        drainInBackground(filled, pull.ctx.waitUntil);
        clientHeaders.set('content-range', `bytes */${contentLength}`);
        clientHeaders.delete('content-length');
        return new Response(null, { status: 416, headers: clientHeaders });
      }
      if (range.kind === 'partial') {
        clientHeaders.set('content-range', `bytes ${range.start}-${range.end}/${contentLength}`);
        clientHeaders.set('content-length', String(range.end - range.start + 1));
        return new Response(sliceFill(filled, range.start, range.end, pull.ctx.waitUntil), { status: 206, headers: clientHeaders });
      }
    }
    return new Response(filled, { status, headers: clientHeaders });
  }

  /** Client-facing headers for an origin response (miss or pass). */
  private downstream(clean: Headers, cacheStatus: string): Headers {
    const out = new Headers(clean);
    for (const name of INTERNAL_RESPONSE_FIELDS) out.delete(name);
    out.delete(this.deps.options.targetedCacheControl);
    appendVia(out, this.deps.options.name);
    out.set('cache-status', cacheStatus);
    return out;
  }

  /** Answer from a stored entry: validators, ranges, HEAD. */
  fromCache(pull: PullRequest, entry: CacheEntry, policy: EdgePolicy, fields: CacheStatusFields): Response {
    const { meta } = entry;
    const { options } = this.deps;
    if (entry.tier) pull.ctx.log.tier = entry.tier;
    const headers = { ...this.prepare(meta).headers };
    headers.age = String(Math.floor(policy.age()));
    headers['cache-status'] = formatCacheStatus(options.name, fields);

    if (meta.status === 200 && clientValidatorsMatch(pull.headers, meta.headers)) {
      return new Response(null, { status: 304, headers: notModifiedHeaders(headers) });
    }
    if (!statusAllowsBody(meta.status)) return new Response(null, { status: meta.status, headers });
    const size = entry.body.size;
    if (meta.status === 200 && pull.headers.range !== undefined) {
      const range = pull.isHead ? ({ kind: 'full' } as const) : decideRange(pull.headers, meta.headers, size);
      if (range.kind === 'unsatisfiable') {
        headers['content-range'] = `bytes */${size}`;
        delete headers['content-length'];
        return new Response(null, { status: 416, headers });
      }
      if (range.kind === 'partial') {
        headers['content-range'] = `bytes ${range.start}-${range.end}/${size}`;
        headers['content-length'] = String(range.end - range.start + 1);
        return new Response(entryBody(entry, range.start, range.end), { status: 206, headers });
      }
    }
    return new Response(pull.isHead ? null : entryBody(entry), { status: meta.status, headers });
  }

  /** The stored variant matching the request's Vary-named headers (RFC 9111 4.1). */
  selectVariant(entries: CacheEntry[], requestHeaders: Record<string, string>): CacheEntry | undefined {
    if (entries.length === 1 && entries[0]!.meta.variant === '') {
      const { vary } = this.prepare(entries[0]!.meta);
      if (vary !== '*' && vary.length === 0) return entries[0];
    }
    let best: CacheEntry | undefined;
    for (const entry of entries) {
      const names = this.prepare(entry.meta).vary;
      if (names === '*') continue;
      if (variantFor(names, requestHeaders) !== entry.meta.variant) continue;
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
      const headers = downstreamHeaders(meta.headers, options.targetedCacheControl);
      headers.via = headers.via ? `${headers.via}, 1.1 ${options.name}` : `1.1 ${options.name}`;
      if (statusAllowsBody(meta.status)) headers['content-length'] = String(meta.size);
      else delete headers['content-length'];
      if (meta.status === 200) headers['accept-ranges'] = 'bytes';
      prepared = {
        policy: policy ?? this.deps.policies.fromStored(meta.policy, meta.headers),
        vary: varyNames(meta.headers.vary),
        headers,
      };
      this.preparedMemo.set(meta, prepared);
    }
    return prepared;
  }


  /** Methods other than GET/HEAD: pass through, then invalidate what they changed. */
  private async passUnsafe(request: Request, ctx: RequestContext, { key, forwarding, pathAndQuery, headers: requestHeaders }: Described): Promise<Response> {
    const headers = forwardRequestHeaders(request.headers, forwarding);
    const started = this.deps.now();
    let response: Response;
    try {
      response = await this.deps.origin.fetch({
        method: request.method,
        pathAndQuery,
        headers,
        body: request.body,
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
          const target = new URL(value, request.url);
          const sameHost = target.host === new URL(request.url).host;
          if (!sameHost) continue;
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
    const body = statusAllowsBody(response.status) ? response.body : null;
    return new Response(body, {
      status: response.status,
      headers: this.downstream(clean, formatCacheStatus(this.deps.options.name, { fwd: 'method' }, upstreamStatus)),
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
