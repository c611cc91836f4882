/**
 * The Node edge server: memory tier over an LMDB disk tier, undici origin,
 * `@hono/node-server` on a real socket, one pino line per request and
 * Prometheus metrics. `startEdgeServer()` is what the CLI, the tests and
 * the benchmark start.
 */
import { createHash } from 'node:crypto';
import type { AddressInfo, Socket } from 'node:net';
import { Readable } from 'node:stream';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createSecureServer, type Http2SecureServer, type Http2ServerRequest, type Http2ServerResponse, type Http2Session } from 'node:http2';
import { getRequestListener, type Http2Bindings, type HttpBindings } from '@hono/node-server';
import { Response as PlainResponse } from 'undici';
import type { Logger } from 'pino';
import { createAccessLog } from './access-log.js';
import { createEdgeApp, type EdgeApp, type RequestRecord } from '../core/app.js';
import { parseListenAddress, type EdgeOptions } from '../core/options.js';
import type { OriginClient } from '../core/origin/types.js';
import { MemoryCacheStore } from '../core/store/memory.js';
import { TieredCacheStore } from '../core/store/tiered.js';
import type { CacheStore } from '../core/store/types.js';
import { LmdbCacheStore } from './lmdb-store.js';
import type { ClusterWorker } from './cluster.js';
import { openApiKeysFile } from './api-keys-file.js';
import { openPeersFile } from './peers-file.js';
import { ShieldOriginClient } from '../core/origin/shield.js';
import { createOriginClient } from './origin-pool.js';
import { createEdgeMetrics } from './metrics.js';
import { countingOrigin } from './counting-origin.js';
import { createStatusAssets } from './status-assets.js';
import { StatsRecorder, tierFills, type StatsSnapshot } from './status-stats.js';
import { writeAnswer, type NodeResponse } from './write-answer.js';
import { describeTlsReload, loadOriginTls, loadTlsCertificate, TlsCertificateReloader, type TlsCertificate, type TlsReloadEvent } from './tls.js';
import { EdgeError } from '../core/errors.js';
import { changedOptions, restartProblems, type ReloadOutcome } from '../core/reload.js';
import { changedAny, createImageTransformer, describeReload, ORIGIN_OPTIONS, reloadProblems, TRANSFORMER_OPTIONS } from './config-reload.js';
import { answerError } from '../core/responder.js';
import type { SharpImageTransformer } from './sharp-transformer.js';
import { UndiciOriginClient } from './undici-origin.js';
import { createZlibCoder } from './zlib-coder.js';
import type { BodyCoder } from '../core/compression.js';

export interface EdgeServerOverrides {
  /** Injected clock (tests). @default Date.now */
  now?: () => number;
  /** Replace the origin client (the shield chain, tests of faults a local server cannot produce). */
  origin?: OriginClient;
  /** Logger; `false` silences the access log. @default pino on stdout at options.logLevel */
  logger?: Logger | false;
  /** Content codings (tests count compressions through a wrapper). @default createZlibCoder() */
  coder?: BodyCoder;
  /** Told of certificate reloads (tests wait for these). @default one line on stderr per reload or refusal */
  onTlsReload?: (event: TlsReloadEvent) => void;
  /** Quiet time after a certificate file changes before it is read. @default 1000 */
  tlsReloadDebounceMs?: number;
  /** A cluster worker's hooks (the CLI's `--workers`): shared LMDB, peers told of changes, cluster-wide metrics and health. @default a single process */
  cluster?: ClusterWorker;
  /**
   * Read the configuration again for {@link EdgeServer.reload} (the CLI:
   * flags, environment and `--config` file); throws `EdgeOptionsError`.
   * Without it, `reload()` needs the new options handed in, and
   * `POST /_edge/reload` answers 404 (outside a cluster).
   */
  readOptions?: () => EdgeOptions;
  /** Told of every reload. @default its lines on stderr (`describeReload`) */
  onReload?: (outcome: ReloadOutcome, trigger: string) => void;
}

