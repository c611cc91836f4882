/**
 * `createEdgeApp()`: the whole node as a Hono app on Web-standard
 * Request/Response, shared by the Node server and the Workers entry.
 * Runtime specifics (client address, 103 relaying, background work, the
 * store and the origin) come in through `EdgeAppDeps`.
 */
import { Hono, type Context } from 'hono';
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
  /** Address of the connected peer. */
  clientIp?: (c: Context) => string | undefined;
  /** Relay 103 Early Hints to the client (Node: `ServerResponse.writeEarlyHints`). */
  sendEarlyHints?: (c: Context, headers: Record<string, string | string[]>) => void;
  /** Background work runner (Workers: `ctx.waitUntil`). Defaults to tracking promises in-process. */
  waitUntil?: (c: Context, promise: Promise<unknown>) => void;
  /** Called once per request after the response headers are ready. */
  onRequest?: (record: RequestRecord) => void;
  /** Prometheus text for `GET /_edge/metrics`. */
  metrics?: () => Promise<string> | string;
  /** Pixel work for image variants (Node: sharp). Without it, image parameters are ignored and originals pass through. */
  imageTransformer?: ImageTransformer;
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
  if (options.images && deps.imageTransformer) {
    pull.images = new ImageVariants({ options, store: deps.store, pull, policies, transformer: deps.imageTransformer, now });
  }

  const pending = new Set<Promise<unknown>>();
  const track = (promise: Promise<unknown>) => {
    const tracked = promise.catch(() => {}).finally(() => pending.delete(tracked));
    pending.add(tracked);
  };

  const app = new Hono();

  app.onError((err) => errorResponse(err));

  // Access log and metrics hook: one record per request.
  app.use('*', async (c, next) => {
    const started = now();
    const log: RequestLog = {};
    c.set('edgeLog' as never, log as never);
    try {
      await next();
    } finally {
      if (deps.onRequest) {
        const url = new URL(c.req.url);
        deps.onRequest({
          ...log,
          method: c.req.method,
          path: url.pathname + url.search,
          status: c.res.status,
          durationMs: now() - started,
          clientIp: deps.clientIp?.(c),
        });
      }
    }
  });

  app.get('/_edge/health', (c) =>
    c.json({ status: 'ok', name: options.name, origin: deps.origin.label, store: deps.store.stats(), ...deps.health?.() }),
  );

  app.get('/_edge/metrics', async (c) => {
    if (!deps.metrics) throw new EdgeError('EDGE_NOT_FOUND', 'Metrics are not enabled on this node.');
    return c.body(await deps.metrics(), 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
  });

  mountAdminApi(app, { options, store: deps.store, pull, policies, now, createHasher: deps.createHasher, waitUntil: track });

  // Everything under /_edge/ belongs to the node and is never forwarded.
  app.all('/_edge/*', () => {
    throw new EdgeError('EDGE_NOT_FOUND', 'No such endpoint under /_edge/.');
  });

  app.all('*', (c) => {
    const ctx: RequestContext = {
      clientIp: deps.clientIp?.(c),
      waitUntil: (promise) => (deps.waitUntil ? deps.waitUntil(c, promise) : track(promise)),
      sendEarlyHints: deps.sendEarlyHints ? (headers) => deps.sendEarlyHints!(c, headers) : undefined,
      log: c.get('edgeLog' as never) as RequestLog,
    };
    return pull.handle(c.req.raw, ctx);
  });

  return {
    app,
    pull,
    ready: pull.loadPushedIndex(),
    async settle() {
      while (pending.size > 0) await Promise.all([...pending]);
    },
  };
}
