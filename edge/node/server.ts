/**
 * The Node edge server: memory tier over an LMDB disk tier, undici origin,
 * `@hono/node-server` on a real socket, one pino line per request and
 * Prometheus metrics. `startEdgeServer()` is what the CLI, the tests and
 * the benchmark start.
 */
import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { getRequestListener, type HttpBindings } from '@hono/node-server';
import { Response as PlainResponse } from 'undici';
import type { Logger } from 'pino';
import { createAccessLog } from './access-log.js';
import { createEdgeApp, type EdgeApp, type RequestRecord } from '../core/app.js';
import type { EdgeOptions } from '../core/options.js';
import type { OriginClient } from '../core/origin/types.js';
import { MemoryCacheStore } from '../core/store/memory.js';
import { TieredCacheStore } from '../core/store/tiered.js';
import type { CacheStore } from '../core/store/types.js';
import { LmdbCacheStore } from './lmdb-store.js';
import { ShieldOriginClient } from '../core/origin/shield.js';
import { createOriginClient } from './origin-pool.js';
import { createEdgeMetrics } from './metrics.js';
import { writeAnswer } from './write-answer.js';
import { EdgeError } from '../core/errors.js';
import { answerError } from '../core/responder.js';
import { SharpImageTransformer } from './sharp-transformer.js';
import { UndiciOriginClient } from './undici-origin.js';

export interface EdgeServerOverrides {
  /** Injected clock (tests). @default Date.now */
  now?: () => number;
  /** Replace the origin client (the shield chain, tests of faults a local server cannot produce). */
  origin?: OriginClient;
  /** Logger; `false` silences the access log. @default pino on stdout at options.logLevel */
  logger?: Logger | false;
}

export interface EdgeServer {
  url: string;
  port: number;
  edge: EdgeApp;
  store: CacheStore;
  server: Server;
  close(): Promise<void>;
}

function clientAddress(env: unknown): string | undefined {
  const address = (env as HttpBindings | undefined)?.incoming?.socket?.remoteAddress;
  // IPv4 clients on a dual-stack socket appear as ::ffff:a.b.c.d.
  return address?.startsWith('::ffff:') ? address.slice(7) : address;
}

export function createTieredStore(options: EdgeOptions, now: () => number): CacheStore {
  const disk = new LmdbCacheStore({ path: options.dataDir, maxBytes: options.diskSize, clock: now, evictPushed: options.evictPushed });
  if (options.memorySize === 0) return disk;
  const memory = new MemoryCacheStore({
    maxBytes: options.memorySize,
    maxEntryBytes: Math.min(options.memoryMaxObjectSize, options.memorySize),
    clock: now,
  });
  return new TieredCacheStore({ tiers: [memory, disk] });
}

/** The origin client, behind the shields when `--shield` is set. */
export function createUpstream(options: EdgeOptions): OriginClient {
  const timeouts = {
    connectTimeout: options.connectTimeout,
    headersTimeout: options.originTimeout,
    bodyTimeout: options.bodyTimeout,
    connections: options.originConnections,
  };
  const origin = createOriginClient(options);
  origin.start?.();
  if (!options.shield?.length) return origin;
  const shields = new ShieldOriginClient({
    shields: options.shield.map((url) => new UndiciOriginClient({ url, ...timeouts })),
    origin,
  });
  // /_edge/origins reports both the shields and the pool behind them.
  const shieldStatus = shields.status.bind(shields);
  return Object.assign(shields, { status: () => ({ shields: shieldStatus(), origin: origin.status?.() ?? null }) });
}

/**
 * What the router returns for an answer already written. @hono/node-server
 * skips responses marked `x-hono-already-sent` (its own RESPONSE_ALREADY_SENT),
 * but only when built by a Response class other than the lightweight one it
 * installs globally (which it writes without looking at that mark).
 */
const ALREADY_SENT = new PlainResponse(null, { headers: { 'x-hono-already-sent': 'true' } }) as unknown as Response;

/**
 * The request targets and hosts whose absolute URL is the plain
 * concatenation the URL parser would also produce (the same test
 * @hono/node-server applies before skipping `new URL()`), so the fast path
 * and the general path describe a request from the same string. Anything
 * else (dot segments, characters the parser escapes, upper-case hosts) takes
 * the general path.
 */