export interface EdgeServer {
  /** `http://host:port`, or `https://` with TLS. */
  url: string;
  port: number;
  edge: EdgeApp;
  store: CacheStore;
  /** The listening server: node:http, or with TLS node:http2's secure server (HTTP/2 and HTTP/1.1). Both emit `request`. */
  server: Server | Http2SecureServer;
  /** With `--http-redirect-port`: the plain HTTP server answering 308 to https://, and its port. */
  redirect?: { server: Server; port: number };
  /** With `--admin-listen`: the plain HTTP server answering `/_edge/`, its port and `http://host:port`. */
  admin?: { server: Server; port: number; url: string };
  /** With `--admin-listen`: `http://host:port` of the admin listener (`admin.url`). */
  adminUrl?: string;
  /** With TLS: the certificate in use, and a reload from the files now (what SIGHUP does). */
  tls?: { certificate(): TlsCertificate; reload(trigger?: TlsReloadEvent['trigger']): TlsReloadEvent };
  /** Read the `--peers @file` again now (what SIGHUP does); a no-op without one. */
  reloadPeers(): void;
  /**
   * Reload the configuration (what SIGHUP and `POST /_edge/reload` do):
   * `next`, or the options read again with `readOptions`. Refused as a
   * whole, the running configuration staying, when they are invalid or
   * change an option that takes a restart (`core/reload.ts`); otherwise in
   * use by the next request, the cache and connections kept. The
   * certificate and peers files are re-read either way.
   */
  reload(trigger?: string, next?: EdgeOptions): Promise<ReloadOutcome>;
  close(): Promise<void>;
}

/** A request on either server: HTTP/1.x, or HTTP/2 through node:http2's compatibility API. */
type NodeRequest = IncomingMessage | Http2ServerRequest;

function clientAddress(env: unknown): string | undefined {
  const address = (env as { incoming?: NodeRequest } | undefined)?.incoming?.socket?.remoteAddress;
  // IPv4 clients on a dual-stack socket appear as ::ffff:a.b.c.d.
  return address?.startsWith('::ffff:') ? address.slice(7) : address;
}

export function createTieredStore(
  options: EdgeOptions,
  now: () => number,
  disk = new LmdbCacheStore({ path: options.dataDir, maxBytes: options.diskSize, clock: now, evictPushed: options.evictPushed }),
): CacheStore {
  if (options.memorySize === 0) return disk;
  const memory = new MemoryCacheStore({
    maxBytes: options.memorySize,
    maxEntryBytes: Math.min(options.memoryMaxObjectSize, options.memorySize),
    clock: now,
  });
  return new TieredCacheStore({ tiers: [memory, disk] });
}

