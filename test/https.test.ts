/**
 * Issue 13 (HTTPS and HTTP/2): a node with --tls-cert/--tls-key speaks
 * HTTP/2 (ALPN h2) and HTTP/1.1 over TLS, and every feature answers the
 * same on both: fast-path hits, misses while filling, ranges, 304s, image
 * variants, the admin API, 103 Early Hints, client aborts. Real
 * certificates (made with openssl in a temp dir), real HTTP/2 and HTTP/1.1
 * clients, a real origin.
 */
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { connect as http2Connect, constants as h2, type ClientHttp2Session, type Http2SecureServer, type IncomingHttpHeaders as H2Headers } from 'node:http2';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import sharp from 'sharp';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import type { RequestRecord } from '../edge/core/app.js';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import type { TlsReloadEvent } from '../edge/node/tls.js';
import { createTestClock } from './helpers/clock.js';
import { createGate, startTestOrigin, type TestOrigin } from './helpers/origin.js';
import { createTestCa, issueCertificate, type TestCa, type TestCertificate } from './helpers/tls.js';

const TOKEN = 'https-test-admin-token';

interface TlsNode {
  edge: EdgeServer;
  origin: TestOrigin;
  records: RequestRecord[];
  ca: TestCa;
  certificate: TestCertificate;
  dir: string;
  events: TlsReloadEvent[];
  sessions: ClientHttp2Session[];
}

const nodes: TlsNode[] = [];
const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const node of nodes.splice(0)) {
    for (const session of node.sessions) session.destroy();
    await node.edge.close();
    await node.origin.close();
    await rm(node.dir, { recursive: true, force: true });
  }
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

async function startTlsNode(input: Record<string, unknown> = {}): Promise<TlsNode> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-https-'));
  const ca = createTestCa(dir);
  const certificate = issueCertificate(dir, ca, { name: 'server', serial: '1001' });
  const origin = await startTestOrigin();
  const records: RequestRecord[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) if (line) records.push(JSON.parse(line));
      callback();
    },
  });
  const events: TlsReloadEvent[] = [];
  const options = resolveEdgeOptions({
    origin: origin.url,
    port: 0,
    host: '127.0.0.1',
    dataDir: join(dir, 'data'),
    adminToken: TOKEN,
    tlsCert: certificate.certPath,
    tlsKey: certificate.keyPath,
    ...input,
  });
  const clock = createTestClock(Date.now());
  const edge = await startEdgeServer(options, { now: clock.now, logger: pino({ level: 'info' }, sink), onTlsReload: (event) => events.push(event), tlsReloadDebounceMs: 20 });
  const node = { edge, origin, records, ca, certificate, dir, events, sessions: [] };
  nodes.push(node);
  return node;
}

interface Raw {
  status: number;
  /** [name, value] pairs as received, lower-case names, pseudo-header fields left out. */
  headers: [string, string][];
  body: Buffer;
  /** 1xx responses before the final one. */
  informational: { status: number; headers: Record<string, unknown> }[];
}

interface Init {
  method?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
}

function h2Session(node: TlsNode): Promise<ClientHttp2Session> {
  const session = http2Connect(`https://localhost:${node.edge.port}`, { ca: node.ca.pem });
  node.sessions.push(session);
  return new Promise((resolve, reject) => {
    session.once('connect', () => resolve(session));
    session.once('error', reject);
  });
}

function pairs(headers: H2Headers): [string, string][] {
  const out: [string, string][] = [];
  for (const [name, value] of Object.entries(headers)) {
    if (name.startsWith(':') || value === undefined) continue;
    for (const one of Array.isArray(value) ? value : [value]) out.push([name, String(one)]);
  }
  return out;
}

