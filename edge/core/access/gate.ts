/**
 * The access gate: one check per content request, made before any cache
 * or origin work, in this order:
 *
 * 1. deny rules (`--deny`): 403 `EDGE_FORBIDDEN`;
 * 2. signatures on `--signed-paths` and routes with `access.signed`: a
 *    signed URL or a signed cookie for the path, else 403 `EDGE_BAD_SIGNATURE`;
 * 3. API keys on routes with `access.apiKey`: missing or unknown is 401
 *    `EDGE_UNAUTHORIZED` (a known key sent anywhere picks its own limits);
 * 4. rate limits (`--rate-limit`, a route's `rateLimit`, a key's
 *    `rateLimit`), per API key when one is used, else per client IP: 429
 *    `EDGE_RATE_LIMITED` with `Retry-After`.
 *
 * `check()` is the general path's (async: signatures use Web Crypto).
 * `checkFast()` is the Node fresh-hit path's: synchronous, it admits only
 * requests that need no signature and pass every other step, and counts
 * nothing until `finish()`, so a request that falls back to the general
 * path is checked (and counted) there, once.
 */
import { compileParamMatcher } from '../cache-key.js';
import type { Described } from '../describe.js';
import { EdgeError } from '../errors.js';
import type { EdgeOptions } from '../options.js';
import type { CacheOutcome } from '../cache-status.js';
import type { Answer } from '../responder.js';
import { matchRoute, type RouteConfig } from '../routes.js';
import type { ApiKey } from './api-keys.js';
import { compileDenyRules, type DenyMatcher } from './deny.js';
import { effectiveClientIp } from './ip.js';
import { RateLimiter, type RateCounters, type RateDecision, type RateLimit } from './rate-limit.js';
import type { RouteAccess } from './route-access.js';
import { parseSigningKeys, readCookie, verifyCookie, verifySignedUrl, type SignatureProblem, type SigningKey } from './signing.js';

export interface AccessGateDeps {
  options: EdgeOptions;
  now: () => number;
  /** The API keys as they stand now (Node: re-read from `--api-keys-file`); the same array until they change. */
  apiKeys?: () => readonly ApiKey[];
  /** Where rate-limit counters live. @default a RateLimiter in this process (`--rate-limit-clients` counters) */
  rateCounters?: RateCounters;
}

/** What a passed check leaves to do once the answer is made. */
export interface AccessGrant {
  /**
   * Adds the rate-limit fields and counts a request whose counting waited
   * for its cache outcome. Synchronous for grants of `checkFast()` (their
   * counters are in this process).
   */
  finish(answer: Answer, outcome: CacheOutcome | undefined): Answer | Promise<Answer>;
}

export interface AccessGate {
  /** Throws the refusal (`EdgeError`) or returns the grant. */
  check(method: string, described: Described, peer: string | undefined): Promise<AccessGrant>;
  /** The fast path's check: a grant, or null when the request must take the general path. */
  checkFast(method: string, described: Described, peer: string | undefined): AccessGrant | null;
}

const PASS: AccessGrant = { finish: (answer) => answer };

function withFields(answer: Answer, headers: Record<string, string>): Answer {
  Object.assign(answer.headers, headers);
  return answer;
}

const REASONS: Record<SignatureProblem, string> = {
  missing: 'This URL needs a signature (sig and expires parameters) or a signed access cookie.',
  expired: 'This signed URL or access cookie has expired.',
  'unknown-key': 'The signature names a key (kid) this node does not know.',
  'bad-signature': 'The signature (sig) does not match this URL, or is malformed.',
  'wrong-prefix': 'The access cookie does not cover this path.',
  'wrong-ip': 'The access cookie is bound to another client address.',
};

interface Limit {
  policy: string;
  limit: RateLimit;
  countHits: boolean;
}

