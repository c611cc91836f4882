/**
 * The pull path's freshness decision (`PullCache.decide`, `selectVariant`)
 * and `--honor-request-cache-control false`, end to end, where mutation
 * testing (`npm run test:mutation`) and breaks made by hand found the other
 * suites silent. Time moves only through the injected clock.
 */
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { createTestClock } from './helpers/clock.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { setDated, type OriginResponseSpec } from './helpers/origin.js';

let t: TestEdge;
afterEach(async () => {
  await t?.close();
});

async function start(options: Record<string, unknown> = {}): Promise<TestEdge> {
  t = await startTestEdge(options, { clock: createTestClock(Math.floor(Date.now() / 1000) * 1000) });
  return t;
}

const advance = (seconds: number) => t.clock.advance(seconds * 1000);
const set = (path: string, spec: OriginResponseSpec | OriginResponseSpec[]) => setDated(t.origin, t.clock.now, path, spec);

async function get(path: string, headers: Record<string, string> = {}): Promise<{ status: number; cacheStatus: string | null; body: string }> {
  const res = await t.get(path, { headers });
  return { status: res.status, cacheStatus: res.headers.get('cache-status'), body: await res.text() };
}

describe('--honor-request-cache-control false', () => {
  it('stores a response although the request that fetched it said no-store', async () => {
    await start({ honorRequestCacheControl: false });
    set('/ns', { headers: { 'cache-control': 'max-age=60' }, body: 'kept' });
    expect((await get('/ns', { 'cache-control': 'no-store' })).cacheStatus).toMatch(/^edge; fwd=uri-miss; stored/);
    await t.settle();
    expect((await get('/ns')).cacheStatus).toMatch(/^edge; hit/);
    expect(t.origin.count('/ns')).toBe(1);
  });

  it('honoured (the default), a request with no-store leaves nothing stored', async () => {
    await start();
    set('/ns', { headers: { 'cache-control': 'max-age=60' }, body: 'not kept' });
    expect((await get('/ns', { 'cache-control': 'no-store' })).cacheStatus).not.toMatch(/stored/);
    await t.settle();
    expect((await get('/ns')).cacheStatus).toMatch(/^edge; fwd=uri-miss/);
    expect(t.origin.count('/ns')).toBe(2);
  });

  it('answers only-if-cached from the origin like any request, not 504', async () => {
    await start({ honorRequestCacheControl: false });
    set('/oic', { headers: { 'cache-control': 'max-age=60' }, body: 'fetched' });
    const miss = await get('/oic', { 'cache-control': 'only-if-cached' });
    expect(miss.status).toBe(200);
    expect(miss.body).toBe('fetched');
    advance(120);
    const stale = await get('/oic', { 'cache-control': 'only-if-cached' });
    expect(stale.status).toBe(200);
    expect(t.origin.count('/oic')).toBe(2);
  });

  it('honoured, only-if-cached with nothing stored is 504', async () => {
    await start();
    set('/oic', { headers: { 'cache-control': 'max-age=60' }, body: 'fetched' });
    expect((await get('/oic', { 'cache-control': 'only-if-cached' })).status).toBe(504);
    expect(t.origin.count('/oic')).toBe(0);
  });

  it('image variants: a client no-cache or max-age=0 does not send a cached variant back to work', async () => {
    await start({ honorRequestCacheControl: false });
    const photo = await sharp({ create: { width: 64, height: 48, channels: 3, background: 'olive' } }).jpeg().toBuffer();
    set('/p.jpg', { headers: { 'content-type': 'image/jpeg', 'cache-control': 'public, max-age=600', etag: '"p"' }, body: photo });
    expect((await get('/p.jpg?width=32&format=png')).cacheStatus).toMatch(/detail=transformed/);
    advance(10);
    // The same request again: the node remembers the variant's key ...
    expect((await get('/p.jpg?width=32&format=png', { 'cache-control': 'no-cache' })).cacheStatus).toMatch(/^edge; hit/);
    // ... or, restarted (nothing remembered), finds it through the cached source's type.
    await t.restart();
    expect((await get('/p.jpg?width=32&format=png', { 'cache-control': 'max-age=0' })).cacheStatus).toMatch(/^edge; hit/);
    expect(t.origin.count('/p.jpg')).toBe(1);
  });
});

