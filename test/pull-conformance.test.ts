/**
 * Pull mode against the RFCs, one behaviour per test, in the areas where
 * shared caches differ most (issue 2, "Conformance"): freshness and age,
 * revalidation and 304 merging, no-cache / must-revalidate, the RFC 5861
 * stale extensions, Vary, client validators and ranges answered from
 * cache, invalidation by unsafe methods, RFC 9213 targeted fields, 103
 * Early Hints, request collapsing, the cache key, forwarding headers and
 * client Cache-Control directives.
 *
 * Every test runs a real test origin and a real node; time moves only
 * through the injected clock (`advance`), never by sleeping. Origin
 * responses are dated with that clock (see `set`), as a real origin in
 * sync with the node would date them.
 */
import { request as httpRequest, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { createTestClock } from './helpers/clock.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { createGate, setDated, type OriginResponseSpec } from './helpers/origin.js';

let t: TestEdge;
/** The test clock's start, on a whole second so HTTP-dates are exact. */
let t0: number;

afterEach(async () => {
  await t?.close();
});

async function start(options: Record<string, unknown> = {}): Promise<TestEdge> {
  t0 = Math.floor(Date.now() / 1000) * 1000;
  t = await startTestEdge(options, { clock: createTestClock(t0) });
  return t;
}

const httpDate = (ms: number) => new Date(ms).toUTCString();
/** The HTTP-date `seconds` after the start of the test clock (negative: before). */
const at = (seconds: number) => httpDate(t0 + seconds * 1000);
/** Move the node's clock forward. */
const advance = (seconds: number) => t.clock.advance(seconds * 1000);

/** Script `path` on the origin, each answer dated with the node's clock. */
const set = (path: string, spec: OriginResponseSpec | OriginResponseSpec[]) => setDated(t.origin, t.clock.now, path, spec);

/** An origin route answering from the request (Vary, forwarding), dated with the node's clock. */
function echo(path: string, headers: Record<string, string>, body: (req: { headers: IncomingHttpHeaders }) => string): void {
  t.origin.route(path, (req, res: ServerResponse) => {
    res.setHeader('date', httpDate(t.clock.now()));
    for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
    res.end(body(req));
  });
}

interface RawAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
  informational: { status: number; headers: IncomingHttpHeaders }[];
}

/**
 * One request to the node with `node:http`, on its own connection. Not
 * `fetch`: it rewrites requests the way a browser cache would (a
 * conditional or If-Range request gets `Cache-Control: no-cache`, and it
 * adds Accept-Language / Accept-Encoding), and it hides 1xx responses.
 */
function raw(path: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const informational: RawAnswer['informational'] = [];
    const req = httpRequest(
      { host: '127.0.0.1', port: t.edge.port, path, method: init.method ?? 'GET', headers: init.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => {
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            rawHeaders: res.rawHeaders,
            body: Buffer.concat(chunks).toString(),
            informational,
          });
          // No keep-alive socket left behind to hold up the node's shutdown.
          req.destroy();
        });
      },
    );
    req.on('information', (info) => informational.push({ status: info.statusCode, headers: info.headers }));
    req.on('error', reject);
    req.end(init.body);
  });
}

interface Answer {
  status: number;
  /** Repeated fields joined with `, `, as a client library would show them. */
  headers: Headers;
  body: string;
}

/** A request through the node (GET unless `method`), body read. */
async function get(path: string, headers: Record<string, string> = {}, init: { method?: string; body?: string } = {}): Promise<Answer> {
  const answer = await raw(path, { headers, ...init });
  const joined = new Headers();
  for (let i = 0; i < answer.rawHeaders.length; i += 2) joined.append(answer.rawHeaders[i]!, answer.rawHeaders[i + 1]!);
  return { status: answer.status, headers: joined, body: answer.body };
}

/** Origin requests for `path`, in order. */
const originRequests = (path: string) => t.origin.requests.filter((r) => r.url === path || r.path === path);

