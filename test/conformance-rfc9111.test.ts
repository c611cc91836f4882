/**
 * Conformance in the places an HTTP caching test suite (http-tests/cache-tests)
 * probes hardest and where `http-cache-semantics` alone gets it wrong:
 * HTTP-date parsing (Expires, Date, Last-Modified), targeted fields as
 * Structured Field Dictionaries (RFC 9213), explicit freshness on any final
 * status, which stored response a 304 may update and which fields it may
 * change, and which stale responses the stale grace may serve.
 *
 * Like `pull-conformance.test.ts`: a real test origin, a real node, time
 * moved only through the injected clock.
 */
import { request as httpRequest } from 'node:http';
import { gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { createTestClock } from './helpers/clock.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { setDated, type OriginResponseSpec } from './helpers/origin.js';

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

/** The IMF-fixdate `seconds` after the start of the test clock. */
const at = (seconds: number) => new Date(t0 + seconds * 1000).toUTCString();
const advance = (seconds: number) => t.clock.advance(seconds * 1000);
/** Script `path` on the origin, each answer dated with the node's clock (a `date` in the spec wins). */
const set = (path: string, spec: OriginResponseSpec | OriginResponseSpec[]) => setDated(t.origin, t.clock.now, path, spec);
const originRequests = (path: string) => t.origin.requests.filter((r) => r.path === path);

interface Answer {
  status: number;
  headers: Headers;
  body: Buffer;
  text: string;
}

/** One request through the node on its own connection (`node:http`: no client cache, no decoding). */
function get(path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: t.edge.port, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        const joined = new Headers();
        for (let i = 0; i < res.rawHeaders.length; i += 2) joined.append(res.rawHeaders[i]!, res.rawHeaders[i + 1]!);
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: joined, body, text: body.toString() });
        req.destroy();
      });
    });
    req.on('error', reject);
    req.end();
  });
}

const cacheStatus = (answer: Answer) => answer.headers.get('cache-status') ?? '(none)';

