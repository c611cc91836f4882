/**
 * Issue 9: one cache key type, the origin request built from the key, one
 * way out, and a Node hit path without Web objects that answers exactly as
 * the general path does. Real origin, real LMDB, real sockets.
 */
import { request as httpRequest } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import type { RequestRecord } from '../edge/core/app.js';
import { formatCacheKey, normaliseHost, normaliseQuery, parseCacheKey, type CacheKey } from '../edge/core/cache-key.js';
import { negotiateCoding } from '../edge/core/compression.js';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { createTestClock } from './helpers/clock.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

const TOKEN = 'hit-path-admin-token';

interface Node {
  edge: EdgeServer;
  origin: TestOrigin;
  records: RequestRecord[];
  dataDir: string;
}

const nodes: Node[] = [];
afterEach(async () => {
  for (const node of nodes.splice(0)) {
    await node.edge.close();
    await node.origin.close();
    await rm(node.dataDir, { recursive: true, force: true });
  }
});

/** A node whose access log lines are captured as records. */
async function startNode(input: Record<string, unknown> = {}, routes?: unknown[]): Promise<Node> {
  const origin = await startTestOrigin();
  const dataDir = await mkdtemp(join(tmpdir(), 'edge-hit-'));
  const records: RequestRecord[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) if (line) records.push(JSON.parse(line));
      callback();
    },
  });
  const clock = createTestClock(Date.now());
  const options = resolveEdgeOptions({
    origin: origin.url,
    port: 0,
    host: '127.0.0.1',
    dataDir,
    adminToken: TOKEN,
    ...(routes ? { origins: { groups: [{ name: 'main', members: [origin.url] }], routes } } : {}),
    ...input,
  });
  const edge = await startEdgeServer(options, { now: clock.now, logger: pino({ level: 'info' }, sink) });
  const node = { edge, origin, records, dataDir };
  nodes.push(node);
  return node;
}

interface Raw {
  status: number;
  /** [name, value] pairs as received, lower-case names. */
  headers: [string, string][];
  body: Buffer;
}

/** A real HTTP/1.1 request with full control of Host and every header. */
function raw(node: Node, path: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: '127.0.0.1', port: node.edge.port, path, method: init.method ?? 'GET', headers: { host: `localhost:${node.edge.port}`, ...init.headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const headers: [string, string][] = [];
          for (let i = 0; i < res.rawHeaders.length; i += 2) headers.push([res.rawHeaders[i]!.toLowerCase(), res.rawHeaders[i + 1]!]);
          resolve({ status: res.statusCode!, headers, body: Buffer.concat(chunks) });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(init.body);
  });
}

const header = (answer: Raw, name: string) => answer.headers.find(([n]) => n === name)?.[1];

