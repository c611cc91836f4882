/**
 * Issue 15, status page: `GET /_edge/stats` (shape, a ring buffer bounded
 * to one hour, counts that match the traffic made), the top-URL counter's
 * bound, and the page's gate: off without an admin token, a wrong token
 * refused, the session cookie's CSRF check, the admin listener only.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Agent, fetch as undiciFetch } from 'undici';
import { answeredBy, CLUSTER_AUTH, send, startCluster, stopCluster } from './helpers/cluster-node.js';
import { startTestOrigin } from './helpers/origin.js';
import { mergeStatsSnapshots, SERIES_COLUMNS, StatsRecorder, STATS_INTERVAL_MS, STATS_POINTS, type StatsSnapshot } from '../edge/node/status-stats.js';
import { TopCounter } from '../edge/node/top-counter.js';
import { SESSION_LIFETIME_MS } from '../edge/core/admin-session.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const TOKEN = 'status-page-token-0123456789abcdef';
const AUTH = { authorization: `Bearer ${TOKEN}` };
const JSON_TYPE = { 'content-type': 'application/json' };

let t: TestEdge | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

async function stats(edge: TestEdge): Promise<StatsSnapshot> {
  const response = await edge.get('/_edge/stats', { headers: AUTH });
  expect(response.status).toBe(200);
  expect(response.headers.get('cache-control')).toBe('no-store');
  return (await response.json()) as StatsSnapshot;
}

async function drain(response: Response): Promise<string> {
  return response.text();
}

/** Sign in as the page does; the cookie pair to send back and the CSRF token. */
async function login(edge: TestEdge): Promise<{ cookie: string; csrf: string; setCookie: string }> {
  const response = await edge.get('/_edge/login', { method: 'POST', headers: JSON_TYPE, body: JSON.stringify({ token: TOKEN }) });
  expect(response.status).toBe(200);
  const body = (await response.json()) as { csrf: string };
  const setCookie = response.headers.get('set-cookie')!;
  return { cookie: setCookie.split(';')[0]!, csrf: body.csrf, setCookie };
}