describe('Expires, Date and Last-Modified are HTTP-dates, parsed strictly (RFC 9110 5.6.7, RFC 9111 4.2, 5.3)', () => {
  it('treats an Expires in any other form as already expired, however a lenient date parser reads it', async () => {
    await start();
    const invalid = [
      '2050-08-18',
      '2050-08-18T02:01:18Z',
      'Thu, 18 Aug 2050',
      'Thu, 18 Aug 2050 02:01:18 UTC',
      'Thu, 18 Aug 2050 02:01:18 +0000',
      'Thu, 18 Aug 2050 02:01:18 AEST',
      'Thu, 18 Aug 50 02:01:18 GMT',
      'Thu 18 Aug 2050 02:01:18 GMT',
      'Thu, 18  Aug  2050 02:01:18 GMT',
      'Thu, 18-Aug-2050 02:01:18 GMT',
      'Thu, 18 Aug 2050 02.01.18 GMT',
      'Thu, 18 Aug 2050 2:01:18 GMT',
      'Thu, 31 Feb 2050 02:01:18 GMT',
      'Thu, 18 Aug 2050 24:01:18 GMT',
      'August 18, 2050',
      '2524615278',
      '0',
    ];
    for (const [i, expires] of invalid.entries()) set(`/x${i}`, { headers: { expires }, body: `x${i}` });
    // Two field lines, each a valid future date: a list is not an HTTP-date.
    set('/two-lines', { headers: { expires: [at(3600), at(7200)] }, body: 'two' });
    const paths = [...invalid.map((_, i) => `/x${i}`), '/two-lines'];

    for (const path of paths) await get(path);
    advance(1);
    for (const [i, path] of paths.entries()) {
      const again = await get(path);
      expect(cacheStatus(again), `Expires: ${invalid[i] ?? 'two lines'}`).not.toMatch(/hit/);
      expect(t.origin.count(path), `Expires: ${invalid[i] ?? 'two lines'}`).toBe(2);
    }
  });

  it('reuses a response whose Expires is an IMF-fixdate, an RFC 850 date or an asctime date, in any letter case, all in UTC', async () => {
    await start();
    const valid: [string, number][] = [
      ['Thu, 18 Aug 2050 02:01:18 GMT', Date.UTC(2050, 7, 18, 2, 1, 18)],
      ['THU, 18 AUG 2050 02:01:18 gmt', Date.UTC(2050, 7, 18, 2, 1, 18)],
      // Two-digit year: the most recent year with those digits not more than 50 years ahead.
      ['Thursday, 18-Aug-50 02:01:18 GMT', Date.UTC(2050, 7, 18, 2, 1, 18)],
      ['Thu Aug  8 02:01:18 2050', Date.UTC(2050, 7, 8, 2, 1, 18)],
      ['Mon Aug 18 02:01:18 2050', Date.UTC(2050, 7, 18, 2, 1, 18)],
      ['Tue, 19 Jan 2038 03:14:08 GMT', Date.UTC(2038, 0, 19, 3, 14, 8)],
    ];
    for (const [i, [expires]] of valid.entries()) set(`/v${i}`, { headers: { expires }, body: `v${i}` });
    for (const [i] of valid.entries()) await get(`/v${i}`);
    advance(60);
    for (const [i, [expires, ms]] of valid.entries()) {
      const hit = await get(`/v${i}`);
      expect(cacheStatus(hit), `Expires: ${expires}`).toBe(`edge; hit; ttl=${(ms - t0) / 1000 - 60}`);
      expect(hit.headers.get('expires'), 'the stored value goes downstream unchanged').toBe(expires);
    }
    expect(t.origin.count()).toBe(valid.length);
  });

  it('ignores Expires, valid or not, when max-age or s-maxage is present', async () => {
    await start();
    set('/ma-invalid', { headers: { 'cache-control': 'max-age=60', expires: 'Thu, 18 Aug 2050 02:01:18 UTC' }, body: 'a' });
    set('/ma-past', { headers: { 'cache-control': 'max-age=60', expires: at(-3600) }, body: 'b' });
    set('/ma-future', { headers: { 'cache-control': 'max-age=60', expires: at(3600) }, body: 'c' });
    set('/sma-zero', { headers: { 'cache-control': 's-maxage=60, max-age=0', expires: '0' }, body: 'd' });
    set('/sma-future', { headers: { 'cache-control': 's-maxage=10', expires: at(3600) }, body: 'e' });
    const paths = ['/ma-invalid', '/ma-past', '/ma-future', '/sma-zero', '/sma-future'];
    for (const path of paths) await get(path);
    advance(5);
    const answers = await Promise.all(paths.map((path) => get(path)));
    expect(answers.map(cacheStatus)).toEqual([
      'edge; hit; ttl=55',
      'edge; hit; ttl=55',
      'edge; hit; ttl=55',
      'edge; hit; ttl=55',
      'edge; hit; ttl=5',
    ]);
  });

  it('ignores an invalid Date: the time the response arrived stands in for it', async () => {
    await start();
    // A lenient parser reads these as dates long past, which would make the response old on arrival.
    set('/iso-date', { headers: { 'cache-control': 'max-age=60', date: '2020-01-01' }, body: 'a' });
    set('/utc-date', { headers: { 'cache-control': 'max-age=60', date: 'Wed, 01 Jan 2020 00:00:00 UTC' }, body: 'b' });
    set('/expires-bad-date', { headers: { date: 'foo', expires: at(60) }, body: 'c' });
    for (const path of ['/iso-date', '/utc-date', '/expires-bad-date']) await get(path);
    advance(10);
    for (const path of ['/iso-date', '/utc-date', '/expires-bad-date']) {
      const hit = await get(path);
      expect(cacheStatus(hit), path).toBe('edge; hit; ttl=50');
      expect(hit.headers.get('age'), path).toBe('10');
    }
  });

  it('gives no heuristic freshness, and no validator, from an invalid Last-Modified', async () => {
    await start();
    set('/lm-iso', { headers: { 'last-modified': '2020-01-01' }, body: 'a' });
    set('/lm-utc', { headers: { 'last-modified': 'Wed, 01 Jan 2020 00:00:00 UTC' }, body: 'b' });
    // The same instant in the obsolete RFC 850 form is a valid validator and base for heuristics.
    set('/lm-rfc850', { headers: { 'last-modified': 'Wednesday, 01-Jan-20 00:00:00 GMT' }, body: 'c' });
    for (const path of ['/lm-iso', '/lm-utc', '/lm-rfc850']) await get(path);
    advance(10);
    for (const path of ['/lm-iso', '/lm-utc']) {
      expect(cacheStatus(await get(path)), path).toBe('edge; fwd=uri-miss');
      expect(t.origin.count(path), path).toBe(2);
    }
    expect(cacheStatus(await get('/lm-rfc850'))).toMatch(/^edge; hit/);
  });
});

