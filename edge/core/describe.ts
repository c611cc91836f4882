/**
 * Describing a request: everything the node derives from it before looking
 * anything up, shared by pull, images and admin. It yields the typed cache
 * key and, from the same facts, the request the origin will receive.
 *
 * The origin request is built from what the key holds (the CloudFront
 * model: a cache policy says what is keyed, an origin request policy what
 * else is forwarded). Path and query come from the key, so a parameter
 * dropped from the key (`utm_*`, a route's `queryParams`) is not forwarded
 * either; request headers reach the origin only from an allow-list. A
 * header the origin never sees cannot shape the body, which closes the
 * unkeyed-header class of cache poisoning instead of listing bad headers.
 */
import { LRUCache } from 'lru-cache';
import { compileParamMatcher, formatCacheKey, normaliseHost, normaliseQuery, REMEMBERED_QUERIES, type NormalisedQuery, type PulledCacheKey } from './cache-key.js';
import { negotiateCoding, type Coding } from './compression.js';
import { connectionTokens, type ForwardingOptions } from './headers.js';
import type { EdgeOptions } from './options.js';
import { matchRoute, type RouteCacheRules, type RouteConfig } from './routes.js';
import { SIGNATURE_PARAMS, withoutCookie } from './access/signing.js';

/**
 * Request headers every GET/HEAD may carry to the origin: content
 * negotiation (RFC 9110 12.5), preconditions and ranges (RFC 9110 13, 14;
 * a cache fill strips them again), request cache directives, and the
 * credentials that make a request private (`Authorization`, `Cookie`:
 * such requests bypass the shared cache, see `pull.ts`).
 */
export const FORWARDED_REQUEST_HEADERS: readonly string[] = [
  'accept',
  'accept-encoding',
  'accept-language',
  'accept-charset',
  'if-none-match',
  'if-modified-since',
  'if-match',
  'if-unmodified-since',
  'if-range',
  'range',
  'cache-control',
  'pragma',
  'authorization',
  'cookie',
];

/** What `describe()` derives from a request. */
export interface Described {
  /** The request URL's path (percent-encoded as the URL parser left it). */
  pathname: string;
  /** `?query` as sent, or ''. */
  search: string;
  /** The absolute request URL, without a fragment. */
  href: string;
  cacheKey: PulledCacheKey;
  /** `formatCacheKey(cacheKey)`: what the stores index by. */
  key: string;
  /** Path and the keyed query parameters (in the client's order): what the origin is asked for. */
  upstreamPath: string;
  forwarding: ForwardingOptions;
  /** The client's request headers, lower-case names. */
  headers: Record<string, string>;
  /**
   * The request headers the origin receives (allow-listed, `Accept-Encoding`
   * normalised, fields named in `Connection` removed), without forwarding
   * fields. Vary variants are selected and stored by these, never by the raw
   * client headers: the variant holds what the origin answered to them.
   */
  upstream: Record<string, string>;
  /**
   * The content coding this client gets (`compression.ts`), negotiated once
   * from its Accept-Encoding; the origin is asked for exactly this coding
   * (`upstream['accept-encoding']`, absent for identity), so a variant keyed
   * by it holds it, or identity.
   */
  coding: Coding;
  /** Cache rules of the matching route, if any. */
  rules?: RouteCacheRules;
  /**
   * Why the request may not be answered from a shared entry: it carries
   * credentials that are forwarded (RFC 9111 3.5; cookies as Varnish and
   * CloudFront treat them).
   */
  credentials?: 'authorization' | 'cookie';
}

/** The first member of a comma-separated forwarding field, trimmed. */
function firstMember(value: string): string {
  const comma = value.indexOf(',');
  return (comma === -1 ? value : value.slice(0, comma)).trim();
}

export class RequestDescriber {
  readonly #options: EdgeOptions;
  readonly #ignoreParam: (name: string) => boolean;
  readonly #trusted: Set<string>;
  readonly #routes: readonly RouteConfig[];
  readonly #forwarded: readonly string[];
  /** Access control's own fields (`access/`): the signed-access cookie and the API key header, never keyed nor forwarded. */
  readonly #accessCookie?: string;
  readonly #apiKeyHeader?: string;
  /** See #normalisedQuery. */
  readonly #queries = new LRUCache<string, NormalisedQuery>({ max: REMEMBERED_QUERIES.max });

  constructor(options: EdgeOptions) {
    this.#options = options;
    const ignore = compileParamMatcher(options.ignoreQueryParams);
    // With URL signing, sig/expires/kid are the node's: two signatures for one object share its key and one origin request.
    this.#ignoreParam = options.urlSigningKey !== undefined ? (name) => SIGNATURE_PARAMS.includes(name) || ignore(name) : ignore;
    if (options.urlSigningKey !== undefined) this.#accessCookie = options.accessCookie;
    if (options.apiKeysFile !== undefined || options.origins?.routes.some((route) => route.access?.apiKey)) this.#apiKeyHeader = options.apiKeyHeader;
    this.#trusted = new Set(options.trustedProxies);
    this.#routes = options.origins?.routes.filter((route) => route.cache !== undefined) ?? [];
    this.#forwarded = [...new Set([...FORWARDED_REQUEST_HEADERS, ...(options.forwardHeaders ?? []).map((name) => name.toLowerCase())])];
  }

