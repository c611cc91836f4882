/**
 * The node's one options object: every option, its default and its
 * validation, in one zod schema. `resolveEdgeOptions()` is called once at
 * start-up (Node CLI, Workers env) and fails with one line per bad option
 * naming the option, the value given and what is allowed.
 *
 * Sizes accept bytes or `256MB` / `4GB` / `512KiB` (binary multiples, as
 * nginx and Varnish read them). Every duration accepts `500ms` / `5s` / `2m`
 * / `1h` / `7d`, and a bare number is seconds (as nginx reads
 * `proxy_read_timeout 30`), whether the option is held in ms (timeouts) or
 * in seconds (TTLs).
 */
import { z } from 'zod';
import { DEFAULT_COMPRESS_TYPES, isTypePattern } from './compression.js';
import { widthsFromRange } from './image/params.js';
import { durationMs, durationSeconds, originsConfigSchema, parseDuration } from './routes.js';
import { parsePeers } from './fleet-purge.js';
import { denyRulesSchema } from './access/deny.js';
import { rateLimitSchema } from './access/route-access.js';
import { parseSigningKeys } from './access/signing.js';

export { parseDuration };

const SIZE_UNITS: ReadonlyMap<string, number> = new Map([
  ['', 1],
  ['b', 1],
  ['k', 1024],
  ['kb', 1024],
  ['kib', 1024],
  ['m', 1024 ** 2],
  ['mb', 1024 ** 2],
  ['mib', 1024 ** 2],
  ['g', 1024 ** 3],
  ['gb', 1024 ** 3],
  ['gib', 1024 ** 3],
  ['t', 1024 ** 4],
  ['tb', 1024 ** 4],
  ['tib', 1024 ** 4],
]);

/** Parse `256MB`-style sizes into bytes; undefined when malformed. */
export function parseSize(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? Math.floor(value) : undefined;
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  if (!match) return undefined;
  const unit = SIZE_UNITS.get(match[2]!.toLowerCase());
  return unit === undefined ? undefined : Math.floor(Number(match[1]) * unit);
}

const size = (min: number, hint: string) =>
  z.union([z.number(), z.string()]).transform((value, ctx) => {
    const bytes = parseSize(value);
    if (bytes === undefined || bytes < min) {
      ctx.addIssue({ code: 'custom', message: `expected a size such as ${hint} (bytes, or with KB/MB/GB)` });
      return z.NEVER;
    }
    return bytes;
  });

/** A whole number in a range, with one message a person can act on. */
const int = (min: number, max: number) => {
  const error = `expected a whole number from ${min} to ${max}`;
  return z.coerce.number({ error }).int({ error }).min(min, { error }).max(max, { error });
};

// z.coerce.boolean() would read the string "false" as true.
const flag = z.union([z.boolean(), z.enum(['true', 'false', '1', '0', 'yes', 'no'])]).transform((v) => v === true || v === 'true' || v === '1' || v === 'yes');

const list = z
  .union([z.array(z.string()), z.string()])
  .transform((value) => (Array.isArray(value) ? value : value.split(',')).map((v) => v.trim()).filter(Boolean));

function isOriginUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:' || (url.protocol === 's3:' && url.hostname !== '');
  } catch {
    return false;
  }
}

/** One origin URL or a comma-separated pool of them (http://, https:// or s3://bucket). */
const originList = z.string().refine((value) => value.split(',').every((part) => isOriginUrl(part.trim())), {
  message: 'expected an http://, https:// or s3://bucket URL (or a comma-separated list), e.g. http://127.0.0.1:9000',
});

/** `--peers`: `[shield=|edge=]url` entries, comma-separated, or `@/path/to/file` (read by the Node adapter). */
const peerList = z.string().superRefine((value, ctx) => {
  if (value.startsWith('@')) {
    if (value.length === 1) ctx.addIssue({ code: 'custom', message: 'expected a file after @, e.g. @/etc/edge/peers' });
    return;
  }
  const { problems } = parsePeers(value, 'list');
  if (problems.length > 0) {
    ctx.addIssue({ code: 'custom', message: `${problems.join('; ')}; expected [shield=|edge=]http(s)://host:port entries, comma-separated, or @/path/to/file` });
  }
});

