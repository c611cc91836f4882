/**
 * Push mode and invalidation (issue 4), end to end: a real node with an
 * admin token in front of a real origin. Raw request targets go through
 * node:http (fetch resolves `..` before sending), and faults a client makes
 * (a dropped upload) are made with a real socket.
 */
import { createHash } from 'node:crypto';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const TOKEN = 'x'.repeat(32);
const AUTH = { authorization: `Bearer ${TOKEN}` };

let t: TestEdge;
afterEach(async () => {
  await t?.close();
});

/** A GET whose body is read, so no fill is left waiting on an unread response. */
async function fetched(path: string, init?: RequestInit): Promise<{ status: number; headers: Headers; body: string }> {
  const res = await t.get(path, init);
  return { status: res.status, headers: res.headers, body: await res.text() };
}

const sha256 = (body: string | Uint8Array) => createHash('sha256').update(body).digest('hex');

function pushObject(path: string, body: string | Uint8Array, headers: Record<string, string> = {}): Promise<Response> {
  return t.get(`/_edge/push${path}`, { method: 'PUT', body: body as BodyInit, headers: { ...AUTH, ...headers } });
}

function purge(body: unknown, headers: Record<string, string> = AUTH): Promise<Response> {
  return t.get('/_edge/purge', {
    method: 'POST',
    body: typeof body === 'string' ? body : JSON.stringify(body),
    headers: { 'content-type': 'application/json', ...headers },
  });
}

async function purged(body: unknown): Promise<number> {
  const res = await purge(body);
  expect(res.status).toBe(200);
  return (await res.json()).purged;
}

interface ListedObject {
  key: string;
  path: string;
  size: number;
  expiresAt: string;
  tags: string[];
  pushed: boolean;
  status: number;
  contentType: string | null;
  etag: string | null;
  invalidated: boolean;
}

async function listAll(query = ''): Promise<ListedObject[]> {
  const res = await t.get(`/_edge/objects?limit=1000${query}`, { headers: AUTH });
  expect(res.status).toBe(200);
  const page = await res.json();
  expect(page.next).toBeNull();
  return page.objects;
}

/** A JSON error answer with its code; returns the message. */
async function expectError(res: Response | RawResponse, status: number, code: string): Promise<string> {
  expect(res.status).toBe(status);
  const text = 'text' in res && typeof res.text === 'function' ? await res.text() : (res as RawResponse).body;
  const body = JSON.parse(text);
  expect(body.error).toBe(code);
  expect(typeof body.message).toBe('string');
  return body.message;
}

interface RawResponse {
  status: number;
  headers: IncomingMessage['headers'];
  body: string;
}

/** A request with the target exactly as given (no URL normalisation). */
function raw(
  method: string,
  path: string,
  options: { headers?: Record<string, string>; body?: string | Buffer; auth?: boolean } = {},
): Promise<RawResponse> {
  const { port } = t.edge;
  const headers = { ...(options.auth === false ? {} : AUTH), ...options.headers };
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Bytes straight onto a socket, for targets node:http refuses to send (raw NUL); resolves to the status code. */
function rawSocket(requestLine: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = connect(t.edge.port, '127.0.0.1', () => {
      socket.write(`${requestLine}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx`);
    });
    let received = '';
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('end', () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(received)?.[1] ?? 0)));
    socket.on('error', reject);
  });
}

/** GET with another Host header (a second site behind the same node). */
function getAs(host: string, path: string): Promise<RawResponse> {
  return raw('GET', path, { headers: { host }, auth: false });
}

const cacheable = (body: string, headers: Record<string, string> = {}) => ({
  headers: { 'content-type': 'text/css', 'cache-control': 'public, max-age=3600', ...headers },
  body,
});

describe('the admin API is off without a token', () => {
  it('answers 404 EDGE_ADMIN_DISABLED on every admin route and forwards nothing', async () => {
    t = await startTestEdge();
    await expectError(await pushObject('/a.css', 'a'), 404, 'EDGE_ADMIN_DISABLED');
    await expectError(await t.get('/_edge/push/a.css', { method: 'DELETE', headers: AUTH }), 404, 'EDGE_ADMIN_DISABLED');
    await expectError(await purge({ all: true }), 404, 'EDGE_ADMIN_DISABLED');
    const message = await expectError(await t.get('/_edge/objects', { headers: AUTH }), 404, 'EDGE_ADMIN_DISABLED');
    expect(message).toMatch(/--admin-token/);
    expect(t.origin.requests).toEqual([]);
  });
});