describe('the cache key is one typed value', () => {
  it('formats and parses every kind of key back to the same value', () => {
    const keys: CacheKey[] = [
      { kind: 'pulled', path: '/a.css', scheme: 'https', host: 'example.com' },
      { kind: 'pulled', path: '/q?a=1&b=%20x', scheme: 'http', host: '[::1]:8080' },
      { kind: 'pulled', path: '/api/x', scheme: 'http', host: 'h', headers: [['x-tenant', 'a b&c=d#e'], ['x-empty', '']] },
      { kind: 'pulled', path: '/p.jpg', scheme: 'http', host: 'h', headers: [['x-t', '1']], derived: { kind: 'image', params: 'w=400;h=;fit=cover' } },
      { kind: 'pushed', path: '/assets/app.css' },
      { kind: 'pushed', path: '/photo.jpg', derived: { kind: 'image', params: 'w=100;f=webp' } },
    ];
    for (const key of keys) expect(parseCacheKey(formatCacheKey(key))).toEqual(key);
    expect(parseCacheKey('no-space-here')).toBeUndefined();
  });

  it('normalises hosts: case, a trailing dot and the default port do not make another key', () => {
    expect(normaliseHost('Example.COM.', 'http')).toBe('example.com');
    expect(normaliseHost('example.com:80', 'http')).toBe('example.com');
    expect(normaliseHost('example.com:443', 'https')).toBe('example.com');
    expect(normaliseHost('example.com:443', 'http')).toBe('example.com:443');
    expect(normaliseHost('[::1]:80', 'http')).toBe('[::1]');
  });

  it('keys and forwards the same query parameters; only the key is sorted', () => {
    const drop = (name: string) => name.startsWith('utm_');
    expect(normaliseQuery('?b=2&utm_source=x&a=1;utm_medium=y', drop, true)).toEqual({ keyed: '?a=1;utm_medium=y&b=2', forwarded: '?b=2&a=1;utm_medium=y' });
    expect(normaliseQuery('?utm_source=x', drop, true)).toEqual({ keyed: '', forwarded: '' });
    expect(normaliseQuery('?id=2&id=1', drop, true).keyed).toBe('?id=2&id=1');
  });

  it('reduces Accept-Encoding to the one coding it negotiates (the key never holds the raw string)', () => {
    expect(negotiateCoding('gzip, deflate, br, zstd')).toBe('br');
    expect(negotiateCoding('br;q=0, gzip;q=0.5')).toBe('gzip');
    expect(negotiateCoding('*')).toBe('br');
    expect(negotiateCoding('*;q=0, identity')).toBe('identity');
    expect(negotiateCoding('x-gzip')).toBe('gzip');
  });

  it('purge by URL removes an entry stored under a route with keyHeaders (every tenant)', async () => {
    const node = await startNode({}, [{ match: { pathPrefix: '/api/' }, cache: { ttl: 60, keyHeaders: ['x-tenant'] } }]);
    node.origin.route('/api/x', (req, res) => res.end(`tenant ${req.headers['x-tenant']}`));
    expect((await raw(node, '/api/x', { headers: { 'x-tenant': 'a' } })).body.toString()).toBe('tenant a');
    expect((await raw(node, '/api/x', { headers: { 'x-tenant': 'b' } })).body.toString()).toBe('tenant b');
    expect(header(await raw(node, '/api/x', { headers: { 'x-tenant': 'a' } }), 'cache-status')).toMatch(/hit/);
    await node.edge.edge.settle();
    const purge = await raw(node, '/_edge/purge', {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ urls: ['/api/x'] }),
    });
    expect(JSON.parse(purge.body.toString())).toEqual({ purged: 2 });
    expect(header(await raw(node, '/api/x', { headers: { 'x-tenant': 'a' } }), 'cache-status')).toMatch(/fwd=uri-miss/);
    expect(node.origin.count('/api/x')).toBe(3);
  });

  it('one fixed site name (--cache-key-host) makes every Host share one entry', async () => {
    const node = await startNode({ cacheKeyHost: 'www.example.com' });
    node.origin.set('/site.css', { headers: { 'cache-control': 'max-age=60' }, body: 'one site' });
    await raw(node, '/site.css', { headers: { host: 'a.example.net' } });
    await node.edge.edge.settle();
    const other = await raw(node, '/site.css', { headers: { host: 'b.example.org' } });
    expect(header(other, 'cache-status')).toMatch(/hit/);
    expect(node.origin.count('/site.css')).toBe(1);
  });
});

