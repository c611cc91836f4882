/**
 * `createEdgeApp()`: the whole node as a Hono app on Web-standard
 * Request/Response, shared by the Node server and the Workers entry.
 * Runtime specifics (client address, 103 relaying, background work, the
 * store and the origin) come in through `EdgeAppDeps`.
 *
 * Content requests are dispatched here, once: image variants to
 * `ImageVariants`, everything else to `PullCache`; both answer with an
 * `Answer` (`responder.ts`). `answerFreshHit()` exposes the fresh-hit
 * decision as plain data for adapters that write it without Web objects.
 */
import { Hono } from 'hono';
import { createAccessGate, type AccessGate } from './access/gate.js';
import type { ApiKey } from './access/api-keys.js';
import type { UploadNonces } from './access/presigned.js';
import { RateLimiter, type RateCounters } from './access/rate-limit.js';
import { mountAdminApi, type ContentHasher, type PurgeEvent } from './admin.js';
import { createAdminAuth } from './admin-session.js';
import { formatCacheStatus } from './cache-status.js';
import type { FillCoordinator } from './collapse.js';
import type { BodyCoder } from './compression.js';
import { EdgeError, errorResponse } from './errors.js';
import { headersToRecord } from './headers.js';
import { ImageVariants } from './image-variants.js';
import type { ImageTransformer } from './image/types.js';
import type { EdgeOptions } from './options.js';
import type { OriginClient } from './origin/types.js';
import { createPolicyFactory, type PolicyFactory } from './policy.js';
import type { Described } from './describe.js';
import { parsePeers, type FleetPeer } from './fleet-purge.js';
import { PullCache, type IncomingRequest, type RequestContext, type RequestLog } from './pull.js';
import type { ReloadOutcome } from './reload.js';
import { answerError, toResponse, type Answer } from './responder.js';
import { credentials, mountStatusPage, type StatusPageSource } from './status-page.js';
import type { CacheStore } from './store/types.js';

export type { ContentHasher } from './admin.js';

/** One finished request, as handed to the access log and metrics. */
export interface RequestRecord extends RequestLog {
  method: string;
  path: string;
  status: number;
  /** Time to the response headers at this node. */
  durationMs: number;
  /** When the record was made (the node's clock, ms since the epoch): consumers need not read the clock again. */
  at: number;
  clientIp?: string;
  /** Body bytes sent (the answer's length; counted when it streams without one). */
  bytes?: number;
  requestId: string;
  userAgent?: string;
  referer?: string;
  /** This node's full `Cache-Status` value, upstream members included. */
  cacheStatus?: string;
  /**
   * Which writer answered: `hit` (a fresh hit written straight from the
   * cache), `content` (the pull path, written by the runtime adapter) or
   * `router` (Hono: node endpoints, and targets that need URL parsing).
   */
  answeredBy: 'hit' | 'content' | 'router';
}

