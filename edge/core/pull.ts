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
import { formatCacheStatus, type CacheStatusFields, type ForwardReason } from './cache-status.js';
import { derivedKey, keyPath, MAX_KEY_LENGTH, pushedKey, variantFor, varyNames } from './cache-key.js';
import { FlightTable, SOLE_PROCESS_FILLS, waitForFlight, type FillCoordinator, type FillLease, type FlightOutcome } from './collapse.js';
import { ORIGIN_ETAG_FIELD, VARY_ADDED_FIELD, withVaryMember, type Coding, type CodingPlan } from './compression.js';
import { RequestDescriber, type Described } from './describe.js';
import { forwardRequestHeaders, withoutHopByHop } from './headers.js';
import { OriginFetch } from './origin-fetch.js';
import { keysMatcher, PurgeLog } from './purge-log.js';
import { Recoder, type RecodeTarget } from './recode.js';
import { SlicedObjects } from './slice.js';
import type { EdgePolicy } from './policy.js';
import { parseCacheControl } from './policy.js';
import type { IncomingRequest, OriginFetchPlan, PullDeps, PullRequest, RequestContext, RequestLog } from './request.js';
import {
  answerFromEntry,
  answerFromOrigin,
  answerGatewayTimeout,
  answerWhileFilling,
  droppedResponseFields,
  hasBytes,
  storedAnswerHeaders,
  type Answer,
} from './responder.js';
import type { CacheEntry, CacheEntryMeta } from './store/types.js';

export type { IncomingRequest, PullDeps, PullRequest, RequestContext, RequestLog } from './request.js';

/** `Accept-Encoding` as the origin is asked for each coding (`describe.ts`): what a coding variant was keyed with. */
const CODING_REQUESTS: readonly (readonly [Coding, string | undefined])[] = [
  ['br', 'br'],
  ['gzip', 'gzip'],
  ['identity', undefined],
];

/** How long a key found uncacheable skips request collapsing (Varnish's hit-for-miss; it defaults to 120 s). */
const UNCACHEABLE_MEMORY_MS = 10_000;
const MAX_UNCACHEABLE_KEYS = 10_000;

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
  /** A brotli entry the node made below `--brotli-background-level`: a hit queues its re-compression. */
  recompress: boolean;
}

/** The freshness decision for a stored entry, as a typed outcome. */
type Decision =
  | { kind: 'serve'; outcome: 'hit' | 'stale'; fields: CacheStatusFields; refresh: boolean }
  | { kind: 'forward'; reason: ForwardReason };

export class PullCache {
  private readonly deps: PullDeps;
  private readonly flights = new FlightTable();
  /** Fill leases beyond this process (cluster workers); one process grants them at once. */
  private readonly fills: FillCoordinator;
  private readonly refreshing = new Set<string>();
  /** Keys found uncacheable, until when (ms); bounded, oldest first out. */
  private readonly uncacheable = new Map<string, number>();
  private readonly preparedMemo = new WeakMap<CacheEntryMeta, PreparedEntry>();
  readonly describer: RequestDescriber;
  /** Purges that fills in flight must respect (the admin API records them). */
  readonly purges = new PurgeLog();
  /** Fetches, revalidates and stores (see `origin-fetch.ts`). */
  private readonly origin: OriginFetch;
  /** Compresses and decodes bodies into the cache (see `recode.ts`). */
  private readonly recoder: Recoder;
  /** Large objects in pieces (`--slice-size`, see `slice.ts`). */
  private readonly slices: SlicedObjects;
  /** How a pushed object reaches each coding, per stored metadata object (pushed hits ask on every request). */
  private readonly pushedPlans = new WeakMap<CacheEntryMeta, Partial<Record<Coding, CodingPlan>>>();
  /** Pushed objects' metadata with `Vary: Accept-Encoding` added, per stored metadata object. */
  private readonly variedMetas = new WeakMap<CacheEntryMeta, CacheEntryMeta>();
  /** Response fields no answer carries (see `droppedResponseFields`). */
  private readonly dropped: ReadonlySet<string>;
  /**
   * Paths that have a pushed object, so that requests for other paths skip
   * the pushed lookup. The admin API keeps it in step with the store;
   * `loadPushedIndex()` rebuilds it at start-up.
   */
  readonly pushedPaths = new Set<string>();

