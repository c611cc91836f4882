/**
 * A scriptable origin for end-to-end tests: a real `node:http` server on an
 * ephemeral port, so the edge's undici client, keep-alive pool and timeouts
 * are exercised for real (mocks are kept for faults a socket cannot make).
 *
 * @example
 * const origin = await startTestOrigin();
 * origin.set('/a', { headers: { 'cache-control': 'max-age=60', etag: '"1"' }, body: 'hello' });
 * origin.set('/flaky', [{ body: 'ok' }, { destroy: true }]); // first answer, then a dropped connection
 * ...
 * expect(origin.count('/a')).toBe(1);
 * await origin.close();
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface RecordedRequest {
  method: string;
  /** Path and query as received, e.g. `/a?b=1`. */
  url: string;
  /** `url` without the query. */
  path: string;
  /** Lower-case names; repeated fields as Node joins them. */
  headers: IncomingHttpHeaders;
  /** Name/value pairs as sent, for assertions on order, case or repetition. */
  rawHeaders: string[];
  /** The request body (empty for GET/HEAD). */
  body: Buffer;
}

/** A scripted answer. Fault options win over the normal response, checked in the order listed. */
export interface OriginResponseSpec {
  /** @default 200 */
  status?: number;
  /** Repeated fields as arrays, e.g. `{ 'cache-control': ['max-age=60', 'public'] }`. */
  headers?: Record<string, string | string[] | number>;
  /** Ignored for HEAD, 204 and 304. @default '' */
  body?: string | Uint8Array;
  /** Wait before doing anything (real time: for timeout tests, not TTLs). */
  delayMs?: number;
  /**
   * Hold the answer until this gate opens (after `delayMs`, before anything
   * else): ordering without real time, e.g. a response that arrives only
   * once every client has asked (see `createGate`). The request is recorded
   * when it arrives.
   */
  gate?: Gate;
  /** Sent as `103 Early Hints` before the final response. */
  earlyHints?: Record<string, string | string[]>;
  /** Destroy the socket without any response (a dropped connection). */
  destroy?: boolean;
  /**
   * Announce the full `Content-Length`, send this many body bytes, then
   * destroy the socket: a body that fails mid-download.
   */
  failAfterBytes?: number;
  /** Send the body with chunked encoding instead of `Content-Length`. */
  chunked?: boolean;
}

/** May be async; a returned promise that rejects fails the request loudly. */
export type OriginHandler = (req: IncomingMessage, res: ServerResponse, recorded: RecordedRequest) => unknown;

export interface TestOrigin {
  /** Base URL without a trailing slash, e.g. `http://127.0.0.1:41234`. */
  readonly url: string;
  /** Every request received, in arrival order. */
  readonly requests: RecordedRequest[];
  /** Requests for `path` (matched with or without the query); all requests when omitted. */
  count(path?: string): number;
  /** Scripts `path` with a handler. A full URL with query (`/a?x=1`) takes precedence over its path. */
  route(path: string, handler: OriginHandler): void;
  /**
   * Scripts `path` declaratively. With an array, request n gets element n
   * and the last element repeats (e.g. `[200 answer, 304 answer]`).
   */
  set(path: string, spec: OriginResponseSpec | OriginResponseSpec[]): void;
  /** Forgets recorded requests (routes stay). */
  clearRequests(): void;
  /** Stops the server, destroys open sockets and cancels pending delays. */
  close(): Promise<void>;
}

const NO_BODY_STATUS = new Set([204, 304]);

/**
 * Starts a test origin. `fallback` answers paths with no route; without it
 * they get a 404 with `no route for <path>`.
 */