/** `edge_requests_total` for one outcome, 2xx answers. */
async function answered(outcome: string): Promise<number> {
  const text = await (await t.get('/_edge/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(`edge_requests_total{outcome="${outcome}",status="2xx"}`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

describe('PullCache.decide', () => {
  it('counts a stale answer as stale, whether the client allowed it (max-stale) or stale-while-revalidate did', async () => {
    await start();
    set('/ms', { headers: { 'cache-control': 'max-age=10', etag: '"m"' }, body: 'm' });
    set('/swr', [
      { headers: { 'cache-control': 'max-age=10, stale-while-revalidate=600', etag: '"s1"' }, body: 's1' },
      { headers: { 'cache-control': 'max-age=10, stale-while-revalidate=600', etag: '"s2"' }, body: 's2' },
    ]);
    await get('/ms');
    await get('/swr');
    await t.settle();
    advance(20);
    const before = { stale: await answered('stale'), hit: await answered('hit') };
    const allowed = await get('/ms', { 'cache-control': 'max-stale=60' });
    expect(allowed.cacheStatus).toBe('edge; hit; ttl=-10');
    const swr = await get('/swr');
    expect(swr.cacheStatus).toBe('edge; hit; ttl=-10; detail=stale-while-revalidate');
    await t.settle();
    expect(await answered('stale')).toBe(before.stale + 2);
    expect(await answered('hit')).toBe(before.hit);
  });

  it('a request with cookies for an entry not explicitly shared goes forward alone: fwd=request, unconditional, the shared copy kept', async () => {
    await start();
    t.origin.route('/c', (req, res) => {
      res.setHeader('date', new Date(t.clock.now()).toUTCString());
      res.setHeader('cache-control', 'max-age=60');
      res.setHeader('etag', '"c1"');
      res.end(`for ${req.headers.cookie ?? 'anyone'}`);
    });
    expect((await get('/c')).body).toBe('for anyone');
    await t.settle();
    const withCookie = await get('/c', { cookie: 'session=s' });
    expect(withCookie.body).toBe('for session=s');
    expect(withCookie.cacheStatus).toMatch(/^edge; fwd=request(;|$)/);
    const forwarded = t.origin.requests.at(-1)!;
    expect(forwarded.headers.cookie).toBe('session=s');
    expect(forwarded.headers['if-none-match']).toBeUndefined();
    await t.settle();
    const shared = await get('/c');
    expect(shared.body).toBe('for anyone');
    expect(shared.cacheStatus).toMatch(/^edge; hit/);
  });
});

describe('PullCache.selectVariant', () => {
  it('when Vary changed over time, the most recent matching response answers', async () => {
    await start({ forwardHeaders: ['x-flavour'] });
    set('/v', [
      { headers: { 'cache-control': 'max-age=10', vary: 'X-Flavour', etag: '"v1"' }, body: 'with vary' },
      { headers: { 'cache-control': 'max-age=600', etag: '"v2"' }, body: 'without vary' },
    ]);
    expect((await get('/v', { 'x-flavour': 'a' })).body).toBe('with vary');
    await t.settle();
    advance(20);
    // Stale: asked again, the origin no longer varies. Both responses are stored now, and both match.
    expect((await get('/v', { 'x-flavour': 'a', 'cache-control': 'no-cache' })).body).toBe('without vary');
    await t.settle();
    advance(1);
    const latest = await get('/v', { 'x-flavour': 'a' });
    expect(latest.body).toBe('without vary');
    expect(latest.cacheStatus).toMatch(/^edge; hit/);
    // Also when the store lists them in another order (the disk tier sorts variants).
    await t.restart();
    const fromDisk = await get('/v', { 'x-flavour': 'a' });
    expect(fromDisk.body).toBe('without vary');
    expect(fromDisk.cacheStatus).toMatch(/^edge; hit/);
    expect(t.origin.count('/v')).toBe(2);
  });

  it('an entry a 304 turned into Vary: * (RFC 9111 4.1: it matches no request) is never served again; the next request goes to the origin', async () => {
    await start();
    set('/star-later', [
      { headers: { 'cache-control': 'max-age=10', etag: '"s"' }, body: 'star later' },
      { status: 304, headers: { 'cache-control': 'max-age=600', etag: '"s"', vary: '*' } },
      { headers: { 'cache-control': 'max-age=600', etag: '"s"', vary: '*' }, body: 'star later' },
    ]);
    expect((await get('/star-later')).body).toBe('star later');
    await t.settle();
    advance(20);
    // Stale: revalidated; the 304 freshens the stored entry and brings Vary: * into it.
    const revalidated = await get('/star-later');
    expect(revalidated.status).toBe(200);
    expect(revalidated.body).toBe('star later');
    expect(t.origin.count('/star-later')).toBe(2);
    await t.settle();
    const next = await get('/star-later');
    expect(next.status).toBe(200);
    expect(next.body).toBe('star later');
    expect(next.cacheStatus).not.toMatch(/hit/);
    expect(t.origin.count('/star-later')).toBe(3);
  });
});