/** The origin client, behind the shields when `--shield` is set. */
export function createUpstream(options: EdgeOptions, originTls = options.originCa === undefined ? undefined : loadOriginTls(options.originCa)): OriginClient {
  // Read once: every https:// member and shield shares one secure context.
  const timeouts = {
    connectTimeout: options.connectTimeout,
    headersTimeout: options.originTimeout,
    bodyTimeout: options.bodyTimeout,
    connections: options.originConnections,
    tls: originTls,
  };
  const origin = createOriginClient({ ...options, originTls });
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
function hasOneHost(req: NodeRequest): boolean {
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

const H2_HEADERS = Symbol('edge.h2Headers');
type Http2Request = Http2ServerRequest & { [H2_HEADERS]?: Record<string, string> };

/**
 * An HTTP/2 request's fields as an HTTP/1.1 request would carry them:
 * pseudo-header fields removed, `:authority` as `Host`. The core (keys,
 * forwarding, logs) then sees the same request whichever protocol brought
 * it. Built once per request (the fast path and Hono's path both ask).
 */
function http2Headers(req: Http2Request): Record<string, string> {
  let headers = req[H2_HEADERS];
  if (headers) return headers;
  headers = {};
  const incoming = req.headers as Record<string, string>;
  for (const name in incoming) if (name.charCodeAt(0) !== 58 /* : */) headers[name] = incoming[name]!;
  const authority = incoming[':authority'];
  if (authority !== undefined) headers.host = authority;
  req[H2_HEADERS] = headers;
  return headers;
}

const isHttp2 = (req: NodeRequest): req is Http2Request => req.httpVersionMajor === 2;

/** The request's fields as a lower-case record, HTTP/2 pseudo-header fields aside. */
function requestFields(req: NodeRequest): Record<string, string> {
  return isHttp2(req) ? http2Headers(req) : (req.headers as Record<string, string>);
}

/**
 * RFC 9113 8.3.1: an HTTP/2 request whose `Host` names another authority
 * than `:authority` is malformed (two parties could read two hosts, as
 * with two Host fields in HTTP/1.1).
 */
function hasOneAuthority(req: NodeRequest): boolean {
  if (!isHttp2(req)) return true;
  const authority = req.headers[':authority'] as string | undefined;
  const host = req.headers.host;
  return authority === undefined || host === undefined || authority.toLowerCase() === host.toLowerCase();
}

/**
 * Content requests with a plain target are answered by the core as an
 * `Answer` and written here: a fresh hit synchronously from the cache, the
 * rest after the pull path decides. Returns false for what Hono routes:
 * `/_edge/` paths, and targets or hosts that need the URL parser's care.
 * `scheme` is the connection's (`https` over TLS, whatever the protocol).
 */
function answerContent(edge: EdgeApp, req: NodeRequest, res: NodeResponse, scheme: string): boolean {
  const target = req.url;
  const headers = requestFields(req);
  const host = headers.host;
  if (target === undefined || target.startsWith('/_edge/') || host === undefined || !PLAIN_HOST.test(host) || !PLAIN_TARGET.test(target) || DOT_SEGMENT.test(target)) {
    return false;
  }
  const method = req.method!;
  const url = `${scheme}://${host}${target}`;
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
  // Read before anything opens: a certificate that cannot be used stops the start naming the file.
  const certificate = options.tlsCert !== undefined && options.tlsKey !== undefined ? loadTlsCertificate({ cert: options.tlsCert, key: options.tlsKey, ca: options.tlsCa }) : undefined;
  const scheme = certificate ? 'https' : 'http';
  const originTls = options.originCa === undefined || overrides.origin ? undefined : loadOriginTls(options.originCa);
  const accessLog = overrides.logger === undefined ? createAccessLog({ level: options.logLevel, name: options.name }) : undefined;
  const logger = accessLog?.logger ?? overrides.logger;
  // Read before the store opens: a key file that cannot be used stops the start naming --api-keys-file.
  const apiKeysFile = options.apiKeysFile !== undefined
    ? openApiKeysFile(options.apiKeysFile, (problem) => {
        if (logger) logger.warn(problem);
        else console.error(`${options.name}: ${problem}`);
      })
    : undefined;
  // Read before the store opens: a peers file that cannot be used stops the start naming --peers.
  // The controller is aborted on close: it stops purge replays to peers.
  const lifetime = new AbortController();
  const peersFile = options.peers?.startsWith('@')
    ? openPeersFile(options.peers.slice(1), (problem) => {
        if (logger) logger.warn(problem);
        else console.error(`${options.name}: ${problem}`);
      })
    : undefined;
  const adminAddress = options.adminListen === undefined ? undefined : parseListenAddress(options.adminListen);
  const store = overrides.cluster?.createStore(options, now) ?? createTieredStore(options, now);
  // Replaced on reload when an origin option changes (the old one is closed once its requests are done).
  let origin = overrides.origin ?? createUpstream(options, originTls);
  const metrics = createEdgeMetrics(store);
  // The status page's figures: the metrics' per-request record, plus body bytes from upstream.
  const stats = new StatsRecorder({ now });
  let imageTransformer = createImageTransformer(options);

  const edge = createEdgeApp({
    coder: overrides.coder ?? createZlibCoder(),
    createHasher: () => {
      const hash = createHash('sha256');
      return { update: (chunk) => void hash.update(chunk), digest: () => hash.digest('hex') };
    },
    options,
    store,
    origin: countingOrigin(origin, (bytes) => stats.originBytes(bytes)),
    now,
    imageTransformer,
    originStatus: () => (origin as { status?: () => unknown }).status?.(),
    clientIp: clientAddress,
    apiKeys: apiKeysFile?.current,
    // Node has already parsed the headers into a lower-case record (duplicates joined).
    requestHeaders: (env) => {
      const incoming = (env as Bindings | undefined)?.incoming;
      return incoming ? requestFields(incoming) : undefined;
    },
    // HTTP/2: a 103 is an informational HEADERS frame on the stream.
    sendEarlyHints: (env, headers) => {
      const outgoing = (env as Bindings | undefined)?.outgoing;
      if (outgoing && !outgoing.headersSent) outgoing.writeEarlyHints(headers as Record<string, string | string[]>);
    },
    onRequest: (record: RequestRecord) => {
      metrics.observe(record);
      stats.observe(record);
      if (accessLog) accessLog.write(record);
      else if (logger) logger.info(record, 'request');
    },
    // With --admin-listen: requests the admin server took in are marked; the rest came in on the public port.
    listener: adminAddress ? (env) => ((env as Bindings | undefined)?.incoming as AdminMarked | undefined)?.[ADMIN_REQUEST] ? 'admin' : 'public' : undefined,
    metrics: overrides.cluster ? overrides.cluster.metrics : () => metrics.render(),
    health: overrides.cluster?.health,
    statusPage: { stats: overrides.cluster ? overrides.cluster.stats : () => localStats(), asset: createStatusAssets() },
    onPurge: (event) => stats.purged(event),
    ...overrides.cluster?.shared(options),
    peers: peersFile?.current,
    // In a cluster every worker reloads (through the primary); alone, this process.
    reload: overrides.cluster ? () => overrides.cluster!.reloadAll() : overrides.readOptions ? () => reload('POST /_edge/reload') : undefined,
    signal: lifetime.signal,
    writeAnswer: (env, answer, done) => {
      const outgoing = (env as Bindings | undefined)?.outgoing;
      if (!outgoing) return undefined;
      writeAnswer(outgoing, answer, done);
      return ALREADY_SENT;
    },
  });

  await edge.ready;
  /** This process's figures (in cluster mode the primary sums every worker's). */
  const localStats = (): StatsSnapshot =>
    stats.snapshot({
      name: options.name,
      tiers: () => overrides.cluster?.tiers() ?? tierFills(store),
      inFlight: () => edge.pull.flightStats(),
      // Read at each snapshot: the transformer in use now.
      images: () => (imageTransformer ? { ...imageTransformer.stats(), maxQueue: imageTransformer.maxQueue, concurrency: imageTransformer.concurrency } : null),
      originStatus: () => (origin as { status?: () => unknown }).status?.(),
    });
  await overrides.cluster?.attach(edge, metrics.registry, localStats);
  const general = getRequestListener(edge.fetch as never);
  const onRequest = (req: NodeRequest, res: NodeResponse) => {
    if (!hasOneHost(req) || !hasOneAuthority(req)) {
      writeAnswer(res, answerError(new EdgeError('EDGE_BAD_REQUEST', 'A request must carry exactly one Host header (RFC 9112 3.2) or one authority (RFC 9113 8.3.1).')), () => {});
      return;
    }
    // A fresh hit is written straight from the cache: no Request, Response or router.
    if (!answerContent(edge, req, res, scheme)) void general(req as IncomingMessage, res as ServerResponse);
  };

  let server: Server | Http2SecureServer;
  let reloader: TlsCertificateReloader | undefined;
  /** Open HTTP/2 sessions and TLS sockets, for a graceful close (node:http2's close() leaves them open). */
  const sessions = new Set<Http2Session>();
  const sockets = new Set<Socket>();
  if (certificate) {
    const secure = createSecureServer(
      {
        ...certificate.context,
        allowHTTP1: true,
        // As node:http does by default: small answers leave at once, not after the client's delayed ACK.
        noDelay: true,
        // nginx's default: a client cannot open an unbounded number of streams at once.
        settings: { maxConcurrentStreams: 128 },
      },
      onRequest,
    );
    secure.on('session', (session: Http2Session) => {
      sessions.add(session);
      session.once('close', () => sessions.delete(session));
      // An idle HTTP/2 connection is closed like an idle HTTP/1.1 one (GOAWAY: streams in flight finish).
      session.setTimeout(KEEP_ALIVE_MS, () => session.close());
    });
    secure.on('secureConnection', (socket: Socket) => {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
    });
    const onTlsReload = overrides.onTlsReload ?? ((event: TlsReloadEvent) => console.error(`${options.name}: ${describeTlsReload(event)}`));
    reloader = new TlsCertificateReloader({
      files: { cert: options.tlsCert!, key: options.tlsKey!, ca: options.tlsCa },
      initial: certificate,
      // Only new handshakes use the new context: open connections keep theirs, nothing is dropped.
      apply: (next) => secure.setSecureContext(next.context),
      onReload: onTlsReload,
      debounceMs: overrides.tlsReloadDebounceMs,
      now,
    });
    server = secure;
  } else {
    server = createServer(onRequest);
  }
  // Keep-alive longer than typical load balancers' idle timeouts, so they close first (HTTP/1.1, also over TLS).
  (server as Server).keepAliveTimeout = KEEP_ALIVE_MS;
  const listening = server;
  await new Promise<void>((resolve, reject) => {
    listening.once('error', reject);
    listening.listen(options.port, options.host, () => {
      listening.off('error', reject);
      resolve();
    });
  }).catch((error: unknown) => {
    reloader?.close();
    throw error;
  });
  const { port } = server.address() as AddressInfo;
  const host = options.host === '0.0.0.0' || options.host === '::' ? '127.0.0.1' : options.host;

  let redirect: EdgeServer['redirect'];
  if (certificate && options.httpRedirectPort !== undefined) {
    const redirectServer = createRedirectServer(port, general);
    redirectServer.keepAliveTimeout = KEEP_ALIVE_MS;
    await new Promise<void>((resolve, reject) => {
      redirectServer.once('error', reject);
      redirectServer.listen(options.httpRedirectPort, options.host, () => {
        redirectServer.off('error', reject);
        resolve();
      });
    }).catch(async (error: unknown) => {
      reloader?.close();
      await new Promise((resolve) => server.close(resolve));
      throw error;
    });
    redirect = { server: redirectServer, port: (redirectServer.address() as AddressInfo).port };
  }

  let admin: EdgeServer['admin'];
  if (adminAddress) {
    const adminServer = createAdminServer(general);
    adminServer.keepAliveTimeout = KEEP_ALIVE_MS;
    await new Promise<void>((resolve, reject) => {
      adminServer.once('error', reject);
      adminServer.listen(adminAddress.port, adminAddress.host, () => {
        adminServer.off('error', reject);
        resolve();
      });
    }).catch(async (error: unknown) => {
      reloader?.close();
      await new Promise((resolve) => server.close(resolve));
      if (redirect) await new Promise((resolve) => redirect!.server.close(resolve));
      throw error;
    });
    const adminPort = (adminServer.address() as AddressInfo).port;
    const adminHost = adminAddress.host === '0.0.0.0' || adminAddress.host === '::' ? '127.0.0.1' : adminAddress.host;
    admin = { server: adminServer, port: adminPort, url: `http://${adminHost.includes(':') ? `[${adminHost}]` : adminHost}:${adminPort}` };
  }

  let running = options;
  /** Replaced origin clients and image transformers, each closed once nothing uses its configuration (`close()` waits for them). */
  const retiring = new Set<Promise<void>>();
  const onReload =
    overrides.onReload ??
    ((outcome: ReloadOutcome, trigger: string) => {
      for (const line of describeReload(outcome, trigger)) console.error(`${options.name}: ${line}`);
    });
  const refused = (problems: string[]): ReloadOutcome => ({ applied: false, changed: [], problems });
  const applyReload = (trigger: string, given: EdgeOptions | undefined): ReloadOutcome => {
    // Files with their own checks and log lines, re-read on every reload as SIGHUP always did.
    reloader?.reload(trigger === 'SIGHUP' ? 'signal' : 'manual');
    peersFile?.reload();
    let next: EdgeOptions;
    try {
      if (given) next = given;
      else if (overrides.readOptions) next = overrides.readOptions();
      else return refused(['this node was started without a way to read its configuration again (startEdgeServer without readOptions)']);
    } catch (error) {
      return refused(reloadProblems(error));
    }
    const problems = restartProblems(running, next);
    if (problems.length > 0) return refused(problems);
    const changed = changedOptions(running, next);
    if (changed.length === 0) return { applied: true, changed, problems: [] };
    // Rebuilt only when their options changed: otherwise the origin keeps its connections and health, sharp its queue.
    const newOrigin = !overrides.origin && changedAny(changed, ORIGIN_OPTIONS);
    const newTransformer = changedAny(changed, TRANSFORMER_OPTIONS);
    let nextOrigin: typeof origin | undefined;
    let nextTransformer: SharpImageTransformer | undefined;
    let retired: Promise<void>;
    try {
      if (newOrigin) nextOrigin = createUpstream(next, next.originCa === undefined ? undefined : loadOriginTls(next.originCa));
      // Turning images off keeps the transformer (idle) rather than leaving none.
      if (newTransformer) nextTransformer = createImageTransformer(next) ?? imageTransformer;
      ({ retired } = edge.reconfigure({
        options: next,
        origin: countingOrigin(nextOrigin ?? origin, (bytes) => stats.originBytes(bytes)),
        imageTransformer: newTransformer ? nextTransformer : imageTransformer,
      }));
    } catch (error) {
      void nextOrigin?.close?.();
      // Only one made for this reload: the one in use may stand in for it (images turned off).
      if (nextTransformer !== imageTransformer) void nextTransformer?.close();
      return refused(reloadProblems(error));
    }
    const oldOrigin = origin;
    const oldTransformer = imageTransformer;
    if (nextOrigin) origin = nextOrigin;
    if (newTransformer) imageTransformer = nextTransformer;
    const closed = retired
      .then(async () => {
        if (nextOrigin) await oldOrigin.close?.();
        if (newTransformer && nextTransformer !== oldTransformer) await oldTransformer?.close();
      })
      .catch(() => {});
    retiring.add(closed);
    void closed.then(() => retiring.delete(closed));
    if (accessLog && changed.includes('logLevel')) accessLog.logger.level = next.logLevel;
    running = next;
    return { applied: true, changed, problems: [] };
  };
  const reload = async (trigger = 'manual', next?: EdgeOptions): Promise<ReloadOutcome> => {
    const outcome = applyReload(trigger, next);
    onReload(outcome, trigger);
    return outcome;
  };

  let closing: Promise<void> | undefined;
  return {
    url: `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    edge,
    store,
    server,
    redirect,
    admin,
    adminUrl: admin?.url,
    tls: reloader ? { certificate: () => reloader.current, reload: (trigger = 'manual') => reloader.reload(trigger) } : undefined,
    reloadPeers: () => peersFile?.reload(),
    reload,
    close() {
      // Idempotent: a supervisor and a signal handler may both ask.
      closing ??= (async () => {
        lifetime.abort();
        peersFile?.close();
        apiKeysFile?.close();
        reloader?.close();
        const closed = [server, ...(redirect ? [redirect.server] : []), ...(admin ? [admin.server] : [])].map(
          (listener) =>
            new Promise<void>((resolve) => {
              listener.close(() => resolve());
              // node:http2's secure server has it too (for its HTTP/1.1 connections), untyped in @types/node 20.
              (listener as Server).closeIdleConnections();
            }),
        );
        // HTTP/2 sessions: GOAWAY, so streams in flight finish and no new ones start.
        for (const session of sessions) session.close();
        const force = setTimeout(() => {
          if (!certificate) (server as Server).closeAllConnections();
          redirect?.server.closeAllConnections();
          admin?.server.closeAllConnections();
          for (const session of sessions) session.destroy();
          for (const socket of sockets) socket.destroy();
        }, 2000);
        force.unref();
        await Promise.all(closed);
        clearTimeout(force);
        await edge.settle();
        await Promise.all(retiring);
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

/** Keep-alive and HTTP/2 idle timeout: longer than typical load balancers' (60 s), so they close first. */
const KEEP_ALIVE_MS = 65_000;

/** What @hono/node-server hands the app as `env`, on either protocol. */
type Bindings = HttpBindings | Http2Bindings;

/** Marks a request taken in by the `--admin-listen` server (`EdgeAppDeps.listener` reads it). */
const ADMIN_REQUEST = Symbol('edge.adminRequest');
type AdminMarked = IncomingMessage & { [ADMIN_REQUEST]?: true };

/**
 * `--admin-listen`: plain HTTP answering `/_edge/` through the same app
 * (the admin token still applies); the app refuses content here and, on
 * the public port, every `/_edge/` path but health.
 */
function createAdminServer(general: (req: IncomingMessage, res: ServerResponse) => unknown): Server {
  return createServer((req, res) => {
    if (!hasOneHost(req)) {
      writeAnswer(res, answerError(new EdgeError('EDGE_BAD_REQUEST', 'A request must carry exactly one Host header (RFC 9112 3.2).')), () => {});
      return;
    }
    (req as AdminMarked)[ADMIN_REQUEST] = true;
    void general(req, res);
  });
}

/** A Host header that can go into a Location unchanged: a name or IPv4 address, or a bracketed IPv6 literal, and a port. */
const REDIRECT_HOST = /^(?:[a-z0-9._-]+|\[[0-9a-f:.]+\])(?::\d{1,5})?$/i;

/**
 * `--http-redirect-port`: plain HTTP answered with 308 to the same host and
 * target over https (308 keeps the method and body, RFC 9110 15.4.9), on
 * the HTTPS port (left out when it is 443). `/_edge/health` is answered
 * here as on the HTTPS port, so a load balancer may check either.
 */
function createRedirectServer(httpsPort: number, general: (req: IncomingMessage, res: ServerResponse) => unknown): Server {
  return createServer((req, res) => {
    const target = req.url ?? '/';
    if (target === '/_edge/health' || target.startsWith('/_edge/health?')) {
      void general(req, res);
      return;
    }
    const host = req.headers.host;
    if (!hasOneHost(req) || host === undefined || !REDIRECT_HOST.test(host) || !target.startsWith('/')) {
      writeAnswer(res, answerError(new EdgeError('EDGE_BAD_REQUEST', 'A plain HTTP request needs one valid Host header to be redirected to HTTPS.')), () => {});
      return;
    }
    const name = host.replace(/:\d+$/, '').toLowerCase();
    const location = `https://${name}${httpsPort === 443 ? '' : `:${httpsPort}`}${target}`;
    const body = `Redirecting to ${location}\n`;
    res.writeHead(308, { location, 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
}