describe('targeted fields are Structured Field Dictionaries (RFC 9213 2.1, 2.2)', () => {
  it('ignores a CDN-Cache-Control that does not parse as a Dictionary, and falls back to Cache-Control', async () => {
    await start();
    const unparseable = [
      'max-age=10000, &&&&&',
      'MaX-aGe=10000',
      'max-age =10000',
      'max-age= 10000',
      'max-age=10000,',
      'max-age=10000;',
      'max-age=10000 public',
      'max-age=1234567890123456',
      'max-age=10000, no-cache="unterminated',
      '',
    ];
    for (const [i, value] of unparseable.entries()) {
      set(`/bad${i}`, { headers: { 'cdn-cache-control': value, 'cache-control': 'max-age=30' }, body: `bad${i}` });
      set(`/bad-ns${i}`, { headers: { 'cdn-cache-control': value, 'cache-control': 'no-store' }, body: `bad${i}` });
    }
    for (const [i, value] of unparseable.entries()) {
      expect(cacheStatus(await get(`/bad${i}`)), `CDN-Cache-Control: ${value}`).toBe('edge; fwd=uri-miss; stored; ttl=30');
      expect(cacheStatus(await get(`/bad-ns${i}`)), `CDN-Cache-Control: ${value}`).toBe('edge; fwd=uri-miss');
    }
    advance(31);
    for (const [i, value] of unparseable.entries()) {
      expect(cacheStatus(await get(`/bad${i}`)), `CDN-Cache-Control: ${value}`).not.toMatch(/hit/);
    }
  });

  it('ignores a member of the wrong type but obeys the field, so Cache-Control and Expires stay ignored', async () => {
    await start();
    const wrongType = ['max-age="10000"', 'max-age=abc', 'max-age=10000.0', 'max-age=-10', 'max-age=?1', 'max-age=(10000)', 'max-age=:AAA=:'];
    for (const [i, value] of wrongType.entries()) {
      set(`/w${i}`, { headers: { 'cdn-cache-control': value, 'cache-control': 'max-age=600', expires: at(600) }, body: `w${i}` });
    }
    // The other members of the field still count.
    set('/w-mixed', { headers: { 'cdn-cache-control': 'max-age="5", s-maxage=60', 'cache-control': 'max-age=600' }, body: 'm' });
    set('/w-params', { headers: { 'cdn-cache-control': 'max-age=60;unit=s, x-ext=(a b);p', 'cache-control': 'no-store' }, body: 'p' });
    for (const [i, value] of wrongType.entries()) {
      // No freshness the node may use and no validator: not stored at all.
      expect(cacheStatus(await get(`/w${i}`)), `CDN-Cache-Control: ${value}`).toBe('edge; fwd=uri-miss');
    }
    expect(cacheStatus(await get('/w-mixed'))).toBe('edge; fwd=uri-miss; stored; ttl=60');
    expect(cacheStatus(await get('/w-params'))).toBe('edge; fwd=uri-miss; stored; ttl=60');
  });

  it('falls through the target list to the first valid field: Edge-Cache-Control, then CDN-Cache-Control, then Cache-Control', async () => {
    await start();
    set('/edge-bad', { headers: { 'edge-cache-control': 'max-age=5,,', 'cdn-cache-control': 'max-age=60', 'cache-control': 'max-age=1' }, body: 'a' });
    set('/both-bad', { headers: { 'edge-cache-control': 'Max-Age=5', 'cdn-cache-control': 'max-age=6 0', 'cache-control': 'max-age=20' }, body: 'b' });
    set('/edge-empty', { headers: { 'edge-cache-control': '', 'cdn-cache-control': 'max-age=40' }, body: 'c' });
    expect(cacheStatus(await get('/edge-bad'))).toBe('edge; fwd=uri-miss; stored; ttl=60');
    expect(cacheStatus(await get('/both-bad'))).toBe('edge; fwd=uri-miss; stored; ttl=20');
    expect(cacheStatus(await get('/edge-empty'))).toBe('edge; fwd=uri-miss; stored; ttl=40');
  });

  it('applies a restrictive directive whatever its value type (it fails safe), a String naming fields for private / no-cache', async () => {
    await start();
    set('/private-token', { headers: { 'cdn-cache-control': 'max-age=60, private=x-user', 'x-user': 'alice' }, body: 'a' });
    set('/no-store-string', { headers: { 'cdn-cache-control': 'max-age=60, no-store="yes"' }, body: 'b' });
    set('/private-named', { headers: { 'cdn-cache-control': 'max-age=60, private="x-user"', 'x-user': 'alice' }, body: 'c' });
    await get('/private-token');
    await get('/no-store-string');
    await get('/private-named');
    expect(cacheStatus(await get('/private-token'))).not.toMatch(/hit/);
    expect(cacheStatus(await get('/no-store-string'))).not.toMatch(/hit/);
    const named = await get('/private-named');
    expect(cacheStatus(named)).toMatch(/^edge; hit/);
    expect(named.headers.get('x-user')).toBeNull();
  });

  it('passes through, and is not governed by, a targeted field that is not on its target list', async () => {
    await start({ targetedCacheControl: 'acme-cache-control' });
    set('/other-target', {
      headers: { 'edge-cache-control': 'no-store', 'acme-cache-control': 'max-age=60', 'cache-control': 'max-age=5' },
      body: 'o',
    });
    const first = await get('/other-target');
    expect(cacheStatus(first)).toBe('edge; fwd=uri-miss; stored; ttl=60');
    const hit = await get('/other-target');
    expect(cacheStatus(hit)).toMatch(/^edge; hit/);
    for (const answer of [first, hit]) {
      expect(answer.headers.get('edge-cache-control')).toBe('no-store');
      expect(answer.headers.get('acme-cache-control')).toBeNull();
    }
  });
});