describe('GET /_edge/stats', () => {
  it('counts the traffic made: requests, hits, misses, bytes served and fetched, top URLs; the page polling is not counted', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const a = 'a'.repeat(1000);
    const b = 'b'.repeat(300);
    t.origin.set('/a.css', { headers: { 'cache-control': 'max-age=60' }, body: a });
    t.origin.set('/b.js?v=1', { headers: { 'cache-control': 'max-age=60' }, body: b });
    const before = await stats(t);
    expect(before.totals.requests).toBe(0);

    for (let i = 0; i < 4; i++) await drain(await t.get('/a.css'));
    for (let i = 0; i < 2; i++) await drain(await t.get('/b.js?v=1'));
    await drain(await t.get('/a.css', { method: 'HEAD' }));
    await t.settle();
    // Polling the page's data is not traffic.
    await stats(t);
    const s = await stats(t);

    expect(s.totals).toMatchObject({ requests: 7, hits: 5, misses: 2, revalidated: 0, passes: 0, errors: 0 });
    expect(s.totals.bytesServed).toBe(4 * a.length + 2 * b.length);
    expect(s.totals.originBytes).toBe(a.length + b.length);
    // The injected clock did not move: everything is in the newest point.
    for (const column of SERIES_COLUMNS) {
      expect(s.series[column].at(-1)).toBe(s.totals[column]);
      expect(s.series[column].slice(0, -1).every((n) => n === 0)).toBe(true);
    }
    expect(s.top.requests).toEqual([
      { key: '/a.css', count: 5, error: 0 },
      { key: '/b.js?v=1', count: 2, error: 0 },
    ]);
    expect(s.top.misses).toEqual([
      { key: '/a.css', count: 1, error: 0 },
      { key: '/b.js?v=1', count: 1, error: 0 },
    ]);
    expect(s.workers).toEqual([{ pid: process.pid, startedAt: s.startedAt, requests: 7 }]);
  });

  it('counts a stale answer served while the origin is asked in the background as a hit, and a stale copy fetched again in the request as a miss', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/swr', { headers: { 'cache-control': 'max-age=1, stale-while-revalidate=600' }, body: 'swr' });
    t.origin.set('/refetch', { headers: { 'cache-control': 'max-age=1' }, body: 'refetch' });
    await drain(await t.get('/swr'));
    await drain(await t.get('/refetch'));
    await t.settle();
    t.clock.advance(5000);
    const stale = await t.get('/swr');
    expect(stale.headers.get('cache-status')).toMatch(/^edge; hit/);
    await drain(stale);
    const refetched = await t.get('/refetch');
    expect(refetched.headers.get('cache-status')).toMatch(/fwd=stale/);
    await drain(refetched);
    await t.settle();
    expect(t.origin.count('/refetch')).toBe(2);

    const s = await stats(t);
    expect(s.totals).toMatchObject({ requests: 4, hits: 1, misses: 3 });
    expect(s.top.misses).toEqual([
      { key: '/refetch', count: 2, error: 0 },
      { key: '/swr', count: 1, error: 0 },
    ]);
  });

  it('has the documented shape: the tiers against their budgets, flights, the image queue, origins, purges', async () => {
    t = await startTestEdge({ adminToken: TOKEN, memorySize: '1MB', diskSize: '64MB' });
    t.origin.set('/x', { headers: { 'cache-control': 'max-age=60' }, body: 'x'.repeat(5000) });
    await drain(await t.get('/x'));
    await t.settle();
    const purged = await t.get('/_edge/purge', { method: 'POST', headers: { ...AUTH, ...JSON_TYPE }, body: JSON.stringify({ urls: ['/x'], soft: true }) });
    expect(purged.status).toBe(200);
    await purged.text();

    const s = await stats(t);
    expect(Object.keys(s).sort()).toEqual(
      ['name', 'at', 'startedAt', 'intervalMs', 'series', 'totals', 'tiers', 'inFlight', 'images', 'origins', 'top', 'purges', 'workers'].sort(),
    );
    expect(s.name).toBe('edge');
    expect(s.at).toBe(t.clock.now());
    expect(s.intervalMs).toBe(STATS_INTERVAL_MS);
    expect(s.series.points).toBe(STATS_POINTS);
    expect(s.series.start).toBe((Math.floor(t.clock.now() / STATS_INTERVAL_MS) - STATS_POINTS + 1) * STATS_INTERVAL_MS);
    for (const column of SERIES_COLUMNS) expect(s.series[column]).toHaveLength(STATS_POINTS);
    expect(s.tiers.map((tier) => [tier.name, tier.maxBytes])).toEqual([
      ['memory', 1024 * 1024],
      ['disk', 64 * 1024 * 1024],
    ]);
    for (const tier of s.tiers) expect(tier).toMatchObject({ entries: 1 });
    expect(s.tiers[1]!.bytes).toBeGreaterThanOrEqual(5000);
    expect(s.inFlight).toEqual({ flights: 0, waiters: 0 });
    expect(s.images).toEqual({ running: 0, queued: 0, maxQueue: t.options.transformQueue, concurrency: expect.any(Number) });
    // One origin URL: no pool, no shields, nothing with a health state.
    expect(s.origins).toEqual([]);
    expect(s.purges).toEqual([{ at: t.clock.now(), kind: 'urls', targets: ['/x'], soft: true, purged: 1 }]);
  });

  it('lists origin pool members and shields with their health (a single origin keeps none)', async () => {
    const shield = await startTestEdge();
    try {
      shield.origin.set('/s', { headers: { 'cache-control': 'max-age=60' }, body: 's' });
      t = await startTestEdge({ adminToken: TOKEN, origin: shield.origin.url, shield: shield.edge.url });
      await drain(await t.get('/s'));
      let s = await stats(t);
      expect(s.origins).toEqual([
        { kind: 'shield', group: null, url: expect.stringContaining(new URL(shield.edge.url).host), healthy: true, available: true, inFlight: null, requests: 1, failures: 0, lastError: null },
      ]);
      await t.close();
      t = undefined;

      // A pool: one live member and one where nothing listens.
      t = await startTestEdge({ adminToken: TOKEN, origin: `${shield.origin.url},http://127.0.0.1:9` });
      s = await stats(t);
      expect(s.origins).toHaveLength(2);
      expect(s.origins.map((o) => [o.kind, o.url, o.healthy, o.inFlight])).toEqual([
        ['member', expect.stringContaining(new URL(shield.origin.url).host), true, 0],
        ['member', expect.stringContaining('127.0.0.1:9'), true, 0],
      ]);
      expect(new Set(s.origins.map((o) => o.group)).size).toBe(1);
    } finally {
      await shield.close();
    }
  });

  it('keeps one point per interval for one hour: older points leave the window, totals stay', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/p', { headers: { 'cache-control': 'max-age=60' }, body: 'p' });
    // Start on an interval boundary, so each step lands in the next point.
    t.clock.set(Math.ceil(t.clock.now() / STATS_INTERVAL_MS) * STATS_INTERVAL_MS + 10 * STATS_INTERVAL_MS);
    const first = t.clock.now();
    for (let i = 0; i < 3; i++) {
      for (let n = 0; n <= i; n++) await drain(await t.get('/p'));
      t.clock.advance(STATS_INTERVAL_MS);
    }
    // 1, 2 and 3 requests in three consecutive points, then an empty one under way.
    let s = await stats(t);
    expect(s.series.requests.slice(-4)).toEqual([1, 2, 3, 0]);
    const index = (at: number) => (Math.floor(at / STATS_INTERVAL_MS) * STATS_INTERVAL_MS - s.series.start) / STATS_INTERVAL_MS;
    expect(index(first)).toBe(STATS_POINTS - 4);

    // Half an hour on, the points have moved back by 360 and are all still there.
    t.clock.advance(360 * STATS_INTERVAL_MS);
    s = await stats(t);
    expect(s.series.requests).toHaveLength(STATS_POINTS);
    expect(s.series.requests.slice(index(first), index(first) + 3)).toEqual([1, 2, 3]);
    expect(s.series.requests.reduce((x, y) => x + y)).toBe(6);

    // One point past the hour the oldest has left; then all of them.
    t.clock.advance((STATS_POINTS - 360 - 3) * STATS_INTERVAL_MS);
    s = await stats(t);
    expect(s.series.requests).toHaveLength(STATS_POINTS);
    expect(s.series.requests.slice(0, 2)).toEqual([2, 3]);
    t.clock.advance(10 * 24 * 3600 * 1000);
    s = await stats(t);
    expect(s.series.requests).toHaveLength(STATS_POINTS);
    expect(s.series.requests.every((n) => n === 0)).toBe(true);
    expect(s.totals.requests).toBe(6);

    // Traffic after the gap counts in the newest point again.
    await drain(await t.get('/p'));
    s = await stats(t);
    expect(s.series.requests.at(-1)).toBe(1);
    expect(s.totals.requests).toBe(7);
  });
});

