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