describe('the origin request is built from the key', () => {
  it('forwards no unkeyed header and no dropped query parameter; keyed and allow-listed ones go through', async () => {
    const node = await startNode({ forwardHeaders: ['x-allowed'] }, [
      { match: { pathPrefix: '/r/' }, cache: { queryParams: ['page'], keyHeaders: ['x-tenant'], forwardHeaders: ['x-route'] } },
    ]);
    node.origin.set('/r/list', { headers: { 'cache-control': 'max-age=60' }, body: 'list' });
    const hostile = {
      'x-forwarded-scheme': 'http',
      'x-forwarded-ssl': 'off',
      'x-url-scheme': 'http',
      'front-end-https': 'off',
      'x-forwarded-uri': '/evil',
      'x-forwarded-path': '/evil',
      'true-client-ip': '6.6.6.6',
      'cf-connecting-ip': '6.6.6.6',
      'x-original-url': '/evil',
      'x-forwarded-host': 'evil.example',
      'x-forwarded-proto': 'http',
      'user-agent': 'attacker',
      'x-anything': 'steer',
    };
    await raw(node, '/r/list?utm_source=<script>&page=2&sort=evil', {
      headers: { ...hostile, 'x-tenant': 't1', 'x-allowed': 'ok', 'x-route': 'route-ok', accept: 'text/html', 'accept-encoding': 'gzip, deflate, br' },
    });
    const seen = node.origin.requests[0]!;
    expect(seen.url).toBe('/r/list?page=2');
    for (const name of Object.keys(hostile)) {
      if (name.startsWith('x-forwarded-host') || name === 'x-forwarded-proto') continue;
      expect(seen.headers[name], name).toBeUndefined();
    }
    // The node's own forwarding values, never the client's.
    expect(seen.headers['x-forwarded-host']).toBe(`localhost:${node.edge.port}`);
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-tenant']).toBe('t1');
    expect(seen.headers['x-allowed']).toBe('ok');
    expect(seen.headers['x-route']).toBe('route-ok');
    expect(seen.headers.accept).toBe('text/html');
    // The negotiated coding, never the client's list: the variant holds what the origin was asked for.
    expect(seen.headers['accept-encoding']).toBe('br');
  });

  it('a fragment is neither keyed nor forwarded, and Host case shares the key', async () => {
    const node = await startNode();
    node.origin.set('/frag', { headers: { 'cache-control': 'max-age=60' }, body: 'f' });
    await raw(node, '/frag#section', { headers: { host: `127.0.0.1:${node.edge.port}` } });
    await node.edge.edge.settle();
    expect(node.origin.requests[0]!.url).toBe('/frag');
    const upper = await raw(node, '/frag', { headers: { host: `LOCALHOST:${node.edge.port}` } });
    await node.edge.edge.settle();
    const lower = await raw(node, '/frag', { headers: { host: `localhost.:${node.edge.port}` } });
    expect(header(upper, 'cache-status')).toMatch(/fwd=uri-miss/);
    expect(header(lower, 'cache-status')).toMatch(/hit/);
    expect(node.origin.requests[1]!.headers['x-forwarded-host']).toBe(`localhost:${node.edge.port}`);
  });

  it('/_edge/ spelled any other way is the node\'s, never the origin\'s', async () => {
    const node = await startNode();
    for (const path of ['/_EDGE/health', '//_edge/health', '/_edge%2fhealth', '/_Edge/purge']) {
      const answer = await raw(node, path);
      expect(answer.status, path).toBe(404);
      expect(JSON.parse(answer.body.toString()).error).toBe('EDGE_NOT_FOUND');
    }
    expect(node.origin.count()).toBe(0);
  });

  it('a header named in Connection is not sent, and the variant is the one the origin answered', async () => {
    const node = await startNode();
    node.origin.route('/lang', (req, res) => {
      res.setHeader('cache-control', 'max-age=60');
      res.setHeader('vary', 'Accept-Language');
      res.end(`lang=${req.headers['accept-language'] ?? 'none'}`);
    });
    // The attacker strips Accept-Language on the way in: the origin answers for "none"...
    const attack = await raw(node, '/lang', { headers: { connection: 'keep-alive, Accept-Language', 'accept-language': 'de' } });
    expect(attack.body.toString()).toBe('lang=none');
    await node.edge.edge.settle();
    // ...which is stored as the "none" variant, not as German.
    const victim = await raw(node, '/lang', { headers: { 'accept-language': 'de' } });
    expect(victim.body.toString()).toBe('lang=de');
  });
});

describe('requests with cookies', () => {
  it('are not answered from, nor stored as, a shared entry unless the origin says so explicitly', async () => {
    const node = await startNode();
    node.origin.route('/account/profile.json/x.css', (req, res) => {
      res.setHeader('cache-control', 'max-age=86400');
      res.end(`profile of ${req.headers.cookie ?? 'nobody'}`);
    });
    const victim = await raw(node, '/account/profile.json/x.css', { headers: { cookie: 'session=victim' } });
    expect(victim.body.toString()).toBe('profile of session=victim');
    await node.edge.edge.settle();
    const attacker = await raw(node, '/account/profile.json/x.css');
    expect(attacker.body.toString()).toBe('profile of nobody');
    // A plainly cacheable response stored for a cookie-less request does not answer one with cookies either.
    await node.edge.edge.settle();
    const second = await raw(node, '/account/profile.json/x.css', { headers: { cookie: 'session=other' } });
    expect(second.body.toString()).toBe('profile of session=other');
  });

  it('share what is explicitly public, and routes that drop cookies cache as usual', async () => {
    const node = await startNode({}, [{ match: { pathPrefix: '/static/' }, cache: { forwardCookies: false } }]);
    node.origin.route('/pub.css', (_req, res) => {
      res.setHeader('cache-control', 'public, max-age=60');
      res.end('public');
    });
    node.origin.route('/static/a.js', (req, res) => {
      res.setHeader('cache-control', 'max-age=60');
      res.end(`cookie=${req.headers.cookie ?? 'none'}`);
    });
    await raw(node, '/pub.css', { headers: { cookie: 'a=1' } });
    await node.edge.edge.settle();
    expect(header(await raw(node, '/pub.css', { headers: { cookie: 'b=2' } }), 'cache-status')).toMatch(/hit/);
    expect((await raw(node, '/static/a.js', { headers: { cookie: 'a=1' } })).body.toString()).toBe('cookie=none');
    await node.edge.edge.settle();
    expect(header(await raw(node, '/static/a.js', { headers: { cookie: 'b=2' } }), 'cache-status')).toMatch(/hit/);
  });
});

