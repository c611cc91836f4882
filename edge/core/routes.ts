/**
 * Origin groups and route rules (the config file's `origins` section):
 * like ALB listener rules, a route picks an origin group by path prefix,
 * host or request header, and may carry cache rules for what it matches.
 * Validated with zod, runtime-agnostic; the Node origin pool and the pull
 * path both read it.
 */
import { z } from 'zod';

const durationMs = z.union([z.number().min(0), z.string().regex(/^\d+(\.\d+)?(ms|s|m|h)?$/, 'expected a duration such as 500ms, 5s, 1m')]).transform((value) => {
  if (typeof value === 'number') return value;
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value)!;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? 'ms']!;
  return Number(match[1]) * unit;
});

export const healthCheckSchema = z
  .object({
    /** Path requested on each member. @default '/' */
    path: z.string().startsWith('/').default('/'),
    /** @default '10s' */
    interval: durationMs.default(10_000),
    /** @default '2s' */
    timeout: durationMs.default(2000),
    /** Consecutive successes to mark a member healthy again. @default 2 */
    healthyThreshold: z.number().int().min(1).default(2),
    /** Consecutive failures to mark a member unhealthy. @default 3 */
    unhealthyThreshold: z.number().int().min(1).default(3),
    /** Statuses counted as healthy: below this value. @default 500 */
    healthyBelowStatus: z.number().int().min(200).max(600).default(500),
  })
  .strict();

export const s3CredentialsSchema = z
  .object({
    accessKeyId: z.string().min(1),
    secretAccessKey: z.string().min(1),
    sessionToken: z.string().min(1).optional(),
  })
  .strict();

export const originGroupSchema = z
  .object({
    name: z.string().regex(/^[a-zA-Z0-9._-]+$/, 'must be a token (letters, digits, . _ -)'),
    /** `http(s)://host:port[/base]` or `s3://bucket[/prefix]?region=...&endpoint=...` */
    members: z.array(z.string().min(1)).min(1),
    /** @default 'round-robin' */
    balance: z.enum(['round-robin', 'least-outstanding']).default('round-robin'),
    healthCheck: healthCheckSchema.optional(),
    /** Passive ejection: this many consecutive connection failures or 5xx take a member out. @default 5 */
    ejectAfterFailures: z.number().int().min(1).default(5),
    /** How long an ejected member stays out before it is tried again. @default '30s' */
    ejectFor: durationMs.default(30_000),
    /** Group used only while this one has no healthy member (active-passive failover). */
    backup: z.string().optional(),
    /** Cookie used for session affinity of passing (uncached) traffic. */
    stickyCookie: z.string().regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/).optional(),
    /** Credentials for s3:// members (default: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN). */
    s3: s3CredentialsSchema.optional(),
  })
  .strict();

export const routeCacheRulesSchema = z
  .object({
    /** Edge TTL in seconds when the origin sends no freshness information. */
    ttl: z.number().int().min(0).optional(),
    /** Use `ttl` even when the origin sends freshness (override). @default false */
    overrideTtl: z.boolean().default(false),
    /** Never cache what this route matches. @default false */
    bypass: z.boolean().default(false),
    /** Only these query parameters enter the cache key (others are dropped); unset keeps all. */
    queryParams: z.array(z.string()).optional(),
    /** Request headers that enter the cache key (a node-side Vary); they are forwarded to the origin too. */
    keyHeaders: z.array(z.string().transform((h) => h.toLowerCase())).optional(),
    /**
     * Request headers forwarded to the origin without entering the key (an
     * explicit choice: the origin must not let them shape the body, or must
     * name them in `Vary`). Added to `--forward-headers`.
     */
    forwardHeaders: z.array(z.string().transform((h) => h.toLowerCase())).optional(),
    /**
     * `false`: request cookies are not forwarded on this route, so a request
     * with `Cookie` is cached like any other. @default true (forwarded; such
     * a request is then not answered from, and its response not stored in, the
     * shared cache unless the response is explicitly `public` or has `s-maxage`).
     */
    forwardCookies: z.boolean().default(true),
    /** stale-if-error window in seconds applied to what this route caches. */
    staleIfError: z.number().int().min(0).optional(),
    /** Grace (serve stale when the origin is down) for this route, seconds. */
    grace: z.number().int().min(0).optional(),
  })
  .strict();

export const routeSchema = z
  .object({
    match: z
      .object({
        /** Matches paths starting with this prefix; `/api/*` and `/api/` mean the same. */
        pathPrefix: z.string().startsWith('/').optional(),
        /** Exact host (case-insensitive), or `*.example.com`. */
        host: z.string().optional(),
        header: z.object({ name: z.string().transform((h) => h.toLowerCase()), value: z.string() }).strict().optional(),
      })
      .strict(),
    /** Origin group name; unset keeps the default group (cache rules only). */
    group: z.string().optional(),
    cache: routeCacheRulesSchema.optional(),
  })
  .strict();

export const originsConfigSchema = z
  .object({
    groups: z.array(originGroupSchema).min(1),
    routes: z.array(routeSchema).default([]),
    /** Group for requests no route sends elsewhere. @default the first group */
    defaultGroup: z.string().optional(),
  })
  .strict()
  .superRefine((config, ctx) => {
    const names = new Set(config.groups.map((g) => g.name));
    if (names.size !== config.groups.length) ctx.addIssue({ code: 'custom', message: 'origin group names must be unique' });
    for (const group of config.groups) {
      if (group.backup !== undefined && !names.has(group.backup)) {
        ctx.addIssue({ code: 'custom', message: `group "${group.name}" names backup "${group.backup}", which is not a group` });
      }
    }
    config.routes.forEach((route, i) => {
      if (route.group !== undefined && !names.has(route.group)) {
        ctx.addIssue({ code: 'custom', message: `route ${i} sends to group "${route.group}", which is not a group` });
      }
    });
    if (config.defaultGroup !== undefined && !names.has(config.defaultGroup)) {
      ctx.addIssue({ code: 'custom', message: `defaultGroup "${config.defaultGroup}" is not a group` });
    }
  });

export type HealthCheckConfig = z.output<typeof healthCheckSchema>;
export type OriginGroupConfig = z.output<typeof originGroupSchema>;
export type RouteCacheRules = z.output<typeof routeCacheRulesSchema>;
export type RouteConfig = z.output<typeof routeSchema>;
export type OriginsConfig = z.output<typeof originsConfigSchema>;

/** What a route matches on. Headers as a lower-case record. */
export interface RouteInput {
  pathname: string;
  host: string;
  headers: Record<string, string>;
}

function hostMatches(pattern: string, host: string): boolean {
  const bare = host.toLowerCase().replace(/:\d+$/, '');
  const p = pattern.toLowerCase();
  return p.startsWith('*.') ? bare.endsWith(p.slice(1)) : bare === p;
}

/** The first route whose every condition matches, in config order. */
export function matchRoute(routes: readonly RouteConfig[], input: RouteInput): RouteConfig | undefined {
  for (const route of routes) {
    const { pathPrefix, host, header } = route.match;
    if (pathPrefix !== undefined && !input.pathname.startsWith(pathPrefix.replace(/\*$/, ''))) continue;
    if (host !== undefined && !hostMatches(host, input.host)) continue;
    if (header !== undefined && input.headers[header.name] !== header.value) continue;
    return route;
  }
  return undefined;
}

/** A single-group config from `--origin a,b,c`. */
export function originsFromList(urls: string[]): OriginsConfig {
  return originsConfigSchema.parse({ groups: [{ name: 'default', members: urls }] });
}