export async function startTestOrigin(fallback?: OriginHandler): Promise<TestOrigin> {
  const routes = new Map<string, OriginHandler>();
  const requests: RecordedRequest[] = [];
  const sockets = new Set<Socket>();
  const timers = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>();
  let closed = false;

  function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const entry = { timer: setTimeout(() => (timers.delete(entry), resolve()), ms), resolve };
      timers.add(entry);
    });
  }

  async function respond(req: IncomingMessage, res: ServerResponse, spec: OriginResponseSpec): Promise<void> {
    if (spec.delayMs) await sleep(spec.delayMs);
    if (spec.gate) await spec.gate.wait();
    if (closed || res.destroyed) return;
    if (spec.destroy) {
      req.socket.destroy();
      return;
    }
    if (spec.earlyHints) res.writeEarlyHints(spec.earlyHints);

    const status = spec.status ?? 200;
    const body = typeof spec.body === 'string' ? Buffer.from(spec.body) : Buffer.from(spec.body ?? new Uint8Array());
    res.statusCode = status;
    for (const [name, value] of Object.entries(spec.headers ?? {})) res.setHeader(name, value);
    const hasBody = req.method !== 'HEAD' && !NO_BODY_STATUS.has(status);
    if (!spec.chunked && !res.hasHeader('content-length') && !NO_BODY_STATUS.has(status)) {
      res.setHeader('content-length', body.length);
    }

    if (spec.failAfterBytes !== undefined) {
      res.flushHeaders();
      const partial = body.subarray(0, spec.failAfterBytes);
      // Destroy only once the partial bytes reached the socket, so the client
      // sees a truncated body rather than a reset before any data.
      if (hasBody && partial.length > 0) res.write(partial, () => req.socket.destroy());
      else setImmediate(() => req.socket.destroy());
      return;
    }
    res.end(hasBody ? body : undefined);
  }

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const url = req.url ?? '/';
      const path = url.split('?')[0] ?? '/';
      const recorded: RecordedRequest = {
        method: req.method ?? 'GET',
        url,
        path,
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body: Buffer.concat(chunks),
      };
      requests.push(recorded);
      const handler = routes.get(url) ?? routes.get(path) ?? fallback;
      const run = handler
        ? handler(req, res, recorded)
        : respond(req, res, { status: 404, headers: { 'content-type': 'text/plain' }, body: `no route for ${path}` });
      // A throwing handler is a bug in the test, not an origin fault to simulate: make it loud.
      Promise.resolve(run).catch((err: unknown) => {
        console.error(`test origin: handler for ${url} threw`, err);
        if (!res.headersSent) {
          res.statusCode = 500;
          res.end(String(err));
        } else {
          res.destroy();
        }
      });
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;

  let closing: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    count(path?: string) {
      if (path === undefined) return requests.length;
      return requests.filter((r) => r.url === path || r.path === path).length;
    },
    route(path, handler) {
      routes.set(path, handler);
    },
    set(path, spec) {
      const specs = Array.isArray(spec) ? spec : [spec];
      if (specs.length === 0) throw new TypeError('origin.set: spec array must not be empty');
      let served = 0;
      routes.set(path, (req, res) => {
        const next = specs[Math.min(served, specs.length - 1)]!;
        served++;
        return respond(req, res, next);
      });
    },
    clearRequests() {
      requests.length = 0;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        closed = true;
        // Let pending delayed responses run to their `closed` check and exit.
        for (const entry of timers) {
          clearTimeout(entry.timer);
          entry.resolve();
        }
        timers.clear();
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
      return closing;
    },
  };
}

/**
 * A spec whose `Date` is `now()` at the moment the origin answers (a `date`
 * in the spec wins): the test origin reads `headers` when it answers, after
 * any `delayMs`, so answers follow an injected clock.
 */
export function datedBy(now: () => number, spec: OriginResponseSpec): OriginResponseSpec {
  const { headers, ...rest } = spec;
  return {
    ...rest,
    get headers() {
      return { date: new Date(now()).toUTCString(), ...headers };
    },
  };
}

/** `origin.set` with answers dated by `now()`. */
export function setDated(origin: TestOrigin, now: () => number, path: string, spec: OriginResponseSpec | OriginResponseSpec[]): void {
  origin.set(path, (Array.isArray(spec) ? spec : [spec]).map((one) => datedBy(now, one)));
}

/**
 * A latch for tests that need an order of events instead of a delay: callers
 * of `wait()` are held until `open()`; `arrive()` counts an event (a request
 * reaching the edge, say). With `openAt`, the gate opens itself when that
 * many arrivals have been counted.
 */
export interface Gate {
  /** Resolves once the gate is open (at once if it already is). Not an arrival. */
  wait(): Promise<void>;
  /** Counts an arrival. */
  arrive(): void;
  /** Lets every held and later caller through. */
  open(): void;
  readonly isOpen: boolean;
  /** Arrivals counted so far. */
  readonly arrived: number;
  /** Resolves once `n` arrivals have been counted. */
  arrivals(n: number): Promise<void>;
}

/**
 * @example
 * // The origin answers only once 20 requests have reached the edge.
 * const gate = createGate({ openAt: 20 });
 * t.edge.server.on('request', () => gate.arrive());
 * t.origin.set('/hot', { body: 'x', gate });
 */