describe('authentication', () => {
  const wrong: [string, Record<string, string>][] = [
    ['no Authorization header', {}],
    ['a wrong token of the same length', { authorization: `Bearer ${'y'.repeat(32)}` }],
    ['a prefix of the token', { authorization: `Bearer ${TOKEN.slice(0, 31)}` }],
    ['the token with extra characters', { authorization: `Bearer ${TOKEN}x` }],
    ['another scheme', { authorization: `Basic ${TOKEN}` }],
    ['an empty bearer', { authorization: 'Bearer ' }],
  ];

  for (const [name, headers] of wrong) {
    it(`answers 401 with WWW-Authenticate for ${name}, and changes nothing`, async () => {
      t = await startTestEdge({ adminToken: TOKEN });
      expect((await pushObject('/keep.css', 'original')).status).toBe(201);
      t.origin.set('/pulled.css', cacheable('pulled'));
      await (await t.get('/pulled.css')).text();

      const calls = [
        t.get('/_edge/push/keep.css', { method: 'PUT', body: 'replaced', headers }),
        t.get('/_edge/push/new.css', { method: 'PUT', body: 'new', headers }),
        t.get('/_edge/push/keep.css', { method: 'DELETE', headers }),
        purge({ all: true }, headers),
        t.get('/_edge/objects', { headers }),
      ];
      for (const res of await Promise.all(calls)) {
        await expectError(res, 401, 'EDGE_UNAUTHORIZED');
        expect(res.headers.get('www-authenticate')).toMatch(/^Bearer /);
      }

      const kept = await t.get('/keep.css');
      expect(await kept.text()).toBe('original');
      expect((await fetched('/pulled.css')).headers.get('cache-status')).toMatch(/hit/);
      const listed = await listAll();
      expect(listed.map((o) => o.path).sort()).toEqual(['/keep.css', '/pulled.css']);
      expect(t.origin.count('/new.css')).toBe(0);
    });
  }

  it('accepts the scheme name in any case', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const res = await pushObject('/a.css', 'a', { authorization: `bearer ${TOKEN}` });
    expect(res.status).toBe(201);
  });
});