describe('explicit freshness makes any final status storable (RFC 9111 3)', () => {
  const statuses = [400, 403, 500, 502, 503, 504, 299, 499, 599];

  it('stores and reuses error and unknown statuses that carry max-age, while fresh', async () => {
    await start();
    for (const status of statuses) {
      set(`/s/${status}`, { status, headers: { 'cache-control': 'max-age=60', 'content-type': 'text/plain' }, body: `status ${status}` });
    }
    for (const status of statuses) {
      const first = await get(`/s/${status}`);
      expect(first.status).toBe(status);
      expect(cacheStatus(first), `status ${status}`).toBe('edge; fwd=uri-miss; stored; ttl=60');
    }
    advance(10);
    for (const status of statuses) {
      const hit = await get(`/s/${status}`);
      expect(hit.status).toBe(status);
      expect(hit.text).toBe(`status ${status}`);
      expect(cacheStatus(hit), `status ${status}`).toBe('edge; hit; ttl=50');
      expect(hit.headers.get('age')).toBe('10');
      expect(t.origin.count(`/s/${status}`), `status ${status}`).toBe(1);
    }
    advance(51);
    for (const status of statuses) {
      expect(cacheStatus(await get(`/s/${status}`)), `status ${status}`).not.toMatch(/hit/);
      expect(t.origin.count(`/s/${status}`), `status ${status}`).toBe(2);
    }
  });

  it('stores them with Expires or s-maxage too, but never with private or no-store', async () => {
    await start();
    set('/e500', { status: 500, headers: { expires: at(60) }, body: 'e' });
    set('/sm503', { status: 503, headers: { 'cache-control': 's-maxage=60' }, body: 's' });
    set('/p500', { status: 500, headers: { 'cache-control': 'max-age=60, private' }, body: 'p' });
    set('/ns503', { status: 503, headers: { 'cache-control': 'max-age=60, no-store' }, body: 'n' });
    set('/stale400', { status: 400, headers: { expires: at(-10) }, body: 'x' });
    for (const path of ['/e500', '/sm503', '/p500', '/ns503', '/stale400']) await get(path);
    advance(1);
    expect(cacheStatus(await get('/e500'))).toBe('edge; hit; ttl=59');
    expect(cacheStatus(await get('/sm503'))).toBe('edge; hit; ttl=59');
    for (const path of ['/p500', '/ns503', '/stale400']) {
      expect(cacheStatus(await get(path)), path).not.toMatch(/hit/);
      expect(t.origin.count(path), path).toBe(2);
    }
  });

  it('gives them no heuristic freshness, unless marked public', async () => {
    await start();
    for (const status of [403, 500, 502, 503, 599]) {
      set(`/h/${status}`, { status, headers: { 'last-modified': at(-86_400) }, body: `h${status}` });
    }
    set('/h/599-public', { status: 599, headers: { 'last-modified': at(-86_400), 'cache-control': 'public' }, body: 'public' });
    set('/h/302-public', { status: 302, headers: { location: '/x', 'last-modified': at(-86_400), 'cache-control': 'public' } });
    for (const path of ['/h/403', '/h/500', '/h/502', '/h/503', '/h/599', '/h/599-public', '/h/302-public']) await get(path);
    advance(10);
    for (const status of [403, 500, 502, 503, 599]) {
      expect(cacheStatus(await get(`/h/${status}`)), `status ${status}`).not.toMatch(/hit/);
      expect(t.origin.count(`/h/${status}`)).toBe(2);
    }
    // 10% of a day since Last-Modified.
    expect(cacheStatus(await get('/h/599-public'))).toBe('edge; hit; ttl=8630');
    expect(cacheStatus(await get('/h/302-public'))).toBe('edge; hit; ttl=8630');
  });

  it('must-understand: stores a status it implements despite no-store, never one it does not know', async () => {
    await start();
    set('/mu200', { headers: { 'cache-control': 'max-age=3600, no-store, must-understand' }, body: 'known' });
    set('/mu404', { status: 404, headers: { 'cache-control': 'max-age=3600, no-store, must-understand' }, body: 'known' });
    set('/mu599', { status: 599, headers: { 'cache-control': 'max-age=3600, no-store, must-understand' }, body: 'unknown' });
    set('/mu599-no-no-store', { status: 599, headers: { 'cache-control': 'max-age=3600, must-understand' }, body: 'unknown' });
    for (const path of ['/mu200', '/mu404', '/mu599', '/mu599-no-no-store']) await get(path);
    expect(cacheStatus(await get('/mu200'))).toMatch(/^edge; hit/);
    expect(cacheStatus(await get('/mu404'))).toMatch(/^edge; hit/);
    expect(cacheStatus(await get('/mu599'))).not.toMatch(/hit/);
    expect(cacheStatus(await get('/mu599-no-no-store'))).not.toMatch(/hit/);
  });

  it('stores a response to a request with Authorization only with public, s-maxage or must-revalidate (RFC 9111 3.5)', async () => {
    await start();
    const cases: [string, string, boolean][] = [
      ['/auth-mr', 'max-age=60, must-revalidate', true],
      ['/auth-sm', 's-maxage=60', true],
      ['/auth-public', 'public, max-age=60', true],
      ['/auth-plain', 'max-age=60', false],
    ];
    for (const [path, cc] of cases) set(path, { headers: { 'cache-control': cc }, body: 'for alice' });
    for (const [path] of cases) await get(path, { authorization: 'Bearer alice' });
    for (const [path, cc, shared] of cases) {
      const anonymous = await get(path);
      expect(cacheStatus(anonymous), cc).toMatch(shared ? /^edge; hit/ : /^edge; fwd=uri-miss/);
    }
  });

  it('never stores a 206 from the origin (the node stores whole responses only)', async () => {
    await start();
    set('/partial', { status: 206, headers: { 'cache-control': 'max-age=60', 'content-range': 'bytes 0-1/10' }, body: '01' });
    expect(cacheStatus(await get('/partial'))).toBe('edge; fwd=uri-miss');
    expect(cacheStatus(await get('/partial'))).toBe('edge; fwd=uri-miss');
    expect(t.origin.count('/partial')).toBe(2);
  });
});