export function createGate(options: { openAt?: number } = {}): Gate {
  const openAt = options.openAt ?? Infinity;
  let arrived = 0;
  let isOpen = false;
  let release!: () => void;
  const opened = new Promise<void>((resolve) => (release = resolve));
  const waiting: { n: number; resolve: () => void }[] = [];
  const open = () => {
    isOpen = true;
    release();
  };
  const count = () => {
    arrived++;
    for (const wait of [...waiting]) {
      if (arrived >= wait.n) {
        waiting.splice(waiting.indexOf(wait), 1);
        wait.resolve();
      }
    }
    if (arrived >= openAt) open();
  };
  return {
    wait() {
      return opened;
    },
    arrive: count,
    open,
    get isOpen() {
      return isOpen;
    },
    get arrived() {
      return arrived;
    },
    arrivals(n) {
      if (arrived >= n) return Promise.resolve();
      return new Promise((resolve) => waiting.push({ n, resolve }));
    },
  };
}

// Appended below the http origin: imports are hoisted, so this one may sit with the code that uses it.
import { createServer as createNetServer } from 'node:net';

/** A request head as a raw-socket origin received it. */
export interface RawRequest {
  method: string;
  /** The request target, e.g. `/a?b=1`. */
  target: string;
  /** Lower-case names; a repeated field keeps its last value. */
  headers: Record<string, string>;
}

/**
 * Answers one request by writing to the socket itself: any status line, any
 * framing, a FIN (`socket.end()`) or a TCP reset (`socket.resetAndDestroy()`).
 * The socket carries the next request on it only if the handler leaves it open.
 */
export type RawOriginHandler = (socket: Socket, request: RawRequest) => unknown;

export interface RawOrigin {
  /** Base URL without a trailing slash. */
  readonly url: string;
  /** Every request head received, in arrival order. */
  readonly requests: RawRequest[];
  /** Resolves once `n` requests have arrived (at once if they already have). */
  received(n: number): Promise<void>;
  /** Stops listening and destroys open sockets. */
  close(): Promise<void>;
}

/**
 * An origin on a plain `net` server, for responses `node:http` refuses to
 * produce: broken framing, statuses outside 100-599, resets after part of a
 * body. Request bodies are read by `Content-Length` and dropped (no chunked
 * request bodies).
 *
 * @example
 * const raw = await startRawOrigin((socket) => {
 *   socket.write('HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial');
 *   socket.resetAndDestroy();
 * });
 */
export async function startRawOrigin(handler: RawOriginHandler): Promise<RawOrigin> {
  const requests: RawRequest[] = [];
  const sockets = new Set<Socket>();
  const waiting: { n: number; resolve: () => void }[] = [];
  const arrived = (request: RawRequest) => {
    requests.push(request);
    for (const wait of [...waiting]) {
      if (requests.length >= wait.n) {
        waiting.splice(waiting.indexOf(wait), 1);
        wait.resolve();
      }
    }
  };

  const server = createNetServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    // An origin reset by the test emits ECONNRESET on our side too; it is the point, not a failure.
    socket.on('error', () => {});
    let buffered = Buffer.alloc(0);
    let bodyLeft = 0;
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      for (;;) {
        if (bodyLeft > 0) {
          const take = Math.min(bodyLeft, buffered.length);
          bodyLeft -= take;
          buffered = buffered.subarray(take);
          if (bodyLeft > 0) return;
        }
        const end = buffered.indexOf('\r\n\r\n');
        if (end < 0) return;
        const [requestLine = '', ...fieldLines] = buffered.subarray(0, end).toString('latin1').split('\r\n');
        buffered = buffered.subarray(end + 4);
        const [method = '', target = ''] = requestLine.split(' ');
        const headers: Record<string, string> = {};
        for (const line of fieldLines) {
          const colon = line.indexOf(':');
          if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
        }
        bodyLeft = Number(headers['content-length'] ?? 0);
        const request = { method, target, headers };
        arrived(request);
        Promise.resolve(handler(socket, request)).catch((err: unknown) => {
          console.error(`raw origin: handler for ${target} threw`, err);
          socket.destroy();
        });
      }
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  let closing: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    received(n) {
      if (requests.length >= n) return Promise.resolve();
      return new Promise((resolve) => waiting.push({ n, resolve }));
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
      return closing;
    },
  };
}