describe('PUT /_edge/push/<path>', () => {
  it('stores the object and serves it with ETag, 304 and Range, never asking the origin', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const body = 'body { color: rebeccapurple }';
    const res = await pushObject('/assets/app.css', body, { 'content-type': 'text/css; charset=utf-8' });
    expect(res.status).toBe(201);
    const etag = `"${sha256(body)}"`;
    expect(await res.json()).toEqual({ key: '/assets/app.css push:', path: '/assets/app.css', size: body.length, etag });

    t.clock.advance(10_000);
    const get = await t.get('/assets/app.css');
    expect(get.status).toBe(200);
    expect(await get.text()).toBe(body);
    expect(get.headers.get('etag')).toBe(etag);
    expect(get.headers.get('content-type')).toBe('text/css; charset=utf-8');
    expect(get.headers.get('cache-control')).toBe('public, max-age=31536000');
    expect(get.headers.get('last-modified')).toBe(new Date(t.clock.now() - 10_000).toUTCString());
    expect(get.headers.get('age')).toBe('10');
    expect(get.headers.get('cache-status')).toMatch(/^edge; hit; ttl=\d+; detail=pushed$/);

    const notModified = await t.get('/assets/app.css', { headers: { 'if-none-match': etag } });
    expect(notModified.status).toBe(304);
    expect(await notModified.text()).toBe('');

    const range = await t.get('/assets/app.css', { headers: { range: 'bytes=5-9' } });
    expect(range.status).toBe(206);
    expect(range.headers.get('content-range')).toBe(`bytes 5-9/${body.length}`);
    expect(await range.text()).toBe(body.slice(5, 10));

    const head = await t.get('/assets/app.css', { method: 'HEAD' });
    expect(head.headers.get('etag')).toBe(etag);
    expect(head.headers.get('content-length')).toBe(String(body.length));

    // Any query string, any host: the pushed object answers.
    expect(await (await t.get('/assets/app.css?v=123')).text()).toBe(body);
    expect((await getAs('cdn.example', '/assets/app.css')).body).toBe(body);
    expect(t.origin.requests).toEqual([]);
  });

  it('stores Cache-Control and Cache-Tag from the upload, and defaults the content type', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    // Bytes, so fetch adds no Content-Type of its own.
    const res = await pushObject('/bin/blob', new Uint8Array([98]), { 'cache-control': 'public, max-age=600', 'cache-tag': 'release-7, bin ,release-7' });
    expect(res.status).toBe(201);
    const get = await t.get('/bin/blob');
    expect(get.headers.get('content-type')).toBe('application/octet-stream');
    expect(get.headers.get('cache-control')).toBe('public, max-age=600');
    expect(get.headers.get('cache-tag')).toBeNull();
    await get.text();
    const [listed] = await listAll();
    expect(listed).toMatchObject({ path: '/bin/blob', tags: ['release-7', 'bin'], pushed: true, status: 200, size: 1 });

    // Pushed objects live until they expire; then the pull path takes over.
    t.clock.advance(601_000);
    const expired = await t.get('/bin/blob');
    expect(expired.status).toBe(404);
    expect(t.origin.count('/bin/blob')).toBe(1);
  });

  it('adds the push TTL when Cache-Control names no lifetime, and honours targeted fields', async () => {
    t = await startTestEdge({ adminToken: TOKEN, pushTtl: 3600 });
    expect((await pushObject('/immutable.js', 'i', { 'cache-control': 'public, immutable' })).status).toBe(201);
    expect((await fetched('/immutable.js')).headers.get('cache-control')).toBe('public, immutable, max-age=3600');

    // Browsers revalidate every time; the edge keeps it a day.
    const html = await pushObject('/index.html', '<!doctype html>', { 'cache-control': 'no-cache', 'cdn-cache-control': 'max-age=86400' });
    expect(html.status).toBe(201);
    const get = await t.get('/index.html');
    expect(get.headers.get('cache-control')).toBe('no-cache');
    expect(get.headers.get('cdn-cache-control')).toBeNull();
    expect(get.headers.get('cache-status')).toMatch(/detail=pushed/);
    await get.text();
    expect(t.origin.requests).toEqual([]);
  });

  it('refuses a Cache-Control that would leave the object never fresh at the edge', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    for (const cacheControl of ['no-store', 'max-age=0', 'no-cache', 'private, max-age=60']) {
      const message = await expectError(await pushObject('/never.css', 'n', { 'cache-control': cacheControl }), 400, 'EDGE_BAD_REQUEST');
      expect(message).toMatch(/Cache-Control/);
    }
    expect(await listAll()).toEqual([]);
  });

  it('replaces an object by pushing again', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const first = await (await pushObject('/r.js', 'version 1', { 'cache-tag': 'old' })).json();
    t.clock.advance(1000);
    const second = await (await pushObject('/r.js', 'version 2!', { 'cache-tag': 'new' })).json();
    expect(second.etag).not.toBe(first.etag);
    const get = await t.get('/r.js', { headers: { 'if-none-match': first.etag } });
    expect(get.status).toBe(200);
    expect(await get.text()).toBe('version 2!');
    expect(get.headers.get('etag')).toBe(second.etag);
    const listed = await listAll();
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({ size: 10, tags: ['new'], etag: second.etag });
    // The old tag no longer selects it.
    expect(await purged({ tags: ['old'] })).toBe(0);
  });

  it('replaces atomically: a reader gets the old or the new body whole, never a mix', async () => {
    t = await startTestEdge({ adminToken: TOKEN, memorySize: 0 });
    // Several disk chunks each, so a mix would be visible.
    const versions = ['a', 'b', 'c', 'd'].map((ch) => ch.repeat(1024 * 1024));
    expect((await pushObject('/big.bin', versions[0]!)).status).toBe(201);
    const reads: Promise<string | Error>[] = [];
    for (const version of versions.slice(1)) {
      for (let i = 0; i < 3; i++) reads.push(t.get('/big.bin').then((r) => r.text(), (e: Error) => e).catch((e: Error) => e));
      expect((await pushObject('/big.bin', version)).status).toBe(201);
    }
    for (const result of await Promise.all(reads)) {
      if (result instanceof Error) continue; // cut off because the body was replaced under it: never spliced
      expect(versions).toContain(result);
    }
    expect(await (await t.get('/big.bin')).text()).toBe(versions[3]);
  });

  it('drops image variants made from the previous version', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const png = (background: string) => sharp({ create: { width: 40, height: 20, channels: 3, background } }).png().toBuffer();
    expect((await pushObject('/img/logo.png', await png('red'), { 'content-type': 'image/png' })).status).toBe(201);
    const small = await t.get('/img/logo.png?width=10&format=png');
    expect(small.status).toBe(200);
    await small.arrayBuffer();
    await t.settle();
    expect((await listAll()).filter((o) => o.key.includes('#img:'))).toHaveLength(1);

    expect((await pushObject('/img/logo.png', await png('blue'), { 'content-type': 'image/png' })).status).toBe(201);
    expect((await listAll()).filter((o) => o.key.includes('#img:'))).toHaveLength(0);
    const again = await t.get('/img/logo.png?width=10&format=png');
    const { channels } = await sharp(Buffer.from(await again.arrayBuffer())).stats();
    expect(channels[2]!.mean).toBeGreaterThan(200); // blue: made from the new version
    expect(t.origin.requests).toEqual([]);
  });
});