describe('mergeStatsSnapshots (cluster sums)', () => {
  it('adds series point by point aligned on time, when one worker has moved on an interval more than another', () => {
    let clockA = 100 * STATS_INTERVAL_MS;
    let clockB = 100 * STATS_INTERVAL_MS;
    const a = new StatsRecorder({ now: () => clockA });
    const b = new StatsRecorder({ now: () => clockB });
    const record = (at: number, path: string) => ({ method: 'GET', path, status: 200, durationMs: 1, at, bytes: 10, requestId: 'r', answeredBy: 'hit' as const, outcome: 'hit' as const });
    a.observe(record(clockA, '/x'));
    b.observe(record(clockB, '/x'));
    clockA += STATS_INTERVAL_MS;
    a.observe(record(clockA, '/y'));
    a.observe(record(clockA, '/y'));
    const sources = { name: 'edge', tiers: () => [{ name: 'memory', entries: 1, bytes: 10, maxBytes: 100 }, { name: 'disk', entries: 2, bytes: 20, maxBytes: 1000 }], inFlight: () => ({ flights: 1, waiters: 2 }) };
    // B has not seen the new interval yet: its newest point is A's second newest.
    const merged = mergeStatsSnapshots([b.snapshot(sources), a.snapshot(sources)]);
    expect(merged.series.start).toBe(a.snapshot(sources).series.start);
    expect(merged.series.requests).toHaveLength(STATS_POINTS);
    expect(merged.series.requests.slice(-3)).toEqual([0, 2, 2]);
    expect(merged.totals.requests).toBe(4);
    expect(merged.totals.bytesServed).toBe(40);
    expect(merged.tiers).toEqual([
      { name: 'memory', entries: 2, bytes: 20, maxBytes: 200 },
      { name: 'disk', entries: 2, bytes: 20, maxBytes: 1000 },
    ]);
    expect(merged.inFlight).toEqual({ flights: 2, waiters: 4 });
    expect(merged.images).toBeNull();
    expect(merged.top.requests).toEqual([
      { key: '/x', count: 2, error: 0 },
      { key: '/y', count: 2, error: 0 },
    ]);
    expect(merged.workers).toHaveLength(2);
  });
});

