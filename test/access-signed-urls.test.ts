/**
 * Signed URLs and signed cookies (README "Access control"): refused before
 * any cache or origin work, signature fields neither keyed nor forwarded,
 * key rotation by kid, one scheme with image URLs. Real origin, real node.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { signCookie, signUrl } from '../edge/core/access/signing.js';
import { signImagePath } from '../edge/core/image/params.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { startTestOrigin } from './helpers/origin.js';

const KEY = 'signing-key-0123456789abcdef';
const OLD = 'older-key-fedcba9876543210';

const edges: TestEdge[] = [];
afterEach(async () => {
  for (const edge of edges.splice(0)) await edge.close();
});

async function start(input: Record<string, unknown> = {}): Promise<TestEdge> {
  const edge = await startTestEdge({ signedPaths: '/private/,/video/', urlSigningKey: `k2=${KEY},k1=${OLD}`, ...input });
  edges.push(edge);
  return edge;
}

const seconds = (edge: TestEdge) => Math.floor(edge.clock.now() / 1000);

describe('signed URLs', () => {
  it('refuses unsigned, tampered and expired URLs with 403 JSON before any cache or origin work', async () => {
    const edge = await start();
    edge.origin.set('/private/a.txt', { headers: { 'cache-control': 'max-age=600' }, body: 'secret' });
    const signed = await signUrl('/private/a.txt?v=1', { key: `k2=${KEY}`, expires: seconds(edge) + 60 });

    const unsigned = await edge.get('/private/a.txt?v=1');
    expect(unsigned.status).toBe(403);
    expect(unsigned.headers.get('content-type')).toContain('application/json');
    expect(await unsigned.json()).toMatchObject({ error: 'EDGE_BAD_SIGNATURE', reason: 'missing' });

    const tampered = await edge.get(signed.replace('v=1', 'v=2'));
    expect(tampered.status).toBe(403);
    expect((await tampered.json()).reason).toBe('bad-signature');

    const longer = await edge.get(signed.replace(/expires=\d+/, `expires=${seconds(edge) + 99_999}`));
    expect(longer.status).toBe(403);
    expect(edge.origin.count()).toBe(0);

    const ok = await edge.get(signed);
    expect(ok.status).toBe(200);
    expect(await ok.text()).toBe('secret');

    edge.clock.advance(61_000);
    const expired = await edge.get(signed);
    expect(expired.status).toBe(403);
    expect((await expired.json()).reason).toBe('expired');
    expect(edge.origin.count()).toBe(1);
  });

  it('keys two signatures of one object once, and forwards neither sig, expires nor kid', async () => {
    const edge = await start();
    edge.origin.set('/video/v.mp4', { headers: { 'cache-control': 'max-age=600' }, body: 'movie' });
    const a = await signUrl('/video/v.mp4?q=hd', { key: `k2=${KEY},k1=${OLD}`, expires: seconds(edge) + 60 });
    const b = await signUrl('/video/v.mp4?q=hd', { key: `k2=${KEY},k1=${OLD}`, keyId: 'k1', expires: seconds(edge) + 120 });
    expect(a).not.toBe(b);
    expect((await edge.get(a)).status).toBe(200);
    await edge.settle();
    const second = await edge.get(b);
    expect(second.status).toBe(200);
    expect(second.headers.get('cache-status')).toMatch(/hit/);
    expect(edge.origin.count()).toBe(1);
    expect(edge.origin.requests[0]!.url).toBe('/video/v.mp4?q=hd');
  });

  it('answers a signed hit on the fast path only after the check, and leaves public paths alone', async () => {
    const edge = await start();
    edge.origin.set('/private/hit.txt', { headers: { 'cache-control': 'max-age=600' }, body: 'x' });
    edge.origin.set('/public.txt', { headers: { 'cache-control': 'max-age=600' }, body: 'p' });
    const signed = await signUrl('/private/hit.txt', { key: KEY, expires: seconds(edge) + 60 });
    expect((await edge.get(signed)).status).toBe(200);
    await edge.settle();
    // A stored object is still refused without a signature (the fast path must not answer it).
    expect((await edge.get('/private/hit.txt')).status).toBe(403);
    expect((await edge.get(signed)).status).toBe(200);
    expect((await edge.get('/public.txt')).status).toBe(200);
    expect((await edge.get('/public.txt?expires=1')).status).toBe(200);
  });

  it('refuses an unknown kid', async () => {
    const edge = await start();
    const signed = await signUrl('/private/a', { key: `k9=${KEY}`, expires: seconds(edge) + 60 });
    const res = await edge.get(signed);
    expect(res.status).toBe(403);
    expect((await res.json()).reason).toBe('unknown-key');
  });

  it('protects a route with access.signed', async () => {
    const origin = await startTestOrigin();
    const edge = await startTestEdge(
      { urlSigningKey: KEY, origins: { groups: [{ name: 'main', members: [origin.url] }], routes: [{ match: { pathPrefix: '/docs/' }, access: { signed: true } }] } },
      { origin },
    );
    edges.push(edge);
    edge.close = ((close) => async () => {
      await close();
      await origin.close();
    })(edge.close);
    origin.set('/docs/x', { body: 'doc' });
    expect((await edge.get('/docs/x')).status).toBe(403);
    expect((await edge.get(await signUrl('/docs/x', { key: KEY, expires: seconds(edge) + 5 }))).status).toBe(200);
    expect((await edge.get('/other')).status).not.toBe(403);
  });

  it('uses the image scheme: a signUrl URL is a valid image signature, and signImagePath signs private URLs', async () => {
    const edge = await start({ imageSigningKey: KEY, urlSigningKey: KEY });
    const path = '/private/p.txt';
    const expires = String(seconds(edge) + 60);
    const params = new URLSearchParams({ expires });
    const sig = await signImagePath(KEY, path, params, (name) => name.startsWith('utm_'));
    edge.origin.set(path, { body: 'p' });
    expect((await edge.get(`${path}?expires=${expires}&sig=${sig}&utm_source=x`)).status).toBe(200);
  });
});

describe('signed cookies', () => {
  it('serves every object under the prefix, refuses one outside, and forwards no access cookie', async () => {
    const edge = await start({ trustedProxies: '127.0.0.1' });
    for (const name of ['index.m3u8', 'seg1.ts', 'seg2.ts']) edge.origin.set(`/video/123/${name}`, { headers: { 'cache-control': 'max-age=600' }, body: name });
    edge.origin.set('/video/456/seg1.ts', { body: 'other' });
    const cookie = await signCookie({ p: '/video/123/', e: seconds(edge) + 60 }, KEY);
    const headers = { cookie: `theme=dark; Edge-Access=${cookie}` };
    for (const name of ['index.m3u8', 'seg1.ts', 'seg2.ts']) {
      const res = await edge.get(`/video/123/${name}`, { headers });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe(name);
    }
    const outside = await edge.get('/video/456/seg1.ts', { headers });
    expect(outside.status).toBe(403);
    expect((await outside.json()).reason).toBe('wrong-prefix');
    for (const request of edge.origin.requests) expect(request.headers.cookie).toBe('theme=dark');
  });

  it('keys objects without the access cookie, so cookie holders share one cached copy', async () => {
    const edge = await start();
    edge.origin.set('/video/9/seg.ts', { headers: { 'cache-control': 'public, max-age=600' }, body: 'seg' });
    const one = await signCookie({ p: '/video/9/', e: seconds(edge) + 60 }, KEY);
    const two = await signCookie({ p: '/video/', e: seconds(edge) + 90 }, `k1=${OLD}`);
    expect((await edge.get('/video/9/seg.ts', { headers: { cookie: `Edge-Access=${one}` } })).status).toBe(200);
    await edge.settle();
    const res = await edge.get('/video/9/seg.ts', { headers: { cookie: `Edge-Access=${two}` } });
    expect(res.status).toBe(200);
    expect(edge.origin.count()).toBe(1);
    expect(edge.origin.requests[0]!.headers.cookie).toBeUndefined();
  });

  it('binds a cookie to the client address, read through a trusted proxy', async () => {
    const edge = await start({ trustedProxies: '127.0.0.1' });
    edge.origin.set('/video/1/a.ts', { body: 'a' });
    const cookie = await signCookie({ p: '/video/1/', e: seconds(edge) + 60, ip: '198.51.100.7' }, KEY);
    const as = (ip: string) => edge.get('/video/1/a.ts', { headers: { cookie: `Edge-Access=${cookie}`, 'x-forwarded-for': ip } });
    expect((await as('198.51.100.7')).status).toBe(200);
    const other = await as('198.51.100.8');
    expect(other.status).toBe(403);
    expect((await other.json()).reason).toBe('wrong-ip');
  });

  it('refuses an expired or forged cookie', async () => {
    const edge = await start();
    const cookie = await signCookie({ p: '/video/', e: seconds(edge) + 10 }, KEY);
    const forged = cookie.replace(/^[^.]+/, btoa(JSON.stringify({ p: '/', e: 9_999_999_999 })).replace(/=+$/, ''));
    expect((await edge.get('/video/a', { headers: { cookie: `Edge-Access=${forged}` } })).status).toBe(403);
    edge.clock.advance(11_000);
    const res = await edge.get('/video/a', { headers: { cookie: `Edge-Access=${cookie}` } });
    expect((await res.json()).reason).toBe('expired');
  });
});
