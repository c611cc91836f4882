/**
 * Rate limits (README "Access control"): per client IP through trusted
 * proxies, 429 JSON with Retry-After and the IETF RateLimit fields, the
 * fields on answers within limits too, the window moved with the injected
 * clock, cache hits counted or not per route, bounded counters.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { RateLimiter, parseRateLimit } from '../edge/core/access/rate-limit.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

const edges: TestEdge[] = [];
const origins: TestOrigin[] = [];
afterEach(async () => {
  for (const edge of edges.splice(0)) await edge.close();
  for (const origin of origins.splice(0)) await origin.close();
});

async function start(input: Record<string, unknown>, origin?: TestOrigin): Promise<TestEdge> {
  const edge = await startTestEdge({ trustedProxies: '127.0.0.1', ...input }, origin ? { origin } : {});
  edges.push(edge);
  edge.origin.set('/a', { headers: { 'cache-control': 'max-age=600' }, body: 'a' });
  return edge;
}

const from = (ip: string) => ({ headers: { 'x-forwarded-for': ip } });

describe('rate limits', () => {
  it('5/1s: 20 quick requests from one client, at least 14 refused; another client unaffected; the next window serves again', async () => {
    const edge = await start({ rateLimit: '5/1s' });
    const answers = [];
    for (let i = 0; i < 20; i++) {
      const res = await edge.get('/a', from('203.0.113.1'));
      answers.push({ status: res.status, headers: res.headers, body: await res.text() });
    }
    const refused = answers.filter((res) => res.status === 429);
    expect(refused.length).toBeGreaterThanOrEqual(14);
    expect(answers.filter((res) => res.status === 200)).toHaveLength(5);
    const first = refused[0]!;
    expect(Number(first.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(first.headers.get('ratelimit-policy')).toBe('"default";q=5;w=1');
    expect(first.headers.get('ratelimit')).toMatch(/^"default";r=0;t=\d+$/);
    expect(first.headers.get('content-type')).toContain('application/json');
    expect(JSON.parse(first.body)).toMatchObject({ error: 'EDGE_RATE_LIMITED' });
    // Within limits the fields are sent too.
    expect(answers[0]!.headers.get('ratelimit')).toBe('"default";r=4;t=1');
    expect(answers[4]!.headers.get('ratelimit')).toBe('"default";r=0;t=1');

    const other = await edge.get('/a', from('203.0.113.2'));
    expect(other.status).toBe(200);

    edge.clock.advance(1000);
    const again = await edge.get('/a', from('203.0.113.1'));
    expect(again.status).toBe(200);
    expect(again.headers.get('ratelimit')).toBe('"default";r=4;t=1');
  });

  it('ignores X-Forwarded-For from a peer that is not a trusted proxy', async () => {
    const edge = await start({ rateLimit: '2/1s', trustedProxies: '' });
    const statuses = [];
    for (const ip of ['198.51.100.1', '198.51.100.2', '198.51.100.3']) statuses.push((await edge.get('/a', from(ip))).status);
    expect(statuses).toEqual([200, 200, 429]);
  });

  it('route limits replace the global one, and a route may leave cache hits uncounted', async () => {
    const origin = await startTestOrigin();
    origins.push(origin);
    const edge = await start(
      {
        rateLimit: '100/1s',
        origins: {
          groups: [{ name: 'main', members: [origin.url] }],
          routes: [
            { match: { pathPrefix: '/api/' }, access: { rateLimit: '2/1m', rateLimitHits: false } },
            { match: { pathPrefix: '/open/' }, access: { rateLimit: 'off' } },
          ],
        },
      },
      origin,
    );
    origin.set('/api/cached', { headers: { 'cache-control': 'max-age=600' }, body: 'c' });
    origin.set('/api/live', { headers: { 'cache-control': 'no-store' }, body: 'l' });
    origin.set('/open/x', { body: 'x' });
    // One miss (counted), then hits (free).
    for (let i = 0; i < 5; i++) {
      const res = await edge.get('/api/cached', from('203.0.113.9'));
      expect(res.status).toBe(200);
      expect(res.headers.get('ratelimit-policy')).toBe('"route0";q=2;w=60');
      await edge.settle();
    }
    expect((await edge.get('/api/live', from('203.0.113.9'))).status).toBe(200);
    const over = await edge.get('/api/live', from('203.0.113.9'));
    expect(over.status).toBe(429);
    expect(Number(over.headers.get('retry-after'))).toBeLessThanOrEqual(60);
    const open = await edge.get('/open/x', from('203.0.113.9'));
    expect(open.status).toBe(200);
    expect(open.headers.get('ratelimit')).toBeNull();
  });

  it('counts cache hits served by the fast path by default', async () => {
    const edge = await start({ rateLimit: '3/1s' });
    expect((await edge.get('/a', from('192.0.2.1'))).headers.get('cache-status')).toMatch(/fwd=uri-miss/);
    await edge.settle();
    const hits = [await edge.get('/a', from('192.0.2.1')), await edge.get('/a', from('192.0.2.1'))];
    for (const hit of hits) expect(hit.headers.get('cache-status')).toMatch(/hit/);
    expect(hits[1]!.headers.get('ratelimit')).toBe('"default";r=0;t=1');
    expect((await edge.get('/a', from('192.0.2.1'))).status).toBe(429);
  });
});

describe('RateLimiter', () => {
  it('keeps at most maxEntries counters whatever the number of clients', () => {
    let now = 0;
    const limiter = new RateLimiter({ maxEntries: 100, now: () => now });
    const limit = parseRateLimit('1/1s')!;
    for (let i = 0; i < 10_000; i++) expect(limiter.take('default', limit, `ip:${i}`).allowed).toBe(true);
    expect(limiter.size).toBe(100);
    expect(limiter.take('default', limit, 'ip:9999').allowed).toBe(false);
    now += 1000;
    expect(limiter.take('default', limit, 'ip:9999').allowed).toBe(true);
  });

  it('parses N/window', () => {
    expect(parseRateLimit('100/1s')).toEqual({ quota: 100, windowMs: 1000 });
    expect(parseRateLimit('10/m')).toEqual({ quota: 10, windowMs: 60_000 });
    for (const bad of ['100', '0/1s', '5/500ms', 'x/1s', '5/2w']) expect(parseRateLimit(bad)).toBeUndefined();
  });
});