describe('DELETE /_edge/push/<path>', () => {
  it('removes a pushed object (204), then answers 404, and the path falls back to the origin', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    await pushObject('/gone.css', 'pushed');
    t.origin.set('/gone.css', cacheable('from origin'));
    const del = await t.get('/_edge/push/gone.css', { method: 'DELETE', headers: AUTH });
    expect(del.status).toBe(204);
    expect(await del.text()).toBe('');
    expect(await (await t.get('/gone.css')).text()).toBe('from origin');
    expect(t.origin.count('/gone.css')).toBe(1);

    const again = await t.get('/_edge/push/gone.css', { method: 'DELETE', headers: AUTH });
    expect(await expectError(again, 404, 'EDGE_NOT_FOUND')).toMatch(/\/gone\.css/);
    // The pulled copy is not a pushed object: DELETE leaves it alone.
    expect((await fetched('/gone.css')).headers.get('cache-status')).toMatch(/hit/);
  });

  it('answers 405 with Allow for other methods on push paths', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const res = await t.get('/_edge/push/a.css', { headers: AUTH });
    await expectError(res, 405, 'EDGE_METHOD_NOT_ALLOWED');
    expect(res.headers.get('allow')).toBe('PUT, DELETE');
    expect(t.origin.requests).toEqual([]);
  });
});

describe('push keys are confined', () => {
  const bad: [string, string, RegExp][] = [
    ['dot-dot inside the push space', '/_edge/push/a/../b.css', /dot segment/],
    ['dot-dot climbing out of it', '/_edge/push/a/../../../etc/passwd', /climbs out/],
    ['encoded dot-dot', '/_edge/push/a/%2e%2e/b.css', /dot segment/],
    ['encoded dot-dot, upper case, climbing out', '/_edge/push/%2E%2E/%2E%2E/x', /climbs out/],
    ['mixed encoded dot-dot', '/_edge/push/a/.%2E/b', /dot segment/],
    ['a single dot segment', '/_edge/push/a/./b', /dot segment/],
    ['an encoded NUL', '/_edge/push/a%00b.css', /NUL/],
    ['an encoded backslash', '/_edge/push/a%5Cb.css', /backslash/],
    ['an encoded slash', '/_edge/push/a%2fb.css', /encoded slash/],
    ['an empty segment', '/_edge/push/a//b.css', /empty segment/],
    ['an empty path', '/_edge/push/', /empty path/],
    ['no path at all', '/_edge/push', /empty path/],
    ['the reserved /_edge/ space', '/_edge/push/_edge/health', /reserved/],
    ['the reserved space, encoded', '/_edge/push/%5Fedge/x', /reserved/],
    ['a query string', '/_edge/push/a.css?v=1', /query/],
    ['malformed percent-encoding', '/_edge/push/a%zz.css', /percent-encoding/],
    ['an escape that is not UTF-8', '/_edge/push/a%ff.css', /UTF-8/],
    ['an over-long path', `/_edge/push/${'a'.repeat(1500)}`, /limit is/],
  ];

  for (const [name, target, message] of bad) {
    it(`refuses ${name} with 400 EDGE_BAD_KEY, for PUT and DELETE`, async () => {
      t = await startTestEdge({ adminToken: TOKEN });
      const put = await raw('PUT', target, { body: 'evil' });
      expect(await expectError(put, 400, 'EDGE_BAD_KEY')).toMatch(message);
      const del = await raw('DELETE', target);
      expect(await expectError(del, 400, 'EDGE_BAD_KEY')).toMatch(message);
      expect(await listAll()).toEqual([]);
      expect(t.origin.requests).toEqual([]);
    });
  }

  it('still asks for the token first', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const res = await raw('PUT', '/_edge/push/a/../../x', { body: 'evil', auth: false });
    await expectError(res, 401, 'EDGE_UNAUTHORIZED');
    expect(t.origin.requests).toEqual([]);
  });

  it('refuses raw backslashes and raw NUL bytes with 400 before any routing', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    expect((await raw('PUT', '/_edge/push/a\\b.css', { body: 'evil' })).status).toBe(400);
    expect(await rawSocket('PUT /_edge/push/a\u0000b.css HTTP/1.1')).toBe(400);
    expect(await listAll()).toEqual([]);
    expect(t.origin.requests).toEqual([]);
  });

  it('accepts the longest allowed path and serves it', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const { MAX_PUSH_PATH_LENGTH } = await import('../edge/core/admin.js');
    const path = '/' + 'p'.repeat(MAX_PUSH_PATH_LENGTH - 1);
    expect((await pushObject(path, 'long')).status).toBe(201);
    expect(await (await t.get(path)).text()).toBe('long');
    await expectError(await pushObject(path + 'p', 'longer'), 400, 'EDGE_BAD_KEY');
  });
});

