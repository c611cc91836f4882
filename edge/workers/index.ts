/**
 * The edge on Cloudflare Workers: the same core app as on Node, with the
 * Workers adapters (`wrangler.toml` at the repository root builds this file).
 *
 * | concern    | Node (`edge/node/server.ts`)  | Workers (here)                                        |
 * | ---------- | ----------------------------- | ----------------------------------------------------- |
 * | config     | flags, `EDGE_*` env, file     | vars and secrets: the `EDGE_*` names without `EDGE_`  |
 * | pull tier  | memory over LMDB              | Cache API (`CfCacheStore`), per data center           |
 * | push tier  | the same LMDB                 | R2 bucket `PUSH_BUCKET` (`R2PushStore`), global       |
 * | origin     | undici pool                   | `fetch` (`FetchOriginClient`); routes: `RouteOriginClient` |
 * | API keys   | `--api-keys-file`, watched    | the `API_KEYS` secret (same JSON)                     |
 * | pushed paths | listed at start-up          | R2 `head` per path, kept per isolate (`pushed-paths.ts`) |
 * | listing    | the core's scan               | `objects-listing.ts`, pages within 50 subrequests     |
 * | images     | sharp                         | Images binding `IMAGES`, when configured              |
 * | background | tracked promises              | `ctx.waitUntil`                                       |
 * | client IP  | the socket                    | `CF-Connecting-IP`                                    |
 * | purge      | the store, then `--peers`     | a marker here, R2, and the zone purge API (`purge.ts`) |
 *
 * Configuration is read once per isolate (per `env` object) and validated
 * with `resolveEdgeOptions`, the Node schema: a bad value answers every
 * request with a 500 JSON error naming the variable (and logs it once),
 * rather than failing at a random point later.
 *
 * Workers-only variables: `CACHE_NAME` (a named cache instead of
 * `caches.default`), `PUSH_PREFIX` (object-name prefix in the bucket) and
 * `PUSH_INDEX_REFRESH` (seconds an isolate keeps its answer to "is this path
 * pushed?", default 60: an object pushed through another isolate is served
 * here after at most that long; 0 asks R2 on every request; see
 * `pushed-paths.ts`), `CLOUDFLARE_ZONE_ID`,
 * `CLOUDFLARE_API_TOKEN` (a secret), `CLOUDFLARE_API_BASE` and `PURGE_HOSTS`
 * (the global purge: see `purge.ts`).
 */
import { createEdgeApp, type EdgeApp } from '../core/app.js';
import { EdgeError, errorResponse } from '../core/errors.js';
import { headersToRecord } from '../core/headers.js';
import { edgeOptionsSchema, EdgeOptionsError, optionEnv, resolveEdgeOptions, type EdgeOptions } from '../core/options.js';
import { ShieldOriginClient } from '../core/origin/shield.js';
import type { OriginClient } from '../core/origin/types.js';
import type { CacheStore } from '../core/store/types.js';
import { CfCacheStore, type CacheLike } from './cf-cache-store.js';
import { FetchOriginClient } from './fetch-origin.js';
import { CfImagesTransformer, type ImagesBindingLike } from './images-transformer.js';
import { R2PushStore, type R2BucketLike } from './r2-push-store.js';
import { RoutedCacheStore } from './routed-store.js';
import { RouteOriginClient, routeOriginProblems } from './route-origin.js';
import { parseApiKeys, type ApiKey } from '../core/access/api-keys.js';
import { createWebCoder } from './web-coder.js';
import { handleWorkersPurge } from './purge.js';
import { handleWorkersListing } from './objects-listing.js';
import { digestStreamHasher } from './digest-hasher.js';
import { PushedPathLookup } from './pushed-paths.js';
import { ZonePurgeClient } from './zone-purge.js';