export interface EdgeAppDeps {
  options: EdgeOptions;
  store: CacheStore;
  origin: OriginClient;
  /** The clock, ms since epoch. @default Date.now */
  now?: () => number;
  /** Address of the connected peer, from the runtime's bindings (Node: the socket). */
  clientIp?: (env: unknown) => string | undefined;
  /** The request headers as a lower-case record, when the runtime has them parsed already (Node). */
  requestHeaders?: (env: unknown) => Record<string, string> | undefined;
  /** Relay 103 Early Hints to the client (Node: `ServerResponse.writeEarlyHints`). */
  sendEarlyHints?: (env: unknown, headers: Record<string, string | string[]>) => void;
  /** Background work runner (Workers: `ctx.waitUntil`). Work is also tracked in-process for `settle()`. */
  waitUntil?: (executionCtx: unknown, promise: Promise<unknown>) => void;
  /** Called once per request, when its answer is complete (streamed bodies of unknown length: when they end). */
  onRequest?: (record: RequestRecord) => void;
  /** Prometheus text for `GET /_edge/metrics`. */
  metrics?: () => Promise<string> | string;
  /**
   * Pixel work for image variants (Node: sharp; Workers: the Images binding).
   * Without it, image parameters are still validated and the untransformed
   * source is served, with `detail=image-transform-unavailable` in Cache-Status.
   */
  imageTransformer?: ImageTransformer;
  /**
   * Content codings for compression (Node: brotli and gzip from node:zlib;
   * Workers: gzip decoding only, Cloudflare compresses downstream). Without
   * one, bodies pass as the origin coded them. See `compression.ts`.
   */
  coder?: BodyCoder;
  /** Health of origin pool members and shields, for `GET /_edge/origins`. */
  originStatus?: () => unknown;
  /** Streaming content hash for pushed objects' ETags (Node: sha256 from node:crypto). */
  createHasher?: () => ContentHasher;
  /** Extra readiness facts for `GET /_edge/health`. */
  health?: () => Record<string, unknown>;
  /**
   * With a separate admin listener (Node's `--admin-listen`): which listener a
   * request came in on. `public` answers content and `/_edge/health` only
   * (the rest of `/_edge/` is the same 404 as an unknown endpoint); `admin`
   * answers `/_edge/` only. Unset: one listener answers everything.
   */
  listener?: (env: unknown) => 'public' | 'admin';
  /**
   * Write a content answer with the runtime's own writer (Node: straight to
   * `ServerResponse`, as the fresh-hit path does), so every content answer
   * leaves the same way; returns what the router must return instead
   * (`RESPONSE_ALREADY_SENT`). `done` records the request.
   */
  writeAnswer?: (env: unknown, answer: Answer, done: (bytes: number) => void) => Response | undefined;
  /** API keys as they stand now (Node: re-read from `--api-keys-file`); the same array until they change. See `access/gate.ts`. */
  apiKeys?: () => readonly ApiKey[];
  /**
   * The other nodes of the fleet for fleet purges, as they stand now (Node:
   * re-read from `--peers @file`). Without it, `--peers` is read as a
   * comma-separated list. Called per purge: return the same array until the list changes.
   */
  peers?: () => readonly FleetPeer[];
  /** Aborted when the node shuts down: stops background work that outlives requests (purge replays to peers). */
  signal?: AbortSignal;
  /**
   * Re-read the configuration and apply it (Node: flags, environment and
   * `--config` file, through `EdgeApp.reconfigure()`; in a cluster, every
   * worker), for `POST /_edge/reload`. Without it that endpoint answers 404.
   */
  reload?: () => Promise<ReloadOutcome>;
  /**
   * List the pushed objects at start-up to fill `pull.pushedPaths`. The
   * Workers adapter turns it off and fills the set lazily per path
   * (`edge/workers/pushed-paths.ts`).
   * @default true
   */
  loadPushedIndex?: boolean;
  /** The status page's files and figures (`GET /_edge/`, `/_edge/stats`; Node). Without it those routes answer 404. */
  statusPage?: StatusPageSource;
  /** Told of every purge applied on this node (the status page lists recent ones). */
  onPurge?: (event: PurgeEvent) => void;
  /**
   * State shared with other processes of one node (Node's `--workers`: held
   * by the cluster primary, `edge/node/cluster.ts`): fill leases for request
   * collapsing, rate-limit counters, used presigned-upload nonces.
   * @default each kept in this process alone
   */
  fills?: FillCoordinator;
  rateCounters?: RateCounters;
  uploadNonces?: UploadNonces;
}

/** A configuration as the app runs it: the options and the runtime pieces built from them. */
export interface EdgeConfiguration {
  options: EdgeOptions;
  origin: OriginClient;
  imageTransformer?: ImageTransformer;
}

/** What an adapter gets back from {@link EdgeApp.answerFreshHit}. */
export interface FastAnswer {
  answer: Answer;
  /** Call once the answer is written, with the body bytes sent: logs and counts the request like any other. */
  done(bytes: number): void;
}