/** Undefined when no access rule is configured: the app then skips the gate entirely. */
export function createAccessGate(deps: AccessGateDeps): AccessGate | undefined {
  const { options, now } = deps;
  const routes: RouteConfig[] = options.origins?.routes.filter((route) => route.access !== undefined) ?? [];
  const deny: DenyMatcher | undefined = compileDenyRules(options.deny ?? []);
  const signedPaths = options.signedPaths;
  const globalLimit = options.rateLimit;
  const keysNeeded = routes.some((route) => route.access!.apiKey);
  if (!deny && signedPaths.length === 0 && !globalLimit && routes.length === 0 && !deps.apiKeys) return undefined;
  if (keysNeeded && !deps.apiKeys) {
    throw new TypeError('a route requires API keys (access.apiKey): give --api-keys-file (read by the Node adapter), or pass apiKeys() in the app deps');
  }

  const keys: readonly SigningKey[] = options.urlSigningKey ? parseSigningKeys(options.urlSigningKey) : [];
  const trusted = new Set(options.trustedProxies);
  const ignore = compileParamMatcher(options.ignoreQueryParams);
  const limiter: RateCounters = deps.rateCounters ?? new RateLimiter({ maxEntries: options.rateLimitClients, now });
  const keyHeader = options.apiKeyHeader;
  const cookieName = options.accessCookie;

  let keyList: readonly ApiKey[] | undefined;
  let keyMap = new Map<string, ApiKey>();
  const lookupKey = (value: string): ApiKey | undefined => {
    const list = deps.apiKeys?.();
    if (list !== keyList) {
      keyList = list;
      keyMap = new Map((list ?? []).map((k) => [k.key, k]));
    }
    return keyMap.get(value);
  };

  const routeOf = (described: Described): RouteAccess | undefined =>
    routes.length === 0 ? undefined : matchRoute(routes, { pathname: described.pathname, host: described.forwarding.host, headers: described.headers })?.access;

  /** Steps 1 and 3, and which limit applies: everything but signatures and counting. */
  const prepare = (method: string, described: Described, peer: string | undefined) => {
    const clientIp = effectiveClientIp(peer, trusted, described.headers['x-forwarded-for']);
    if (deny) {
      const rule = deny(method, described.pathname, described.headers, clientIp);
      if (rule !== undefined) throw new EdgeError('EDGE_FORBIDDEN', 'This request is refused by a deny rule.', { details: { rule } });
    }
    const route = routeOf(described);
    const signed = route?.signed === true || signedPaths.some((prefix) => described.pathname.startsWith(prefix));
    const sent = deps.apiKeys ? described.headers[keyHeader] : undefined;
    const apiKey = sent === undefined ? undefined : lookupKey(sent);
    if (route?.apiKey && !apiKey) {
      throw new EdgeError('EDGE_UNAUTHORIZED', sent === undefined ? `This path needs an API key in the ${keyHeader} header.` : 'The API key is not known.', {
        headers: { 'www-authenticate': `ApiKey realm="${options.name}", header="${keyHeader}"` },
      });
    }
    let limit: Limit | undefined;
    const countHits = route?.rateLimitHits ?? true;
    if (apiKey?.rateLimit) limit = { policy: 'key', limit: apiKey.rateLimit, countHits };
    else if (route?.rateLimit === 'off') limit = undefined;
    else if (route?.rateLimit) limit = { policy: `route${routes.findIndex((r) => r.access === route)}`, limit: route.rateLimit, countHits };
    else if (globalLimit) limit = { policy: 'default', limit: globalLimit, countHits };
    const partition = apiKey ? `key:${apiKey.name}` : `ip:${clientIp ?? ''}`;
    return { clientIp, signed, limit, partition };
  };

  /** Step 4: counts now, or (hits free) after the outcome. */
  const admit = (limit: Limit, partition: string, countNow: boolean, decision: RateDecision): AccessGrant => {
    if (!decision.allowed) {
      throw new EdgeError('EDGE_RATE_LIMITED', `Too many requests: at most ${limit.limit.quota} per ${limit.limit.windowMs / 1000}s.`, { headers: decision.headers });
    }
    const counted = countNow && limit.countHits;
    return {
      finish(answer, outcome) {
        const hit = outcome === 'hit' || outcome === 'stale';
        if (counted || (!limit.countHits && hit)) return withFields(answer, decision.headers);
        const later = limiter.take(limit.policy, limit.limit, partition, true);
        return later instanceof Promise ? later.then((taken) => withFields(answer, taken.headers)) : withFields(answer, later.headers);
      },
    };
  };

  return {
    async check(method, described, peer) {
      const { clientIp, signed, limit, partition } = prepare(method, described, peer);
      if (signed) {
        const seconds = Math.floor(now() / 1000);
        const params = new URLSearchParams(described.search);
        const cookie = readCookie(described.headers.cookie, cookieName);
        const problem =
          params.has('sig') || cookie === undefined
            ? await verifySignedUrl(keys, described.pathname, params, seconds, ignore)
            : await verifyCookie(keys, cookie, described.pathname, clientIp, seconds);
        if (problem) throw new EdgeError('EDGE_BAD_SIGNATURE', REASONS[problem], { details: { reason: problem } });
      }
      if (!limit) return PASS;
      return admit(limit, partition, true, await limiter.take(limit.policy, limit.limit, partition, limit.countHits));
    },
    checkFast(method, described, peer) {
      let prepared: ReturnType<typeof prepare>;
      try {
        prepared = prepare(method, described, peer);
      } catch {
        return null;
      }
      if (prepared.signed) return null;
      if (!prepared.limit) return PASS;
      // Counters held by another process cannot be asked synchronously: the general path asks them.
      if (!limiter.inProcess) return null;
      // Only look now; finish() counts, in the same synchronous turn.
      const { limit, partition } = prepared;
      const look = limiter.take(limit.policy, limit.limit, partition, false) as RateDecision;
      if (!look.allowed) return null;
      return admit(limit, partition, false, look);
    },
  };
}