/** Bindings and variables the Worker reads (see `wrangler.toml`). */
export interface WorkersEnv {
  /** Upstream origin URL (required), e.g. `https://origin.example.com`. */
  ORIGIN?: string;
  /** Bearer token for the admin API (a secret: `wrangler secret put ADMIN_TOKEN`). */
  ADMIN_TOKEN?: string;
  /** R2 bucket for pushed objects; without it pushed objects live in the Cache API (per location, evictable). */
  PUSH_BUCKET?: R2BucketLike;
  /** Cloudflare Images binding; without it image parameters do not transform. */
  IMAGES?: ImagesBindingLike;
  /** A named cache (`caches.open(CACHE_NAME)`) instead of `caches.default`. */
  CACHE_NAME?: string;
  /** Prefix of object names in `PUSH_BUCKET`. @default '' */
  PUSH_PREFIX?: string;
  /** Seconds an isolate keeps its answer to "is this path pushed?" (see `pushed-paths.ts`). @default 60 */
  PUSH_INDEX_REFRESH?: string | number;
  /** The zone the Worker's routes are on: purges are also sent to Cloudflare's purge API for it. */
  CLOUDFLARE_ZONE_ID?: string;
  /** API token with Cache Purge on the zone (a secret: `wrangler secret put CLOUDFLARE_API_TOKEN`). */
  CLOUDFLARE_API_TOKEN?: string;
  /** @default 'https://api.cloudflare.com/client/v4' */
  CLOUDFLARE_API_BASE?: string;
  /** Hosts (comma-separated) a path prefix purge covers at the zone; default: the purge request's host. */
  PURGE_HOSTS?: string;
  /** API keys for routes with `access.apiKey` (a secret): the JSON of Node's `--api-keys-file`. */
  API_KEYS?: string;
  /** Every other option, under its Node environment name without `EDGE_` (e.g. `MAX_OBJECT_SIZE`). */
  [name: string]: unknown;
}

/** The part of the Workers `ExecutionContext` used here. */
export interface ExecutionContextLike {
  waitUntil(promise: Promise<unknown>): void;
}

interface WorkersCaches {
  default: CacheLike;
  open(name: string): Promise<CacheLike>;
}

/** Per-request bindings handed to the core app as Hono's `env`. */
interface RequestBindings {
  clientIp?: string;
}

/** Options that mean nothing on Workers (sockets, local disk, sharp's pool); accepted and validated, not used. */
const NODE_ONLY_OPTIONS = [
  'port',
  'host',
  'dataDir',
  'memorySize',
  'memoryMaxObjectSize',
  'diskSize',
  'originConnections',
  'connectTimeout',
  'transformQueue',
  'transformConcurrency',
  'avifEffort',
  'sliceSize',
  'slicePaths',
] as const;

const MiB = 1024 * 1024;
/** The Cache API's per-object limit. */
const CACHE_API_MAX_OBJECT = 512 * MiB;
/** R2's single-upload limit (5 GiB) less room for metadata stored in front of a body. */
const R2_MAX_ENTRY = 5 * 1024 * MiB - MiB;

/** A configuration problem, naming the variable it comes from. */
export class WorkersConfigError extends Error {
  constructor(readonly problems: { variable: string; option: string; problem: string }[]) {
    super(problems.map((p) => `${p.variable}: ${p.problem}`).join('\n'));
    this.name = 'WorkersConfigError';
  }
}

/** The variable name of an option on Workers: its Node environment name without `EDGE_`. */
export function optionVariable(option: string): string {
  return optionEnv(option).slice('EDGE_'.length);
}

/**
 * Options from the Worker's variables and secrets: every option of the
 * Node schema, read from its variable name, validated by `resolveEdgeOptions`.
 */