describe('one way out: the fresh-hit writer and the general path answer alike', () => {
  /**
   * The same request three ways: a plain Host (the fresh-hit writer), an
   * upper-case Host (Hono's router: same key, general path), and the
   * in-process Fetch entry point (what Workers runs).
   */
  async function threeWays(node: Node, path: string, headers: Record<string, string> = {}, method = 'GET') {
    const fast = await raw(node, path, { method, headers });
    const router = await raw(node, path, { method, headers: { ...headers, host: `LOCALHOST:${node.edge.port}` } });
    const inProcess = await node.edge.edge.fetch(new Request(`http://localhost:${node.edge.port}${path}`, { method, headers }));
    const fetched: Raw = { status: inProcess.status, headers: [...inProcess.headers], body: Buffer.from(await inProcess.arrayBuffer()) };
    return { fast, router, fetched };
  }

  /** Everything but what differs per request by design (the id, the clock), names sorted. */
  function comparable(answer: Raw) {
    const varying = new Set(['date', 'x-request-id', 'connection', 'keep-alive', 'transfer-encoding']);
    return {
      status: answer.status,
      headers: answer.headers.filter(([name]) => !varying.has(name)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
      body: answer.body.toString('base64'),
    };
  }

  function expectAlike(ways: Awaited<ReturnType<typeof threeWays>>, what: string) {
    expect(comparable(ways.router), `${what}: router`).toEqual(comparable(ways.fast));
    // Node adds no Date of its own on the Fetch path; the rest is the same.
    expect(comparable(ways.fetched), `${what}: fetch`).toEqual(comparable(ways.fast));
  }

  it('for GET, HEAD, If-None-Match, Range, a Vary entry, a pushed object and an image variant', async () => {
    const node = await startNode({ memorySize: '64MB' });
    const png = await sharp({ create: { width: 64, height: 48, channels: 3, background: '#3a6' } }).png().toBuffer();
    node.origin.set('/obj.txt', { headers: { 'cache-control': 'max-age=600', etag: '"v1"', 'content-type': 'text/plain', 'set-cookie': 'x=1' }, body: 'x'.repeat(3000) });
    node.origin.set('/plain.txt', { headers: { 'cache-control': 'max-age=600', etag: '"p1"', 'content-type': 'text/plain' }, body: 'plain body' });
    node.origin.route('/vary.txt', (req, res) => {
      res.setHeader('cache-control', 'max-age=600');
      res.setHeader('vary', 'Accept-Language');
      res.end(`hello ${req.headers['accept-language']}`);
    });
    node.origin.set('/img.png', { headers: { 'cache-control': 'max-age=600', 'content-type': 'image/png' }, body: png });
    await raw(node, '/plain.txt');
    await raw(node, '/vary.txt', { headers: { 'accept-language': 'fr' } });
    await raw(node, '/vary.txt', { headers: { 'accept-language': 'en' } });
    await raw(node, '/img.png?width=32&format=webp');
    const push = await raw(node, '/_edge/push/pushed.css', { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'text/css' }, body: 'body{}' });
    expect(push.status).toBe(201);
    await node.edge.edge.settle();

    expectAlike(await threeWays(node, '/plain.txt'), 'GET');
    expectAlike(await threeWays(node, '/plain.txt', {}, 'HEAD'), 'HEAD');
    const conditional = await threeWays(node, '/plain.txt', { 'if-none-match': '"p1"' });
    expect(conditional.fast.status).toBe(304);
    expectAlike(conditional, 'If-None-Match');
    const range = await threeWays(node, '/plain.txt', { range: 'bytes=2-5' });
    expect(range.fast.status).toBe(206);
    expect(range.fast.body.toString()).toBe('ain ');
    expectAlike(range, 'Range');
    const vary = await threeWays(node, '/vary.txt', { 'accept-language': 'en' });
    expect(vary.fast.body.toString()).toBe('hello en');
    expectAlike(vary, 'Vary');
    expectAlike(await threeWays(node, '/pushed.css'), 'pushed');
    const image = await threeWays(node, '/img.png?width=32&format=webp');
    expect(header(image.fast, 'content-type')).toBe('image/webp');
    expectAlike(image, 'image variant');

    // And each writer did answer: the plain-Host requests of stored entries took the hit writer.
    const byPath = (path: string) => node.records.filter((r) => r.path === path && r.outcome === 'hit');
    expect(byPath('/plain.txt').map((r) => r.answeredBy)).toContain('hit');
    expect(byPath('/plain.txt').map((r) => r.answeredBy)).toContain('router');
    expect(byPath('/pushed.css').map((r) => r.answeredBy)).toContain('hit');
    expect(byPath('/img.png?width=32&format=webp').map((r) => r.answeredBy)).toContain('hit');
  });

  it('answers disk-tier hits (memory tier off) on the hit writer too, after a restart', async () => {
    const node = await startNode({ memorySize: 0 });
    node.origin.set('/disk.bin', { headers: { 'cache-control': 'max-age=600' }, body: Buffer.alloc(100_000, 7) });
    await raw(node, '/disk.bin');
    await node.edge.edge.settle();
    const hit = await raw(node, '/disk.bin');
    expect(hit.body.equals(Buffer.alloc(100_000, 7))).toBe(true);
    expect(node.records.at(-1)).toMatchObject({ outcome: 'hit', tier: 'disk', answeredBy: 'hit', bytes: 100_000 });
  });
});