describe('TopCounter (top URLs in bounded memory)', () => {
  it('holds at most twice its capacity whatever the number of distinct keys, and keeps a frequent key with a count never below its true count', () => {
    const top = new TopCounter(100);
    let heavy = 0;
    for (let i = 0; i < 50_000; i++) {
      top.add(`/unique/${i}`);
      if (i % 10 === 0) {
        top.add('/heavy');
        heavy++;
      }
      expect(top.size).toBeLessThanOrEqual(200);
    }
    const [first] = top.top(1);
    expect(first!.key).toBe('/heavy');
    expect(first!.count).toBeGreaterThanOrEqual(heavy);
    expect(first!.count - first!.error).toBeLessThanOrEqual(heavy);
  });

  it('counts exactly while under its capacity, and counts long keys by their first 256 characters', () => {
    const top = new TopCounter(10);
    for (let i = 0; i < 5; i++) for (let n = 0; n <= i; n++) top.add(`/k${i}`);
    top.add('/' + 'x'.repeat(1000));
    top.add('/' + 'x'.repeat(999) + 'y');
    expect(top.top(3)).toEqual([
      { key: '/k4', count: 5, error: 0 },
      { key: '/k3', count: 4, error: 0 },
      { key: '/k2', count: 3, error: 0 },
    ]);
    expect(top.top(10).find((entry) => entry.key.startsWith('/xxx'))).toEqual({ key: '/' + 'x'.repeat(255), count: 2, error: 0 });
  });
});