export function resolveWorkersOptions(env: WorkersEnv): EdgeOptions {
  const input: Record<string, unknown> = {};
  for (const option of Object.keys(edgeOptionsSchema.shape)) {
    const value = env[optionVariable(option)];
    // Bindings are objects with methods; vars are strings, numbers, booleans or JSON.
    if (value === undefined || value === null || typeof value === 'function') continue;
    if (typeof value === 'object' && !Array.isArray(value) && option !== 'origins') continue;
    // ORIGINS as a secret or `--var` is JSON text; in wrangler.toml it may be a table.
    if (option === 'origins' && typeof value === 'string') {
      try {
        input[option] = JSON.parse(value);
      } catch (error) {
        throw new WorkersConfigError([{ variable: 'ORIGINS', option, problem: `not JSON: ${(error as Error).message}` }]);
      }
      continue;
    }
    input[option] = value;
  }
  let options: EdgeOptions;
  try {
    options = resolveEdgeOptions(input);
  } catch (error) {
    if (!(error instanceof EdgeOptionsError)) throw error;
    throw new WorkersConfigError(
      error.problems.map((line) => {
        // `--max-object-size (EDGE_MAX_OBJECT_SIZE): got ...` -> `MAX_OBJECT_SIZE: got ...`
        const match = /^--[a-z0-9-]+ \(EDGE_([A-Z0-9_]+)\): (.*)$/s.exec(line);
        if (!match) return { variable: '(unknown)', option: '', problem: line };
        const variable = match[1]!;
        const option = variable.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
        return { variable, option, problem: match[2]! };
      }),
    );
  }
  // Range slicing is Node-only (README "Range slicing"): off on Workers whatever SLICE_SIZE says.
  options = { ...options, sliceSize: 0, slicePaths: [] };
  const problems: { variable: string; option: string; problem: string }[] = [];
  if (!options.origin && !options.origins) {
    problems.push({ variable: 'ORIGIN', option: 'origin', problem: 'required: the upstream URL, e.g. https://origin.example.com (wrangler.toml [vars] or --var ORIGIN:...), or ORIGINS' });
  } else if (options.origin && (options.origin.includes(',') || options.origin.startsWith('s3:'))) {
    problems.push({ variable: 'ORIGIN', option: 'origin', problem: `got ${JSON.stringify(options.origin)}: on Workers the origin is one http(s):// URL (origin pools and s3:// origins run on the Node node)` });
  }
  if (options.origins) for (const problem of routeOriginProblems(options.origins)) problems.push({ variable: 'ORIGINS', option: 'origins', problem });
  // Larger objects would be declined by the Cache API after Cache-Status had promised `stored`.
  if (options.maxObjectSize > CACHE_API_MAX_OBJECT) {
    problems.push({ variable: 'MAX_OBJECT_SIZE', option: 'maxObjectSize', problem: `got ${options.maxObjectSize} bytes: the Cache API stores at most 512MB per object` });
  }
  if (options.apiKeysFile !== undefined) {
    problems.push({ variable: 'API_KEYS_FILE', option: 'apiKeysFile', problem: 'a Worker reads no files: put the same JSON in the API_KEYS secret (wrangler secret put API_KEYS)' });
  }
  if (problems.length > 0) throw new WorkersConfigError(problems);
  return options;
}

/**
 * API keys from the `API_KEYS` secret (or var): the JSON of Node's
 * `--api-keys-file`, `{"keys":[{"name","key","rateLimit"?}]}` or the bare
 * array, checked by the same schema. A secret changes with a new
 * deployment (`wrangler secret put` redeploys), so there is nothing to watch.
 */
function apiKeysOf(env: WorkersEnv): readonly ApiKey[] | undefined {
  const value = env.API_KEYS;
  if (value === undefined || value === null || value === '') return undefined;
  try {
    return parseApiKeys(typeof value === 'string' ? value : JSON.stringify(value));
  } catch (error) {
    throw new WorkersConfigError([{ variable: 'API_KEYS', option: '', problem: (error as Error).message }]);
  }
}