  /**
   * `carried`: the pull cache of the configuration this one replaces (a
   * reload, see {@link reconfigured}); its flights, hit-for-miss memory,
   * purge log and pushed-path index are this one's too.
   */
  constructor(deps: PullDeps, carried?: PullCache) {
    this.deps = deps;
    if (carried) {
      this.flights = carried.flights;
      this.refreshing = carried.refreshing;
      this.uncacheable = carried.uncacheable;
      this.purges = carried.purges;
      this.pushedPaths = carried.pushedPaths;
    }
    this.fills = deps.fills ?? SOLE_PROCESS_FILLS;
    this.describer = new RequestDescriber(deps.options);
    this.dropped = droppedResponseFields(deps.options.targetedCacheControl, deps.options.forwardCdnHeaders);
    this.recoder = new Recoder({ options: deps.options, coder: deps.coder, store: deps.store, purges: this.purges, now: deps.now });
    this.origin = new OriginFetch(
      deps,
      {
        fromCache: (pull, entry, policy, fields) => this.fromCache(pull, entry, policy, fields),
        remember: (meta, policy) => void this.prepare(meta, policy),
        graceFor: (pull) => this.graceFor(pull),
        staleFallback: (pull, stale, fields) => this.staleFallback(pull, stale, fields),
      },
      this.dropped,
      this.purges,
      this.recoder,
    );
    this.slices = new SlicedObjects(deps, this.origin, this.flights, this.purges, this.dropped, {
      policyOf: (meta) => this.policyOf(meta),
      graceFor: (pull) => this.graceFor(pull),
      restart: (pull) => this.serve(pull),
    });
    if (this.slices.enabled) this.origin.largeObjects = this.slices;
  }

  /**
   * The pull cache for a new configuration (options, origin client,
   * policies): requests that started on this one finish on it, new ones
   * use the new one, and both share what outlives a configuration, so no
   * flight is split and no purge is missed by a fill in flight.
   */
  reconfigured(deps: PullDeps): PullCache {
    return new PullCache(deps, this);
  }

  /** Resolves once background re-compressions are done (shutdown, tests). */
  backgroundIdle(): Promise<void> {
    return this.recoder.idle();
  }