export interface EdgeApp {
  app: Hono;
  /**
   * The entry point runtimes call: Hono's fetch plus the access log /
   * metrics record. (A wrapper rather than a middleware: one less layer on
   * the hit path, measured in `npm run bench`.)
   */
  fetch: (request: Request, env?: unknown, executionCtx?: unknown) => Promise<Response>;
  /**
   * A fresh cache hit as plain data, or undefined when the request needs
   * the general path. Same decision and same `Answer` as `fetch` gives.
   * `url` is absolute and must already be in the URL parser's normal form.
   */
  answerFreshHit(method: string, url: string, headers: Record<string, string>, clientIp: string | undefined): FastAnswer | undefined;
  /**
   * Any content request (not `/_edge/`) as an `Answer`, errors included, for
   * adapters that write answers themselves. `url` as for `answerFreshHit`.
   */
  answerContent(
    request: IncomingRequest,
    clientIp: string | undefined,
    runtime: { sendEarlyHints?: (headers: Record<string, string | string[]>) => void },
  ): Promise<FastAnswer>;
  /** The pull path of the configuration in use (a reload replaces it; flights, purges and the pushed index carry over). */
  readonly pull: PullCache;
  /** The options in use (a reload replaces them). */
  readonly options: EdgeOptions;
  /**
   * Put a new configuration in use (a reload): requests arriving from now
   * on read it; requests and background work already under way finish on
   * the previous one. The store, request collapsing, purges, rate-limit
   * counters and connections are kept. Throws, leaving the running
   * configuration, when the new one cannot be built. `retired` resolves
   * once nothing uses the previous configuration any more: its origin
   * client and image transformer may then be closed.
   */
  reconfigure(next: EdgeConfiguration): { retired: Promise<void> };
  /** Resolves when start-up work (the pushed-object index) is done. */
  ready: Promise<void>;
  /** Resolves when all background work (refreshes, cache fills) started so far is done. */
  settle(): Promise<void>;
}

/** `/_edge/...` however it is spelled (case, doubled slashes, an encoded slash): never content. */
const RESERVED_PATH = /^\/+_edge(?:\/|%2f|$)/i;

/** Client-sent request ids are kept when they are short, printable tokens. */
const CLIENT_REQUEST_ID = /^[\w.:@+=-]{1,128}$/;

/**
 * The pieces built from one configuration. A request takes the one in use
 * when it arrives and keeps it to the end, so it never sees two.
 */
interface Configuration {
  options: EdgeOptions;
  policies: PolicyFactory;
  pull: PullCache;
  images?: ImageVariants;
  /** Deny rules, signatures, API keys, rate limits (`access/gate.ts`): undefined when none is configured. */
  access?: AccessGate;
  /** Requests and background work using it now. */
  users: number;
  /** Set once replaced: called when the last user is done. */
  retire?: () => void;
}