function seconds(value: unknown, fallback: number): number {
  if (value === undefined || value === '') return fallback;
  const number = Number(value);
  if (!Number.isFinite(number) || number < 0) {
    throw new WorkersConfigError([{ variable: 'PUSH_INDEX_REFRESH', option: '', problem: `got ${JSON.stringify(value)}: expected a number of seconds (0 asks R2 on every request)` }]);
  }
  return number;
}

/** One isolate's edge: the app plus what the entry point needs around it. */
interface WorkerEdge {
  edge: EdgeApp;
  options: EdgeOptions;
  /** Which paths are pushed, asked of R2 per path (absent without PUSH_BUCKET). */
  pushedLookup?: PushedPathLookup;
  shields?: ShieldOriginClient;
  lastHealthCheck: number;
  pulled: CfCacheStore;
  pushed?: R2PushStore;
  zone?: ZonePurgeClient;
  zoneHosts: string[];
}

/** The zone purge client from the Worker's variables, or undefined when no zone is configured. */
function zoneOf(env: WorkersEnv): ZonePurgeClient | undefined {
  const zoneId = typeof env.CLOUDFLARE_ZONE_ID === 'string' ? env.CLOUDFLARE_ZONE_ID.trim() : '';
  const token = typeof env.CLOUDFLARE_API_TOKEN === 'string' ? env.CLOUDFLARE_API_TOKEN.trim() : '';
  if (!zoneId && !token) return undefined;
  const problems: { variable: string; option: string; problem: string }[] = [];
  if (!zoneId) problems.push({ variable: 'CLOUDFLARE_ZONE_ID', option: '', problem: 'required with CLOUDFLARE_API_TOKEN: the zone id from the dashboard (Overview, API)' });
  else if (!/^[A-Za-z0-9]{1,64}$/.test(zoneId)) problems.push({ variable: 'CLOUDFLARE_ZONE_ID', option: '', problem: `got ${JSON.stringify(zoneId)}: expected the zone id (32 hex digits)` });
  if (!token) problems.push({ variable: 'CLOUDFLARE_API_TOKEN', option: '', problem: 'required with CLOUDFLARE_ZONE_ID: an API token with Zone > Cache Purge (wrangler secret put CLOUDFLARE_API_TOKEN)' });
  const base = typeof env.CLOUDFLARE_API_BASE === 'string' && env.CLOUDFLARE_API_BASE !== '' ? env.CLOUDFLARE_API_BASE : undefined;
  if (base !== undefined && !/^https?:\/\/[^/]+/.test(base)) problems.push({ variable: 'CLOUDFLARE_API_BASE', option: '', problem: `got ${JSON.stringify(base)}: expected an http(s) URL` });
  if (problems.length > 0) throw new WorkersConfigError(problems);
  return new ZonePurgeClient({ zoneId, token, baseUrl: base });
}