/** One HTTP/2 request on `session`. */
function h2Get(session: ClientHttp2Session, path: string, init: Init = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': init.method ?? 'GET', ':path': path, ...init.headers }, { endStream: init.body === undefined });
    const informational: Raw['informational'] = [];
    let status = 0;
    let headers: [string, string][] = [];
    const chunks: Buffer[] = [];
    stream.on('headers', (fields) => informational.push({ status: Number(fields[':status']), headers: Object.fromEntries(pairs(fields)) }));
    stream.on('response', (fields) => {
      status = Number(fields[':status']);
      headers = pairs(fields);
    });
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('end', () => resolve({ status, headers, body: Buffer.concat(chunks), informational }));
    stream.on('error', reject);
    if (init.body !== undefined) stream.end(init.body);
  });
}

/** One HTTP/1.1 request over TLS (ALPN http/1.1), a connection of its own. */
function h1Get(node: TlsNode, path: string, init: Init = {}): Promise<Raw & { alpn: string | false; httpVersion: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        servername: 'localhost',
        port: node.edge.port,
        path,
        method: init.method ?? 'GET',
        headers: { host: `localhost:${node.edge.port}`, ...init.headers },
        ca: node.ca.pem,
        ALPNProtocols: ['http/1.1'],
        agent: false,
      } as import('node:https').RequestOptions,
      (res) => {
        const informationalHeaders: Raw['informational'] = [];
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const headers: [string, string][] = [];
          for (let i = 0; i < res.rawHeaders.length; i += 2) headers.push([res.rawHeaders[i]!.toLowerCase(), res.rawHeaders[i + 1]!]);
          const socket = res.socket as import('node:tls').TLSSocket;
          resolve({ status: res.statusCode!, headers, body: Buffer.concat(chunks), informational: informationalHeaders, alpn: socket.alpnProtocol ?? false, httpVersion: res.httpVersion });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(init.body);
  });
}

const header = (answer: Raw, name: string) => answer.headers.find(([n]) => n === name)?.[1];

/** Everything but what differs per request by design (the id, the clock) and per protocol (connection fields), names sorted. */
function comparable(answer: Raw) {
  const varying = new Set(['date', 'x-request-id', 'connection', 'keep-alive', 'transfer-encoding']);
  return {
    status: answer.status,
    headers: answer.headers.filter(([name]) => !varying.has(name)).sort(([a, av], [b, bv]) => (a < b ? -1 : a > b ? 1 : av < bv ? -1 : 1)),
    body: answer.body.toString('base64'),
  };
}

const CONNECTION_FIELDS = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade'];