describe('freshness (RFC 9111 4.2)', () => {
  it('takes s-maxage over max-age over Expires', async () => {
    await start();
    set('/s-long', { headers: { 'cache-control': 'max-age=10, s-maxage=100', expires: at(5) }, body: 's' });
    set('/s-short', { headers: { 'cache-control': 'max-age=100, s-maxage=10', expires: at(1000) }, body: 's' });
    set('/m-long', { headers: { 'cache-control': 'max-age=100', expires: at(10) }, body: 'm' });
    set('/m-short', { headers: { 'cache-control': 'max-age=10', expires: at(1000) }, body: 'm' });
    set('/e', { headers: { expires: at(100) }, body: 'e' });
    const paths = ['/s-long', '/s-short', '/m-long', '/m-short', '/e'];

    const first = await Promise.all(paths.map((p) => get(p)));
    expect(first.map((a) => a.headers.get('cache-status'))).toEqual([
      'edge; fwd=uri-miss; stored; ttl=100',
      'edge; fwd=uri-miss; stored; ttl=10',
      'edge; fwd=uri-miss; stored; ttl=100',
      'edge; fwd=uri-miss; stored; ttl=10',
      'edge; fwd=uri-miss; stored; ttl=100',
    ]);

    advance(50);
    const mid = await Promise.all(paths.map((p) => get(p)));
    expect(mid.map((a) => a.headers.get('cache-status'))).toEqual([
      'edge; hit; ttl=50',
      expect.not.stringMatching(/hit/),
      'edge; hit; ttl=50',
      expect.not.stringMatching(/hit/),
      'edge; hit; ttl=50',
    ]);
    expect(paths.map((p) => t.origin.count(p))).toEqual([1, 2, 1, 2, 1]);

    advance(51);
    const late = await Promise.all(['/s-long', '/m-long', '/e'].map((p) => get(p)));
    for (const answer of late) expect(answer.headers.get('cache-status')).not.toMatch(/hit/);
    expect(['/s-long', '/m-long', '/e'].map((p) => t.origin.count(p))).toEqual([2, 2, 2]);
  });

  it('treats an invalid Expires ("0", garbage) as already expired, unless max-age is present', async () => {
    await start();
    const invalid = ['0', 'garbage', '-1'];
    for (const [i, expires] of invalid.entries()) {
      set(`/x${i}`, [
        { headers: { expires, etag: `"x${i}"` }, body: `body ${i}` },
        { status: 304, headers: { expires, etag: `"x${i}"` } },
      ]);
    }
    set('/with-max-age', { headers: { expires: '0', 'cache-control': 'max-age=60' }, body: 'fresh' });

    for (const [i, expires] of invalid.entries()) {
      const first = await get(`/x${i}`);
      expect(first.body).toBe(`body ${i}`);
      // Stored (it has a validator) but stale on arrival: every use goes to the origin.
      const second = await get(`/x${i}`);
      expect(second.body).toBe(`body ${i}`);
      expect(second.headers.get('cache-status'), `Expires: ${expires}`).toMatch(/^edge; fwd=stale; fwd-status=304/);
      expect(t.origin.count(`/x${i}`)).toBe(2);
      expect(originRequests(`/x${i}`)[1]!.headers['if-none-match']).toBe(`"x${i}"`);
    }

    await get('/with-max-age');
    advance(30);
    expect((await get('/with-max-age')).headers.get('cache-status')).toBe('edge; hit; ttl=30');
    expect(t.origin.count('/with-max-age')).toBe(1);
  });

  it('gives heuristic freshness of 10% of Date - Last-Modified', async () => {
    await start();
    set('/lm', [
      { headers: { 'last-modified': at(-10_000) }, body: 'heuristic' },
      { status: 304, headers: { 'last-modified': at(-10_000) } },
    ]);
    const first = await get('/lm');
    expect(first.headers.get('cache-status')).toBe('edge; fwd=uri-miss; stored; ttl=1000');
    advance(900);
    const hit = await get('/lm');
    expect(hit.headers.get('cache-status')).toBe('edge; hit; ttl=100');
    expect(hit.headers.get('age')).toBe('900');
    expect(t.origin.count('/lm')).toBe(1);

    advance(200);
    const stale = await get('/lm');
    expect(stale.body).toBe('heuristic');
    expect(stale.headers.get('cache-status')).toMatch(/^edge; fwd=stale; fwd-status=304/);
    expect(originRequests('/lm')[1]!.headers['if-modified-since']).toBe(at(-10_000));
  });

  it('bounds heuristic freshness by the heuristicMaxAge option', async () => {
    await start({ heuristicMaxAge: 100 });
    set('/old', { headers: { 'last-modified': at(-30 * 86_400) }, body: 'old' });
    expect((await get('/old')).headers.get('cache-status')).toBe('edge; fwd=uri-miss; stored; ttl=100');
    advance(99);
    expect((await get('/old')).headers.get('cache-status')).toBe('edge; hit; ttl=1');
    advance(2);
    expect((await get('/old')).headers.get('cache-status')).not.toMatch(/hit/);
    expect(t.origin.count('/old')).toBe(2);
  });

  it('uses heuristics only for heuristically cacheable statuses', async () => {
    await start();
    // 204 has its own test below.
    const heuristic = [200, 203, 300, 301, 308, 404, 405, 410, 414, 501];
    const explicitOnly = [302, 303, 307];
    for (const status of [...heuristic, ...explicitOnly]) {
      set(`/status/${status}`, { status, headers: { 'last-modified': at(-1000) }, body: `status ${status}` });
    }
    for (const status of [...heuristic, ...explicitOnly]) {
      const first = await get(`/status/${status}`);
      expect(first.status).toBe(status);
    }
    advance(10);
    for (const status of heuristic) {
      const again = await get(`/status/${status}`);
      expect(again.status).toBe(status);
      expect(again.headers.get('cache-status'), `status ${status}`).toBe('edge; hit; ttl=90');
      expect(again.headers.get('age')).toBe('10');
      expect(again.body).toBe(`status ${status}`);
      expect(t.origin.count(`/status/${status}`)).toBe(1);
    }
    for (const status of explicitOnly) {
      const again = await get(`/status/${status}`);
      expect(again.status).toBe(status);
      expect(again.headers.get('cache-status'), `status ${status}`).not.toMatch(/hit/);
      expect(t.origin.count(`/status/${status}`), `status ${status} is not reused without explicit freshness`).toBe(2);
    }
  });

  it('reuses a 204 (heuristically or explicitly fresh), and its cache fill settles', async () => {
    await start();
    set('/nc-204', { status: 204, headers: { 'last-modified': at(-1000) } });
    set('/ma-204', { status: 204, headers: { 'cache-control': 'max-age=60' } });
    for (const path of ['/nc-204', '/ma-204']) {
      const first = await get(path);
      expect(first.status).toBe(204);
      expect(first.headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss; stored/);
    }
    // A fill that never completes would keep followers waiting and the node
    // from shutting down: settle() would never resolve (the test then fails
    // on its timeout instead of on a real-time watchdog).
    expect(await t.settle().then(() => 'settled')).toBe('settled');
    advance(10);
    for (const path of ['/nc-204', '/ma-204']) {
      const again = await get(path);
      expect(again.status).toBe(204);
      expect(again.body).toBe('');
      expect(again.headers.get('cache-status'), path).toMatch(/^edge; hit/);
      expect(t.origin.count(path)).toBe(1);
    }
  });

  it('reuses a 302/307 and a 404 that carry explicit freshness', async () => {
    await start();
    set('/found', { status: 302, headers: { location: '/elsewhere', 'cache-control': 'max-age=60' } });
    set('/temp', { status: 307, headers: { location: '/elsewhere', 'cache-control': 'max-age=60' } });
    set('/missing', { status: 404, headers: { 'cache-control': 'max-age=60', 'content-type': 'text/plain' }, body: 'not here' });
    for (const path of ['/found', '/temp', '/missing']) await get(path);
    advance(1);
    const found = await get('/found');
    expect(found.status).toBe(302);
    expect(found.headers.get('location')).toBe('/elsewhere');
    expect(found.headers.get('cache-status')).toBe('edge; hit; ttl=59');
    expect((await get('/temp')).headers.get('cache-status')).toBe('edge; hit; ttl=59');
    const missing = await get('/missing');
    expect(missing.status).toBe(404);
    expect(missing.body).toBe('not here');
    expect(missing.headers.get('cache-status')).toBe('edge; hit; ttl=59');
    expect(missing.headers.get('age')).toBe('1');
    expect(t.origin.count()).toBe(3);
  });

  it('ignores an invalid Age from the origin', async () => {
    await start();
    const invalid = ['12abc', '-5', '1.5', 'soon'];
    for (const [i, age] of invalid.entries()) set(`/age${i}`, { headers: { 'cache-control': 'max-age=60', age }, body: 'a' });
    for (const [i] of invalid.entries()) await get(`/age${i}`);
    advance(5);
    for (const [i, age] of invalid.entries()) {
      const hit = await get(`/age${i}`);
      expect(hit.headers.get('cache-status'), `Age: ${age}`).toBe('edge; hit; ttl=55');
      expect(hit.headers.get('age'), `Age: ${age}`).toBe('5');
    }
  });

  it('counts an upstream Age toward the age of the stored response', async () => {
    await start();
    set('/aged', { headers: { 'cache-control': 'max-age=60', age: '30' }, body: 'aged' });
    set('/too-old', { headers: { 'cache-control': 'max-age=60', age: '100' }, body: 'old' });
    expect((await get('/aged')).headers.get('cache-status')).toBe('edge; fwd=uri-miss; stored; ttl=30');
    advance(10);
    const hit = await get('/aged');
    expect(hit.headers.get('age')).toBe('40');
    expect(hit.headers.get('cache-status')).toBe('edge; hit; ttl=20');
    advance(21);
    expect((await get('/aged')).headers.get('cache-status')).not.toMatch(/hit/);
    expect(t.origin.count('/aged')).toBe(2);

    // Older than its lifetime on arrival: never served as fresh.
    await get('/too-old');
    expect((await get('/too-old')).headers.get('cache-status')).not.toMatch(/hit/);
    expect(t.origin.count('/too-old')).toBe(2);
  });

  it('counts the apparent age from a Date in the past (RFC 9111 4.2.3)', async () => {
    await start();
    set('/dated', { headers: { 'cache-control': 'max-age=60', date: at(-30) }, body: 'dated' });
    await get('/dated');
    const hit = await get('/dated');
    expect(hit.headers.get('cache-status')).toBe('edge; hit; ttl=30');
    expect(hit.headers.get('age')).toBe('30');
    advance(31);
    expect((await get('/dated')).headers.get('cache-status')).not.toMatch(/hit/);
  });

  it('sends Age on every answer from the cache', async () => {
    await start();
    set('/every', [
      { headers: { 'cache-control': 'max-age=10, stale-while-revalidate=60', etag: '"e"' }, body: '0123456789' },
      { status: 304, headers: { etag: '"e"', 'cache-control': 'max-age=10, stale-while-revalidate=60' } },
    ]);
    await get('/every');
    advance(3);
    expect((await get('/every')).headers.get('age')).toBe('3');
    expect((await get('/every', { 'if-none-match': '"e"' })).headers.get('age')).toBe('3');
    expect((await get('/every', { range: 'bytes=0-1' })).headers.get('age')).toBe('3');
    expect((await get('/every', {}, { method: 'HEAD' })).headers.get('age')).toBe('3');
    advance(10);
    const stale = await get('/every');
    expect(stale.headers.get('cache-status')).toMatch(/detail=stale-while-revalidate/);
    expect(stale.headers.get('age')).toBe('13');
  });
});