async function createWorkerEdge(env: WorkersEnv): Promise<WorkerEdge> {
  const options = resolveWorkersOptions(env);
  const pushIndexRefreshMs = seconds(env.PUSH_INDEX_REFRESH, 60) * 1000;
  const caches = (globalThis as unknown as { caches?: WorkersCaches }).caches;
  if (!caches) throw new Error('The Cache API (caches) is not available in this runtime.');
  const cacheName = typeof env.CACHE_NAME === 'string' && env.CACHE_NAME !== '' ? env.CACHE_NAME : undefined;
  const cache = cacheName ? await caches.open(cacheName) : caches.default;
  const zone = zoneOf(env);
  const zoneHosts = typeof env.PURGE_HOSTS === 'string' ? env.PURGE_HOSTS.split(',').map((host) => host.trim().toLowerCase()).filter(Boolean) : [];
  // Entries under the zone's own URLs, tagged, so the zone purge API reaches them in every location.
  const pulled = new CfCacheStore({ cache, maxEntryBytes: Math.min(options.maxObjectSize, CACHE_API_MAX_OBJECT), onError: logError('cache'), zoneUrls: true, purgeMarkers: true, verifyPuts: true });
  const bucket = env.PUSH_BUCKET;
  const pushed = bucket
    ? new R2PushStore({ bucket, prefix: typeof env.PUSH_PREFIX === 'string' ? env.PUSH_PREFIX : '', maxEntryBytes: Math.min(options.maxUploadSize, R2_MAX_ENTRY) })
    : undefined;
  // Past 3 derived entries (image variants) of a re-pushed or deleted object, one purge marker retires them (see routed-store.ts).
  const store: CacheStore = pushed ? new RoutedCacheStore({ pushed, pulled, retireDerivedOver: 3 }) : pulled;

  const timeouts = { headersTimeout: options.originTimeout, bodyTimeout: options.bodyTimeout };
  // Route rules pick a group's origin as on Node (route-origin.ts); else the one ORIGIN.
  let origin: OriginClient = options.origins
    ? new RouteOriginClient({ config: options.origins, createClient: (url) => new FetchOriginClient({ url, ...timeouts }) })
    : new FetchOriginClient({ url: options.origin!, ...timeouts });
  let shields: ShieldOriginClient | undefined;
  if (options.shield?.length) {
    // No timers between requests on Workers: health checks run from requests (see `serve`).
    shields = new ShieldOriginClient({ shields: options.shield.map((url) => new FetchOriginClient({ url, ...timeouts })), origin, healthInterval: 0 });
    origin = shields;
  }
  const images = options.images && env.IMAGES ? new CfImagesTransformer({ images: env.IMAGES, maxInputPixels: options.imageMaxPixels, timeoutMs: options.transformTimeout }) : undefined;
  const logRequests = options.logLevel === 'info' || options.logLevel === 'debug' || options.logLevel === 'trace';

  const apiKeys = apiKeysOf(env);
  if (!apiKeys && options.origins?.routes.some((route) => route.access?.apiKey)) {
    throw new WorkersConfigError([{ variable: 'API_KEYS', option: '', problem: 'a route requires API keys (access.apiKey): put them in the API_KEYS secret, {"keys":[{"name","key","rateLimit"?}]} (wrangler secret put API_KEYS)' }]);
  }
  // The core keeps the key header out of keys and origin requests wherever keys are configured, which on
  // Node means a key file; here they come from the secret (a file is refused above, so nothing reads this path).
  if (apiKeys) options.apiKeysFile = '(the API_KEYS secret)';
  const edge = createEdgeApp({
    options,
    apiKeys: apiKeys ? () => apiKeys : undefined,
    store,
    origin,
    imageTransformer: images,
    // Decodes gzip for clients that do not take it; compressing is left to Cloudflare's network (see web-coder.ts).
    coder: createWebCoder(),
    clientIp: (bindings) => (bindings as RequestBindings | undefined)?.clientIp,
    waitUntil: (executionCtx, promise) => (executionCtx as ExecutionContextLike).waitUntil(promise),
    onRequest: logRequests ? (record) => console.log(JSON.stringify({ level: 'info', node: options.name, msg: 'request', ...record })) : undefined,
    // SHA-256 ETags while the push streams (crypto.DigestStream), as on Node: `edge push` skips unchanged files.
    createHasher: digestStreamHasher(),
    loadPushedIndex: false,
    health: () => ({
      runtime: 'workers',
      pushStore: bucket ? 'r2' : 'cache (no PUSH_BUCKET binding: pushed objects are per data center and may be evicted)',
      images: !options.images
        ? 'off'
        : !images
          ? 'unavailable (no IMAGES binding: originals are served)'
          : images.available()
            ? 'images-binding'
            : `unavailable (the IMAGES binding failed: originals are served for now): ${images.lastFailure ?? ''}`,
      ...(shields ? { shields: shields.status() } : {}),
    }),
  });
  await edge.ready;
  const ignored = NODE_ONLY_OPTIONS.filter((option) => env[optionVariable(option)] !== undefined);
  if (ignored.length > 0) console.warn(`edge: ${ignored.map(optionVariable).join(', ')} have no effect on Workers`);
  const pushedLookup = pushed
    ? new PushedPathLookup({ exists: (key) => pushed.has(key), paths: edge.pull.pushedPaths, ttlMs: pushIndexRefreshMs })
    : undefined;
  return { edge, options, pushedLookup, shields, lastHealthCheck: Date.now(), pulled, pushed, zone, zoneHosts };
}