describe('HTTPS with HTTP/2 and HTTP/1.1', () => {
  it('negotiates h2 by ALPN, falls back to HTTP/1.1, and undici speaks both', async () => {
    const node = await startTlsNode();
    node.origin.set('/a.txt', { headers: { 'cache-control': 'max-age=60' }, body: 'alpn' });
    expect(node.edge.url).toBe(`https://127.0.0.1:${node.edge.port}`);
    const session = await h2Session(node);
    expect(session.alpnProtocol).toBe('h2');
    expect((await h2Get(session, '/a.txt')).body.toString()).toBe('alpn');
    const h1 = await h1Get(node, '/a.txt');
    expect(h1.alpn).toBe('http/1.1');
    expect(h1.httpVersion).toBe('1.1');
    expect(h1.body.toString()).toBe('alpn');

    const h2Agent = new Agent({ allowH2: true, connect: { ca: node.ca.pem } });
    const h1Agent = new Agent({ connect: { ca: node.ca.pem } });
    cleanups.push(() => h2Agent.close(), () => h1Agent.close());
    for (const dispatcher of [h2Agent, h1Agent]) {
      const res = await undiciFetch(`https://localhost:${node.edge.port}/a.txt`, { dispatcher });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('alpn');
      expect(res.headers.get('cache-status')).toMatch(/^edge; hit/);
    }
    // A client that offers neither h2 nor http/1.1 over ALPN still gets HTTP/1.1 (no ALPN is HTTP/1.1).
    expect(node.origin.count('/a.txt')).toBe(1);
  });

  it('answers an HTTP/2 fast-path hit exactly as an HTTP/1.1 one: status, headers but connection fields, body', async () => {
    const node = await startTlsNode({ memorySize: '64MB' });
    const png = await sharp({ create: { width: 64, height: 48, channels: 3, background: '#36a' } }).png().toBuffer();
    node.origin.set('/obj.txt', { headers: { 'cache-control': 'max-age=600', etag: '"o1"', 'content-type': 'text/plain', 'set-cookie': ['a=1', 'b=2'] }, body: 'x'.repeat(3000) });
    node.origin.set('/plain.txt', { headers: { 'cache-control': 'max-age=600', etag: '"p1"', 'content-type': 'text/plain' }, body: 'plain body' });
    node.origin.route('/vary.txt', (req, res) => {
      res.setHeader('cache-control', 'max-age=600');
      res.setHeader('vary', 'Accept-Language');
      res.end(`hello ${req.headers['accept-language']}`);
    });
    node.origin.set('/img.png', { headers: { 'cache-control': 'max-age=600', 'content-type': 'image/png' }, body: png });
    const session = await h2Session(node);
    // Filled over HTTP/2 (misses, the pull path), pushed over HTTP/2 (the admin API reads a request body).
    await h2Get(session, '/obj.txt');
    await h2Get(session, '/plain.txt');
    await h2Get(session, '/vary.txt', { headers: { 'accept-language': 'fr' } });
    await h2Get(session, '/img.png?width=32&format=webp');
    const push = await h2Get(session, '/_edge/push/pushed.css', { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'text/css' }, body: 'body{}' });
    expect(push.status).toBe(201);
    await node.edge.edge.settle();

    const cases: [string, string, Init][] = [
      ['GET', '/plain.txt', {}],
      ['HEAD', '/plain.txt', { method: 'HEAD' }],
      ['If-None-Match', '/plain.txt', { headers: { 'if-none-match': '"p1"' } }],
      ['Range', '/plain.txt', { headers: { range: 'bytes=2-5' } }],
      ['Vary', '/vary.txt', { headers: { 'accept-language': 'fr' } }],
      ['Set-Cookie stored without it', '/obj.txt', {}],
      ['pushed', '/pushed.css', {}],
      ['image variant', '/img.png?width=32&format=webp', {}],
      ['admin listing', '/_edge/objects?limit=100', { headers: { authorization: `Bearer ${TOKEN}` } }],
      ['admin 401', '/_edge/objects', {}],
      ['node 404', '/_edge/nothing', {}],
    ];
    for (const [what, path, init] of cases) {
      const overH1 = await h1Get(node, path, init);
      const overH2 = await h2Get(session, path, init);
      expect(comparable(overH2), what).toEqual(comparable(overH1));
      for (const name of CONNECTION_FIELDS) expect(header(overH2, name), `${what}: ${name}`).toBeUndefined();
    }
    expect(header(await h2Get(session, '/plain.txt', { headers: { 'if-none-match': '"p1"' } }), 'etag')).toBe('"p1"');
    const range = await h2Get(session, '/plain.txt', { headers: { range: 'bytes=2-5' } });
    expect([range.status, range.body.toString(), header(range, 'content-range')]).toEqual([206, 'ain ', 'bytes 2-5/10']);
    expect(header(await h2Get(session, '/img.png?width=32&format=webp'), 'content-type')).toBe('image/webp');

    // HTTP/2 hits took the fast path, not the router.
    const hits = node.records.filter((r) => r.path === '/plain.txt' && r.outcome === 'hit' && r.method === 'GET');
    expect(hits.map((r) => r.answeredBy)).toEqual(expect.arrayContaining(['hit']));
    expect(hits.every((r) => r.answeredBy === 'hit')).toBe(true);
    expect(node.origin.count('/plain.txt')).toBe(1);
  });

  it('sends X-Forwarded-Proto https and keys under https:// over either protocol', async () => {
    const node = await startTlsNode();
    node.origin.set('/proto', { headers: { 'cache-control': 'max-age=60' }, body: 'p' });
    node.origin.set('/proto-h1', { headers: { 'cache-control': 'max-age=60' }, body: 'p' });
    const session = await h2Session(node);
    await h2Get(session, '/proto', { headers: { 'x-forwarded-proto': 'http' } });
    await h1Get(node, '/proto-h1', { headers: { 'x-forwarded-proto': 'http' } });
    await node.edge.edge.settle();
    for (const seen of node.origin.requests) {
      expect(seen.headers['x-forwarded-proto'], seen.url).toBe('https');
      expect(seen.headers['x-forwarded-host'], seen.url).toBe(`localhost:${node.edge.port}`);
    }
    const listing = JSON.parse((await h2Get(session, '/_edge/objects', { headers: { authorization: `Bearer ${TOKEN}` } })).body.toString());
    expect(listing.objects.map((o: { key: string }) => o.key).sort()).toEqual([`/proto https://localhost:${node.edge.port}`, `/proto-h1 https://localhost:${node.edge.port}`]);
    // Both protocols share the entry: the scheme is the connection's (TLS), not the HTTP version.
    expect(header(await h1Get(node, '/proto'), 'cache-status')).toMatch(/^edge; hit/);
    expect(header(await h2Get(session, '/proto-h1'), 'cache-status')).toMatch(/^edge; hit/);
    // A purge by absolute URL names the scheme.
    const purge = await h2Get(session, '/_edge/purge', {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ urls: [`https://localhost:${node.edge.port}/proto`] }),
    });
    expect(JSON.parse(purge.body.toString())).toEqual({ purged: 1 });
  });

  it('streams a miss over HTTP/2 while it fills, to a second client collapsed behind it too', async () => {
    const node = await startTlsNode();
    const gate = createGate();
    const body = Buffer.alloc(300_000, 'z');
    node.origin.set('/fill.bin', { headers: { 'cache-control': 'max-age=60', 'content-type': 'application/octet-stream' }, body, gate });
    const arrived = createGate();
    (node.edge.server as Http2SecureServer).on('request', () => arrived.arrive());
    const session = await h2Session(node);
    const first = h2Get(session, '/fill.bin');
    const second = h1Get(node, '/fill.bin');
    await arrived.arrivals(2);
    gate.open();
    const [a, b] = await Promise.all([first, second]);
    expect(a.body.equals(body)).toBe(true);
    expect(b.body.equals(body)).toBe(true);
    expect(node.origin.count('/fill.bin')).toBe(1);
    await node.edge.edge.settle();
    const hit = await h2Get(session, '/fill.bin', { headers: { range: 'bytes=299990-' } });
    expect([hit.status, hit.body.toString()]).toEqual([206, 'z'.repeat(10)]);
  });

  it('relays 103 Early Hints as HTTP/2 informational responses', async () => {
    const node = await startTlsNode();
    node.origin.set('/page', { earlyHints: { link: '</style.css>; rel=preload; as=style' }, headers: { 'cache-control': 'max-age=60' }, body: 'page' });
    node.origin.set('/form', { earlyHints: { link: '</form.css>; rel=preload; as=style' }, body: 'posted' });
    const session = await h2Session(node);
    const page = await h2Get(session, '/page');
    expect(page.informational).toEqual([{ status: 103, headers: { link: '</style.css>; rel=preload; as=style' } }]);
    expect([page.status, page.body.toString()]).toEqual([200, 'page']);
    const post = await h2Get(session, '/form', { method: 'POST', body: 'x=1' });
    expect(post.informational.map((i) => i.status)).toEqual([103]);
    expect(post.body.toString()).toBe('posted');
    expect(node.origin.requests.find((r) => r.url === '/form')!.body.toString()).toBe('x=1');
    // Never cached: the hit carries none.
    await node.edge.edge.settle();
    expect((await h2Get(session, '/page')).informational).toEqual([]);
  });

  it('treats RST_STREAM during a miss like a closed socket: the fill completes, the next request is a hit, the connection stays', async () => {
    const node = await startTlsNode();
    const CHUNK = 256 * 1024;
    const rest = createGate();
    node.origin.route('/reset.bin', async (_req, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=600', 'content-length': String(2 * CHUNK) });
      res.write(Buffer.alloc(CHUNK, 1));
      await rest.wait();
      res.end(Buffer.alloc(CHUNK, 2));
    });
    const clientGone = createGate();
    (node.edge.server as Http2SecureServer).on('request', (req, res) => {
      if (req.url === '/reset.bin') res.once('close', () => clientGone.open());
    });
    const session = await h2Session(node);
    const stream = session.request({ ':path': '/reset.bin' });
    await once(stream, 'data');
    stream.close(h2.NGHTTP2_CANCEL);
    await clientGone.wait();
    rest.open();
    await node.edge.edge.settle();
    const next = await h2Get(session, '/reset.bin');
    expect(header(next, 'cache-status')).toMatch(/^edge; hit/);
    expect(next.body.equals(Buffer.concat([Buffer.alloc(CHUNK, 1), Buffer.alloc(CHUNK, 2)]))).toBe(true);
    expect(node.origin.count('/reset.bin')).toBe(1);
    expect(session.closed || session.destroyed).toBe(false);
  });

  it('stores nothing when the origin fails after an HTTP/2 client reset its stream', async () => {
    const node = await startTlsNode();
    const fail = createGate();
    node.origin.route('/broken.bin', async (req, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=600', 'content-length': String(200_000) });
      res.write(Buffer.alloc(100_000, 1));
      await fail.wait();
      req.socket.destroy();
    });
    const clientGone = createGate();
    (node.edge.server as Http2SecureServer).on('request', (req, res) => {
      if (req.url === '/broken.bin') res.once('close', () => clientGone.open());
    });
    const session = await h2Session(node);
    const stream = session.request({ ':path': '/broken.bin' });
    await once(stream, 'data');
    stream.close(h2.NGHTTP2_CANCEL);
    await clientGone.wait();
    fail.open();
    await node.edge.edge.settle();
    node.origin.set('/broken.bin', { headers: { 'cache-control': 'max-age=600' }, body: 'whole' });
    const next = await h2Get(session, '/broken.bin');
    expect(next.body.toString()).toBe('whole');
    expect(node.origin.count('/broken.bin')).toBe(2);
  });

  it('answers 400 to an HTTP/2 request whose Host names another authority', async () => {
    const node = await startTlsNode();
    node.origin.set('/h', { body: 'h' });
    const session = await h2Session(node);
    const answer = await h2Get(session, '/h', { headers: { ':authority': `localhost:${node.edge.port}`, host: 'evil.example' } });
    expect(answer.status).toBe(400);
    expect(JSON.parse(answer.body.toString()).error).toBe('EDGE_BAD_REQUEST');
    expect(node.origin.count()).toBe(0);
    // The same name in both is fine.
    expect((await h2Get(session, '/h', { headers: { ':authority': `localhost:${node.edge.port}`, host: `LOCALHOST:${node.edge.port}` } })).status).toBe(200);
    // Host alone (allowed in HTTP/2 instead of :authority) is the authority.
    const hostOnly = await h2Get(session, '/h', { headers: { host: `localhost:${node.edge.port}` } });
    expect([hostOnly.status, header(hostOnly, 'cache-status')]).toEqual([200, expect.stringMatching(/^edge; fwd=uri-miss/)]);
  });
});