describe('observability', () => {
  it('logs one line per request with bytes, user agent, referer, request id and the full Cache-Status', async () => {
    const node = await startNode();
    node.origin.set('/log.txt', { headers: { 'cache-control': 'max-age=60', 'cache-status': 'shield; hit' }, body: 'logged' });
    const first = await raw(node, '/log.txt', { headers: { 'user-agent': 'tester/1', referer: 'https://ref.example/' } });
    await node.edge.edge.settle();
    const second = await raw(node, '/log.txt', { headers: { 'x-request-id': 'client-id-42' } });
    await node.edge.edge.settle();
    expect(header(first, 'x-request-id')).toMatch(/^[0-9a-f]{12}-[0-9a-z]+$/);
    expect(header(second, 'x-request-id')).toBeUndefined();
    const lines = node.records.filter((r) => r.path === '/log.txt');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({
      method: 'GET',
      status: 200,
      outcome: 'miss',
      bytes: 6,
      userAgent: 'tester/1',
      referer: 'https://ref.example/',
      requestId: header(first, 'x-request-id'),
      cacheStatus: 'shield; hit, edge; fwd=uri-miss; stored; ttl=60',
    });
    expect(lines[1]).toMatchObject({ outcome: 'hit', requestId: 'client-id-42', answeredBy: 'hit', cacheStatus: 'edge; hit; ttl=60' });
  });

  it('counts every request once in the metrics, whichever writer answered', async () => {
    const node = await startNode();
    node.origin.set('/m.txt', { headers: { 'cache-control': 'max-age=60' }, body: '12345' });
    await raw(node, '/m.txt');
    await node.edge.edge.settle();
    for (let i = 0; i < 3; i++) await raw(node, '/m.txt');
    await raw(node, '/m.txt', { headers: { host: `LOCALHOST:${node.edge.port}` } });
    const text = (await raw(node, '/_edge/metrics', { headers: { authorization: `Bearer ${TOKEN}` } })).body.toString();
    expect(text).toContain('edge_requests_total');
    expect(text).toMatch(/edge_requests_total\{outcome="hit",status="2xx"\} 4\n/);
    expect(text).toMatch(/edge_requests_total\{outcome="miss",status="2xx"\} 1\n/);
    expect(text).toMatch(/edge_response_body_bytes_total\{outcome="hit"\} 20\n/);
    expect(text).toMatch(/edge_request_duration_seconds_count\{outcome="hit"\} 4\n/);
    expect(text).toMatch(/edge_request_duration_seconds_bucket\{outcome="hit",le="\+Inf"\} 4\n/);
    expect(text).toMatch(/edge_origin_latency_seconds_count 1\n/);
  });
});

describe('Vary on list fields', () => {
  it('compares Accept-Language members after normalising case, order and whitespace', async () => {
    const node = await startNode();
    node.origin.route('/vary-list', (req, res) => {
      res.setHeader('cache-control', 'max-age=60');
      res.setHeader('vary', 'Accept-Language');
      res.end(`for ${req.headers['accept-language']}`);
    });
    await raw(node, '/vary-list', { headers: { 'accept-language': 'en-US, fr;q=0.5' } });
    await node.edge.edge.settle();
    for (const same of ['fr;q=0.5,EN-us', ' en-us ,  FR; q=0.5', 'fr ;q=0.5, en-US']) {
      expect(header(await raw(node, '/vary-list', { headers: { 'accept-language': same } }), 'cache-status'), same).toMatch(/hit/);
    }
    expect(header(await raw(node, '/vary-list', { headers: { 'accept-language': 'fr;q=0.9, en-US' } }), 'cache-status')).toMatch(/vary-miss/);
    expect(node.origin.count('/vary-list')).toBe(2);
  });
});