const shieldList = list.refine((urls) => urls.every((url) => isOriginUrl(url) && !url.startsWith('s3:')), {
  message: 'expected http(s):// URLs of origin shields, comma-separated',
});

export const edgeOptionsSchema = z
  .object({
    origin: originList.optional().describe('Upstream origin URL, or a comma-separated pool (http://, https://, s3://bucket/prefix?region=...&endpoint=...). Unset on Node, and no origins in the config file: the embedded demo origin is started.'),
    origins: originsConfigSchema.optional().describe('Origin groups and route rules (config file only; see README "Origin pools").'),
    shield: shieldList.optional().describe('Origin shield URL(s), comma-separated: misses go to the shield chosen for the key by rendezvous hashing. (default unset)'),
    peers: peerList
      .optional()
      .describe('Admin URLs of the other nodes of the fleet for fleet purges: comma-separated [shield=|edge=]http(s)://host:port entries (a bare URL is an edge; --shield URLs count as shields), or @/path/to/file with one entry per line and # comments, re-read when it changes and on SIGHUP. A purge received here is applied here, then at every shield, then at every edge (README "Fleet purge"). (default unset)'),
    peerTimeout: durationMs('10s')
      .default(10_000)
      .describe('A peer has this long to answer a purge copy; then it counts as down and the copy waits in its outbox; a duration (a bare number is seconds). (default 10s)'),
    peerRetry: durationMs('1s')
      .default(1000)
      .describe('First delay before replaying the purges a down peer missed; doubles after each failed attempt, up to 1m (or this value if longer); a duration (a bare number is seconds). (default 1s)'),
    peerConcurrency: int(1, 64).default(4).describe('Purge copies sent to one peer at once. (default 4)'),
    peerQueue: int(0, 10_000).default(64).describe('Purges waiting per peer beyond those in flight; a purge that would exceed it is refused with 503 and Retry-After before anything is purged. (default 64)'),
    peerOutbox: int(1, 100_000)
      .default(1000)
      .describe('Missed purges kept in memory per down peer for replay (lost on restart); past it the oldest are dropped and the peer stays stale until an {"all":true} purge reaches it. (default 1000)'),
    port: int(0, 65535).default(8080).describe('Port to listen on; 0 picks a free one. (default 8080)'),
    host: z.string().min(1).default('0.0.0.0').describe('Address to listen on. (default 0.0.0.0)'),
    workers: int(0, 256)
      .default(0)
      .describe('Node processes serving one port and one --data-dir (Node only): 0 means one per CPU core, 1 a single process with no primary (README "Cluster mode"). (default 0)'),
    tlsCert: z
      .string()
      .min(1)
      .optional()
      .describe('PEM certificate file (leaf first, chain may follow): with --tls-key the node serves HTTPS, HTTP/2 by ALPN and HTTP/1.1 as a fallback; re-read when the file changes or on SIGHUP. (default unset: plain HTTP)'),
    tlsKey: z.string().min(1).optional().describe('PEM private key file of --tls-cert (not encrypted). (default unset)'),
    tlsCa: z.string().min(1).optional().describe('PEM file of intermediate certificates sent after --tls-cert, when that file holds the leaf only. (default unset)'),
    httpRedirectPort: int(0, 65535)
      .optional()
      .describe('With TLS: also listen on this port for plain HTTP and answer 308 to https:// (same host, the HTTPS port), except /_edge/health. (default unset)'),
    adminListen: z
      .string()
      .refine((value) => parseListenAddress(value) !== undefined, { error: 'expected host:port, e.g. 127.0.0.1:9090 or [::1]:9090' })
      .optional()
      .describe('A second, plain HTTP listener (host:port, e.g. 127.0.0.1:9090) serving everything under /_edge/ (admin API, metrics, origins, health); the public port then answers content and GET /_edge/health only, 404 for the rest of /_edge/. The admin token still applies there. (default unset: /_edge/ on the public port)'),
    dataDir: z
      .string()
      .min(1)
      .default('./.edge-data')
      .describe('Directory of the LMDB disk tier, created if missing (always a directory, dots in its name or not); the node stops at start-up if it cannot write there. (default ./.edge-data)'),
    memorySize: size(0, '256MB').default(256 * 1024 ** 2).describe('Memory tier budget; 0 disables the memory tier. (default 256MB)'),
    memoryMaxObjectSize: size(1, '8MB').default(8 * 1024 ** 2).describe('Largest object kept in the memory tier. (default 8MB)'),
    diskSize: size(1024 * 1024, '4GB').default(4 * 1024 ** 3).describe('Disk tier budget. (default 4GB)'),
    pushDiskShare: z.coerce.number({ error: 'expected a fraction from 0 to 1, e.g. 0.5' }).min(0, { error: 'expected a fraction from 0 to 1, e.g. 0.5' }).max(1, { error: 'expected a fraction from 0 to 1, e.g. 0.5' }).default(0.5).describe('Fraction of --disk-size pushed objects may take; a push that does not fit gets 507 and stores nothing, so the rest always stays for pulled objects. Not applied with --evict-pushed. (default 0.5)'),
    maxObjectSize: size(1, '64MB').default(64 * 1024 ** 2).describe('Objects larger than this pass through uncached, unless they are sliced (--slice-size): then only the disk budget bounds them. (default 64MB)'),
    sliceSize: size(0, '4MB')
      .default(0)
      .describe('Range slicing (Node): objects longer than this are fetched from the origin with Range in pieces of this size, each stored on its own, so a range miss reads only the pieces it covers (README "Range slicing"); 0 turns it off. At most --max-object-size. (default 0: off)'),
    slicePaths: list
      .refine((prefixes) => prefixes.every((p) => p.startsWith('/')), { message: 'expected path prefixes starting with /, e.g. /video/,/iso/' })
      .default([])
      .describe('With --slice-size: path prefixes where a plain GET (no Range) of an object not yet cached is fetched in pieces too; elsewhere only Range requests start slicing. (default [])'),
    adminToken: z
      .string()
      .min(6, 'must be at least 6 characters (use 32+ random characters in production)')
      .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces (it travels in an Authorization header)')
      .optional()
      .describe('Bearer token for the admin API under /_edge/; the API is off when unset. Tokens under 16 characters are accepted with a warning.'),
    maxUploadSize: size(1, '512MB').default(512 * 1024 ** 2).describe('Largest body accepted by PUT /_edge/push/...; larger uploads get 413 and store nothing. (default 512MB)'),
    evictPushed: flag
      .default(false)
      .describe('Let disk-tier eviction remove pushed objects too (least recently used first) when the disk budget is exceeded. (default false)'),
    pushTtl: durationSeconds('365d')
      .default(31_536_000)
      .describe('Freshness of pushed objects whose upload sends no Cache-Control max-age; a duration (7d, 1h; a bare number is seconds). (default 365d)'),
    images: flag.default(true).describe('Transform images requested with width/height/fit/quality/format/dpr/position parameters. (default true)'),
    imagePaths: list
      .default([])
      .describe('Path prefixes where image parameters apply to any URL; elsewhere only paths ending in .jpg .jpeg .png .webp .avif .gif .tif .tiff are image URLs. (default [])'),
    imageMaxSourceSize: size(1, '25MB').default(25 * 1024 ** 2).describe('Largest source image that is transformed; larger ones get 422. (default 25MB)'),
    imageMaxPixels: int(1, 2 ** 31).default(50_000_000).describe('Largest source image in pixels (width x height x frames); larger ones get 422 before decoding. (default 50000000)'),
    imageMaxOutputSide: int(1, 16_384).default(4096).describe('Largest output width or height a client may ask for. (default 4096)'),
    imageQuality: int(1, 100).default(75).describe('Quality when the client gives none, on the JPEG scale (AVIF maps it down). (default 75)'),
    imageSigningKey: z.string().min(16, 'must be at least 16 characters (use a random secret)').optional().describe('When set, only URLs signed with HMAC-SHA256 (sig parameter) are transformed. (default unset)'),
    imageWidths: z
      .string()
      .superRefine((value, ctx) => {
        try {
          widthsFromRange(value);
        } catch (error) {
          ctx.addIssue({ code: 'custom', message: `${(error as Error).message}; expected widths like '320,640,1280' or a range like '16..3840:16'` });
        }
      })
      .optional()
      .describe('Allow-list of widths, e.g. 320,640,1280 or 16..3840:16 (start..end:step). (default unset: any width)'),
    avifEffort: int(0, 9).default(2).describe('AVIF encoder effort 0..9; higher is smaller and much slower. (default 2)'),
    transformTimeout: durationMs('10s').default(10_000).describe('A transform taking longer is answered 503; a duration (500ms, 10s; a bare number is seconds). (default 10s)'),
    transformQueue: int(0, 10_000).default(64).describe('Transforms waiting for a slot; beyond this, 503 with Retry-After. (default 64)'),
    transformConcurrency: int(0, 256).default(0).describe('Transforms run at once; 0 means one per CPU core. (default 0)'),
    connectTimeout: durationMs('5s').default(5000).describe('Connecting to the origin may take this long before a 502; a duration (500ms, 5s; a bare number is seconds). (default 5s)'),
    originTimeout: durationMs('30s')
      .default(30_000)
      .describe('Waiting for the origin\'s response headers may take this long before a 504; a duration (a bare number is seconds). (default 30s)'),
    bodyTimeout: durationMs('30s')
      .default(30_000)
      .describe('A gap this long while reading a body aborts it (the entry is not stored); a duration (a bare number is seconds). (default 30s)'),
    originConnections: int(1, 10_000).default(128).describe('Keep-alive connections per origin. (default 128)'),
    originCa: z
      .string()
      .min(1)
      .optional()
      .describe('PEM file of CA certificates trusted for https:// origins and shields, besides the system roots (a private CA). (default unset)'),
    staleGrace: durationSeconds('1h')
      .default(0)
      .describe('Serve stale this long when the origin is down, for responses without stale-if-error; a duration (1h, 30m; a bare number is seconds). (default 0)'),
    heuristicFraction: z.coerce.number().min(0).max(1).default(0.1).describe('Fraction of (Date - Last-Modified) used as heuristic freshness. (default 0.1)'),
    heuristicMaxAge: durationSeconds('1d').default(86_400).describe('Upper bound for heuristic freshness; a duration (1d, 6h; a bare number is seconds). (default 1d)'),
    defaultTtl: durationSeconds('5m')
      .default(0)
      .describe('Freshness for responses with no freshness information and no validator; a duration (5m; a bare number is seconds). 0 = RFC behaviour (not cached). (default 0)'),
    cacheSetCookie: flag.default(false).describe('Store responses that carry Set-Cookie (the cookie itself is never stored or replayed). (default false)'),
    honorRequestCacheControl: flag.default(true).describe('Honour client Cache-Control (no-cache, max-age, min-fresh, max-stale). (default true)'),
    ignoreQueryParams: list.default(['utm_*', 'fbclid', 'gclid']).describe('Query parameters dropped from cache keys; `*` suffix matches a prefix. (default [utm_*,fbclid,gclid])'),
    sortQuery: flag.default(true).describe('Sort query parameters in cache keys. (default true)'),
    forwardHeaders: list.default([]).describe('Request headers forwarded to the origin besides content negotiation, conditionals, credentials and keyed headers (not keyed: the origin must Vary on them). (default [])'),
    maxVariants: z.coerce.number().int().min(1).max(1000).default(32).describe('Stored Vary variants per URL; past it the oldest is evicted (a client inventing header values cannot grow one URL without bound). (default 32)'),
    compress: flag
      .default(true)
      .describe('Compress responses of --compress-types for clients that accept br or gzip, once per object and coding, and store the result; decode origin-coded bodies for clients that do not accept them (README "Compression"). (default true)'),
    compressTypes: list
      .refine((types) => types.every(isTypePattern), { message: 'expected media types such as text/*, application/json or application/*+xml, comma-separated' })
      .default([...DEFAULT_COMPRESS_TYPES])
      .describe('Media types compressed; type/* and type/*+suffix patterns allowed; text/event-stream never. (default text/*, JSON, JavaScript, XML, SVG, ICO, wasm, ttf/otf/eot fonts: see README)'),
    compressMinSize: size(0, '1KB').default(1024).describe('Bodies whose Content-Length is smaller are not compressed (a chunked body is). (default 1KB)'),
    brotliLevel: int(0, 11).default(5).describe('Brotli quality while a miss streams to its client: 5 is the knee of size against CPU on text. (default 5)'),
    gzipLevel: int(1, 9).default(5).describe('gzip level while a miss streams to its client. (default 5)'),
    brotliBackgroundLevel: int(0, 11)
      .default(11)
      .describe('After a fill, re-compress each brotli entry the node made at this quality in the background (one at a time) and replace it if smaller; 0 turns it off. (default 11)'),
    forwardCdnHeaders: flag.default(false).describe('Keep CDN-Cache-Control, Surrogate-Control, Cache-Tag and Surrogate-Key on answers, for CDN nodes downstream (on for origin-shield). (default false)'),
    cacheKeyHost: z.string().regex(/^[a-z0-9.-]+(:\d+)?$/i, 'expected a host name such as www.example.com').transform((h) => h.toLowerCase()).optional().describe('Key every request under this host instead of the Host header (one site behind several names or a load balancer). (default unset)'),
    trustedProxies: list.default([]).describe('Peers whose X-Forwarded-* headers are trusted (IP addresses). (default [])'),
    signedPaths: list
      .refine((prefixes) => prefixes.every((p) => p.startsWith('/')), { message: 'expected path prefixes starting with /, e.g. /private/,/video/' })
      .default([])
      .describe('Path prefixes served only to signed URLs (sig and expires parameters) or a signed access cookie; others get 403 before any cache or origin work (README "Access control"). Needs --url-signing-key. (default [])'),
    urlSigningKey: z
      .string()
      .superRefine((value, ctx) => {
        try {
          parseSigningKeys(value);
        } catch (error) {
          ctx.addIssue({ code: 'custom', message: (error as Error).message });
        }
      })
      .optional()
      .describe('Secret(s) for signed URLs and access cookies: one key, or kid=key pairs, comma-separated, for rotation (a kid parameter picks one; the first signs). sig, expires and kid are then never keyed nor forwarded. (default unset)'),
    accessCookie: z
      .string()
      .regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, 'must be a cookie name token')
      .default('Edge-Access')
      .describe('Name of the signed access cookie that grants a path prefix (HLS/DASH); it is never keyed nor forwarded. (default Edge-Access)'),
    rateLimit: rateLimitSchema
      .optional()
      .describe('Requests per window for each client IP (or API key) on content paths, e.g. 100/1s; over it, 429 with Retry-After; RateLimit and RateLimit-Policy fields on every answer. Routes may set their own. (default unset: no limit)'),
    rateLimitClients: int(100, 10_000_000)
      .default(100_000)
      .describe('Rate-limit counters kept in memory (one per client and policy), least recently seen dropped first. (default 100000)'),
    apiKeysFile: z
      .string()
      .min(1)
      .optional()
      .describe('JSON file of API keys ({"keys":[{"name","key","rateLimit"?}]}), re-read when it changes (Node only); routes with access.apiKey require one. (default unset)'),
    apiKeyHeader: z
      .string()
      .regex(/^[a-zA-Z0-9-]+$/, 'must be a header field name')
      .transform((v) => v.toLowerCase())
      .default('x-api-key')
      .describe('Request header carrying the API key; never keyed nor forwarded. (default x-api-key)'),
    deny: denyRulesSchema
      .optional()
      .describe('Deny rules, a JSON array: each {method?, path?, header?: {name, value}, cidr?} (globs with *; CIDR ranges); a request meeting every condition of a rule gets 403 before anything else. (default unset)'),
    targetedCacheControl: z
      .string()
      .regex(/^[a-zA-Z0-9-]+$/, 'must be a header field name')
      .transform((v) => v.toLowerCase())
      .default('edge-cache-control').describe('Node-specific targeted cache-control field (RFC 9213), above CDN-Cache-Control. (default edge-cache-control)'),
    name: z.string().regex(/^[a-zA-Z0-9._-]+$/, 'must be a token (letters, digits, . _ -)').default('edge').describe('This node\'s name in Cache-Status and Via. (default edge)'),
    collapseTimeout: durationMs('10s')
      .default(10_000)
      .describe('Concurrent requests waiting behind one origin fetch give up and go to the origin after this long; a duration (a bare number is seconds). (default 10s)'),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info').describe('Log level for the per-request log. (default info)'),
  })
  .strict()
  .superRefine((options, ctx) => {
    // Options that only mean something together; each problem names the option to fix.
    const problem = (name: string, message: string) => ctx.addIssue({ code: 'custom', path: [name], message });
    if (options.tlsCert !== undefined && options.tlsKey === undefined) problem('tlsKey', 'required with --tls-cert');
    if (options.tlsKey !== undefined && options.tlsCert === undefined) problem('tlsCert', 'required with --tls-key');
    if (options.tlsCa !== undefined && options.tlsCert === undefined) problem('tlsCa', 'only used with --tls-cert and --tls-key');
    if (options.httpRedirectPort !== undefined && options.tlsCert === undefined) problem('httpRedirectPort', 'redirects to HTTPS: set --tls-cert and --tls-key');
    if (options.httpRedirectPort !== undefined && options.httpRedirectPort !== 0 && options.httpRedirectPort === options.port) problem('httpRedirectPort', 'must differ from --port');
    if (options.sliceSize > options.maxObjectSize) problem('sliceSize', 'must be at most --max-object-size (a piece is stored like any object)');
    if (options.slicePaths.length > 0 && options.sliceSize === 0) problem('slicePaths', 'needs --slice-size');
    const admin = options.adminListen === undefined ? undefined : parseListenAddress(options.adminListen);
    if (admin && admin.port !== 0 && admin.port === options.port) problem('adminListen', 'must use another port than --port');
    if (options.urlSigningKey === undefined && (options.signedPaths.length > 0 || options.origins?.routes.some((route) => route.access?.signed))) {
      problem('urlSigningKey', 'required with --signed-paths or a route with access.signed');
    }
  });