describe('--http-redirect-port', () => {
  function plain(port: number, path: string, init: Init & { host?: string | null } = {}): Promise<Raw> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = { ...init.headers };
      const req = httpRequest({ host: '127.0.0.1', port, path, method: init.method ?? 'GET', headers, setHost: false, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode!, headers: Object.entries(res.headers).map(([n, v]) => [n, String(v)]), body: Buffer.concat(chunks), informational: [] }));
      });
      if (init.host !== null) req.setHeader('host', init.host ?? `localhost:${port}`);
      req.on('error', reject);
      req.end(init.body);
    });
  }

  it('answers plain HTTP with 308 to the same host on the HTTPS port, except /_edge/health', async () => {
    const node = await startTlsNode({ httpRedirectPort: 0 });
    node.origin.set('/page', { body: 'secure' });
    const port = node.edge.redirect!.port;
    const get = await plain(port, '/page?a=1&b=%20', { host: `Example.COM:${port}` });
    expect(get.status).toBe(308);
    expect(header(get, 'location')).toBe(`https://example.com:${node.edge.port}/page?a=1&b=%20`);
    expect(header(get, 'cache-control')).toBe('no-store');
    const post = await plain(port, '/form', { method: 'POST', body: 'x', host: '[::1]' });
    expect([post.status, header(post, 'location')]).toEqual([308, `https://[::1]:${node.edge.port}/form`]);
    expect((await plain(port, '/page', { host: null })).status).toBe(400);
    expect((await plain(port, '/page', { host: 'a b' })).status).toBe(400);
    const health = await plain(port, '/_edge/health');
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body.toString()).status).toBe('ok');
    expect(node.origin.count()).toBe(0);
    // The Location works.
    const followed = await h1Get(node, '/page?a=1&b=%20');
    expect(followed.body.toString()).toBe('secure');
  });

  it('is refused without TLS, naming the option', () => {
    expect(() => resolveEdgeOptions({ origin: 'http://127.0.0.1:9', httpRedirectPort: 8081 })).toThrow(/--http-redirect-port \(EDGE_HTTP_REDIRECT_PORT\): got 8081: redirects to HTTPS: set --tls-cert and --tls-key/);
    expect(() => resolveEdgeOptions({ origin: 'http://127.0.0.1:9', tlsCert: '/x.pem' })).toThrow(/--tls-key \(EDGE_TLS_KEY\): got nothing: required with --tls-cert/);
  });
});