describe('revalidation (RFC 9111 4.3)', () => {
  it('revalidates a stale entry with If-None-Match; a 304 keeps the body, merges headers and extends freshness', async () => {
    await start();
    set('/r', [
      {
        headers: { 'content-type': 'text/plain', 'cache-control': 'max-age=10', expires: at(10), etag: '"v1"', 'x-old': 'kept' },
        body: 'stored body',
      },
      { status: 304, headers: { 'cache-control': 'max-age=100', expires: at(120), etag: '"v1"', 'x-new': 'merged' } },
    ]);
    await get('/r');
    advance(20);
    const revalidated = await get('/r');
    expect(revalidated.status).toBe(200);
    expect(revalidated.body).toBe('stored body');
    expect(revalidated.headers.get('cache-status')).toBe('edge; fwd=stale; fwd-status=304; ttl=100');
    expect(revalidated.headers.get('cache-control')).toBe('max-age=100');
    expect(revalidated.headers.get('expires')).toBe(at(120));
    expect(revalidated.headers.get('x-new')).toBe('merged');
    expect(revalidated.headers.get('x-old')).toBe('kept');
    expect(revalidated.headers.get('etag')).toBe('"v1"');
    expect(revalidated.headers.get('content-type')).toBe('text/plain');
    expect(revalidated.headers.get('content-length')).toBe('11');
    expect(revalidated.headers.get('age')).toBe('0');
    expect(originRequests('/r')[1]!.headers['if-none-match']).toBe('"v1"');

    // The new freshness (max-age=100 from the 304) holds.
    advance(50);
    const hit = await get('/r');
    expect(hit.headers.get('cache-status')).toBe('edge; hit; ttl=50');
    expect(hit.body).toBe('stored body');
    expect(hit.headers.get('x-new')).toBe('merged');
    expect(hit.headers.get('cache-control')).toBe('max-age=100');
    expect(t.origin.count('/r')).toBe(2);

    advance(60);
    expect((await get('/r')).headers.get('cache-status')).toMatch(/^edge; fwd=stale; fwd-status=304/);
    expect(t.origin.count('/r')).toBe(3);
  });

  it('revalidates with If-Modified-Since when only Last-Modified is known', async () => {
    await start();
    set('/lm-only', [
      { headers: { 'cache-control': 'max-age=10', 'last-modified': at(-3600) }, body: 'by date' },
      { status: 304, headers: { 'cache-control': 'max-age=10', 'last-modified': at(-3600) } },
    ]);
    await get('/lm-only');
    advance(20);
    const answer = await get('/lm-only');
    expect(answer.body).toBe('by date');
    expect(answer.headers.get('cache-status')).toBe('edge; fwd=stale; fwd-status=304; ttl=10');
    const conditional = originRequests('/lm-only')[1]!;
    expect(conditional.headers['if-modified-since']).toBe(at(-3600));
    expect(conditional.headers['if-none-match']).toBeUndefined();
  });

  it('joins multi-valued headers with ", " and does not rewrite stored values, before and after a 304', async () => {
    await start();
    set('/multi', [
      {
        headers: {
          'cache-control': 'public,max-age=10',
          etag: 'W/"weak-1"',
          expires: 'Thu, 01 Dec 1994 16:00:00 GMT',
          'x-multi': ['a', 'b'],
          link: ['</a.css>; rel=preload', '</b.js>; rel=preload'],
        },
        body: 'multi',
      },
      { status: 304, headers: { etag: 'W/"weak-1"', 'x-multi': ['c', 'd'] } },
    ]);
    await get('/multi');
    const hit = await get('/multi');
    expect(hit.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(hit.headers.get('x-multi')).toBe('a, b');
    expect(hit.headers.get('link')).toBe('</a.css>; rel=preload, </b.js>; rel=preload');
    expect(hit.headers.get('cache-control')).toBe('public,max-age=10');
    expect(hit.headers.get('etag')).toBe('W/"weak-1"');
    expect(hit.headers.get('expires')).toBe('Thu, 01 Dec 1994 16:00:00 GMT');

    advance(20);
    const merged = await get('/multi');
    expect(merged.headers.get('cache-status')).toMatch(/^edge; fwd=stale; fwd-status=304/);
    expect(merged.body).toBe('multi');
    expect(merged.headers.get('x-multi')).toBe('c, d');
    expect(merged.headers.get('link')).toBe('</a.css>; rel=preload, </b.js>; rel=preload');
    expect(merged.headers.get('cache-control')).toBe('public,max-age=10');
    expect(merged.headers.get('etag')).toBe('W/"weak-1"');
    expect(merged.headers.get('expires')).toBe('Thu, 01 Dec 1994 16:00:00 GMT');
    expect(originRequests('/multi')[1]!.headers['if-none-match']).toBe('W/"weak-1"');
  });

  it('replaces the stored body when revalidation answers 200', async () => {
    await start();
    set('/replace', [
      { headers: { 'cache-control': 'max-age=10', etag: '"v1"' }, body: 'version one' },
      { headers: { 'cache-control': 'max-age=10', etag: '"v2"' }, body: 'version two' },
    ]);
    await get('/replace');
    advance(20);
    const fresh = await get('/replace');
    expect(fresh.body).toBe('version two');
    expect(fresh.headers.get('cache-status')).toBe('edge; fwd=stale; fwd-status=200; stored; ttl=10');
    expect(fresh.headers.get('etag')).toBe('"v2"');
    expect(originRequests('/replace')[1]!.headers['if-none-match']).toBe('"v1"');
    advance(1);
    const hit = await get('/replace');
    expect(hit.body).toBe('version two');
    expect(hit.headers.get('cache-status')).toBe('edge; hit; ttl=9');
    expect(t.origin.count('/replace')).toBe(2);
  });
});

describe('no-cache, unknown directives, must-revalidate', () => {
  it('stores a no-cache response and revalidates it on every use', async () => {
    await start();
    set('/nc', [
      { headers: { 'cache-control': 'no-cache, max-age=60', etag: '"n1"' }, body: 'revalidate me' },
      { status: 304, headers: { 'cache-control': 'no-cache, max-age=60', etag: '"n1"' } },
    ]);
    const first = await get('/nc');
    expect(first.headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss; stored/);
    for (let use = 2; use <= 3; use++) {
      const answer = await get('/nc');
      expect(answer.status).toBe(200);
      expect(answer.body).toBe('revalidate me');
      expect(answer.headers.get('cache-status')).toMatch(/^edge; fwd=stale; fwd-status=304/);
      expect(t.origin.count('/nc')).toBe(use);
      expect(originRequests('/nc')[use - 1]!.headers['if-none-match']).toBe('"n1"');
    }
  });

  it('drops the fields named by a qualified no-cache="..." and reuses the rest without revalidating', async () => {
    await start();
    set('/qualified', {
      headers: { 'cache-control': 'max-age=60, no-cache="X-Secret, x-other"', 'x-secret': 's3cr3t', 'x-other': 'o', 'x-public': 'ok' },
      body: 'shared part',
    });
    const first = await get('/qualified');
    expect(first.headers.get('x-secret')).toBe('s3cr3t');
    const hit = await get('/qualified');
    expect(hit.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(hit.body).toBe('shared part');
    expect(hit.headers.get('x-public')).toBe('ok');
    expect(hit.headers.get('x-secret')).toBeNull();
    expect(hit.headers.get('x-other')).toBeNull();
    expect(t.origin.count('/qualified')).toBe(1);
  });

  it('ignores unknown Cache-Control directives', async () => {
    await start();
    set('/unknown', { headers: { 'cache-control': 'x-made-up, max-age=60, foo="bar, no-store", community=UCI' }, body: 'u' });
    await get('/unknown');
    expect((await get('/unknown')).headers.get('cache-status')).toBe('edge; hit; ttl=60');
    expect(t.origin.count('/unknown')).toBe(1);
  });

  for (const directive of ['must-revalidate', 'proxy-revalidate']) {
    it(`${directive}: serves fresh from cache, never serves stale on an origin error`, async () => {
      await start({ staleGrace: 3600 });
      const cc = `max-age=10, stale-if-error=3600, ${directive}`;
      set('/err', [{ headers: { 'cache-control': cc, etag: '"m"' }, body: 'good' }, { status: 500, body: 'origin broke' }]);
      set('/down', { headers: { 'cache-control': cc, etag: '"m"' }, body: 'good' });
      set('/swr', [
        { headers: { 'cache-control': `max-age=10, stale-while-revalidate=600, ${directive}`, etag: '"m"' }, body: 'good' },
        { status: 304, headers: { 'cache-control': `max-age=10, stale-while-revalidate=600, ${directive}`, etag: '"m"' } },
      ]);
      for (const path of ['/err', '/down', '/swr']) await get(path);

      advance(5);
      for (const path of ['/err', '/down', '/swr']) {
        const fresh = await get(path);
        expect(fresh.headers.get('cache-status'), path).toBe('edge; hit; ttl=5');
        expect(t.origin.count(path)).toBe(1);
      }

      advance(15);
      const err = await get('/err');
      expect(err.status).toBe(500);
      expect(err.body).toBe('origin broke');

      // stale-while-revalidate does not apply either: the revalidation is synchronous.
      const swr = await get('/swr');
      expect(swr.headers.get('cache-status')).toBe('edge; fwd=stale; fwd-status=304; ttl=10');
      expect(t.origin.count('/swr')).toBe(2);

      await t.origin.close();
      const down = await get('/down');
      expect(down.status).toBe(502);
      expect(JSON.parse(down.body).error).toBe('EDGE_ORIGIN_UNREACHABLE');
    });
  }
});

describe('stale-while-revalidate (RFC 5861 3)', () => {
  it('serves stale at once within the window, makes exactly one background refresh, then serves the new content', async () => {
    await start();
    // The refresh is answered only once every stale request has been answered.
    const refresh = createGate();
    set('/swr', [
      { headers: { 'cache-control': 'max-age=10, stale-while-revalidate=60', etag: '"v1"' }, body: 'v1' },
      { headers: { 'cache-control': 'max-age=10, stale-while-revalidate=60', etag: '"v2"' }, body: 'v2', gate: refresh },
    ]);
    await get('/swr');
    advance(20);
    const stale = await Promise.all(Array.from({ length: 5 }, () => get('/swr')));
    const more = await get('/swr');
    for (const answer of [...stale, more]) {
      expect(answer.status).toBe(200);
      expect(answer.body).toBe('v1');
      expect(answer.headers.get('cache-status')).toBe('edge; hit; ttl=-10; detail=stale-while-revalidate');
      expect(answer.headers.get('age')).toBe('20');
    }
    refresh.open();
    await t.settle();
    expect(t.origin.count('/swr')).toBe(2);
    expect(originRequests('/swr')[1]!.headers['if-none-match']).toBe('"v1"');

    const refreshed = await get('/swr');
    expect(refreshed.body).toBe('v2');
    expect(refreshed.headers.get('cache-status')).toBe('edge; hit; ttl=10');
    expect(t.origin.count('/swr')).toBe(2);
  });

  it('revalidates synchronously beyond the window', async () => {
    await start();
    set('/swr-late', [
      { headers: { 'cache-control': 'max-age=10, stale-while-revalidate=60', etag: '"v1"' }, body: 'v1' },
      { headers: { 'cache-control': 'max-age=10, stale-while-revalidate=60', etag: '"v2"' }, body: 'v2' },
    ]);
    await get('/swr-late');
    advance(80);
    const answer = await get('/swr-late');
    expect(answer.body).toBe('v2');
    expect(answer.headers.get('cache-status')).toBe('edge; fwd=stale; fwd-status=200; stored; ttl=10');
    expect(t.origin.count('/swr-late')).toBe(2);
  });
});

describe('stale-if-error (RFC 5861 4) and the stale grace period', () => {
  for (const status of [500, 503]) {
    it(`serves stale on an origin ${status} within the window, and passes the ${status} through beyond it`, async () => {
      await start();
      set('/sie', [
        { headers: { 'cache-control': 'max-age=10, stale-if-error=60', etag: '"s"' }, body: 'good' },
        { status, headers: { 'content-type': 'text/plain' }, body: 'bad' },
      ]);
      await get('/sie');
      advance(20);
      const stale = await get('/sie');
      expect(stale.status).toBe(200);
      expect(stale.body).toBe('good');
      expect(stale.headers.get('cache-status')).toBe(`edge; fwd=stale; fwd-status=${status}; detail=stale-if-error`);
      expect(stale.headers.get('age')).toBe('20');

      advance(80);
      const failed = await get('/sie');
      expect(failed.status).toBe(status);
      expect(failed.body).toBe('bad');
    });
  }

  for (const fault of ['is unreachable', 'drops the connection'] as const) {
    it(`serves stale when the origin ${fault} within the window, and answers 502 beyond it`, async () => {
      await start();
      const good: OriginResponseSpec = { headers: { 'cache-control': 'max-age=10, stale-if-error=60', etag: '"s"' }, body: 'good' };
      set('/sie', fault === 'is unreachable' ? good : [good, { destroy: true }]);
      await get('/sie');
      if (fault === 'is unreachable') await t.origin.close();
      advance(20);
      const stale = await get('/sie');
      expect(stale.status).toBe(200);
      expect(stale.body).toBe('good');
      expect(stale.headers.get('cache-status')).toBe('edge; fwd=stale; detail=stale-if-error');

      advance(80);
      const failed = await get('/sie');
      expect(failed.status).toBe(502);
      expect(JSON.parse(failed.body).error).toBe('EDGE_ORIGIN_UNREACHABLE');
    });
  }

  it('staleGrace serves stale without the directive when the origin is down or answers 5xx', async () => {
    await start({ staleGrace: 60 });
    set('/grace', { headers: { 'cache-control': 'max-age=10', etag: '"g"' }, body: 'graceful' });
    set('/grace-503', [{ headers: { 'cache-control': 'max-age=10', etag: '"g"' }, body: 'graceful' }, { status: 503, body: 'busy' }]);
    await get('/grace');
    await get('/grace-503');
    advance(20);
    const on503 = await get('/grace-503');
    expect(on503.body).toBe('graceful');
    expect(on503.headers.get('cache-status')).toBe('edge; fwd=stale; fwd-status=503; detail=stale-if-error');

    await t.origin.close();
    const down = await get('/grace');
    expect(down.status).toBe(200);
    expect(down.body).toBe('graceful');
    expect(down.headers.get('cache-status')).toBe('edge; fwd=stale; detail=stale-if-error');

    advance(80);
    const beyond = await get('/grace');
    expect(beyond.status).toBe(502);
    expect(JSON.parse(beyond.body).error).toBe('EDGE_ORIGIN_UNREACHABLE');
  });

  it('without staleGrace or the directive, an unreachable origin is a 502 even with a stale entry', async () => {
    await start();
    set('/no-grace', { headers: { 'cache-control': 'max-age=10', etag: '"g"' }, body: 'stale' });
    await get('/no-grace');
    await t.origin.close();
    advance(20);
    const answer = await get('/no-grace');
    expect(answer.status).toBe(502);
  });
});

describe('Vary (RFC 9111 4.1)', () => {
  it('stores one variant per value of the named request header', async () => {
    await start();
    echo('/v', { 'cache-control': 'max-age=60', vary: 'Accept-Language' }, (req) => `lang=${req.headers['accept-language'] ?? ''}`);
    const en = await get('/v', { 'accept-language': 'en' });
    expect(en.body).toBe('lang=en');
    expect(en.headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss; stored/);
    const fr = await get('/v', { 'accept-language': 'fr' });
    expect(fr.body).toBe('lang=fr');
    expect(fr.headers.get('cache-status')).toMatch(/^edge; fwd=vary-miss; stored/);
    expect(t.origin.count('/v')).toBe(2);

    const enHit = await get('/v', { 'accept-language': 'en' });
    const frHit = await get('/v', { 'accept-language': 'fr' });
    expect([enHit.body, frHit.body]).toEqual(['lang=en', 'lang=fr']);
    expect(enHit.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(frHit.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(t.origin.count('/v')).toBe(2);
  });

  it('matches on every header named in Vary', async () => {
    await start();
    echo(
      '/v2',
      { 'cache-control': 'max-age=60', vary: 'Accept-Language, Accept-Encoding' },
      (req) => `${req.headers['accept-language']}|${req.headers['accept-encoding']}`,
    );
    const ask = (lang: string, enc: string) => get('/v2', { 'accept-language': lang, 'accept-encoding': enc });
    expect((await ask('en', 'gzip')).body).toBe('en|gzip');
    expect((await ask('en', 'br')).body).toBe('en|br');
    expect((await ask('fr', 'gzip')).body).toBe('fr|gzip');
    expect(t.origin.count('/v2')).toBe(3);
    const hits = [await ask('en', 'gzip'), await ask('en', 'br'), await ask('fr', 'gzip')];
    expect(hits.map((h) => h.body)).toEqual(['en|gzip', 'en|br', 'fr|gzip']);
    for (const hit of hits) expect(hit.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(t.origin.count('/v2')).toBe(3);
  });

  it('reads Vary names case-insensitively, with odd whitespace and over several field lines', async () => {
    await start();
    echo('/v3', { 'cache-control': 'max-age=60', vary: 'accept-language ,  ACCEPT' }, (req) => `${req.headers['accept-language']}|${req.headers.accept}`);
    t.origin.route('/v4', (req, res) => {
      res.setHeader('date', httpDate(t.clock.now()));
      res.setHeader('cache-control', 'max-age=60');
      res.setHeader('vary', ['Accept-Language', 'ACCEPT']);
      res.end(`${req.headers['accept-language']}|${req.headers.accept}`);
    });
    for (const path of ['/v3', '/v4']) {
      const ask = (lang: string, accept: string) => get(path, { 'accept-language': lang, accept });
      expect((await ask('en', 'text/html')).body).toBe('en|text/html');
      const hit = await ask('en', 'text/html');
      expect(hit.headers.get('cache-status'), path).toMatch(/^edge; hit/);
      expect(hit.body).toBe('en|text/html');
      expect((await ask('en', 'application/json')).body).toBe('en|application/json');
      expect((await ask('fr', 'text/html')).body).toBe('fr|text/html');
      expect(t.origin.count(path), path).toBe(3);
    }
  });

  it('never serves a Vary: * response from cache', async () => {
    await start();
    set('/star', { headers: { 'cache-control': 'max-age=60', vary: '*' }, body: 'star' });
    set('/star-listed', { headers: { 'cache-control': 'max-age=60', vary: 'Accept, *' }, body: 'star' });
    for (const path of ['/star', '/star-listed']) {
      await get(path);
      const again = await get(path);
      expect(again.body).toBe('star');
      expect(again.headers.get('cache-status'), path).not.toMatch(/hit/);
      expect(t.origin.count(path), path).toBe(2);
    }
  });
});

describe('client validators answered from cache (RFC 9110 13)', () => {
  it('answers 304 from a fresh entry for matching If-None-Match / If-Modified-Since, 200 otherwise, without asking the origin', async () => {
    await start();
    set('/cond', { headers: { 'cache-control': 'max-age=60', etag: '"abc"', 'last-modified': at(-3600) }, body: 'conditional' });
    set('/weak', { headers: { 'cache-control': 'max-age=60', etag: 'W/"w1"' }, body: 'weak' });
    await get('/cond');
    await get('/weak');

    const notModified: Record<string, string>[] = [
      { 'if-none-match': '"abc"' },
      { 'if-none-match': '"x", "abc", "y"' },
      { 'if-none-match': 'W/"abc"' },
      { 'if-none-match': '*' },
      { 'if-modified-since': at(0) },
      { 'if-modified-since': at(-3600) },
    ];
    for (const headers of notModified) {
      const answer = await get('/cond', headers);
      expect(answer.status, JSON.stringify(headers)).toBe(304);
      expect(answer.body).toBe('');
      expect(answer.headers.get('etag')).toBe('"abc"');
      expect(answer.headers.get('cache-status')).toMatch(/^edge; hit/);
      expect(answer.headers.get('age')).toBe('0');
    }
    const weak = await get('/weak', { 'if-none-match': '"w1"' });
    expect(weak.status).toBe(304);

    const full: Record<string, string>[] = [
      { 'if-none-match': '"nope"' },
      { 'if-none-match': '"nope"', 'if-modified-since': at(0) },
      { 'if-modified-since': at(-7200) },
    ];
    for (const headers of full) {
      const answer = await get('/cond', headers);
      expect(answer.status, JSON.stringify(headers)).toBe(200);
      expect(answer.body).toBe('conditional');
      expect(answer.headers.get('cache-status')).toMatch(/^edge; hit/);
    }
    expect(t.origin.count()).toBe(2);
  });

  it('does not forward client validators on a miss: the origin sends the full body to fill the cache', async () => {
    await start();
    set('/cond-miss', { headers: { 'cache-control': 'max-age=60', etag: '"abc"' }, body: 'filled' });
    const first = await get('/cond-miss', { 'if-none-match': '"abc"' });
    expect(first.status).toBe(304);
    expect(originRequests('/cond-miss')[0]!.headers['if-none-match']).toBeUndefined();
    await t.settle();
    const hit = await get('/cond-miss');
    expect(hit.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(hit.body).toBe('filled');
    expect(t.origin.count('/cond-miss')).toBe(1);
  });
});

describe('Range from a stored full response (RFC 9110 14)', () => {
  it('answers single ranges with 206, unsatisfiable ones with 416, and honours If-Range', async () => {
    await start();
    set('/bytes', { headers: { 'cache-control': 'max-age=60', etag: '"r1"', 'content-type': 'text/plain' }, body: '0123456789' });

    // A ranged miss: the origin is asked for the whole object.
    const miss = await get('/bytes', { range: 'bytes=0-4' });
    if (miss.status === 206) {
      expect(miss.body).toBe('01234');
      expect(miss.headers.get('content-range')).toBe('bytes 0-4/10');
    } else {
      expect(miss.status).toBe(200);
      expect(miss.body).toBe('0123456789');
    }
    const fill = originRequests('/bytes')[0]!;
    expect(fill.headers.range).toBeUndefined();
    expect(fill.headers['if-range']).toBeUndefined();
    await t.settle();

    const cases: [string, string, string][] = [
      ['bytes=0-4', 'bytes 0-4/10', '01234'],
      ['bytes=-3', 'bytes 7-9/10', '789'],
      ['bytes=5-', 'bytes 5-9/10', '56789'],
      ['bytes=8-100', 'bytes 8-9/10', '89'],
    ];
    for (const [range, contentRange, body] of cases) {
      const answer = await get('/bytes', { range });
      expect(answer.status, range).toBe(206);
      expect(answer.headers.get('content-range'), range).toBe(contentRange);
      expect(answer.headers.get('content-length'), range).toBe(String(body.length));
      expect(answer.body, range).toBe(body);
      expect(answer.headers.get('cache-status')).toMatch(/^edge; hit/);
      expect(answer.headers.get('content-type')).toBe('text/plain');
    }

    const unsatisfiable = await get('/bytes', { range: 'bytes=20-' });
    expect(unsatisfiable.status).toBe(416);
    expect(unsatisfiable.headers.get('content-range')).toBe('bytes */10');

    const ifRange = await get('/bytes', { range: 'bytes=0-4', 'if-range': '"r1"' });
    expect(ifRange.status).toBe(206);
    expect(ifRange.body).toBe('01234');
    const changed = await get('/bytes', { range: 'bytes=0-4', 'if-range': '"other"' });
    expect(changed.status).toBe(200);
    expect(changed.body).toBe('0123456789');

    expect(t.origin.count('/bytes')).toBe(1);
  });
});

describe('invalidation by unsafe methods (RFC 9111 4.4)', () => {
  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'PROPPATCH', 'UNLINK']) {
    it(`passes ${method} through uncached and invalidates the URL`, async () => {
      await start();
      set('/doc', [
        { headers: { 'cache-control': 'max-age=600' }, body: 'v1' },
        { status: 200, headers: { 'content-type': 'text/plain' }, body: `${method} done` },
        { headers: { 'cache-control': 'max-age=600' }, body: 'v2' },
      ]);
      await get('/doc');
      expect((await get('/doc')).headers.get('cache-status')).toMatch(/^edge; hit/);

      const unsafe = await get('/doc', {}, { method });
      expect(unsafe.status).toBe(200);
      expect(unsafe.body).toBe(`${method} done`);
      expect(unsafe.headers.get('cache-status')).toBe('edge; fwd=method');
      expect(unsafe.headers.get('via')).toBe('1.1 edge');

      const after = await get('/doc');
      expect(after.body).toBe('v2');
      expect(after.headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss; stored/);
      expect(t.origin.requests.map((r) => r.method)).toEqual(['GET', method, 'GET']);
    });
  }

  it('invalidates same-host Location and Content-Location targets, not other hosts', async () => {
    await start();
    for (const path of ['/items/1', '/items/1/summary', '/items/2']) {
      set(path, { headers: { 'cache-control': 'max-age=600' }, body: path });
    }
    set('/items', [
      { status: 201, headers: { location: '/items/1', 'content-location': `${t.edge.url}/items/1/summary` } },
      { status: 201, headers: { location: 'http://other.example/items/2', 'content-location': 'http://other.example/items/2' } },
    ]);
    for (const path of ['/items/1', '/items/1/summary', '/items/2']) await get(path);

    expect((await get('/items', {}, { method: 'POST', body: 'new' })).status).toBe(201);
    expect((await get('/items/1')).headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss/);
    expect((await get('/items/1/summary')).headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss/);
    expect((await get('/items/2')).headers.get('cache-status')).toMatch(/^edge; hit/);

    expect((await get('/items', {}, { method: 'POST', body: 'other' })).status).toBe(201);
    expect((await get('/items/2')).headers.get('cache-status')).toMatch(/^edge; hit/);
  });

  for (const status of [500, 400]) {
    it(`does not invalidate on an error response (${status}) to a POST`, async () => {
      await start();
      set('/keep', [
        { headers: { 'cache-control': 'max-age=600' }, body: 'kept' },
        { status, body: 'failed' },
      ]);
      await get('/keep');
      const post = await get('/keep', {}, { method: 'POST', body: 'x' });
      expect(post.status).toBe(status);
      expect(post.headers.get('cache-status')).toBe('edge; fwd=method');
      const after = await get('/keep');
      expect(after.body).toBe('kept');
      expect(after.headers.get('cache-status')).toMatch(/^edge; hit/);
    });
  }
});

describe('targeted cache-control fields (RFC 9213)', () => {
  it('CDN-Cache-Control takes precedence over Cache-Control and Expires, and is not forwarded', async () => {
    await start();
    set('/cdn', { headers: { 'cache-control': 'no-store', 'cdn-cache-control': 'max-age=60', expires: '0' }, body: 'cdn' });
    const first = await get('/cdn');
    expect(first.headers.get('cache-status')).toBe('edge; fwd=uri-miss; stored; ttl=60');
    advance(30);
    const hit = await get('/cdn');
    expect(hit.headers.get('cache-status')).toBe('edge; hit; ttl=30');
    for (const answer of [first, hit]) {
      expect(answer.headers.get('cache-control')).toBe('no-store');
      expect(answer.headers.get('cdn-cache-control')).toBeNull();
    }
    expect(t.origin.count('/cdn')).toBe(1);
  });

  it('Edge-Cache-Control takes precedence over Cache-Control, and is not forwarded', async () => {
    await start();
    set('/edge-no-store', { headers: { 'cache-control': 'max-age=600', 'edge-cache-control': 'no-store' }, body: 'e' });
    for (let i = 0; i < 2; i++) {
      const answer = await get('/edge-no-store');
      expect(answer.headers.get('cache-status')).not.toMatch(/stored|hit/);
      expect(answer.headers.get('cache-control')).toBe('max-age=600');
      expect(answer.headers.get('edge-cache-control')).toBeNull();
    }
    expect(t.origin.count('/edge-no-store')).toBe(2);
  });

  it('Edge-Cache-Control takes precedence over CDN-Cache-Control', async () => {
    await start();
    set('/both-store', { headers: { 'cdn-cache-control': 'no-store', 'edge-cache-control': 'max-age=60' }, body: 'a' });
    set('/both-short', { headers: { 'cdn-cache-control': 'max-age=600', 'edge-cache-control': 'max-age=5', 'cache-control': 'max-age=600' }, body: 'b' });
    await get('/both-store');
    await get('/both-short');
    advance(2);
    const stored = await get('/both-store');
    expect(stored.headers.get('cache-status')).toBe('edge; hit; ttl=58');
    expect((await get('/both-short')).headers.get('cache-status')).toBe('edge; hit; ttl=3');
    advance(8);
    const short = await get('/both-short');
    expect(short.headers.get('cache-status')).not.toMatch(/hit/);
    expect(short.headers.get('cache-control')).toBe('max-age=600');
    for (const answer of [stored, short]) {
      expect(answer.headers.get('cdn-cache-control')).toBeNull();
      expect(answer.headers.get('edge-cache-control')).toBeNull();
    }
  });

  it('does not forward targeted fields on pass-through answers either', async () => {
    await start();
    set('/pass', { headers: { 'cdn-cache-control': 'max-age=60', 'edge-cache-control': 'max-age=60', 'cache-control': 'private' }, body: 'p' });
    const post = await get('/pass', {}, { method: 'POST', body: 'x' });
    expect(post.headers.get('cdn-cache-control')).toBeNull();
    expect(post.headers.get('edge-cache-control')).toBeNull();
    expect(post.headers.get('cache-control')).toBe('private');
  });
});

describe('103 Early Hints', () => {
  it('relays 103 from the origin to the client and never caches it', async () => {
    await start();
    set('/page', { earlyHints: { link: '</style.css>; rel=preload; as=style' }, headers: { 'cache-control': 'max-age=60' }, body: 'page' });
    const first = await raw('/page');
    expect(first.informational).toHaveLength(1);
    expect(first.informational[0]!.status).toBe(103);
    expect(first.informational[0]!.headers.link).toBe('</style.css>; rel=preload; as=style');
    expect(first.status).toBe(200);
    expect(first.body).toBe('page');
    expect(first.headers['cache-status']).toMatch(/^edge; fwd=uri-miss; stored/);

    const hit = await raw('/page');
    expect(hit.status).toBe(200);
    expect(hit.body).toBe('page');
    expect(hit.headers['cache-status']).toMatch(/^edge; hit/);
    expect(hit.informational).toEqual([]);
    expect(t.origin.count('/page')).toBe(1);
  });

  it('relays 103 on requests that pass through', async () => {
    await start();
    set('/form', { earlyHints: { link: '</form.css>; rel=preload; as=style' }, body: 'posted' });
    const post = await raw('/form', { method: 'POST' });
    expect(post.informational.map((i) => i.status)).toEqual([103]);
    expect(post.status).toBe(200);
    expect(post.body).toBe('posted');
  });
});

describe('no default TTL', () => {
  it('does not reuse a 200 with neither freshness nor a validator', async () => {
    await start();
    set('/plain', { headers: { 'content-type': 'text/plain' }, body: 'plain' });
    const first = await get('/plain');
    expect(first.headers.get('cache-status')).toBe('edge; fwd=uri-miss');
    const second = await get('/plain');
    expect(second.headers.get('cache-status')).toBe('edge; fwd=uri-miss');
    expect(t.origin.count('/plain')).toBe(2);
  });

  it('reuses it with the defaultTtl option, and never overrides explicit zero freshness', async () => {
    await start({ defaultTtl: 60 });
    set('/plain', { headers: { 'content-type': 'text/plain' }, body: 'plain' });
    set('/zero', { headers: { 'cache-control': 'max-age=0' }, body: 'zero' });
    expect((await get('/plain')).headers.get('cache-status')).toBe('edge; fwd=uri-miss; stored; ttl=60');
    advance(59);
    expect((await get('/plain')).headers.get('cache-status')).toBe('edge; hit; ttl=1');
    advance(2);
    expect((await get('/plain')).headers.get('cache-status')).not.toMatch(/hit/);
    expect(t.origin.count('/plain')).toBe(2);

    await get('/zero');
    expect((await get('/zero')).headers.get('cache-status')).not.toMatch(/hit/);
    expect(t.origin.count('/zero')).toBe(2);
  });
});

describe('request collapsing', () => {
  it('makes one origin request for 20 concurrent misses, and every client gets the full body', async () => {
    await start();
    const body = 'c'.repeat(20_000);
    // The origin answers once all 20 requests have reached the node (and joined the flight).
    const everyone = createGate({ openAt: 20 });
    t.edge.server.on('request', () => everyone.arrive());
    set('/hot', { headers: { 'cache-control': 'max-age=60' }, body, gate: everyone });
    const answers = await Promise.all(Array.from({ length: 20 }, () => get('/hot')));
    expect(t.origin.count('/hot')).toBe(1);
    for (const answer of answers) {
      expect(answer.status).toBe(200);
      expect(answer.body.length).toBe(body.length);
      expect(answer.body).toBe(body);
    }
    const statuses = answers.map((a) => a.headers.get('cache-status'));
    expect(statuses.filter((s) => s === 'edge; fwd=uri-miss; stored; ttl=60')).toHaveLength(1);
    expect(statuses.filter((s) => s === 'edge; fwd=uri-miss; collapsed; ttl=60')).toHaveLength(19);
  });

  it('makes one revalidation for concurrent requests on a stale entry', async () => {
    await start();
    // The 304 comes once all 10 requests for the stale entry have reached the node.
    const everyone = createGate({ openAt: 10 });
    set('/stale-hot', [
      { headers: { 'cache-control': 'max-age=10', etag: '"h"' }, body: 'hot' },
      { status: 304, headers: { 'cache-control': 'max-age=10', etag: '"h"' }, gate: everyone },
    ]);
    await get('/stale-hot');
    t.edge.server.on('request', () => everyone.arrive());
    advance(20);
    const answers = await Promise.all(Array.from({ length: 10 }, () => get('/stale-hot')));
    expect(t.origin.count('/stale-hot')).toBe(2);
    for (const answer of answers) {
      expect(answer.status).toBe(200);
      expect(answer.body).toBe('hot');
    }
    const statuses = answers.map((a) => a.headers.get('cache-status'));
    expect(statuses.filter((s) => s === 'edge; fwd=stale; fwd-status=304; ttl=10')).toHaveLength(1);
    expect(statuses.filter((s) => /^edge; fwd=stale; collapsed/.test(s ?? ''))).toHaveLength(9);
  });
});

describe('cache key', () => {
  it('drops utm_*, fbclid and gclid, and keeps other paths and queries apart', async () => {
    await start();
    set('/q', { headers: { 'cache-control': 'max-age=60' }, body: 'q' });
    set('/q2', { headers: { 'cache-control': 'max-age=60' }, body: 'q2' });
    await get('/q?a=1');
    for (const path of ['/q?a=1&utm_source=news', '/q?utm_medium=mail&a=1', '/q?fbclid=abc&a=1', '/q?a=1&gclid=xyz']) {
      expect((await get(path)).headers.get('cache-status'), path).toMatch(/^edge; hit/);
    }
    expect(t.origin.count('/q')).toBe(1);
    for (const path of ['/q?a=2', '/q', '/q?a=1&b=1', '/q2?a=1']) {
      expect((await get(path)).headers.get('cache-status'), path).toMatch(/^edge; fwd=uri-miss/);
    }
    expect(t.origin.count()).toBe(5);
  });

  it('sorts query parameters', async () => {
    await start();
    set('/s', { headers: { 'cache-control': 'max-age=60' }, body: 's' });
    await get('/s?b=2&a=1');
    expect((await get('/s?a=1&b=2')).headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(t.origin.count('/s')).toBe(1);
  });

  it('keeps the order of a repeated parameter (the origin may read it as a list)', async () => {
    await start();
    echo('/list', { 'cache-control': 'max-age=60' }, () => 'list');
    await get('/list?id=1&id=2');
    expect((await get('/list?id=2&id=1')).headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss/);
    expect(t.origin.count('/list')).toBe(2);
  });

  it('drops the parameters named by the ignoreQueryParams option', async () => {
    await start({ ignoreQueryParams: ['session', 'ref_*'] });
    set('/i', { headers: { 'cache-control': 'max-age=60' }, body: 'i' });
    await get('/i?x=1');
    for (const path of ['/i?x=1&session=abc', '/i?ref_src=tw&x=1&ref_campaign=c']) {
      expect((await get(path)).headers.get('cache-status'), path).toMatch(/^edge; hit/);
    }
    expect((await get('/i?x=1&sessions=1')).headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss/);
    expect(t.origin.count('/i')).toBe(2);
  });

  it('keeps hosts apart', async () => {
    await start();
    echo('/host', { 'cache-control': 'max-age=60' }, (req) => `host=${req.headers['x-forwarded-host']}`);
    const a = await raw('/host', { headers: { host: 'a.example' } });
    const b = await raw('/host', { headers: { host: 'b.example' } });
    expect([a.body, b.body]).toEqual(['host=a.example', 'host=b.example']);
    const aHit = await raw('/host', { headers: { host: 'a.example' } });
    expect(aHit.body).toBe('host=a.example');
    expect(aHit.headers['cache-status']).toMatch(/^edge; hit/);
    expect(t.origin.count('/host')).toBe(2);
  });
});

describe('forwarding and security', () => {
  it('sends X-Forwarded-For/-Proto/-Host and Via upstream, ignoring forwarding headers from an untrusted client', async () => {
    await start();
    echo('/fwd', { 'cache-control': 'max-age=60' }, (req) => `host=${req.headers['x-forwarded-host']}`);
    const poisoned = await get('/fwd', { 'x-forwarded-host': 'evil.example', 'x-forwarded-for': '1.2.3.4', 'x-forwarded-proto': 'https' });
    const seen = originRequests('/fwd')[0]!.headers;
    expect(seen['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen['x-forwarded-proto']).toBe('http');
    expect(seen['x-forwarded-host']).toBe(`127.0.0.1:${t.edge.port}`);
    expect(seen.via).toBe('1.1 edge');
    expect(poisoned.body).toBe(`host=127.0.0.1:${t.edge.port}`);

    // What was stored for the key is what any client would have got: no poisoning.
    const clean = await get('/fwd');
    expect(clean.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(clean.body).toBe(`host=127.0.0.1:${t.edge.port}`);
  });

  it('trusts X-Forwarded-* from a configured trusted proxy', async () => {
    await start({ trustedProxies: ['127.0.0.1'] });
    echo('/fwd', { 'cache-control': 'max-age=60' }, (req) => `host=${req.headers['x-forwarded-host']}`);
    const answer = await get('/fwd', { 'x-forwarded-host': 'evil.example', 'x-forwarded-for': '1.2.3.4', 'x-forwarded-proto': 'https' });
    const seen = originRequests('/fwd')[0]!.headers;
    expect(seen['x-forwarded-for']).toBe('1.2.3.4, 127.0.0.1');
    expect(seen['x-forwarded-proto']).toBe('https');
    expect(seen['x-forwarded-host']).toBe('evil.example');
    expect(answer.body).toBe('host=evil.example');
    // Keyed by the forwarded host: a request for the node's own host does not get it.
    const own = await get('/fwd');
    expect(own.headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss/);
    expect(own.body).toBe(`host=127.0.0.1:${t.edge.port}`);
  });

  it('strips hop-by-hop request headers, including those named in Connection, even when configured to forward them', async () => {
    // Both custom headers are on the forward allow-list: only Connection keeps x-secret back.
    await start({ forwardHeaders: ['x-normal', 'x-secret'] });
    set('/hop-req', { headers: { 'cache-control': 'max-age=60' }, body: 'ok' });
    const answer = await raw('/hop-req', {
      headers: {
        connection: 'x-secret, keep-alive',
        'x-secret': '1',
        'keep-alive': 'timeout=5',
        te: 'trailers',
        'proxy-authorization': 'Basic Zm9vOmJhcg==',
        'x-normal': 'yes',
      },
    });
    expect(answer.status).toBe(200);
    const seen = originRequests('/hop-req')[0]!.headers;
    expect(seen['x-normal']).toBe('yes');
    expect(seen['x-secret']).toBeUndefined();
    expect(seen['keep-alive']).toBeUndefined();
    expect(seen.te).toBeUndefined();
    expect(seen['proxy-authorization']).toBeUndefined();
    expect(seen.connection ?? '').not.toMatch(/x-secret/i);
  });

  it('strips hop-by-hop response headers, including those named in Connection, on a miss and on a hit', async () => {
    await start();
    t.origin.route('/hop-res', (_req, res) => {
      res.setHeader('date', httpDate(t.clock.now()));
      res.setHeader('cache-control', 'max-age=60');
      res.setHeader('connection', 'x-internal');
      res.setHeader('x-internal', '1');
      res.setHeader('proxy-authenticate', 'Basic realm="origin"');
      res.setHeader('x-visible', 'yes');
      res.end('hop');
    });
    for (const expected of [/^edge; fwd=uri-miss/, /^edge; hit/]) {
      const answer = await raw('/hop-res');
      expect(answer.headers['cache-status']).toMatch(expected);
      expect(answer.body).toBe('hop');
      expect(answer.headers['x-visible']).toBe('yes');
      expect(answer.headers['x-internal']).toBeUndefined();
      expect(answer.headers['proxy-authenticate']).toBeUndefined();
      expect(String(answer.headers.connection ?? '')).not.toMatch(/x-internal/i);
    }
  });

  it('puts Cache-Status and Via on every answer, Cache-Status also on the node\'s own errors', async () => {
    await start();
    set('/all', [
      { headers: { 'cache-control': 'max-age=10', etag: '"a"' }, body: '0123456789' },
      { status: 201, body: 'created' },
      { headers: { 'cache-control': 'max-age=10', etag: '"a"' }, body: '0123456789' },
      { status: 304, headers: { 'cache-control': 'max-age=10', etag: '"a"' } },
    ]);
    const answers: [string, Answer][] = [];
    answers.push(['miss', await get('/all')]);
    answers.push(['hit', await get('/all')]);
    answers.push(['304 from cache', await get('/all', { 'if-none-match': '"a"' })]);
    answers.push(['206 from cache', await get('/all', { range: 'bytes=0-1' })]);
    answers.push(['416 from cache', await get('/all', { range: 'bytes=50-' })]);
    answers.push(['HEAD from cache', await get('/all', {}, { method: 'HEAD' })]);
    answers.push(['pass', await get('/all', {}, { method: 'POST', body: 'x' })]);
    answers.push(['miss after invalidation', await get('/all')]);
    advance(20);
    answers.push(['revalidated', await get('/all')]);
    for (const [name, answer] of answers) {
      expect(answer.headers.get('cache-status') ?? '(none)', name).toMatch(/^edge; /);
      expect(answer.headers.get('via'), name).toBe('1.1 edge');
    }

    const onlyIfCached = await get('/never', { 'cache-control': 'only-if-cached' });
    expect(onlyIfCached.status).toBe(504);
    expect(onlyIfCached.headers.get('cache-status') ?? '(none)').toMatch(/^edge; /);
    await t.origin.close();
    const unreachable = await get('/gone');
    expect(unreachable.status).toBe(502);
    expect(unreachable.headers.get('cache-status') ?? '(none)', 'a 502 from the node says what the cache did').toMatch(/^edge; fwd=/);
  });
});

describe('client Cache-Control directives (RFC 9111 5.2.1)', () => {
  it('no-cache (and Pragma: no-cache) forces revalidation of a fresh entry', async () => {
    await start();
    set('/cc', [
      { headers: { 'cache-control': 'max-age=600', etag: '"c"' }, body: 'cached' },
      { status: 304, headers: { 'cache-control': 'max-age=600', etag: '"c"' } },
    ]);
    await get('/cc');
    const forced = await get('/cc', { 'cache-control': 'no-cache' });
    expect(forced.status).toBe(200);
    expect(forced.body).toBe('cached');
    expect(t.origin.count('/cc')).toBe(2);
    expect(originRequests('/cc')[1]!.headers['if-none-match']).toBe('"c"');

    await get('/cc', { pragma: 'no-cache' });
    expect(t.origin.count('/cc')).toBe(3);

    // RFC 9211 2.2: a fresh response the request did not allow is fwd=request.
    expect(forced.headers.get('cache-status')).toMatch(/^edge; fwd=request; fwd-status=304/);
  });

  it('max-age=0 forces revalidation of an entry with any age', async () => {
    await start();
    set('/ma', [
      { headers: { 'cache-control': 'max-age=600', etag: '"m"' }, body: 'cached' },
      { status: 304, headers: { 'cache-control': 'max-age=600', etag: '"m"' } },
    ]);
    await get('/ma');
    advance(5);
    expect((await get('/ma', { 'cache-control': 'max-age=10' })).headers.get('cache-status')).toBe('edge; hit; ttl=595');
    const answer = await get('/ma', { 'cache-control': 'max-age=0' });
    expect(answer.body).toBe('cached');
    expect(t.origin.count('/ma')).toBe(2);
    expect(originRequests('/ma')[1]!.headers['if-none-match']).toBe('"m"');
  });

  it('min-fresh asks for an entry fresh for at least that long', async () => {
    await start();
    set('/mf', [
      { headers: { 'cache-control': 'max-age=60', etag: '"f"' }, body: 'cached' },
      { status: 304, headers: { 'cache-control': 'max-age=60', etag: '"f"' } },
    ]);
    await get('/mf');
    advance(40);
    expect((await get('/mf', { 'cache-control': 'min-fresh=10' })).headers.get('cache-status')).toBe('edge; hit; ttl=20');
    await get('/mf', { 'cache-control': 'min-fresh=30' });
    expect(t.origin.count('/mf')).toBe(2);
  });

  it('only-if-cached: 504 on a miss and on a stale entry, without asking the origin; a fresh entry is served', async () => {
    await start();
    set('/oic', { headers: { 'cache-control': 'max-age=10' }, body: 'cached' });
    const miss = await get('/oic', { 'cache-control': 'only-if-cached' });
    expect(miss.status).toBe(504);
    expect(t.origin.count('/oic')).toBe(0);

    await get('/oic');
    const fresh = await get('/oic', { 'cache-control': 'only-if-cached' });
    expect(fresh.status).toBe(200);
    expect(fresh.body).toBe('cached');
    expect(t.origin.count('/oic')).toBe(1);

    advance(20);
    const stale = await get('/oic', { 'cache-control': 'only-if-cached' });
    expect(stale.status).toBe(504);
    expect(t.origin.count('/oic')).toBe(1);
  });

  it('max-stale accepts a stale entry, within its bound, unless the response forbids it', async () => {
    await start();
    set('/ms', [
      { headers: { 'cache-control': 'max-age=10', etag: '"s"' }, body: 'stale ok' },
      { status: 304, headers: { 'cache-control': 'max-age=10', etag: '"s"' } },
    ]);
    set('/ms-mr', [
      { headers: { 'cache-control': 'max-age=10, must-revalidate', etag: '"s"' }, body: 'strict' },
      { status: 304, headers: { 'cache-control': 'max-age=10, must-revalidate', etag: '"s"' } },
    ]);
    await get('/ms');
    await get('/ms-mr');
    advance(20);

    for (const cc of ['max-stale=30', 'max-stale']) {
      const answer = await get('/ms', { 'cache-control': cc });
      expect(answer.status, cc).toBe(200);
      expect(answer.body).toBe('stale ok');
      expect(answer.headers.get('cache-status'), cc).toMatch(/^edge; hit/);
      expect(answer.headers.get('age')).toBe('20');
    }
    expect(t.origin.count('/ms')).toBe(1);

    const tooStale = await get('/ms', { 'cache-control': 'max-stale=5' });
    expect(tooStale.body).toBe('stale ok');
    expect(tooStale.headers.get('cache-status')).toMatch(/^edge; fwd=stale; fwd-status=304/);
    expect(t.origin.count('/ms')).toBe(2);

    const strict = await get('/ms-mr', { 'cache-control': 'max-stale=60' });
    expect(strict.headers.get('cache-status')).toMatch(/^edge; fwd=stale; fwd-status=304/);
    expect(t.origin.count('/ms-mr')).toBe(2);
  });
});