describe('upload size and failed uploads', () => {
  it('answers 413 for a Content-Length over --max-upload-size and keeps the previous version', async () => {
    t = await startTestEdge({ adminToken: TOKEN, maxUploadSize: 1024 });
    expect((await pushObject('/s.bin', 'v1')).status).toBe(201);
    expect((await pushObject('/exact.bin', 'e'.repeat(1024))).status).toBe(201);

    const res = await raw('PUT', '/_edge/push/s.bin', { body: Buffer.alloc(1025, 1) });
    expect(await expectError(res, 413, 'EDGE_PAYLOAD_TOO_LARGE')).toMatch(/1024/);
    expect(await (await t.get('/s.bin')).text()).toBe('v1');
  });

  it('answers 413 for a chunked upload that grows past the limit while streaming, and stores nothing', async () => {
    t = await startTestEdge({ adminToken: TOKEN, maxUploadSize: 1024 });
    expect((await pushObject('/s.bin', 'v1')).status).toBe(201);
    // No real-time watchdog: a node that never answers fails the test on its timeout.
    const status = await new Promise<number>((resolve) => {
      const req = httpRequest(
        { host: '127.0.0.1', port: t.edge.port, method: 'PUT', path: '/_edge/push/s.bin', headers: { ...AUTH, 'transfer-encoding': 'chunked' } },
        (res) => {
          res.resume();
          resolve(res.statusCode!);
        },
      );
      req.on('error', () => {}); // the node closes the connection after its 413; late writes may fail
      const chunk = Buffer.alloc(600, 2);
      req.write(chunk);
      req.write(chunk, () => req.end());
    });
    expect(status).toBe(413);
    expect(await (await t.get('/s.bin')).text()).toBe('v1');
    expect((await listAll()).map((o) => o.path)).toEqual(['/s.bin']);
  });

  for (const framing of ['content-length', 'chunked'] as const) {
    it(`stores nothing when the client drops the upload half-way (${framing}), and keeps the previous version`, async () => {
      t = await startTestEdge({ adminToken: TOKEN });
      expect((await pushObject('/drop.bin', 'v1')).status).toBe(201);

      const arrived = new Promise<IncomingMessage>((resolve) => t.edge.server.once('request', resolve));
      const req = httpRequest({
        host: '127.0.0.1',
        port: t.edge.port,
        method: 'PUT',
        path: '/_edge/push/drop.bin',
        headers: { ...AUTH, ...(framing === 'chunked' ? { 'transfer-encoding': 'chunked' } : { 'content-length': '100000' }) },
      });
      req.on('error', () => {});
      req.write(Buffer.alloc(10_000, 3));
      const incoming = await arrived;
      const closed = new Promise((resolve) => incoming.once('close', resolve));
      req.destroy();
      await closed;
      await t.settle();

      const get = await t.get('/drop.bin');
      expect(await get.text()).toBe('v1');
      const listed = await listAll();
      expect(listed).toHaveLength(1);
      expect(listed[0]).toMatchObject({ size: 2, etag: `"${sha256('v1')}"` });
      // A push after the failure works as usual.
      expect((await pushObject('/drop.bin', 'v2')).status).toBe(201);
      expect(await (await t.get('/drop.bin')).text()).toBe('v2');
    });
  }
});

