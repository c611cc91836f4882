/**
 * Pull mode as the README shows it: a miss, then a hit; what is stored
 * and what is not; the tiers; origin failures. Every test runs a real
 * origin and a real node on ephemeral ports.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { createGate } from './helpers/origin.js';

let t: TestEdge;
afterEach(async () => {
  await t?.close();
});

describe('pull mode: miss, then hit', () => {
  it('stores a cacheable response and answers the second request from cache', async () => {
    t = await startTestEdge();
    t.origin.set('/data/a.json', { headers: { 'content-type': 'application/json', 'cache-control': 'public, max-age=60' }, body: '{"a":1}' });

    const first = await t.get('/data/a.json');
    expect(first.status).toBe(200);
    expect(await first.text()).toBe('{"a":1}');
    expect(first.headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss; stored; ttl=60$/);

    t.clock.advance(5000);
    const second = await t.get('/data/a.json');
    expect(second.status).toBe(200);
    expect(await second.text()).toBe('{"a":1}');
    expect(second.headers.get('cache-status')).toBe('edge; hit; ttl=55');
    expect(second.headers.get('age')).toBe('5');
    expect(second.headers.get('content-type')).toBe('application/json');
    expect(second.headers.get('content-length')).toBe('7');
    expect(t.origin.count('/data/a.json')).toBe(1);
  });

  it('answers HEAD from a stored GET, and a HEAD miss fills the cache', async () => {
    t = await startTestEdge();
    t.origin.set('/h.txt', { headers: { 'cache-control': 'max-age=60' }, body: 'hello' });
    const head = await t.get('/h.txt', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
    await t.settle();
    const get = await t.get('/h.txt');
    expect(get.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(await get.text()).toBe('hello');
    const head2 = await t.get('/h.txt', { method: 'HEAD' });
    expect(head2.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(head2.headers.get('content-length')).toBe('5');
    expect(t.origin.requests.map((r) => r.method)).toEqual(['GET']);
  });

  it('answers a Range request that misses with 206 as the object streams in, and caches the whole object', async () => {
    t = await startTestEdge();
    const body = 'abcdefghijklmnopqrstuvwxyz'.repeat(20_000);
    t.origin.set('/r.bin', { headers: { 'cache-control': 'max-age=60' }, body });
    t.origin.set('/r2.bin', { headers: { 'cache-control': 'max-age=60' }, body });

    const partial = await t.get('/r.bin', { headers: { range: 'bytes=10-19' } });
    expect(partial.status).toBe(206);
    expect(partial.headers.get('content-range')).toBe(`bytes 10-19/${body.length}`);
    expect(await partial.text()).toBe('klmnopqrst');
    expect(t.origin.requests[0]!.headers.range).toBeUndefined();
    await t.settle();
    const whole = await t.get('/r.bin');
    expect(whole.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(await whole.text()).toBe(body);

    const unsatisfiable = await t.get('/r2.bin', { headers: { range: `bytes=${body.length + 5}-` } });
    expect(unsatisfiable.status).toBe(416);
    expect(unsatisfiable.headers.get('content-range')).toBe(`bytes */${body.length}`);
    await unsatisfiable.text();
    await t.settle();
    expect((await t.get('/r2.bin', { headers: { range: 'bytes=-3' } })).headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(t.origin.count('/r.bin')).toBe(1);
    expect(t.origin.count('/r2.bin')).toBe(1);
  });

  it('serves a cached object after a restart on the same data dir, without asking the origin', async () => {
    t = await startTestEdge();
    t.origin.set('/persist.css', { headers: { 'cache-control': 'public, max-age=3600' }, body: 'body{}' });
    await (await t.get('/persist.css')).text();
    await t.restart();
    const again = await t.get('/persist.css');
    expect(again.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(await again.text()).toBe('body{}');
    expect(t.origin.count('/persist.css')).toBe(1);
  });

  it('serves from the disk tier when the memory tier is disabled', async () => {
    t = await startTestEdge({ memorySize: 0 });
    t.origin.set('/disk.txt', { headers: { 'cache-control': 'max-age=60' }, body: 'x'.repeat(10_000) });
    await (await t.get('/disk.txt')).text();
    const hit = await t.get('/disk.txt');
    expect(hit.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect((await hit.text()).length).toBe(10_000);
  });
});

describe('pull mode: what is not stored', () => {
  const notStored: [string, Record<string, string>, RequestInit?][] = [
    ['no-store', { 'cache-control': 'no-store, max-age=60' }],
    ['private', { 'cache-control': 'private, max-age=60' }],
    ['Set-Cookie', { 'cache-control': 'max-age=60', 'set-cookie': 'session=abc' }],
    ['neither freshness nor a validator', {}],
    ['Vary: *', { 'cache-control': 'max-age=60', vary: '*' }],
    ['a request with Authorization (not public)', { 'cache-control': 'max-age=60' }, { headers: { authorization: 'Bearer x' } }],
  ];
  for (const [name, headers, init] of notStored) {
    it(`does not share a response with ${name}`, async () => {
      t = await startTestEdge();
      t.origin.set('/n', { headers, body: 'secret' });
      const first = await t.get('/n', init);
      expect(await first.text()).toBe('secret');
      expect(first.headers.get('cache-status')).not.toMatch(/stored/);
      await t.settle();
      const second = await t.get('/n');
      await second.text();
      expect(second.headers.get('cache-status')).not.toMatch(/hit/);
      expect(t.origin.count('/n')).toBe(2);
    });
  }

  it('passes the Set-Cookie to the client that asked, and stores without it when cacheSetCookie is on', async () => {
    t = await startTestEdge({ cacheSetCookie: true });
    t.origin.set('/c', { headers: { 'cache-control': 'public, max-age=60', 'set-cookie': 'session=abc' }, body: 'page' });
    const first = await t.get('/c');
    expect(first.headers.get('set-cookie')).toBe('session=abc');
    await first.text();
    const second = await t.get('/c');
    expect(second.headers.get('cache-status')).toMatch(/hit/);
    expect(second.headers.get('set-cookie')).toBeNull();
  });

  it('stores a response to an authorized request when the origin marks it public', async () => {
    t = await startTestEdge();
    t.origin.set('/p', { headers: { 'cache-control': 'public, max-age=60' }, body: 'shared' });
    await (await t.get('/p', { headers: { authorization: 'Bearer x' } })).text();
    const anonymous = await t.get('/p');
    expect(anonymous.headers.get('cache-status')).toMatch(/hit/);
    expect(t.origin.count('/p')).toBe(1);
  });

  it('streams an object over --max-object-size through uncached', async () => {
    t = await startTestEdge({ maxObjectSize: 1000 });
    t.origin.set('/big', { headers: { 'cache-control': 'max-age=60' }, body: 'y'.repeat(5000) });
    const first = await t.get('/big');
    expect((await first.text()).length).toBe(5000);
    const second = await t.get('/big');
    expect((await second.text()).length).toBe(5000);
    expect(second.headers.get('cache-status')).not.toMatch(/hit/);
    expect(t.origin.count('/big')).toBe(2);
  });

  it('never stores a body that failed half-way, and never serves it', async () => {
    t = await startTestEdge();
    t.origin.set('/broken', [
      { headers: { 'cache-control': 'max-age=60' }, body: 'z'.repeat(100_000), failAfterBytes: 30_000 },
      { headers: { 'cache-control': 'max-age=60' }, body: 'complete' },
    ]);
    await expect(t.get('/broken').then((r) => r.text())).rejects.toThrow();
    await t.settle();
    const next = await t.get('/broken');
    expect(await next.text()).toBe('complete');
    expect(next.headers.get('cache-status')).not.toMatch(/hit/);
  });
});

describe('pull mode: origin failures', () => {
  it('answers 502 with a JSON error when the origin is unreachable', async () => {
    t = await startTestEdge();
    await t.origin.close();
    const res = await t.get('/anything');
    expect(res.status).toBe(502);
    const body = await res.json();
    expect(body.error).toBe('EDGE_ORIGIN_UNREACHABLE');
    expect(body.message).toBe('The origin could not be reached.');
    // What happened, never where: no origin address, port, stack or errno reaches a public client.
    expect(JSON.stringify(body)).not.toMatch(/at .*\.ts|ECONNREFUSED|127\.0\.0\.1|:\d{4,5}/);
  });

  it('answers 504 when the origin does not answer in time', async () => {
    t = await startTestEdge({ originTimeout: '200ms' });
    // The origin answers only after the node has given up, however fast the machine.
    const gaveUp = createGate();
    t.origin.set('/slow', { gate: gaveUp, body: 'late' });
    const res = await t.get('/slow');
    expect(res.status).toBe(504);
    expect((await res.json()).error).toBe('EDGE_ORIGIN_TIMEOUT');
    gaveUp.open();
  });

  it('answers 502 when the origin drops the connection', async () => {
    t = await startTestEdge();
    t.origin.set('/drop', { destroy: true });
    const res = await t.get('/drop');
    expect(res.status).toBe(502);
    expect((await res.json()).error).toBe('EDGE_ORIGIN_UNREACHABLE');
  });
});

describe('the node itself', () => {
  it('answers /_edge/health and never forwards /_edge/ paths', async () => {
    t = await startTestEdge();
    const health = await t.get('/_edge/health');
    expect(health.status).toBe(200);
    expect((await health.json()).status).toBe('ok');
    const reserved = await t.get('/_edge/whatever');
    expect(reserved.status).toBe(404);
    expect((await reserved.json()).error).toBe('EDGE_NOT_FOUND');
    expect(t.origin.requests.length).toBe(0);
  });

  it('exposes Prometheus metrics', async () => {
    t = await startTestEdge();
    t.origin.set('/m', { headers: { 'cache-control': 'max-age=60' }, body: 'm' });
    await (await t.get('/m')).text();
    await (await t.get('/m')).text();
    const text = await (await t.get('/_edge/metrics')).text();
    expect(text).toMatch(/edge_requests_total\{outcome="hit",status="2xx"\} 1/);
    expect(text).toMatch(/edge_requests_total\{outcome="miss",status="2xx"\} 1/);
  });
});