const PLAIN_TARGET = /^\/[!#$&-;=?-[\]_a-z~]*$/;
const DOT_SEGMENT = /\/\.\.?(?:[/?#]|$)/;
const PLAIN_HOST = /^[a-z0-9._-]+(?::(?:[1-5]\d{3,4}|[6-9]\d{3}))?$/;

/**
 * RFC 9112 3.2: a request with more than one Host field (or a list in one)
 * is answered 400. Node keeps the first of several, which would let two
 * parties read two different hosts from one request.
 */
function hasOneHost(req: IncomingMessage): boolean {
  let count = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') {
      count++;
      if (req.rawHeaders[i + 1]!.includes(',')) return false;
    }
  }
  return count <= 1;
}

/**
 * Content requests with a plain target are answered by the core as an
 * `Answer` and written here: a fresh hit synchronously from the cache, the
 * rest after the pull path decides. Returns false for what Hono routes:
 * `/_edge/` paths, and targets or hosts that need the URL parser's care.
 */
function answerContent(edge: EdgeApp, req: IncomingMessage, res: ServerResponse): boolean {
  const target = req.url!;
  const host = req.headers.host;
  if (target.startsWith('/_edge/') || host === undefined || !PLAIN_HOST.test(host) || !PLAIN_TARGET.test(target) || DOT_SEGMENT.test(target)) {
    return false;
  }
  const method = req.method!;
  const url = `http://${host}${target}`;
  const headers = req.headers as Record<string, string>;
  const clientIp = clientAddress({ incoming: req });
  if (method === 'GET' || method === 'HEAD') {
    const fast = edge.answerFreshHit(method, url, headers, clientIp);
    if (fast) {
      writeAnswer(res, fast.answer, fast.done);
      return true;
    }
  }
  const body = method === 'GET' || method === 'HEAD' ? () => null : () => Readable.toWeb(req) as ReadableStream<Uint8Array>;
  edge
    .answerContent({ method, url, headers, body }, clientIp, {
      sendEarlyHints: (hints) => {
        if (!res.headersSent) res.writeEarlyHints(hints);
      },
    })
    .then(
      (content) => writeAnswer(res, content.answer, content.done),
      () => res.destroy(),
    );
  return true;
}

export async function startEdgeServer(options: EdgeOptions, overrides: EdgeServerOverrides = {}): Promise<EdgeServer> {
  if (!options.origin && !options.origins && !overrides.origin) throw new TypeError('startEdgeServer: options.origin is required (or an origin override).');
  const now = overrides.now ?? Date.now;
  const accessLog = overrides.logger === undefined ? createAccessLog({ level: options.logLevel, name: options.name }) : undefined;
  const logger = accessLog?.logger ?? overrides.logger;
  const store = createTieredStore(options, now);
  const origin = overrides.origin ?? createUpstream(options);
  const metrics = createEdgeMetrics(store);
  const imageTransformer = options.images
    ? new SharpImageTransformer({
        maxInputPixels: options.imageMaxPixels,
        timeoutMs: options.transformTimeout,
        maxQueue: options.transformQueue,
        avifEffort: options.avifEffort,
        ...(options.transformConcurrency > 0 ? { concurrency: options.transformConcurrency } : {}),
      })
    : undefined;

  const edge = createEdgeApp({
    createHasher: () => {
      const hash = createHash('sha256');
      return { update: (chunk) => void hash.update(chunk), digest: () => hash.digest('hex') };
    },
    options,
    store,
    origin,
    now,
    imageTransformer,
    originStatus: () => (origin as { status?: () => unknown }).status?.(),
    clientIp: clientAddress,
    // Node has already parsed the headers into a lower-case record (duplicates joined).
    requestHeaders: (env) => (env as HttpBindings | undefined)?.incoming?.headers as Record<string, string> | undefined,
    sendEarlyHints: (env, headers) => {
      const outgoing = (env as HttpBindings | undefined)?.outgoing;
      if (outgoing && !outgoing.headersSent) outgoing.writeEarlyHints(headers as Record<string, string | string[]>);
    },
    onRequest: (record: RequestRecord) => {
      metrics.observe(record);
      if (accessLog) accessLog.write(record);
      else if (logger) logger.info(record, 'request');
    },
    metrics: () => metrics.render(),
    writeAnswer: (env, answer, done) => {
      const outgoing = (env as HttpBindings | undefined)?.outgoing;
      if (!outgoing) return undefined;
      writeAnswer(outgoing, answer, done);
      return ALREADY_SENT;
    },
  });

  await edge.ready;
  const general = getRequestListener(edge.fetch as never);
  const server = createServer((req, res) => {
    if (!hasOneHost(req)) {
      writeAnswer(res, answerError(new EdgeError('EDGE_BAD_REQUEST', 'A request must carry exactly one Host header (RFC 9112 3.2).')), () => {});
      return;
    }
    // A fresh hit is written straight from the cache: no Request, Response or router.
    if (!answerContent(edge, req, res)) void general(req, res);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // Keep-alive longer than typical load balancers' idle timeouts, so they close first.
  server.keepAliveTimeout = 65_000;
  const { port } = server.address() as AddressInfo;
  const host = options.host === '0.0.0.0' || options.host === '::' ? '127.0.0.1' : options.host;

  let closing: Promise<void> | undefined;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    edge,
    store,
    server,
    close() {
      // Idempotent: a supervisor and a signal handler may both ask.
      closing ??= (async () => {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeIdleConnections();
          setTimeout(() => server.closeAllConnections(), 2000).unref();
        });
        await edge.settle();
        await imageTransformer?.close();
        if (accessLog) accessLog.close();
        else if (logger) logger.flush();
        await origin.close?.();
        await store.close();
      })();
      return closing;
    },
  };
}