describe('POST /_edge/purge', () => {
  it('soft-purges a pushed object: the path goes to the origin until pushed again', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    expect((await pushObject('/sp.css', 'pushed', { 'cache-tag': 'sp' })).status).toBe(201);
    t.origin.set('/sp.css', cacheable('origin copy'));
    expect(await purged({ tags: ['sp'], soft: true })).toBe(1);
    expect((await fetched('/sp.css')).body).toBe('origin copy');
    expect((await pushObject('/sp.css', 'pushed v2')).status).toBe(201);
    expect((await fetched('/sp.css')).body).toBe('pushed v2');
  });

  it('purges by path on every host, by absolute URL on one host, with the pull path\'s query normalisation', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    for (const path of ['/p/a.css', '/p/b.css', '/p/c.css', '/p/q.css']) t.origin.set(path, cacheable(path));
    await (await t.get('/p/a.css')).text();
    await getAs('other.example', '/p/a.css');
    await (await t.get('/p/b.css')).text();
    await (await t.get('/p/c.css')).text();
    await getAs('other.example', '/p/c.css');
    await (await t.get('/p/q.css?v=1&utm_source=mail')).text();
    await pushObject('/p/pushed.css', 'pushed');
    const before = t.origin.count();

    expect(await purged({ urls: ['/p/a.css'] })).toBe(2);
    expect(await purged({ urls: [`http://other.example/p/c.css`] })).toBe(1);
    // Ignored parameters dropped, the rest sorted: the same key as the request above.
    expect(await purged({ urls: ['/p/q.css?utm_campaign=x&v=1'] })).toBe(1);
    expect(await purged({ urls: ['/p/pushed.css', '/p/never-seen.css'] })).toBe(1);

    expect((await fetched('/p/a.css')).headers.get('cache-status')).toMatch(/uri-miss/);
    expect((await fetched('/p/b.css')).headers.get('cache-status')).toMatch(/hit/);
    expect((await fetched('/p/c.css')).headers.get('cache-status')).toMatch(/hit/);
    expect((await getAs('other.example', '/p/c.css')).headers['cache-status']).toMatch(/uri-miss/);
    expect((await fetched('/p/q.css?v=1')).headers.get('cache-status')).toMatch(/uri-miss/);
    const pushed = await t.get('/p/pushed.css');
    expect(pushed.status).toBe(404); // gone from the edge; the origin has no such file
    expect(t.origin.count() - before).toBe(4);
  });

  it('purges by path prefix on every host, and by URL prefix on one host', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    for (const path of ['/assets/a.css', '/assets/sub/b.js', '/other/c.css', '/h/x.css']) t.origin.set(path, cacheable(path));
    await (await t.get('/assets/a.css')).text();
    await (await t.get('/assets/sub/b.js')).text();
    await (await t.get('/other/c.css')).text();
    await (await t.get('/h/x.css')).text();
    await getAs('other.example', '/h/x.css');
    await pushObject('/assets/pushed.css', 'p');

    expect(await purged({ prefixes: ['/assets/'] })).toBe(3);
    expect((await listAll()).map((o) => o.path).sort()).toEqual(['/h/x.css', '/h/x.css', '/other/c.css']);
    expect(await purged({ prefixes: ['http://other.example/h/'] })).toBe(1);
    expect((await fetched('/h/x.css')).headers.get('cache-status')).toMatch(/hit/);
    expect((await getAs('other.example', '/h/x.css')).headers['cache-status']).toMatch(/uri-miss/);
    expect((await fetched('/assets/pushed.css')).status).toBe(404);
  });

  it('purges by tag: pulled objects tagged by the origin and pushed objects tagged at upload', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/t/pulled.css', cacheable('pulled', { 'cache-tag': 'release-1, css' }));
    t.origin.set('/t/keyed.js', cacheable('keyed', { 'surrogate-key': 'js release-1' }));
    t.origin.set('/t/other.css', cacheable('other', { 'cache-tag': 'release-2' }));
    for (const path of ['/t/pulled.css', '/t/keyed.js', '/t/other.css']) await (await t.get(path)).text();
    await pushObject('/t/pushed.css', 'pushed', { 'cache-tag': 'release-1' });

    expect(await purged({ tags: ['release-1'] })).toBe(3);
    expect((await listAll()).map((o) => o.path)).toEqual(['/t/other.css']);
    expect((await fetched('/t/pulled.css')).headers.get('cache-status')).toMatch(/uri-miss/);
    expect((await fetched('/t/pushed.css')).status).toBe(404);
    expect(await purged({ tags: ['no-such-tag'] })).toBe(0);
  });

  it('purges everything, pushed objects included', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/x.css', cacheable('x'));
    await (await t.get('/x.css')).text();
    await pushObject('/y.css', 'y');
    await pushObject('/z.css', 'z');
    expect(await purged({ all: true })).toBe(3);
    expect(await listAll()).toEqual([]);
    expect((await fetched('/x.css')).headers.get('cache-status')).toMatch(/uri-miss/);
    expect((await fetched('/y.css')).status).toBe(404);
    expect(t.origin.count('/y.css')).toBe(1);
  });

  it('takes image variants along with their source', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const png = await sharp({ create: { width: 40, height: 20, channels: 3, background: 'green' } }).png().toBuffer();
    t.origin.set('/img/photo.png', { headers: { 'content-type': 'image/png', 'cache-control': 'public, max-age=3600' }, body: png });
    await (await t.get('/img/photo.png')).arrayBuffer();
    await (await t.get('/img/photo.png?width=10&format=png')).arrayBuffer();
    await (await t.get('/img/photo.png?width=20&format=png')).arrayBuffer();
    await t.settle();
    expect((await listAll()).filter((o) => o.key.includes('#img:'))).toHaveLength(2);
    expect(await purged({ urls: ['/img/photo.png'] })).toBe(3);
    expect(await listAll()).toEqual([]);
  });

  it('soft-purges: entries stay, and the next request revalidates with the origin (304)', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/s.css', [
      { headers: { 'cache-control': 'public, max-age=3600', etag: '"v1"', 'cache-tag': 'soft' }, body: 'soft body' },
      { status: 304, headers: { 'cache-control': 'public, max-age=3600', etag: '"v1"' } },
    ]);
    await (await t.get('/s.css')).text();
    expect((await fetched('/s.css')).headers.get('cache-status')).toMatch(/hit/);

    expect(await purged({ tags: ['soft'], soft: true })).toBe(1);
    const listed = await listAll();
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({ path: '/s.css', invalidated: true });

    const revalidated = await t.get('/s.css');
    expect(await revalidated.text()).toBe('soft body');
    expect(revalidated.headers.get('cache-status')).toMatch(/fwd=stale; fwd-status=304/);
    expect(t.origin.count('/s.css')).toBe(2);
    expect(t.origin.requests[1]!.headers['if-none-match']).toBe('"v1"');
    expect((await fetched('/s.css')).headers.get('cache-status')).toMatch(/hit/);
    expect((await listAll())[0]).toMatchObject({ invalidated: false });
    expect(t.origin.count('/s.css')).toBe(2);
  });

  it('soft-purges by URL and prefix too', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    for (const path of ['/soft/a.css', '/soft/b.css']) {
      t.origin.set(path, [cacheable(path, { etag: '"e"' }), { status: 304, headers: { etag: '"e"', 'cache-control': 'max-age=60' } }]);
      await (await t.get(path)).text();
    }
    expect(await purged({ urls: ['/soft/a.css'], soft: true })).toBe(1);
    expect(await purged({ prefixes: ['/soft/'], soft: true })).toBe(2);
    for (const path of ['/soft/a.css', '/soft/b.css']) {
      const res = await t.get(path);
      expect(await res.text()).toBe(path);
      expect(res.headers.get('cache-status')).toMatch(/fwd-status=304/);
    }
  });

  it('deletes and purges long keys (more than 63 bytes on disk) like short ones', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const long = `/static/js/vendor/${'x'.repeat(60)}.js`;
    t.origin.set(long, cacheable('pulled'));
    await (await t.get(long)).text();
    await pushObject(`${long}.map`, 'pushed');
    await pushObject(`${long}.gz`, 'pushed');
    expect(await purged({ urls: [long] })).toBe(1);
    expect((await t.get(`/_edge/push${long}.map`, { method: 'DELETE', headers: AUTH })).status).toBe(204);
    expect(await purged({ prefixes: ['/static/js/'] })).toBe(1);
    expect(await listAll()).toEqual([]);
  });

  const badBodies: [string, string, RegExp][] = [
    ['malformed JSON', '{"urls": [', /Malformed JSON/],
    ['an empty body', '', /Malformed JSON/],
    ['an unknown field', JSON.stringify({ urls: ['/a'], everything: true }), /unknown field "everything"/],
    ['no selector', JSON.stringify({ soft: true }), /exactly one of/],
    ['two selectors', JSON.stringify({ urls: ['/a'], tags: ['t'] }), /exactly one of .*"urls", "tags"/],
    ['a string instead of a list', JSON.stringify({ urls: '/a' }), /^Bad purge request: urls: /],
    ['an empty list', JSON.stringify({ tags: [] }), /tags: /],
    ['all: false', JSON.stringify({ all: false }), /all: /],
    ['a non-boolean soft', JSON.stringify({ all: true, soft: 'yes' }), /soft: /],
    ['a JSON array', JSON.stringify(['/a']), /Bad purge request/],
    ['a URL that is neither a path nor http(s)', JSON.stringify({ urls: ['/ok', 'ftp://x/a'] }), /urls\[1\]: .*not an http\(s\) URL/],
    ['a relative path', JSON.stringify({ prefixes: ['assets/'] }), /prefixes\[0\]: .*neither a path/],
  ];
  for (const [name, body, message] of badBodies) {
    it(`answers 400 EDGE_BAD_REQUEST naming the problem for ${name}, and purges nothing`, async () => {
      t = await startTestEdge({ adminToken: TOKEN });
      await pushObject('/keep.css', 'k');
      expect(await expectError(await purge(body), 400, 'EDGE_BAD_REQUEST')).toMatch(message);
      expect(await listAll()).toHaveLength(1);
    });
  }

  it('answers 405 for GET /_edge/purge', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const res = await t.get('/_edge/purge', { headers: AUTH });
    await expectError(res, 405, 'EDGE_METHOD_NOT_ALLOWED');
    expect(res.headers.get('allow')).toBe('POST');
  });
});