  /**
   * `href` is a Request.url or URL.href: absolute and parser-normalised.
   * Slicing it is exact and spares a URL object on the hit path.
   */
  describe(href: string, clientIp: string | undefined, headers: Record<string, string>): Described {
    const hash = href.indexOf('#');
    if (hash !== -1) href = href.slice(0, hash);
    const schemeEnd = href.indexOf('://');
    const pathStart = href.indexOf('/', schemeEnd + 3);
    const queryStart = pathStart === -1 ? -1 : href.indexOf('?', pathStart);
    const pathname = pathStart === -1 ? '/' : queryStart === -1 ? href.slice(pathStart) : href.slice(pathStart, queryStart);
    const search = queryStart === -1 ? '' : href.slice(queryStart);
    const trustedPeer = clientIp !== undefined && this.#trusted.has(clientIp);
    const forwardedProto = trustedPeer ? headers['x-forwarded-proto'] : undefined;
    const forwardedHost = trustedPeer ? headers['x-forwarded-host'] : undefined;
    const proto = firstMember(forwardedProto ?? href.slice(0, schemeEnd)).toLowerCase();
    const host = normaliseHost(firstMember(forwardedHost ?? headers.host ?? href.slice(schemeEnd + 3, pathStart === -1 ? undefined : pathStart)), proto);
    const rules = this.#routes.length > 0 ? matchRoute(this.#routes, { pathname, host, headers })?.cache : undefined;
    const keepOnly = rules?.queryParams ? new Set(rules.queryParams) : undefined;
    const query = keepOnly
      ? normaliseQuery(search, this.#ignoreParam, this.#options.sortQuery, (name) => !keepOnly.has(name))
      : this.#normalisedQuery(search);
    const upstream = this.#upstreamHeaders(headers, rules);
    const cacheKey: PulledCacheKey = {
      kind: 'pulled',
      path: pathname + query.keyed,
      scheme: proto,
      host: this.#options.cacheKeyHost ?? host,
      // A node-side Vary: the named request headers become part of the key.
      ...(rules?.keyHeaders?.length ? { headers: rules.keyHeaders.map((name) => [name, upstream[name] ?? ''] as const) } : {}),
    };
    const colon = host.lastIndexOf(':');
    const port = colon > host.lastIndexOf(']') ? host.slice(colon + 1) : undefined;
    const forwarding: ForwardingOptions = { clientIp, trustedPeer, proto, host, port, via: this.#options.name };
    const credentials = upstream.authorization !== undefined ? 'authorization' : upstream.cookie !== undefined ? 'cookie' : undefined;
    return {
      pathname,
      search,
      href,
      cacheKey,
      key: formatCacheKey(cacheKey),
      upstreamPath: pathname + query.forwarded,
      forwarding,
      headers,
      upstream,
      coding: (upstream['accept-encoding'] as Coding | undefined) ?? 'identity',
      rules,
      ...(credentials ? { credentials } : {}),
    };
  }

  /**
   * The query as keyed and forwarded, remembered per raw query string: a
   * site's requests repeat a few (cache busters, image parameters), and
   * parsing, decoding and sorting one took about 1.7 µs, a third of a
   * variant hit's description. Bounded (REMEMBERED_QUERIES), least recently used out.
   */
  #normalisedQuery(search: string): NormalisedQuery {
    if (search === '' || search.length > REMEMBERED_QUERIES.maxLength) return normaliseQuery(search, this.#ignoreParam, this.#options.sortQuery);
    let query = this.#queries.get(search);
    if (query === undefined) {
      query = normaliseQuery(search, this.#ignoreParam, this.#options.sortQuery);
      this.#queries.set(search, query);
    }
    return query;
  }

  /** The allow-listed request headers, as the origin will receive them. */
  #upstreamHeaders(headers: Record<string, string>, rules: RouteCacheRules | undefined): Record<string, string> {
    const out: Record<string, string> = {};
    const dropped = headers.connection !== undefined ? connectionTokens(headers.connection) : undefined;
    const take = (name: string) => {
      const value = headers[name];
      if (value === undefined || dropped?.has(name)) return;
      out[name] = value;
    };
    for (const name of this.#forwarded) take(name);
    if (rules?.keyHeaders) for (const name of rules.keyHeaders) take(name);
    if (rules?.forwardHeaders) for (const name of rules.forwardHeaders) take(name);
    if (rules?.forwardCookies === false) delete out.cookie;
    if (this.#apiKeyHeader !== undefined) delete out[this.#apiKeyHeader];
    if (this.#accessCookie !== undefined && out.cookie !== undefined && out.cookie.includes(this.#accessCookie)) {
      const rest = withoutCookie(out.cookie, this.#accessCookie);
      if (rest === undefined) delete out.cookie;
      else out.cookie = rest;
    }
    if (out['accept-encoding'] !== undefined) {
      // Keyed and forwarded as the negotiated coding, never the raw string:
      // every client that gets brotli shares one variant, which holds brotli
      // (or identity), whatever else each of them would accept.
      const coding = negotiateCoding(out['accept-encoding']);
      if (coding === 'identity') delete out['accept-encoding'];
      else out['accept-encoding'] = coding;
    }
    return out;
  }
}