export function createEdgeApp(deps: EdgeAppDeps): EdgeApp {
  // The start-up options: what cannot change on reload (name, admin token, listeners) is read from these.
  const { options } = deps;
  const now = deps.now ?? Date.now;
  // One set of counters for every configuration: a reload does not hand every client a fresh window.
  // Made on first use: most nodes limit nothing, and lru-cache allocates the table at its full size.
  let localCounters: RateLimiter | undefined;
  const rateCounters: RateCounters = deps.rateCounters ?? {
    inProcess: true,
    take: (...args) => (localCounters ??= new RateLimiter({ maxEntries: options.rateLimitClients, now })).take(...args),
  };

  const configure = (next: EdgeConfiguration, previous?: Configuration): Configuration => {
    const { options } = next;
    const policies = createPolicyFactory({
      heuristicFraction: options.heuristicFraction,
      heuristicMaxAge: options.heuristicMaxAge,
      defaultTtl: options.defaultTtl,
      targetedFields: [options.targetedCacheControl, 'cdn-cache-control'],
      now,
    });
    const pullDeps = { options, store: deps.store, origin: next.origin, policies, now, coder: deps.coder, fills: deps.fills };
    const pull = previous ? previous.pull.reconfigured(pullDeps) : new PullCache(pullDeps);
    const images = options.images ? new ImageVariants({ options, store: deps.store, pull, policies, transformer: next.imageTransformer, now }, previous?.images) : undefined;
    const access = createAccessGate({ options, now, apiKeys: deps.apiKeys, rateCounters });
    return { options, policies, pull, images, access, users: 0 };
  };
  let current = configure({ options, origin: deps.origin, imageTransformer: deps.imageTransformer });
  /** Replaced pull caches whose background re-compressions may still run (`settle()` waits for them). */
  const retiredPulls = new Set<PullCache>();

  /** Count a user of `config` until the returned release is called. */
  const hold = (config: Configuration): (() => void) => {
    config.users++;
    return () => {
      if (--config.users === 0) config.retire?.();
    };
  };

  // --peers as a comma-separated list: the one in the configuration in use (a reload may change it).
  let listed: { value: string; peers: readonly FleetPeer[] } | undefined;
  const listedPeers =
    options.peers === undefined || options.peers.startsWith('@')
      ? undefined
      : () => {
          const value = current.options.peers ?? '';
          if (listed?.value !== value) listed = { value, peers: parsePeers(value, 'list').peers };
          return listed.peers;
        };

  const pending = new Set<Promise<unknown>>();
  const track = (promise: Promise<unknown>) => {
    const tracked = promise.catch(() => {}).finally(() => pending.delete(tracked));
    pending.add(tracked);
  };

  // Request ids: a random per-process prefix and a counter (unique, and far
  // cheaper per request than a UUID).
  const idPrefix = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, '0')).join('') + '-';
  let idCounter = 0;

  /** Per-request facts, riding on the Request itself (a WeakMap of short-lived requests costs GC time). */
  interface Pending {
    log: RequestLog;
    headers: Record<string, string>;
    requestId: string;
    /** True when the id is ours, so the answer carries it. */
    ownId: boolean;
    /** The runtime wrote the answer and records it when done. */
    written?: boolean;
    /** When the request arrived (set by the entry point that times it). */
    started?: number;
  }
  const PENDING = Symbol('edgePending');
  type Tagged = Request & { [PENDING]?: Pending };

  const begin = (headers: Record<string, string>): Pending => {
    const sent = headers['x-request-id'];
    const ownId = sent === undefined || !CLIENT_REQUEST_ID.test(sent);
    return { log: {}, headers, requestId: ownId ? idPrefix + (++idCounter).toString(36) : sent!, ownId };
  };

  const onRequest = deps.onRequest;
  const record = (
    state: Pending,
    method: string,
    url: string,
    status: number,
    answerHeaders: { get(name: string): string | undefined },
    started: number,
    clientIp: string | undefined,
    bytes: number | undefined,
    answeredBy: RequestRecord['answeredBy'],
  ): RequestRecord => {
    const pathStart = url.indexOf('/', url.indexOf('//') + 2);
    const { log } = state;
    const finished = now();
    // Field by field, one shape for every record: spreading a log whose
    // fields were set in varying orders cost more than the rest of a hit.
    return {
      key: log.key,
      outcome: log.outcome,
      tier: log.tier,
      originMs: log.originMs,
      collapsed: log.collapsed,
      detail: log.detail,
      method,
      path: pathStart === -1 ? '/' : url.slice(pathStart),
      status,
      durationMs: finished - started,
      at: finished,
      clientIp,
      bytes,
      requestId: state.requestId,
      userAgent: state.headers['user-agent'],
      referer: state.headers.referer,
      cacheStatus: answerHeaders.get('cache-status'),
      answeredBy,
    };
  };

  const app = new Hono();
  app.onError((err) => errorResponse(err));

  // With an admin listener, the public one keeps only health under /_edge/
  // (Hono's own path matching, so every spelling that would reach a route is caught).
  const listener = deps.listener;
  if (listener) {
    app.use('/_edge/*', async (c, next) => {
      // A presigned upload is the one admin route meant for clients without the
      // token: its signed URL (and no Authorization header) is accepted here too.
      const presignedUpload = c.req.method === 'PUT' && c.req.path.startsWith('/_edge/push/') && c.req.query('upload') !== undefined && !c.req.header('authorization');
      if (c.req.path !== '/_edge/health' && !presignedUpload && listener(c.env) === 'public') throw new EdgeError('EDGE_NOT_FOUND', 'No such endpoint under /_edge/.');
      await next();
    });
  }

  // Public: readiness and store figures only. Origins, pool members and S3
  // buckets are the admin token holder's to see (`GET /_edge/origins`).
  app.get('/_edge/health', (c) => c.json({ status: 'ok', name: options.name, store: deps.store.stats(), ...deps.health?.() }));

  // Metrics name origins and routes: with an admin token set, only its holder may scrape them.
  // The admin token, as a bearer token or the status page's session cookie (`admin-session.ts`).
  const adminAuth = options.adminToken ? createAdminAuth(options.adminToken, { now }) : undefined;
  app.get('/_edge/metrics', async (c) => {
    if (!deps.metrics) throw new EdgeError('EDGE_NOT_FOUND', 'Metrics are not enabled on this node.');
    await adminAuth?.check(credentials(c), 'GET /_edge/metrics');
    return c.body(await deps.metrics(), 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
  });

  // Read per request: a reload's options, pull path and policies apply to the admin API at once.
  mountAdminApi(app, {
    get options() {
      return current.options;
    },
    store: deps.store,
    get pull() {
      return current.pull;
    },
    get policies() {
      return current.policies;
    },
    now,
    createHasher: deps.createHasher,
    waitUntil: track,
    originStatus: deps.originStatus,
    peers: deps.peers ?? listedPeers,
    signal: deps.signal,
    auth: adminAuth,
    onPurge: deps.onPurge,
    uploadNonces: deps.uploadNonces,
  });

  mountStatusPage(app, { auth: adminAuth, source: deps.statusPage });

  // POST /_edge/reload: the adapter re-reads and applies its configuration; admin credentials as for the rest of the admin API.
  app.post('/_edge/reload', async (c) => {
    if (!adminAuth) throw new EdgeError('EDGE_ADMIN_DISABLED', 'The admin API is disabled: start the node with --admin-token (EDGE_ADMIN_TOKEN) to enable it.');
    await adminAuth.check(credentials(c), 'POST /_edge/reload');
    if (!deps.reload) throw new EdgeError('EDGE_NOT_FOUND', 'This runtime does not reload its configuration: deploy a new version instead.');
    const outcome = await deps.reload();
    if (!outcome.applied) {
      throw new EdgeError('EDGE_BAD_CONFIG', `The configuration was not reloaded: ${outcome.problems.join('; ')}`, { details: { problems: outcome.problems } });
    }
    return c.json({ status: 'reloaded', changed: outcome.changed, ...(outcome.workers !== undefined ? { workers: outcome.workers } : {}) });
  });
  app.all('/_edge/reload', () => {
    throw new EdgeError('EDGE_METHOD_NOT_ALLOWED', 'Use POST here.', { headers: { allow: 'POST' } });
  });

  // Everything under /_edge/ belongs to the node and is never forwarded.
  app.all('/_edge/*', () => {
    throw new EdgeError('EDGE_NOT_FOUND', 'No such endpoint under /_edge/.');
  });

  app.all('*', async (c) => {
    // The admin listener is the node's alone: no content there.
    if (listener?.(c.env) === 'admin') throw new EdgeError('EDGE_NOT_FOUND', 'This listener serves /_edge/ only.');
    const request = c.req.raw as Tagged;
    const state = request[PENDING] ?? begin(deps.requestHeaders?.(c.env) ?? headersToRecord(request.headers));
    // Only runtimes with waitUntil have an execution context; Hono throws (an
    // expensive Error) when asked for one that does not exist.
    const executionCtx = deps.waitUntil ? c.executionCtx : undefined;
    const ctx: RequestContext = {
      clientIp: deps.clientIp?.(c.env),
      waitUntil: (promise) => {
        track(promise);
        if (deps.waitUntil && executionCtx) deps.waitUntil(executionCtx, promise);
      },
      sendEarlyHints: deps.sendEarlyHints ? (headers) => deps.sendEarlyHints!(c.env, headers) : undefined,
      log: state.log,
    };
    const answer = await answerSafely({ method: request.method, url: request.url, headers: state.headers, body: () => request.body }, ctx);
    if (state.ownId) answer.headers['x-request-id'] = state.requestId;
    // Not for HEAD: Hono answers HEAD by wrapping the GET route's Response in a new one.
    if (deps.writeAnswer && state.started !== undefined && request.method !== 'HEAD') {
      const started = state.started;
      const sent = deps.writeAnswer(c.env, answer, (bytes) =>
        onRequest?.(record(state, request.method, request.url, answer.status, { get: (name) => answer.headers[name] }, started, ctx.clientIp, bytes, 'router')),
      );
      if (sent) {
        state.written = true;
        return sent;
      }
    }
    return toResponse(answer);
  });

  /** Dispatch on the configuration in use, with every failure turned into its JSON answer. */
  async function answerSafely(request: IncomingRequest, ctx: RequestContext): Promise<Answer> {
    const config = current;
    const release = hold(config);
    // Background work the request starts (refreshes, cache fills) keeps its configuration in use too.
    const waitUntil = ctx.waitUntil;
    ctx.waitUntil = (promise) => {
      const done = hold(config);
      promise.then(done, done);
      waitUntil(promise);
    };
    try {
      return await dispatch(config, request, ctx);
    } catch (error) {
      // Errors carry Cache-Status too, so a client can tell where they came from.
      const code = (error as { code?: unknown } | null)?.code;
      return answerError(error, formatCacheStatus(options.name, { fwd: 'miss', ...(typeof code === 'string' ? { detail: code } : {}) }));
    } finally {
      release();
    }
  }


  /**
   * The fresh-hit writer's dispatch, synchronous: the same routes as
   * `dispatch()` (image variants or the pull path), each answering only a
   * fresh hit it can decide at once. With access rules, only a request the
   * gate admits synchronously takes this path; `finish()` counts it.
   */
  function freshHit(
    { pull, images, access }: Configuration,
    method: string,
    url: string,
    headers: Record<string, string>,
    clientIp: string | undefined,
    log: RequestLog,
  ): Answer | undefined {
    const described = pull.describe(url, clientIp, headers);
    if (RESERVED_PATH.test(described.pathname)) return undefined;
    const grant = access ? access.checkFast(method, described, clientIp) : undefined;
    if (grant === null) return undefined;
    const answer = images && isImageRequest(images, method, described) ? images.answerFreshHit(method, described, log) : pull.answerFreshHit(method, described, log);
    if (answer) grant?.finish(answer, 'hit');
    return answer;
  }

  /** What both dispatchers send to image variants: a GET or HEAD with a query on an image path (`route()` then parses it). */
  function isImageRequest(images: ImageVariants, method: string, described: Described): boolean {
    return described.search !== '' && (method === 'GET' || method === 'HEAD') && images.applies(described.pathname);
  }

  /** The one dispatch of content requests: the access check, then image variants or the pull path. */
  async function dispatch(config: Configuration, request: IncomingRequest, ctx: RequestContext): Promise<Answer> {
    const { access } = config;
    const described = config.pull.describe(request.url, ctx.clientIp, request.headers);
    if (RESERVED_PATH.test(described.pathname)) throw new EdgeError('EDGE_NOT_FOUND', 'No such endpoint under /_edge/.');
    if (!access) return route(config, request, ctx, described);
    const grant = await access.check(request.method, described, ctx.clientIp);
    return grant.finish(await route(config, request, ctx, described), ctx.log.outcome);
  }

  async function route({ images, pull }: Configuration, request: IncomingRequest, ctx: RequestContext, described: Described): Promise<Answer> {
    const incoming = { ...request, url: described.href };
    if (images && isImageRequest(images, request.method, described)) {
      const params = await images.parse(new URL(described.href));
      if (params) return images.handle(incoming, ctx, params, described);
    }
    return pull.handle(incoming, ctx, described);
  }

  const fetch = async (request: Request, env?: unknown, executionCtx?: unknown): Promise<Response> => {
    const started = now();
    const state = begin(deps.requestHeaders?.(env) ?? headersToRecord(request.headers));
    state.started = started;
    (request as Tagged)[PENDING] = state;
    const response = await app.fetch(request, env, executionCtx as never);
    if (state.written) return response;
    if (state.ownId && !response.headers.has('x-request-id')) response.headers.set('x-request-id', state.requestId);
    if (!onRequest) return response;
    const clientIp = deps.clientIp?.(env);
    const headerView = { get: (name: string) => response.headers.get(name) ?? undefined };
    const declared = response.headers.get('content-length');
    const bytes = response.body === null || request.method === 'HEAD' ? 0 : declared === null ? undefined : Number(declared);
    onRequest(record(state, request.method, request.url, response.status, headerView, started, clientIp, bytes, 'router'));
    return response;
  };

  return {
    app,
    fetch,
    async answerContent(request, clientIp, runtime) {
      const started = now();
      const state = begin(request.headers);
      const ctx: RequestContext = { clientIp, waitUntil: track, sendEarlyHints: runtime.sendEarlyHints, log: state.log };
      const answer = await answerSafely(request, ctx);
      if (state.ownId) answer.headers['x-request-id'] = state.requestId;
      return {
        answer,
        done: (bytes) => onRequest?.(record(state, request.method, request.url, answer.status, { get: (name) => answer.headers[name] }, started, clientIp, bytes, 'content')),
      };
    },
    answerFreshHit(method, url, headers, clientIp) {
      const started = now();
      const state = begin(headers);
      const answer = freshHit(current, method, url, headers, clientIp, state.log);
      if (!answer) return undefined;
      if (state.ownId) answer.headers['x-request-id'] = state.requestId;
      return {
        answer,
        done: (bytes) => onRequest?.(record(state, method, url, answer.status, { get: (name) => answer.headers[name] }, started, clientIp, bytes, 'hit')),
      };
    },
    get pull() {
      return current.pull;
    },
    get options() {
      return current.options;
    },
    reconfigure(next) {
      const previous = current;
      current = configure(next, previous);
      retiredPulls.add(previous.pull);
      const retired = new Promise<void>((resolve) => {
        previous.retire = resolve;
        if (previous.users === 0) resolve();
      });
      void retired.then(() => previous.pull.backgroundIdle()).then(() => retiredPulls.delete(previous.pull));
      return { retired };
    },
    // Workers look pushed paths up lazily instead (listing a bucket per isolate does not scale there).
    ready: deps.loadPushedIndex === false ? Promise.resolve() : current.pull.loadPushedIndex(),
    async settle() {
      for (;;) {
        while (pending.size > 0) await Promise.all([...pending]);
        // Re-compressions queued by hits run outside any request's work.
        await Promise.all([current.pull, ...retiredPulls].map((pull) => pull.backgroundIdle()));
        if (pending.size === 0) return;
      }
    },
  };
}