describe('GET /_edge/objects', () => {
  it('lists keys with size, expiry, tags and type, a page at a time', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const paths = ['/list/a.css', '/list/b.css', '/list/c/d.js', '/list/e.txt', '/list/f.svg'];
    for (const path of paths) expect((await pushObject(path, path, { 'cache-tag': 'listed', 'content-type': 'text/plain' })).status).toBe(201);
    t.origin.set('/list/pulled.css', cacheable('pulled', { 'cache-tag': 'origin-tag' }));
    t.origin.set('/elsewhere.css', cacheable('elsewhere'));
    await (await t.get('/list/pulled.css')).text();
    await (await t.get('/elsewhere.css')).text();

    const all = await listAll('&prefix=/list/');
    expect(all.map((o) => o.path)).toEqual([...paths.slice(0, 4), '/list/f.svg', '/list/pulled.css'].sort());
    const pushed = all.find((o) => o.path === '/list/a.css')!;
    expect(pushed).toMatchObject({
      key: '/list/a.css push:',
      size: '/list/a.css'.length,
      tags: ['listed'],
      pushed: true,
      status: 200,
      contentType: 'text/plain',
      etag: `"${sha256('/list/a.css')}"`,
    });
    expect(pushed.expiresAt).toBe(new Date(t.clock.now() + 31_536_000_000).toISOString());
    const pulled = all.find((o) => o.path === '/list/pulled.css')!;
    expect(pulled).toMatchObject({ key: `/list/pulled.css http://127.0.0.1:${t.edge.port}`, pushed: false, tags: ['origin-tag'], contentType: 'text/css' });
    expect((await listAll('&pushed=true')).map((o) => o.path)).toEqual([...paths].sort());
    expect(await listAll('&prefix=/nothing/')).toEqual([]);

    // Pages of two, chained by cursor, cover everything once and in order.
    const seen: string[] = [];
    let cursor: string | null = '';
    let pages = 0;
    while (cursor !== null) {
      const res = await t.get(`/_edge/objects?limit=2${cursor ? `&cursor=${cursor}` : ''}`, { headers: AUTH });
      expect(res.status).toBe(200);
      const page: { objects: ListedObject[]; next: string | null } = await res.json();
      expect(page.objects.length).toBeLessThanOrEqual(2);
      seen.push(...page.objects.map((o) => o.key));
      cursor = page.next;
      pages++;
    }
    expect(pages).toBe(4);
    expect(seen).toHaveLength(7);
    expect(seen).toEqual([...seen].sort());
    expect(new Set(seen).size).toBe(7);
    // A default page holds up to 100.
    expect((await (await t.get('/_edge/objects', { headers: AUTH })).json()).objects).toHaveLength(7);
  });

  it('refuses bad limits and cursors with 400', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    for (const query of ['limit=0', 'limit=1001', 'limit=ten', 'limit=-1', 'cursor=***', 'cursor=_w', 'pushed=yes']) {
      await expectError(await t.get(`/_edge/objects?${query}`, { headers: AUTH }), 400, 'EDGE_BAD_REQUEST');
    }
    expect((await fetched('/_edge/objects?limit=1000', { headers: AUTH })).status).toBe(200);
  });
});