describe('which stored response a 304 updates, and how (RFC 9111 4.3.4, 3.2)', () => {
  /** A stored response, stale after 10 s, then the scripted revalidation answers. */
  function revalidating(path: string, stored: Record<string, string | string[]>, answers: OriginResponseSpec[], body = 'stored body') {
    set(path, [{ headers: { 'cache-control': 'max-age=10', ...stored }, body }, ...answers]);
  }
  const fresh200 = (etag: string): OriginResponseSpec => ({ headers: { 'cache-control': 'max-age=10', etag }, body: 'new body' });

  it('does not apply a 304 whose strong ETag differs, and asks again without validators', async () => {
    await start();
    revalidating('/other-etag', { etag: '"v1"' }, [{ status: 304, headers: { etag: '"v2"', 'cache-control': 'max-age=100' } }, fresh200('"v2"')]);
    await get('/other-etag');
    advance(20);
    const answer = await get('/other-etag');
    expect(answer.status).toBe(200);
    expect(answer.text).toBe('new body');
    expect(answer.headers.get('etag')).toBe('"v2"');
    const [, conditional, unconditional] = originRequests('/other-etag');
    expect(conditional!.headers['if-none-match']).toBe('"v1"');
    expect(unconditional!.headers['if-none-match']).toBeUndefined();
    expect(unconditional!.headers['if-modified-since']).toBeUndefined();
    advance(1);
    const hit = await get('/other-etag');
    expect(hit.text).toBe('new body');
    expect(cacheStatus(hit)).toBe('edge; hit; ttl=9');
  });

  it('does not let a strong ETag in a 304 select a stored response with only the weak ETag', async () => {
    await start();
    revalidating('/weak-stored', { etag: 'W/"v1"' }, [{ status: 304, headers: { etag: '"v1"', 'cache-control': 'max-age=100' } }, fresh200('"v1"')]);
    await get('/weak-stored');
    advance(20);
    const answer = await get('/weak-stored');
    expect(answer.text).toBe('new body');
    expect(t.origin.count('/weak-stored')).toBe(3);
  });

  it('applies a 304 with a weak ETag that matches weakly', async () => {
    await start();
    revalidating('/weak-304', { etag: '"v1"' }, [{ status: 304, headers: { etag: 'W/"v1"', 'cache-control': 'max-age=100' } }]);
    await get('/weak-304');
    advance(20);
    const answer = await get('/weak-304');
    expect(answer.text).toBe('stored body');
    expect(cacheStatus(answer)).toBe('edge; fwd=stale; fwd-status=304; ttl=100');
    expect(t.origin.count('/weak-304')).toBe(2);
  });

  it('does not apply a 304 without any validator to a stored response that has one', async () => {
    await start();
    revalidating('/bare-304', { etag: '"v1"' }, [{ status: 304, headers: { 'cache-control': 'max-age=100', 'x-new': 'no' } }, fresh200('"v1"')]);
    await get('/bare-304');
    advance(20);
    const answer = await get('/bare-304');
    expect(answer.text).toBe('new body');
    expect(answer.headers.get('x-new')).toBeNull();
    const [, conditional, unconditional] = originRequests('/bare-304');
    expect(conditional!.headers['if-none-match']).toBe('"v1"');
    expect(unconditional!.headers['if-none-match']).toBeUndefined();
  });

  it('applies a 304 without validators to a stored response without validators', async () => {
    await start();
    revalidating('/none', {}, [{ status: 304, headers: { 'cache-control': 'max-age=100', 'x-new': 'yes' } }]);
    await get('/none');
    advance(20);
    const answer = await get('/none');
    expect(answer.text).toBe('stored body');
    expect(answer.headers.get('x-new')).toBe('yes');
    expect(cacheStatus(answer)).toBe('edge; fwd=stale; fwd-status=304; ttl=100');
    expect(t.origin.count('/none')).toBe(2);
  });

  it('compares Last-Modified validators as dates, not strings, and does not apply a 304 with another date', async () => {
    await start();
    const lm = 'Wed, 01 Jan 2020 00:00:00 GMT';
    revalidating('/lm-same', { 'last-modified': lm }, [
      { status: 304, headers: { 'last-modified': 'Wednesday, 01-Jan-20 00:00:00 GMT', 'cache-control': 'max-age=100' } },
    ]);
    revalidating('/lm-other', { 'last-modified': lm }, [
      { status: 304, headers: { 'last-modified': 'Thu, 02 Jan 2020 00:00:00 GMT', 'cache-control': 'max-age=100' } },
      { headers: { 'cache-control': 'max-age=10', 'last-modified': 'Thu, 02 Jan 2020 00:00:00 GMT' }, body: 'new body' },
    ]);
    await get('/lm-same');
    await get('/lm-other');
    advance(20);
    const same = await get('/lm-same');
    expect(same.text).toBe('stored body');
    expect(cacheStatus(same)).toBe('edge; fwd=stale; fwd-status=304; ttl=100');
    expect(originRequests('/lm-same')[1]!.headers['if-modified-since']).toBe(lm);
    const other = await get('/lm-other');
    expect(other.text).toBe('new body');
    expect(t.origin.count('/lm-other')).toBe(3);
    expect(originRequests('/lm-other')[2]!.headers['if-modified-since']).toBeUndefined();
  });

  it('updates the stored fields from a 304, except Content-Length and Content-Encoding, which describe the stored bytes', async () => {
    await start();
    const gz = gzipSync(Buffer.from('hello, compressed world'));
    set('/encoded', [
      {
        headers: {
          'cache-control': 'max-age=10',
          etag: '"gz"',
          'content-encoding': 'gzip',
          'content-type': 'text/plain',
          vary: 'Accept-Encoding',
          'x-kept': 'old',
          'x-replaced': 'old',
        },
        body: gz,
      },
      {
        status: 304,
        headers: {
          etag: '"gz"',
          'cache-control': 'max-age=100',
          'content-encoding': 'br',
          'content-length': '3',
          'content-type': 'text/plain; charset=utf-8',
          'x-replaced': 'new',
          'x-added': 'new',
        },
      },
    ]);
    await get('/encoded', { 'accept-encoding': 'gzip' });
    advance(20);
    for (const expected of [/^edge; fwd=stale; fwd-status=304; ttl=100$/, /^edge; hit; ttl=99$/]) {
      const answer = await get('/encoded', { 'accept-encoding': 'gzip' });
      expect(cacheStatus(answer)).toMatch(expected);
      expect(answer.body.equals(gz)).toBe(true);
      expect(answer.headers.get('content-encoding')).toBe('gzip');
      expect(answer.headers.get('content-length')).toBe(String(gz.length));
      // RFC 9111 3.2 lets a 304 update Content-Type; this node stores bytes, not a parsed form.
      expect(answer.headers.get('content-type')).toBe('text/plain; charset=utf-8');
      expect(answer.headers.get('cache-control')).toBe('max-age=100');
      expect(answer.headers.get('x-kept')).toBe('old');
      expect(answer.headers.get('x-replaced')).toBe('new');
      expect(answer.headers.get('x-added')).toBe('new');
      advance(1);
    }
    expect(t.origin.count('/encoded')).toBe(2);
  });
});