function logError(tier: string) {
  return (error: unknown) => console.error(JSON.stringify({ level: 'error', msg: `${tier} tier failure`, error: String(error) }));
}

/** One edge per `env` object, i.e. per isolate and configuration; a failed configuration is remembered too. */
const edges = new WeakMap<object, Promise<WorkerEdge>>();

function edgeFor(env: WorkersEnv): Promise<WorkerEdge> {
  let edge = edges.get(env);
  if (!edge) {
    edge = createWorkerEdge(env);
    edges.set(env, edge);
    edge.catch((error: unknown) => {
      if (error instanceof WorkersConfigError) console.error(`edge: invalid configuration:\n${error.message}`);
      else console.error('edge: start-up failed', error);
    });
  }
  return edge;
}

function configErrorResponse(error: unknown): Response {
  if (error instanceof WorkersConfigError) {
    return errorResponse(
      new EdgeError('EDGE_INTERNAL', `The edge is misconfigured: ${error.problems.map((p) => `${p.variable}: ${p.problem}`).join('; ')}`, {
        details: { variables: error.problems.map((p) => p.variable), problems: error.problems },
      }),
    );
  }
  return errorResponse(error);
}

/** Workers' `FixedLengthStream`: a pass-through stream that makes the runtime send `Content-Length`. */
type FixedLengthStreamConstructor = new (length: number) => { readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> };

/**
 * The response as the runtime should send it:
 * - with a body of known length, through a `FixedLengthStream`, or
 *   workerd drops `Content-Length` and sends the body chunked (a stream
 *   body's length is not known to it);
 * - with a body the origin encoded (gzip, br...), with `encodeBody:
 *   'manual'`, or the runtime would compress it a second time.
 */
export function prepareResponse(response: Response): Response {
  let body: ReadableStream<Uint8Array> | null = response.body;
  if (!body) return response;
  const encoding = response.headers.get('content-encoding');
  const encoded = encoding !== null && encoding !== 'identity';
  const length = Number(response.headers.get('content-length') ?? Number.NaN);
  const Fixed = (globalThis as unknown as { FixedLengthStream?: FixedLengthStreamConstructor }).FixedLengthStream;
  const fixed = Fixed !== undefined && response.headers.has('content-length') && Number.isSafeInteger(length) && length >= 0;
  if (!fixed && !encoded) return response;
  if (fixed) {
    const { readable, writable } = new Fixed!(length);
    // A body that ends early or runs long errors the stream: the client sees a broken response, not a wrong one.
    body.pipeTo(writable).catch(() => {});
    body = readable;
  }
  const init: ResponseInit & { encodeBody?: 'manual' } = { status: response.status, statusText: response.statusText, headers: response.headers };
  if (encoded) init.encodeBody = 'manual';
  return new Response(body as BodyInit, init);
}