describe('status page access', () => {
  it('is off without an admin token, like the rest of the admin API (404 JSON)', async () => {
    t = await startTestEdge();
    for (const [path, init] of [
      ['/_edge/', {}],
      ['/_edge/stats', {}],
      ['/_edge/assets/status.js', {}],
      ['/_edge/session', {}],
      ['/_edge/login', { method: 'POST', headers: JSON_TYPE, body: JSON.stringify({ token: 'anything' }) }],
    ] as const) {
      const response = await t.get(path, init as RequestInit);
      expect(response.status, path).toBe(404);
      expect(await response.json(), path).toMatchObject({ error: 'EDGE_ADMIN_DISABLED' });
    }
  });

  it('refuses a wrong token (login and bearer), a tampered or expired session cookie, and a login that is not JSON', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const wrong = await t.get('/_edge/login', { method: 'POST', headers: JSON_TYPE, body: JSON.stringify({ token: TOKEN + 'x' }) });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('set-cookie')).toBeNull();
    expect(await wrong.json()).toMatchObject({ error: 'EDGE_UNAUTHORIZED' });
    const bearer = await t.get('/_edge/stats', { headers: { authorization: 'Bearer not-the-token' } });
    expect(bearer.status).toBe(401);
    expect(await bearer.json()).toMatchObject({ error: 'EDGE_UNAUTHORIZED' });
    const none = await t.get('/_edge/stats');
    expect(none.status).toBe(401);
    await none.text();
    const form = await t.get('/_edge/login', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${TOKEN}` });
    expect(form.status).toBe(415);
    expect(await form.json()).toMatchObject({ error: 'EDGE_UNSUPPORTED_MEDIA_TYPE' });
    const malformed = await t.get('/_edge/login', { method: 'POST', headers: JSON_TYPE, body: '{"token":' });
    expect(malformed.status).toBe(400);
    expect(await malformed.json()).toMatchObject({ error: 'EDGE_BAD_REQUEST' });

    const { cookie, setCookie } = await login(t);
    expect(setCookie).toMatch(/^edge_admin_session=[\w-]+\.\d+\.[\w-]+; Path=\/_edge\/; HttpOnly; SameSite=Strict$/);
    const ok = await t.get('/_edge/stats', { headers: { cookie } });
    expect(ok.status).toBe(200);
    await ok.text();
    // Any change to the value (the expiry here) breaks its MAC.
    const [name, value] = cookie.split('=') as [string, string];
    const [id, expiry, mac] = value.split('.') as [string, string, string];
    const tampered = await t.get('/_edge/stats', { headers: { cookie: `${name}=${id}.${Number(expiry) + 1}.${mac}` } });
    expect(tampered.status).toBe(401);
    expect(await tampered.json()).toMatchObject({ error: 'EDGE_UNAUTHORIZED' });
    const session = await t.get('/_edge/session', { headers: { cookie: `${name}=${id}.${Number(expiry) + 1}.${mac}` } });
    expect(await session.json()).toEqual({ signedIn: false });

    t.clock.advance(SESSION_LIFETIME_MS);
    const expired = await t.get('/_edge/stats', { headers: { cookie } });
    expect(expired.status).toBe(401);
    expect(await expired.json()).toMatchObject({ error: 'EDGE_UNAUTHORIZED' });
  });

  it('refuses a change made with the session cookie without its CSRF token (403 JSON, nothing purged); bearer calls need none', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/kept', { headers: { 'cache-control': 'max-age=60' }, body: 'kept' });
    await drain(await t.get('/kept'));
    await t.settle();
    const { cookie, csrf } = await login(t);
    const purge = (headers: Record<string, string>) =>
      t!.get('/_edge/purge', { method: 'POST', headers: { ...JSON_TYPE, ...headers }, body: JSON.stringify({ urls: ['/kept'] }) });

    const attempts: Record<string, string>[] = [{ cookie }, { cookie, 'x-edge-csrf': csrf.slice(0, -1) + (csrf.endsWith('A') ? 'B' : 'A') }, { cookie, 'x-edge-csrf': '' }];
    for (const headers of attempts) {
      const refused = await purge(headers);
      expect(refused.status).toBe(403);
      expect(await refused.json()).toMatchObject({ error: 'EDGE_FORBIDDEN' });
    }
    const del = await t.get('/_edge/push/kept', { method: 'DELETE', headers: { cookie } });
    expect(del.status).toBe(403);
    await del.text();
    // Still cached: the next request is a hit and the origin was asked once.
    const still = await t.get('/kept');
    expect(still.headers.get('cache-status')).toMatch(/^edge; hit/);
    await still.text();
    expect(t.origin.count('/kept')).toBe(1);

    const session = await t.get('/_edge/session', { headers: { cookie } });
    expect(await session.json()).toEqual({ signedIn: true, csrf, expiresAt: expect.any(Number) });
    const accepted = await purge({ cookie, 'x-edge-csrf': csrf });
    expect(accepted.status).toBe(200);
    expect(await accepted.json()).toEqual({ purged: 1 });
    const byBearer = await purge(AUTH);
    expect(byBearer.status).toBe(200);
    await byBearer.text();
    // A read with the cookie needs no CSRF token.
    const objects = await t.get('/_edge/objects', { headers: { cookie } });
    expect(objects.status).toBe(200);
    await objects.text();
  });

  it('with --admin-listen, is served on the admin listener only', async () => {
    t = await startTestEdge({ adminToken: TOKEN, adminListen: '127.0.0.1:0' });
    const client = new Agent();
    try {
      for (const path of ['/_edge/', '/_edge/stats', '/_edge/assets/status.js']) {
        const publicAnswer = await t.get(path, { headers: AUTH });
        expect(publicAnswer.status, path).toBe(404);
        expect(await publicAnswer.json(), path).toMatchObject({ error: 'EDGE_NOT_FOUND' });
        const adminAnswer = (await undiciFetch(t.edge.adminUrl + path, { headers: AUTH, dispatcher: client })) as unknown as Response;
        expect(adminAnswer.status, path).toBe(200);
        await adminAnswer.text();
      }
    } finally {
      await client.close();
    }
  });

  it('serves the page with a strict Content-Security-Policy and its files from the node', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const page = await t.get('/_edge/');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
    const csp = page.headers.get('content-security-policy')!;
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain('unsafe-inline');
    const html = await page.text();
    // No inline script: every script element has a src.
    expect(html.match(/<script\b[^>]*>/g)!.every((tag) => / src="\/_edge\/assets\/[\w.]+"/.test(tag))).toBe(true);
    for (const [file, type] of [
      ['status.js', 'text/javascript; charset=utf-8'],
      ['status.css', 'text/css; charset=utf-8'],
      ['uplot.js', 'text/javascript; charset=utf-8'],
      ['uplot.css', 'text/css; charset=utf-8'],
    ]) {
      const asset = await t.get(`/_edge/assets/${file}`);
      expect(asset.status, file).toBe(200);
      expect(asset.headers.get('content-type'), file).toBe(type);
      expect((await asset.text()).length, file).toBeGreaterThan(100);
    }
    const missing = await t.get('/_edge/assets/package.json');
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ error: 'EDGE_NOT_FOUND' });
  });
});

describe('GET /_edge/stats with --workers 2', () => {
  it('sums every worker: requests, series, memory tiers (one per worker), the shared disk tier once, top URLs; lists both workers', async () => {
    const origin = await startTestOrigin();
    origin.set('/c', { headers: { 'cache-control': 'max-age=60' }, body: 'c'.repeat(100) });
    const node = await startCluster(origin.url, ['--memory-size', '8MB', '--disk-size', '64MB']);
    const { url } = node;
    try {
      const answers = [];
      for (let i = 0; i < 20; i++) answers.push(await send(`${url}/c`));
      const processes = new Set(answers.map(answeredBy));
      expect(processes.size).toBe(2);

      const s = JSON.parse((await send(`${url}/_edge/stats`, { headers: CLUSTER_AUTH })).body.toString()) as StatsSnapshot;
      expect(s.totals.requests).toBe(20);
      expect(s.totals.hits + s.totals.misses).toBe(20);
      expect(s.totals.bytesServed).toBe(20 * 100);
      expect(s.series.requests.reduce((a, b) => a + b)).toBe(20);
      expect(s.series.requests).toHaveLength(STATS_POINTS);
      expect(s.workers).toHaveLength(2);
      expect(s.workers.every((w) => w.requests > 0)).toBe(true);
      expect(s.workers.reduce((sum, w) => sum + w.requests, 0)).toBe(20);
      expect(s.tiers.map((tier) => [tier.name, tier.maxBytes])).toEqual([
        ['memory', 2 * 8 * 1024 * 1024],
        ['disk', 64 * 1024 * 1024],
      ]);
      expect(s.tiers[1]!.entries).toBe(1);
      expect(s.top.requests).toEqual([{ key: '/c', count: 20, error: 0 }]);
    } finally {
      await stopCluster(node);
      await origin.close();
    }
  }, 60_000);
});