describe('stale grace and client Cache-Control (README "How it caches")', () => {
  it('--stale-grace serves stale for max-age responses but never for s-maxage ones; an explicit stale-if-error still applies', async () => {
    await start({ staleGrace: 600 });
    const failing = (cc: string): OriginResponseSpec[] => [
      { headers: { 'cache-control': cc, etag: '"g"' }, body: 'stale body' },
      { status: 503, body: 'origin busy' },
    ];
    set('/grace-max-age', failing('max-age=10'));
    set('/grace-s-maxage', failing('s-maxage=10'));
    set('/grace-both', failing('max-age=600, s-maxage=10'));
    set('/grace-s-maxage-sie', failing('s-maxage=10, stale-if-error=600'));
    const paths = ['/grace-max-age', '/grace-s-maxage', '/grace-both', '/grace-s-maxage-sie'];
    for (const path of paths) await get(path);
    advance(20);
    const [maxAge, sMaxage, both, sie] = await Promise.all(paths.map((path) => get(path)));
    expect(maxAge!.text).toBe('stale body');
    expect(cacheStatus(maxAge!)).toBe('edge; fwd=stale; fwd-status=503; detail=stale-if-error');
    for (const answer of [sMaxage!, both!]) {
      expect(answer.status).toBe(503);
      expect(answer.text).toBe('origin busy');
    }
    expect(sie!.text).toBe('stale body');
  });

  it('never serves a stale no-cache response, neither by stale-while-revalidate, stale-if-error nor the grace', async () => {
    await start({ staleGrace: 600 });
    set('/nc-error', [
      { headers: { 'cache-control': 'no-cache, stale-if-error=600', etag: '"n"' }, body: 'stored' },
      { status: 503, body: 'origin busy' },
    ]);
    set('/nc-swr', [
      { headers: { 'cache-control': 'no-cache, max-age=0, stale-while-revalidate=600', etag: '"n"' }, body: 'v1' },
      { headers: { 'cache-control': 'no-cache, max-age=0, stale-while-revalidate=600', etag: '"n2"' }, body: 'v2' },
    ]);
    await get('/nc-error');
    await get('/nc-swr');
    advance(5);
    const error = await get('/nc-error');
    expect(error.status).toBe(503);
    expect(error.text).toBe('origin busy');
    const swr = await get('/nc-swr');
    expect(swr.text).toBe('v2');
    expect(cacheStatus(swr)).not.toMatch(/stale-while-revalidate/);
  });

  it('--honor-request-cache-control false: no-cache, Pragma, max-age=0, min-fresh and max-stale from clients change nothing', async () => {
    await start({ honorRequestCacheControl: false, staleGrace: 600 });
    set('/fresh', [
      { headers: { 'cache-control': 'max-age=60', etag: '"f"' }, body: 'cached' },
      { status: 304, headers: { 'cache-control': 'max-age=60', etag: '"f"' } },
    ]);
    await get('/fresh');
    advance(10);
    const ignored: Record<string, string>[] = [
      { 'cache-control': 'no-cache' },
      { pragma: 'no-cache' },
      { 'cache-control': 'max-age=0' },
      { 'cache-control': 'min-fresh=600' },
    ];
    for (const headers of ignored) {
      const answer = await get('/fresh', headers);
      expect(cacheStatus(answer), JSON.stringify(headers)).toBe('edge; hit; ttl=50');
    }
    expect(t.origin.count('/fresh')).toBe(1);

    advance(60);
    const maxStale = await get('/fresh', { 'cache-control': 'max-stale=3600' });
    expect(cacheStatus(maxStale)).toMatch(/^edge; fwd=stale; fwd-status=304/);
    expect(t.origin.count('/fresh')).toBe(2);
  });

  it('--honor-request-cache-control false: the grace still serves max-age responses and still not s-maxage ones', async () => {
    await start({ honorRequestCacheControl: false, staleGrace: 600 });
    set('/g-max-age', { headers: { 'cache-control': 'max-age=10', etag: '"g"' }, body: 'graceful' });
    set('/g-s-maxage', { headers: { 'cache-control': 's-maxage=10', etag: '"g"' }, body: 'strict' });
    await get('/g-max-age');
    await get('/g-s-maxage');
    await t.origin.close();
    advance(20);
    const graceful = await get('/g-max-age', { 'cache-control': 'no-cache' });
    expect(graceful.text).toBe('graceful');
    expect(cacheStatus(graceful)).toBe('edge; fwd=stale; detail=stale-if-error');
    const strict = await get('/g-s-maxage', { 'cache-control': 'max-stale' });
    expect(strict.status).toBe(502);
  });
});
