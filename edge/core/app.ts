/**
 * `createEdgeApp()`: the whole node as a Hono app on Web-standard
 * Request/Response, shared by the Node server and the Workers entry.
 * Runtime specifics (client address, 103 relaying, background work, the
 * store and the origin) come in through `EdgeAppDeps`.
 */
import { Hono } from 'hono';
import { errorResponse, EdgeError } from './errors.js';
import type { EdgeOptions } from './options.js';
import type { OriginClient } from './origin/types.js';
import { mountAdminApi } from './admin.js';
import { ImageVariants } from './image-variants.js';
import type { ImageTransformer } from './image/types.js';
import { createPolicyFactory } from './policy.js';
import { PullCache, type RequestContext, type RequestLog } from './pull.js';
import type { CacheStore } from './store/types.js';

/** One finished request, as handed to the access log and metrics. */
export interface RequestRecord extends RequestLog {
  method: string;
  path: string;
  status: number;
  durationMs: number;
  clientIp?: string;
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
  /** Called once per request after the response headers are ready. */
  onRequest?: (record: RequestRecord) => void;
  /** Prometheus text for `GET /_edge/metrics`. */
  metrics?: () => Promise<string> | string;
  /**
   * Pixel work for image variants (Node: sharp; Workers: the Images binding).
   * Without it, image parameters are still validated and the untransformed
   * source is served, with `detail=image-transform-unavailable` in Cache-Status.
   */
  imageTransformer?: ImageTransformer;
  /** Health of origin pool members and shields, for `GET /_edge/origins`. */
  originStatus?: () => unknown;
  /** Streaming content hash for pushed objects' ETags (Node: sha256 from node:crypto). */
  createHasher?: () => ContentHasher;
  /** Extra readiness facts for `GET /_edge/health`. */
  health?: () => Record<string, unknown>;
}

/** Incremental hash: `update` per chunk, `digest` once at the end (hex). */
export interface ContentHasher {
  update(chunk: Uint8Array): void;
  digest(): string;
}

export interface EdgeApp {
  app: Hono;
  /**
   * The entry point runtimes call: Hono's fetch plus the access log /
   * metrics record. (A wrapper rather than a middleware: one less layer on
   * the hit path, measured in `npm run bench`.)
   */
  fetch: (request: Request, env?: unknown, executionCtx?: unknown) => Promise<Response>;
  pull: PullCache;
  /** Resolves when start-up work (the pushed-object index) is done. */
  ready: Promise<void>;
  /** Resolves when all background work (refreshes, cache fills) started so far is done. */
  settle(): Promise<void>;
}

export function createEdgeApp(deps: EdgeAppDeps): EdgeApp {
  const { options } = deps;
  const now = deps.now ?? Date.now;
  const policies = createPolicyFactory({
    heuristicFraction: options.heuristicFraction,
    heuristicMaxAge: options.heuristicMaxAge,
    defaultTtl: options.defaultTtl,
    targetedFields: [options.targetedCacheControl, 'cdn-cache-control'],
    now,
  });
  const pull = new PullCache({ options, store: deps.store, origin: deps.origin, policies, now });
  if (options.images) {
    pull.images = new ImageVariants({ options, store: deps.store, pull, policies, transformer: deps.imageTransformer, now });
  }

  const pending = new Set<Promise<unknown>>();
  const track = (promise: Promise<unknown>) => {
    const tracked = promise.catch(() => {}).finally(() => pending.delete(tracked));
    pending.add(tracked);
  };

  const app = new Hono();
  // The per-request log record rides on the Request itself: a WeakMap keyed
  // by short-lived requests costs measurable GC time (ephemerons) per request.
  const LOG = Symbol('edgeLog');
  type Logged = Request & { [LOG]?: RequestLog };

  app.onError((err) => errorResponse(err));

  app.get('/_edge/health', (c) =>
    c.json({ status: 'ok', name: options.name, origin: deps.origin.label, store: deps.store.stats(), ...deps.health?.() }),
  );

  app.get('/_edge/metrics', async (c) => {
    if (!deps.metrics) throw new EdgeError('EDGE_NOT_FOUND', 'Metrics are not enabled on this node.');
    return c.body(await deps.metrics(), 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
  });

  mountAdminApi(app, { options, store: deps.store, pull, policies, now, createHasher: deps.createHasher, waitUntil: track, originStatus: deps.originStatus });

  // Everything under /_edge/ belongs to the node and is never forwarded.
  app.all('/_edge/*', () => {
    throw new EdgeError('EDGE_NOT_FOUND', 'No such endpoint under /_edge/.');
  });

  app.all('*', (c) => {
    // Only runtimes with waitUntil have an execution context; Hono throws (an
    // expensive Error) when asked for one that does not exist.
    const executionCtx = deps.waitUntil ? c.executionCtx : undefined;
    const ctx: RequestContext = {
      clientIp: deps.clientIp?.(c.env),
      requestHeaders: deps.requestHeaders?.(c.env),
      waitUntil: (promise) => {
        track(promise);
        if (deps.waitUntil && executionCtx) deps.waitUntil(executionCtx, promise);
      },
      sendEarlyHints: deps.sendEarlyHints ? (headers) => deps.sendEarlyHints!(c.env, headers) : undefined,
      log: (c.req.raw as Logged)[LOG] ?? {},
    };
    return pull.handle(c.req.raw, ctx).catch((error: unknown) => {
      // Errors carry Cache-Status too, so a client can tell where they came from.
      const response = errorResponse(error);
      const code = (error as { code?: unknown } | null)?.code;
      response.headers.set('cache-status', `${options.name}; fwd=miss${typeof code === 'string' ? `; detail=${code}` : ''}`);
      return response;
    });
  });

  const onRequest = deps.onRequest;
  const fetch = onRequest
    ? async (request: Request, env?: unknown, executionCtx?: unknown): Promise<Response> => {
        const started = now();
        const log: RequestLog = {};
        (request as Logged)[LOG] = log;
        const response = await app.fetch(request, env, executionCtx as never);
        const url = request.url;
        const pathStart = url.indexOf('/', url.indexOf('//') + 2);
        onRequest({
          ...log,
          method: request.method,
          path: pathStart === -1 ? '/' : url.slice(pathStart),
          status: response.status,
          durationMs: now() - started,
          clientIp: deps.clientIp?.(env),
        });
        return response;
      }
    : async (request: Request, env?: unknown, executionCtx?: unknown) => app.fetch(request, env, executionCtx as never);

  return {
    app,
    fetch,
    pull,
    ready: pull.loadPushedIndex(),
    async settle() {
      while (pending.size > 0) await Promise.all([...pending]);
    },
  };
}