  /** Origin fetches under way that others wait on, and how many wait (status, tests). */
  flightStats(): { flights: number; waiters: number } {
    return this.flights.stats();
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
    if (pull.key.length > MAX_KEY_LENGTH || described.rules?.bypass) return this.origin.fetch(pull, { reason: 'bypass' }, false);
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
  answerFreshHit(method: string, described: Described, log: RequestLog): Answer | undefined {
    const { store } = this.deps;
    if (!store.getSync || (method !== 'GET' && method !== 'HEAD')) return undefined;
    if (described.key.length > MAX_KEY_LENGTH || described.rules?.bypass || described.credentials === 'authorization') return undefined;
    const pull = this.requestFor(method === 'HEAD', { log, waitUntil: () => {} }, described);
    if (this.pushedPaths.has(described.pathname)) {
      const [entry] = store.getSync(pushedKey(described.pathname)) ?? [];
      if (!entry) return undefined;
      const policy = this.policyOf(entry.meta);
      if (!policy.isFresh() || entry.meta.invalidated) return undefined;
      const coding = this.pushedCoding(entry.meta, described.coding);
      let answered = entry;
      if (coding.recode) {
        const [made] = store.getSync(codedKey(entry.meta.key, coding)) ?? [];
        if (!made || !madeFrom(made.meta, entry.meta)) return undefined;
        answered = made;
      } else if (coding.varies) {
        answered = { ...entry, meta: this.varied(entry.meta) };
      }
      if (!hasBytes(answered)) return undefined;
      log.key = described.key;
      return this.answerPushed(pull, answered, policy);
    }
    const entries = store.getSync(described.key, (entry) => this.variantMatches(entry, described.upstream));
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
      return this.origin.fetch(pull, { reason: 'request' });
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
        return this.origin.fetch(pull, { reason: 'request' }, false);
      }
      return this.collapsed(pull, `${pull.key}\u0000${entry.meta.variant}`, { reason: decision.reason, stale: { entry, policy: this.policyOf(entry.meta) } });
    }
    // Another coding of the same response is stored and fresh: made from it, without the origin.
    const sibling = entries.length > 0 ? this.codingSibling(pull, entries) : undefined;
    if (sibling) return this.recoded(pull, sibling.entry, sibling.plan, { key: pull.key, variant: sibling.variant });
    if (this.slices.enabled && described.credentials === undefined) {
      // A sliced object (or one to slice): its record and pieces are derived entries, not the key's own.
      const sliced = await this.slices.serve(pull, entries.length > 0 ? 'vary-miss' : 'uri-miss');
      if (sliced) return sliced;
    }
    if (this.onlyIfCached(pull)) return this.gatewayTimeout(pull, 'miss');
    if (this.knownUncacheable(pull.key)) {
      // Straight to the origin, no queue; a HEAD is sent as HEAD (its answer will not be stored).
      const reason = entries.length > 0 ? 'vary-miss' : 'uri-miss';
      if (pull.isHead) return this.origin.fetch(pull, { reason, method: 'HEAD' }, false);
      // A range of what cannot be stored: the origin sends only the range. Such
      // a pass does not renew the memory (Varnish's hit-for-miss neither): once it
      // lapses, a whole fetch finds out whether the object may be stored now.
      if (pull.described.headers.range !== undefined) return this.origin.fetch(pull, { reason, forwardRange: true }, false);
      return this.origin.fetch(pull, { reason, land: this.remembering(pull.key, () => {}) });
    }
    // Private requests never lead or follow a shared flight: their answer is theirs.
    if (described.credentials === 'cookie') return this.origin.fetch(pull, { reason: entries.length > 0 ? 'vary-miss' : 'uri-miss' });
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
    const coding = this.pushedCoding(entry.meta, pull.described.coding);
    if (!coding.recode) return this.answerPushed(pull, coding.varies ? { ...entry, meta: this.varied(entry.meta) } : entry, policy);
    // A coding the node makes from the pushed bytes: a derived entry, removed with the object (sourceKey).
    const key = codedKey(entry.meta.key, coding);
    const [made] = await this.deps.store.get(key);
    if (made && madeFrom(made.meta, entry.meta)) return this.answerPushed(pull, made, policy);
    return this.recoded(pull, entry, coding, { key, variant: '', sourceKey: entry.meta.key }, 'pushed');
  }

  /** How a pushed object reaches a client that negotiated `wanted` (memoised per stored metadata). */
  private pushedCoding(meta: CacheEntryMeta, wanted: Coding): CodingPlan {
    let plans = this.pushedPlans.get(meta);
    if (!plans) this.pushedPlans.set(meta, (plans = {}));
    return (plans[wanted] ??= this.recoder.plan({ status: meta.status, headers: meta.headers, size: meta.size }, wanted, true));
  }

  /** A pushed object's metadata as answered when it varies on Accept-Encoding (built once per stored metadata). */
  private varied(meta: CacheEntryMeta): CacheEntryMeta {
    let varied = this.variedMetas.get(meta);
    if (!varied) {
      varied = { ...meta, headers: { ...meta.headers, vary: withVaryMember(meta.headers.vary, 'Accept-Encoding') } };
      this.variedMetas.set(meta, varied);
    }
    return varied;
  }

  /**
   * A fresh stored 200 of this request's key that differs from what it
   * needs only in its coding (every other Vary dimension matches), from
   * which the wanted coding can be made: identity preferred (compress
   * only), then a coding the node decodes.
   */
  private codingSibling(pull: PullRequest, entries: CacheEntry[]): { entry: CacheEntry; plan: CodingPlan; variant: string } | undefined {
    if (!this.deps.coder || !this.deps.options.compress) return undefined;
    const { upstream, coding: wanted } = pull.described;
    let found: { entry: CacheEntry; plan: CodingPlan; variant: string } | undefined;
    for (const entry of entries) {
      const { vary } = this.prepare(entry.meta);
      // Only where the node itself made the response vary on Accept-Encoding: an origin that does is asked for each coding.
      if (vary === '*' || entry.meta.headers[VARY_ADDED_FIELD] === undefined || entry.meta.status !== 200 || entry.meta.invalidated) continue;
      const asked = CODING_REQUESTS.find(([coding, value]) => coding !== wanted && variantFor(vary, withAcceptEncoding(upstream, value)) === entry.meta.variant);
      if (!asked) continue;
      const decision = this.decide(pull, entry);
      if (decision.kind !== 'serve' || decision.outcome !== 'hit' || decision.refresh) continue;
      const plan = this.recoder.plan({ status: 200, headers: entry.meta.headers, size: entry.meta.size }, wanted, true);
      if (!plan.storable || (plan.to !== wanted && plan.to !== 'identity')) continue;
      if (!found || (plan.from === 'identity' && found.plan.from !== 'identity')) found = { entry, plan, variant: variantFor(vary, upstream) };
    }
    return found;
  }

  /**
   * Make `target` from a stored entry (`plan`: compress, decode or copy),
   * once however many ask at the same time, and answer while it is stored.
   * It is a hit: the origin is not asked, and freshness is the source's.
   * `detail` goes to Cache-Status (`recoded`; `pushed` for pushed objects).
   */
  private async recoded(pull: PullRequest, source: CacheEntry, plan: CodingPlan, target: RecodeTarget, detail = 'recoded', rejoined = false): Promise<Answer> {
    const { store, options } = this.deps;
    const policy = this.policyOf(source.meta);
    const flightKey = `${target.key}\u0000${target.variant}\u0000recode`;
    const flight = this.flights.join(flightKey);
    if (flight) {
      const outcome = await waitForFlight(flight, options.collapseTimeout);
      pull.ctx.log.collapsed = true;
      const made = (await store.get(target.key)).find((entry) => entry.meta.variant === target.variant && madeFrom(entry.meta, source.meta));
      if (made) {
        pull.ctx.log.outcome = 'hit';
        return this.fromCache(pull, made, policy, { hit: true, collapsed: true, ttl: policy.freshnessLifetime() - policy.age(), detail });
      }
      if (outcome === 'timeout' && !rejoined) return this.recoded(pull, source, plan, target, detail, true);
    }
    const land = flight ? undefined : this.flights.lead(flightKey);
    const { waitUntil } = pull.ctx;
    const { meta, body } = this.recoder.fillFromStored(source, plan, target, waitUntil, (stored, error) => {
      if (stored && target.variant !== '') waitUntil(this.origin.boundVariants(target.key));
      land?.(stored ? { kind: 'stored' } : error !== undefined ? { kind: 'failed', error } : { kind: 'uncacheable' });
    });
    if (source.tier) pull.ctx.log.tier = source.tier;
    pull.ctx.log.outcome = 'hit';
    pull.ctx.log.detail = detail;
    const ttl = policy.freshnessLifetime() - policy.age();
    return answerWhileFilling(
      meta,
      storedAnswerHeaders(meta, this.dropped, options.name),
      { isHead: pull.isHead, headers: pull.described.headers },
      policy.age(),
      formatCacheStatus(options.name, { hit: true, ttl, detail }),
      body,
      !plan.recode,
    );
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
  private async collapsed(pull: PullRequest, flightKey: string, plan: OriginFetchPlan, rejoined = false, joinedAt = this.deps.now()): Promise<Answer> {
    const flight = this.flights.join(flightKey);
    if (!flight) {
      return this.leadFlight(pull, flightKey, plan, this.remembering(pull.key, this.flights.lead(flightKey)), joinedAt);
    }

    const outcome = await waitForFlight(flight, this.deps.options.collapseTimeout);
    pull.ctx.log.collapsed = true;
    if (outcome === 'timeout') {
      // A slow origin: one follower takes the lead, the others wait for it once more.
      const land = this.flights.takeOver(flightKey, flight);
      // It asks for the fill lease too: in a cluster the stalled fill may be another worker's, and its lease passes to one waiter only.
      if (land) return this.leadFlight(pull, flightKey, { reason: plan.reason, stale: plan.stale }, this.remembering(pull.key, land), joinedAt);
      if (!rejoined) {
        // The fill that took over may have landed already (in a cluster it may be another worker's): look before queueing again.
        const stored = await this.followed(pull, plan, { kind: 'stored' }, joinedAt);
        // Still waiting since it first joined: an entry stored since then answers it.
        return stored ?? this.collapsed(pull, flightKey, plan, true, joinedAt);
      }
    } else if (outcome.kind === 'uncacheable' && outcome.purged && !rejoined) {
      // The leader's response was purged on its way: they collapse again, so one fetches the new version for all.
      return this.collapsed(pull, flightKey, plan, true);
    } else {
      const since = outcome.kind === 'stored' && outcome.since !== undefined ? Math.min(joinedAt, outcome.since) : joinedAt;
      const answer = await this.followed(pull, plan, outcome, since);
      if (answer) return answer;
    }
    return this.origin.fetch(pull, { reason: plan.reason, stale: plan.stale });
  }

  /** This process's flight leader: other processes (cluster workers) may be filling the same key, so it asks for the fill lease first. */
  private leadFlight(pull: PullRequest, flightKey: string, plan: OriginFetchPlan, land: (outcome: FlightOutcome) => void, joinedAt: number): Promise<Answer> {
    const lease = this.fills.acquire(flightKey);
    return lease instanceof Promise ? lease.then((granted) => this.withLease(pull, plan, land, granted, joinedAt)) : this.withLease(pull, plan, land, lease, joinedAt);
  }

  /**
   * This process's flight leader with its fill lease: fetch (landing both
   * this process's flight and the lease), or act on another process's
   * outcome and hand it to this process's followers too.
   */
  private async withLease(pull: PullRequest, plan: OriginFetchPlan, land: (outcome: FlightOutcome) => void, lease: FillLease, joinedAt: number): Promise<Answer> {
    if (lease.role === 'lead') {
      return this.origin.fetch(pull, {
        ...plan,
        land: (outcome) => {
          lease.land(outcome);
          land(outcome);
        },
      });
    }
    if (lease.role === 'alone') return this.origin.fetch(pull, { ...plan, land });
    pull.ctx.log.collapsed = true;
    const since = Math.min(joinedAt, lease.since ?? joinedAt);
    // This process's followers joined before the lease was answered, perhaps after the other worker committed: its fill counts from when it began for them too.
    land(lease.outcome.kind === 'stored' ? { kind: 'stored', since } : lease.outcome);
    return (await this.followed(pull, plan, lease.outcome, since)) ?? this.origin.fetch(pull, { reason: plan.reason, stale: plan.stale });
  }

  /** A follower's answer from its leader's outcome; undefined when it must go to the origin itself. */
  private async followed(pull: PullRequest, plan: OriginFetchPlan, outcome: FlightOutcome, joinedAt: number): Promise<Answer | undefined> {
    if (outcome.kind === 'shared') {
      const { answer } = outcome;
      pull.ctx.log.outcome = 'miss';
      const cacheStatus = formatCacheStatus(this.deps.options.name, { fwd: plan.reason, fwdStatus: plan.stale ? answer.status : undefined, collapsed: true }, answer.upstreamStatus);
      const headers: Record<string, string> = Object.assign({}, answer.headers);
      headers['cache-status'] = cacheStatus;
      return { status: answer.status, headers, body: pull.isHead ? null : answer.body };
    }
    if (outcome.kind === 'failed') {
      const fallback = this.staleFallback(pull, plan.stale, { collapsed: true });
      if (fallback) return fallback;
      throw outcome.error;
    }
    if (outcome.kind === 'stored') {
      const entries = await this.deps.store.get(pull.key);
      const entry = this.selectVariant(entries, pull.described.upstream);
      // The entry the leader just stored answers its followers even when it
      // was stale on arrival (max-age=0): they asked at the same moment.
      if (entry && !entry.meta.invalidated && entry.meta.storedAt >= joinedAt - 1) {
        const policy = this.policyOf(entry.meta);
        pull.ctx.log.outcome = plan.stale ? 'revalidated' : 'miss';
        return this.fromCache(pull, entry, policy, { fwd: plan.reason, collapsed: true, ttl: policy.freshnessLifetime() - policy.age() });
      }
      // The leader stored another coding: this one is made from it.
      const sibling = entry ? undefined : this.codingSibling(pull, entries);
      if (sibling) return this.recoded(pull, sibling.entry, sibling.plan, { key: pull.key, variant: sibling.variant });
      // The leader is storing the object in pieces (too large to store whole, `slice.ts`): answered from them.
      if (!entry && this.slices.enabled && !plan.stale && pull.described.credentials === undefined) return this.slices.serve(pull, plan.reason);
    }
    return undefined;
  }

  /**
   * Wrap a flight's `land` to remember its key as uncacheable for a while
   * (Varnish's hit-for-miss): later requests go straight to the origin,
   * side by side, instead of queueing behind a flight that cannot help them.
   * A stored answer forgets it again.
   */
  private remembering(key: string, land: (outcome: FlightOutcome) => void): (outcome: FlightOutcome) => void {
    return (outcome) => {
      if ((outcome.kind === 'uncacheable' && !outcome.purged) || outcome.kind === 'shared') {
        this.uncacheable.delete(key);
        this.uncacheable.set(key, this.deps.now() + UNCACHEABLE_MEMORY_MS);
        if (this.uncacheable.size > MAX_UNCACHEABLE_KEYS) this.uncacheable.delete(this.uncacheable.keys().next().value!);
      } else if (outcome.kind === 'stored') {
        this.uncacheable.delete(key);
      }
      land(outcome);
    };
  }

  /** Was `key` found uncacheable a moment ago? */
  private knownUncacheable(key: string): boolean {
    const until = this.uncacheable.get(key);
    if (until === undefined) return false;
    if (until > this.deps.now()) return true;
    this.uncacheable.delete(key);
    return false;
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
    const work = this.origin.fetch(background, { reason: 'stale', stale: { entry, policy } })
      .then((answer) => (answer.body instanceof ReadableStream ? answer.body.cancel() : undefined))
      .then(() => Promise.allSettled(fills))
      .catch(() => {
        // A failed refresh leaves the stale entry; the next request retries.
      })
      .finally(() => this.refreshing.delete(refreshKey));
    pull.ctx.waitUntil(work);
  }

  /** Answer from a stored entry: validators, ranges, HEAD. */
  fromCache(pull: PullRequest, entry: CacheEntry, policy: EdgePolicy, fields: CacheStatusFields): Answer {
    if (entry.tier) pull.ctx.log.tier = entry.tier;
    const prepared = this.prepare(entry.meta);
    if (prepared.recompress) this.recoder.afterHit(entry.meta);
    return answerFromEntry(
      entry,
      prepared.headers,
      { isHead: pull.isHead, headers: pull.described.headers },
      policy.age(),
      formatCacheStatus(this.deps.options.name, fields),
    );
  }

  /** Is this stored entry the variant for these request headers (as the origin would receive them)? */
  private variantMatches(entry: CacheEntry, upstreamHeaders: Record<string, string>): boolean {
    const names = this.prepare(entry.meta).vary;
    return names !== '*' && variantFor(names, upstreamHeaders) === entry.meta.variant;
  }

  /** The stored variant matching the request's Vary-named headers (RFC 9111 4.1), as the origin would receive them. */
  selectVariant(entries: CacheEntry[], upstreamHeaders: Record<string, string>): CacheEntry | undefined {
    // A fast path for the common case (one entry stored without Vary); the loop below returns the same
    // entry, so mutants of these lines are equivalent and not counted.
    // Stryker disable next-line all
    if (entries.length === 1 && entries[0]!.meta.variant === '') {
      const { vary } = this.prepare(entries[0]!.meta);
      // Stryker disable next-line all
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
        explicitlyShared: meta.pushed === true || this.origin.explicitlyShared(meta.headers),
        recompress: this.recoder.wantsRecompression(meta),
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
    // Like a purge: a fill of this key already under way (in any worker) is not stored.
    await this.purges.recordEverywhere(keysMatcher([key]), { kind: 'keys', keys: [key] });
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

/** The key of a pushed object's coding made by the node (a derived key, so purges of the object reach it). */
function codedKey(sourceKey: string, plan: CodingPlan): string {
  return derivedKey(sourceKey, { kind: 'coding', coding: plan.to });
}

/** Was `made` recoded from this version of `source`? (A replaced push keeps no coding of its old bytes.) */
function madeFrom(made: CacheEntryMeta, source: CacheEntryMeta): boolean {
  if (made.invalidated) return false;
  const etag = source.headers[ORIGIN_ETAG_FIELD] ?? source.headers.etag;
  return etag === undefined ? made.storedAt >= source.storedAt : (made.headers[ORIGIN_ETAG_FIELD] ?? made.headers.etag) === etag;
}

/** `upstream` as it would be had the origin been asked for `acceptEncoding` (undefined: identity). */
function withAcceptEncoding(upstream: Record<string, string>, acceptEncoding: string | undefined): Record<string, string> {
  const out: Record<string, string> = Object.assign({}, upstream);
  if (acceptEncoding === undefined) delete out['accept-encoding'];
  else out['accept-encoding'] = acceptEncoding;
  return out;
}