async function serve(request: Request, env: WorkersEnv, ctx: ExecutionContextLike): Promise<Response> {
  let worker: WorkerEdge;
  try {
    worker = await edgeFor(env);
  } catch (error) {
    return configErrorResponse(error);
  }
  const now = Date.now();
  const { pathname } = new URL(request.url);
  // Before the core decides whether to look for a pushed object at this path (one R2 head per path per PUSH_INDEX_REFRESH).
  if (worker.pushedLookup && (request.method === 'GET' || request.method === 'HEAD') && !pathname.startsWith('/_edge/')) {
    await worker.pushedLookup.check(pathname);
  }
  // Shields marked down come back after a good health check; only ask while one is down.
  if (worker.shields && now - worker.lastHealthCheck >= 5000 && worker.shields.status().some((shield) => !shield.healthy)) {
    worker.lastHealthCheck = now;
    ctx.waitUntil(worker.shields.checkHealth());
  }
  const bindings: RequestBindings = { clientIp: request.headers.get('cf-connecting-ip') ?? undefined };
  if (request.method === 'GET' && pathname === '/_edge/objects') {
    const listing = await handleWorkersListing(request, { adminToken: worker.options.adminToken, cache: worker.pulled, pushed: worker.pushed });
    if (listing) return listing;
  }
  if (request.method === 'POST' && pathname === '/_edge/purge') {
    const { response, retry } = await handleWorkersPurge(request, {
      edge: worker.edge,
      adminToken: worker.options.adminToken,
      cache: worker.pulled,
      pushed: worker.pushed,
      pushedLookup: worker.pushedLookup,
      zone: worker.zone,
      zoneHosts: worker.zoneHosts,
      now: Date.now,
    });
    if (response) return response;
    if (retry) request = retry;
  }
  const response = await worker.edge.fetch(request, bindings, ctx);
  return prepareResponse(await honestCacheStatus(response, request, worker, bindings.clientIp));
}

/** Bodies up to this size are read whole before answering when their Cache-Status says `stored`, to know it is true. */
const CONFIRM_STORED_MAX = 1024 * 1024;

/**
 * `Cache-Status: ...; stored` only when the Cache API took the entry. The
 * core says `stored` when the response headers go out, before the body (and
 * so the `cache.put`) is through. Here:
 * - once this isolate found the Cache API keeping nothing (`*.workers.dev`,
 *   preview: `CfCacheStore.storing`), `stored` is taken out;
 * - a 200 of known length up to 1 MiB is read whole first (the fill
 *   commits as it ends), and `stored` stays only if the commit stored it
 *   (a `cache.put` that rejected, or that kept nothing, takes it out);
 * - a larger body (or a 206, a 304, a HEAD) goes at once: its `stored` is
 *   the core's promise, true unless the put fails afterwards (logged).
 */
async function honestCacheStatus(response: Response, request: Request, worker: WorkerEdge, clientIp: string | undefined): Promise<Response> {
  const status = response.headers.get('cache-status');
  if (!status || !/;\s*stored\s*(;|,|$)/.test(status)) return response;
  const withoutStored = () => {
    const headers = new Headers(response.headers);
    headers.set('cache-status', status.replace(/;\s*stored\s*(?=;|,|$)/, ''));
    return headers;
  };
  if (worker.pulled.storing === false) return new Response(response.body, { status: response.status, statusText: response.statusText, headers: withoutStored() });
  const length = Number(response.headers.get('content-length') ?? Number.NaN);
  // Whole 200s only: a range's length says nothing of the fill behind it, which may be far longer.
  if (request.method !== 'GET' || response.status !== 200 || !response.body || !(length <= CONFIRM_STORED_MAX)) return response;
  const body = await response.arrayBuffer();
  let key: string | undefined;
  try {
    key = worker.edge.pull.describe(request.url, clientIp, headersToRecord(request.headers)).key;
  } catch {
    key = undefined;
  }
  const outcome = key === undefined ? undefined : worker.pulled.outcomeOf(key);
  const stored = outcome === undefined ? (worker.pulled.storing as boolean | undefined) !== false : await outcome;
  return new Response(body, { status: response.status, statusText: response.statusText, headers: stored ? response.headers : withoutStored() });
}

export default {
  fetch(request: Request, env: WorkersEnv, ctx: ExecutionContextLike): Promise<Response> {
    return serve(request, env, ctx);
  },
};