describe('origins over HTTPS', () => {
  /** An HTTPS origin with a certificate from `ca`, recording the SNI name each connection sent. */
  async function startHttpsOrigin(certificate: TestCertificate): Promise<{ url: string; servernames: (string | false)[]; close(): Promise<void> }> {
    const servernames: (string | false)[] = [];
    const server = createHttpsServer({ cert: certificate.cert, key: certificate.key }, (req, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=60', 'content-type': 'text/plain' });
      res.end(`over tls to ${req.headers.host}`);
    });
    server.on('secureConnection', (socket) => servernames.push((socket as import('node:tls').TLSSocket & { servername: string | false }).servername));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    return {
      url: `https://localhost:${port}`,
      servernames,
      close: () => new Promise<void>((resolve) => (server.closeAllConnections(), server.close(() => resolve()))),
    };
  }

  it('trusts a private CA with --origin-ca, sends SNI, and refuses the origin without it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edge-origin-ca-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const privateCa = createTestCa(dir, 'private-ca');
    const origin = await startHttpsOrigin(issueCertificate(dir, privateCa, { name: 'origin', serial: '0a0a', hosts: ['localhost'] }));
    cleanups.push(() => origin.close());

    const trusting = await startTlsNode({ origin: origin.url, originCa: privateCa.certPath });
    const session = await h2Session(trusting);
    const answer = await h2Get(session, '/x');
    expect([answer.status, answer.body.toString()]).toEqual([200, `over tls to ${new URL(origin.url).host}`]);
    expect(origin.servernames).toEqual(['localhost']);

    const untrusting = await startTlsNode({ origin: origin.url });
    const refused = await h2Get(await h2Session(untrusting), '/x');
    expect(refused.status).toBe(502);
    expect(JSON.parse(refused.body.toString()).error).toBe('EDGE_ORIGIN_UNREACHABLE');
  });

  it('refuses an --origin-ca file without certificates, naming the option', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edge-origin-ca-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const bad = join(dir, 'not-a-ca.pem');
    await import('node:fs/promises').then((fs) => fs.writeFile(bad, 'hello'));
    const options = resolveEdgeOptions({ origin: 'https://localhost:9', originCa: bad, port: 0, host: '127.0.0.1', dataDir: join(dir, 'data') });
    await expect(startEdgeServer(options, { logger: false })).rejects.toMatchObject({ code: 'EDGE_TLS_CERTIFICATE', option: 'originCa', reason: expect.stringMatching(/no PEM certificate/) });
  });
});
