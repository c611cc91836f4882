/**
 * Origin groups and route rules (the config file's `origins` section):
 * like ALB listener rules, a route picks an origin group by path prefix,
 * host or request header, and may carry cache rules for what it matches.
 * Validated with zod, runtime-agnostic; the Node origin pool and the pull
 * path both read it.
 */
import { z } from 'zod';
import { routeAccessSchema } from './access/route-access.js';

// ---------------------------------------------------------------------------
// Durations. Defined here rather than in options.ts because options.ts
// imports this module (a cycle would leave one schema undefined); options.ts
// re-exports `parseDuration`.

const DURATION_UNITS: ReadonlyMap<string, number> = new Map([
  ['ms', 1],
  ['s', 1000],
  ['m', 60_000],
  ['h', 3_600_000],
  ['d', 86_400_000],
]);

/** Longest timer: Node's setTimeout fires after 1 ms for anything above 2^31 - 1 ms (about 24.8 days). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Parse a duration into milliseconds: `500ms`, `5s`, `2m`, `1h`, `7d`, or a
 * bare number, which is SECONDS (`30` and `"30"` are 30 s, as nginx reads
 * `proxy_read_timeout 30`). Undefined when malformed or negative.
 * @example parseDuration('1h') // 3_600_000
 * @example parseDuration(5) // 5_000
 */
export function parseDuration(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value * 1000 : undefined;
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  if (!match) return undefined;
  const unit = match[2] === '' ? 1000 : DURATION_UNITS.get(match[2]!.toLowerCase());
  return unit === undefined ? undefined : Number(match[1]) * unit;
}

/**
 * A duration option whose value is used in milliseconds (timeouts, intervals).
 * The message names the units; the caller's message names the option.
 */
export const durationMs = (example: string) =>
  z.union([z.number(), z.string()]).transform((value, ctx) => {
    const ms = parseDuration(value);
    if (ms === undefined || ms > MAX_TIMER_MS) {
      ctx.addIssue({
        code: 'custom',
        message:
          ms === undefined
            ? `expected a duration such as ${example} (ms, s, m, h or d; a bare number is seconds)`
            : `expected a duration of at most 24d (timers cannot wait longer), such as ${example}`,
      });
      return z.NEVER;
    }
    return Math.round(ms);
  });

/** A duration option whose value is used in whole seconds (TTLs, grace periods). */
export const durationSeconds = (example: string) =>
  z.union([z.number(), z.string()]).transform((value, ctx) => {
    const ms = parseDuration(value);
    if (ms === undefined || ms % 1000 !== 0 || ms / 1000 > 2 ** 31) {
      ctx.addIssue({
        code: 'custom',
        message: `expected a duration in whole seconds such as ${example} (s, m, h or d; a bare number is seconds)`,
      });
      return z.NEVER;
    }
    return ms / 1000;
  });

// ---------------------------------------------------------------------------
// Origin groups and routes

export const healthCheckSchema = z
  .object({
    /** Path requested on each member. @default '/' */
    path: z.string().startsWith('/').default('/'),
    /** Duration (`10s`; a bare number is seconds), held in ms. @default '10s' */
    interval: durationMs('10s').default(10_000),
    /** Duration (`2s`; a bare number is seconds), held in ms. @default '2s' */
    timeout: durationMs('2s').default(2000),
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
    /** How long an ejected member stays out before it is tried again (a bare number is seconds), held in ms. @default '30s' */
    ejectFor: durationMs('30s').default(30_000),
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
    /** Edge TTL when the origin sends no freshness information: a duration (`1h`; a bare number is seconds), held in seconds. */
    ttl: durationSeconds('60').optional(),
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
    /** stale-if-error window applied to what this route caches: a duration (a bare number is seconds), held in seconds. */
    staleIfError: durationSeconds('1h').optional(),
    /** Grace (serve stale when the origin is down) for this route: a duration (a bare number is seconds), held in seconds. */
    grace: durationSeconds('1h').optional(),
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
    /** What a request must show before any cache or origin work: signature, API key, rate limit (`access/route-access.ts`). */
    access: routeAccessSchema.optional(),
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
