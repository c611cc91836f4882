/**
 * Route cache rules (config file `origins.routes[].cache`): cache an API's
 * JSON at the edge without changing the API.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { startTestOrigin } from './helpers/origin.js';

let t: TestEdge;
afterEach(async () => {
  await t?.close();
});

async function edgeWithRoutes(routes: unknown[]) {
  const origin = await startTestOrigin();
  t = await startTestEdge({ origins: { groups: [{ name: 'api', members: [origin.url] }], routes } }, { origin });
  const close = t.close;
  t.close = async () => {
    await close();
    await origin.close();
  };
  return t;
}

describe('route cache rules', () => {
  it('caches /api/categories for 60 s at the edge although the API sends no freshness', async () => {
    await edgeWithRoutes([{ match: { pathPrefix: '/api/categories' }, cache: { ttl: 60 } }]);
    t.origin.set('/api/categories', { headers: { 'content-type': 'application/json' }, body: '["a","b"]' });
    for (let i = 0; i < 5; i++) expect(await (await t.get('/api/categories')).text()).toBe('["a","b"]');
    expect(t.origin.count('/api/categories')).toBe(1);
    const hit = await t.get('/api/categories');
    expect(hit.headers.get('cache-status')).toMatch(/^edge; hit; ttl=60/);
    // The rule governs this cache only: nothing about it reaches the client.
    expect(hit.headers.get('edge-cache-control')).toBeNull();
    expect(hit.headers.get('cache-control')).toBeNull();
    t.clock.advance(61_000);
    await (await t.get('/api/categories')).text();
    expect(t.origin.count('/api/categories')).toBe(2);
  });

  it('leaves origin freshness alone unless overrideTtl is set', async () => {
    await edgeWithRoutes([
      { match: { pathPrefix: '/api/own' }, cache: { ttl: 60 } },
      { match: { pathPrefix: '/api/forced' }, cache: { ttl: 60, overrideTtl: true } },
    ]);
    t.origin.set('/api/own', { headers: { 'cache-control': 'max-age=5' }, body: 'own' });
    t.origin.set('/api/forced', { headers: { 'cache-control': 'no-cache' }, body: 'forced' });
    await (await t.get('/api/own')).text();
    expect((await t.get('/api/own')).headers.get('cache-status')).toMatch(/ttl=5$/);
    await (await t.get('/api/forced')).text();
    const forced = await t.get('/api/forced');
    expect(forced.headers.get('cache-status')).toMatch(/^edge; hit; ttl=60/);
    expect(forced.headers.get('cache-control')).toBe('no-cache');
    expect(t.origin.count('/api/forced')).toBe(1);
  });

  it('bypasses the cache for a bypass route', async () => {
    await edgeWithRoutes([{ match: { pathPrefix: '/api/live' }, cache: { bypass: true } }]);
    t.origin.set('/api/live', { headers: { 'cache-control': 'public, max-age=600' }, body: 'live' });
    const first = await t.get('/api/live');
    expect(first.headers.get('cache-status')).toBe('edge; fwd=bypass');
    await first.text();
    await (await t.get('/api/live')).text();
    expect(t.origin.count('/api/live')).toBe(2);
  });

  it('keys only on the listed query parameters', async () => {
    await edgeWithRoutes([{ match: { pathPrefix: '/api/search' }, cache: { ttl: 30, queryParams: ['q'] } }]);
    t.origin.set('/api/search', { body: 'results' });
    await (await t.get('/api/search?q=cats&session=1')).text();
    const same = await t.get('/api/search?session=2&q=cats');
    expect(same.headers.get('cache-status')).toMatch(/^edge; hit/);
    const other = await t.get('/api/search?q=dogs');
    expect(other.headers.get('cache-status')).toMatch(/miss/);
  });

  it('adds the listed request headers to the key', async () => {
    await edgeWithRoutes([{ match: { pathPrefix: '/api/i18n' }, cache: { ttl: 30, keyHeaders: ['X-Country'] } }]);
    t.origin.route('/api/i18n', (req, res) => res.end(`hello from ${req.headers['x-country']}`));
    expect(await (await t.get('/api/i18n', { headers: { 'x-country': 'fr' } })).text()).toBe('hello from fr');
    expect(await (await t.get('/api/i18n', { headers: { 'x-country': 'de' } })).text()).toBe('hello from de');
    const fr = await t.get('/api/i18n', { headers: { 'x-country': 'fr' } });
    expect(fr.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(await fr.text()).toBe('hello from fr');
    expect(t.origin.count('/api/i18n')).toBe(2);
  });

  it('serves stale for the route grace window when the origin fails', async () => {
    await edgeWithRoutes([{ match: { pathPrefix: '/api/menu' }, cache: { ttl: 10, grace: 300 } }]);
    t.origin.set('/api/menu', [{ body: 'menu' }, { status: 503, body: 'down' }]);
    await (await t.get('/api/menu')).text();
    t.clock.advance(20_000);
    const stale = await t.get('/api/menu');
    expect(stale.status).toBe(200);
    expect(await stale.text()).toBe('menu');
    expect(stale.headers.get('cache-status')).toMatch(/fwd-status=503; detail=stale-if-error/);
  });
});