/**
 * `--admin-listen`'s `host:port`: a name or IPv4 address, or a bracketed
 * IPv6 literal, and a port from 0 to 65535. Undefined when it is not one.
 */
export function parseListenAddress(value: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9._-]+)):(\d{1,5})$/.exec(value);
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port > 65535) return undefined;
  return { host: match[1] ?? match[2]!, port };
}

export type EdgeOptionsInput = z.input<typeof edgeOptionsSchema>;
export type EdgeOptions = z.output<typeof edgeOptionsSchema>;

/** CLI flag and environment variable for each option, for error messages and `--help`. */
export function optionFlag(name: string): string {
  return '--' + name.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

export function optionEnv(name: string): string {
  return 'EDGE_' + name.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();
}

export class EdgeOptionsError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(problems.join('\n'));
    this.name = 'EdgeOptionsError';
    this.problems = problems;
  }
}

/**
 * Validate and default the options. Throws `EdgeOptionsError` whose lines
 * each read like: `--memory-size (EDGE_MEMORY_SIZE): got "lots": expected a size such as 256MB`.
 */
export function resolveEdgeOptions(input: Record<string, unknown>): EdgeOptions {
  const result = edgeOptionsSchema.safeParse(input);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      return `unknown option(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}: see --help for the list`;
    }
    const name = String(issue.path[0] ?? '');
    const given = name in input ? JSON.stringify(input[name]) : 'nothing';
    return `${optionFlag(name)} (${optionEnv(name)}): got ${given}: ${issue.message}`;
  });
  throw new EdgeOptionsError(problems);
}