describe('pushed objects and the disk tier', () => {
  it('persist across a restart and are served without the origin', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const { etag } = await (await pushObject('/persist/app.js', 'console.log(1)', { 'cache-tag': 'keep' })).json();
    await t.restart();
    const get = await t.get('/persist/app.js');
    expect(get.headers.get('cache-status')).toMatch(/detail=pushed/);
    expect(get.headers.get('etag')).toBe(etag);
    expect(await get.text()).toBe('console.log(1)');
    expect(t.origin.requests).toEqual([]);
    // The tag index survived too.
    expect(await purged({ tags: ['keep'] })).toBe(1);
    expect((await fetched('/persist/app.js')).status).toBe(404);
  });

  it('are not evicted by pull-mode pressure', async () => {
    t = await startTestEdge({ adminToken: TOKEN, memorySize: 0, diskSize: '1MiB' });
    expect((await pushObject('/pinned.css', 'p'.repeat(10_000))).status).toBe(201);
    const body = 'o'.repeat(200 * 1024);
    for (let i = 0; i < 30; i++) {
      // Not a compressible type: stored at full size, so the bytes press on the disk tier.
      t.origin.set(`/pull/${i}`, cacheable(body, { 'content-type': 'application/octet-stream' }));
      await (await t.get(`/pull/${i}`)).text();
    }
    await t.settle();
    await (t.edge.store as unknown as { settled(): Promise<void> }).settled();
    // Pressure happened: about 6 MiB pulled into a 1 MiB disk tier.
    expect(t.edge.store.stats().bytes).toBeLessThanOrEqual(1024 * 1024);
    expect((await fetched('/pull/0')).headers.get('cache-status')).toMatch(/uri-miss/);

    const pinned = await t.get('/pinned.css');
    expect(pinned.headers.get('cache-status')).toMatch(/detail=pushed/);
    expect((await pinned.text()).length).toBe(10_000);
    expect(t.origin.count('/pinned.css')).toBe(0);
  });

  it('are evicted like pulled objects when --evict-pushed is set', async () => {
    t = await startTestEdge({ adminToken: TOKEN, memorySize: 0, diskSize: '1MiB', evictPushed: true });
    expect((await pushObject('/unpinned.css', 'p'.repeat(10_000))).status).toBe(201);
    t.origin.set('/unpinned.css', cacheable('from the origin'));
    const body = 'o'.repeat(200 * 1024);
    for (let i = 0; i < 30; i++) {
      // Not a compressible type: stored at full size, so the bytes press on the disk tier.
      t.origin.set(`/pull/${i}`, cacheable(body, { 'content-type': 'application/octet-stream' }));
      await (await t.get(`/pull/${i}`)).text();
    }
    await t.settle();
    await (t.edge.store as unknown as { settled(): Promise<void> }).settled();
    const after = await fetched('/unpinned.css');
    expect(after.body).toBe('from the origin');
    expect(t.origin.count('/unpinned.css')).toBe(1);
  });
});
