/**
 * Hardening: image parameters on a real node in front of a real origin.
 *
 * - Parameter values that name `Object.prototype` members (`fit=constructor`,
 *   `format=__proto__`, ...) are bad parameters, 400 JSON, never 500.
 * - An image request (one carrying at least one image parameter) refuses any
 *   other parameter with 400 naming it, as imgproxy does: otherwise `&x=1`,
 *   `&x=2`, ... each cost an origin fetch, a stored source and a transform.
 *   Parameters the node ignores (`--ignore-query-params`, default `utm_*`,
 *   `fbclid`, `gclid`) are dropped instead, and a signed URL with one of them
 *   appended still verifies.
 */
import sharp from 'sharp';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { signImagePath } from '../edge/core/image/params.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

let t: TestEdge | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

let photo: Buffer;
beforeAll(async () => {
  photo = await sharp({ create: { width: 400, height: 300, channels: 3, background: { r: 200, g: 40, b: 40 } } }).jpeg().toBuffer();
});

async function start(options: Record<string, unknown> = {}): Promise<TestEdge> {
  t = await startTestEdge(options);
  t.origin.set('/photo.jpg', { headers: { 'content-type': 'image/jpeg', 'cache-control': 'public, max-age=3600', etag: '"v1"' }, body: photo });
  return t;
}

async function expectBadParameter(res: Response, parameter: string): Promise<{ error: string; message: string }> {
  const text = await res.text();
  expect(res.status, text).toBe(400);
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  const body = JSON.parse(text) as { error: string; message: string; parameter?: string };
  expect(body.error).toBe('EDGE_BAD_PARAMETER');
  expect(typeof body.message).toBe('string');
  expect(body.parameter).toBe(parameter);
  return body;
}

async function expectImageWidth(res: Response, width: number): Promise<void> {
  const bytes = Buffer.from(await res.arrayBuffer());
  expect(res.status, bytes.toString('utf8', 0, 200)).toBe(200);
  expect((await sharp(bytes).metadata()).width).toBe(width);
}

describe('image parameter values that name Object.prototype members', () => {
  const cases: [query: string, parameter: string][] = [
    ['w=100&fit=constructor', 'fit'],
    ['w=100&fit=__proto__', 'fit'],
    ['w=100&fit=toString', 'fit'],
    ['w=100&fit=hasOwnProperty', 'fit'],
    ['w=100&format=constructor', 'format'],
    ['w=100&f=__proto__', 'f'],
    ['w=100&format=valueOf', 'format'],
    ['w=100&h=100&fit=cover&position=constructor', 'position'],
    ['w=100&h=100&fit=cover&position=__proto__', 'position'],
    ['w=100&enlarge=constructor', 'enlarge'],
  ];

  it.each(cases)('?%s is 400 EDGE_BAD_PARAMETER naming %s, and the origin is not asked', async (query, parameter) => {
    await start();
    await expectBadParameter(await t!.get(`/photo.jpg?${query}`), parameter);
    expect(t!.origin.count()).toBe(0);
  });

  it('?constructor=1 and ?__proto__=1 beside an image parameter are unknown parameters, not 500', async () => {
    await start();
    await expectBadParameter(await t!.get('/photo.jpg?w=100&constructor=1'), 'constructor');
    await expectBadParameter(await t!.get('/photo.jpg?w=100&__proto__=1'), '__proto__');
    expect(t!.origin.count()).toBe(0);
  });
});

describe('unknown parameters on image requests', () => {
  it('are refused with 400 naming the parameter; no fetch, no stored source, no transform', async () => {
    await start();
    for (const n of [1, 2, 3]) {
      const body = await expectBadParameter(await t!.get(`/photo.jpg?w=100&x=${n}`), 'x');
      expect(body.message).toMatch(/'x' is not an image parameter/);
    }
    expect(t!.origin.count()).toBe(0);
    const keys: string[] = [];
    for await (const meta of t!.edge.store.list()) keys.push(meta.key);
    expect(keys).toEqual([]);
  });

  it('do not touch requests without image parameters, or non-image URLs', async () => {
    await start();
    t!.origin.set('/api/search', { headers: { 'cache-control': 'max-age=60' }, body: 'results' });
    const original = await t!.get('/photo.jpg?x=1');
    expect(original.status).toBe(200);
    expect(Buffer.from(await original.arrayBuffer()).equals(photo)).toBe(true);
    const api = await t!.get('/api/search?w=100&x=1');
    expect(await api.text()).toBe('results');
  });

  it('ignored tracking parameters (utm_*, fbclid, gclid) are dropped: one source fetch, one variant', async () => {
    await start();
    await expectImageWidth(await t!.get('/photo.jpg?w=100'), 100);
    await expectImageWidth(await t!.get('/photo.jpg?w=100&utm_source=news&utm_medium=mail'), 100);
    await expectImageWidth(await t!.get('/photo.jpg?fbclid=abc&w=100'), 100);
    const last = await t!.get('/photo.jpg?w=100&gclid=xyz');
    expect(last.headers.get('cache-status')).toMatch(/hit/);
    await expectImageWidth(last, 100);
    expect(t!.origin.count('/photo.jpg')).toBe(1);
    const variants: string[] = [];
    for await (const meta of t!.edge.store.list()) if (meta.key.includes('#img:')) variants.push(meta.key);
    expect(variants).toHaveLength(1);
  });

  it('follow --ignore-query-params when it is configured', async () => {
    await start({ ignoreQueryParams: 'ref,track_*' });
    await expectImageWidth(await t!.get('/photo.jpg?w=100&ref=home&track_id=7'), 100);
    await expectBadParameter(await t!.get('/photo.jpg?w=100&utm_source=news'), 'utm_source');
  });
});

describe('signed image URLs and ignored parameters', () => {
  const key = 'hardening-signing-key-0123456789';

  it('a signed URL with a tracking parameter appended still verifies; other parameters do not', async () => {
    await start({ imageSigningKey: key });
    const sig = await signImagePath(key, '/photo.jpg', new URLSearchParams('w=100&format=jpeg'));
    await expectImageWidth(await t!.get(`/photo.jpg?w=100&format=jpeg&sig=${sig}`), 100);
    await expectImageWidth(await t!.get(`/photo.jpg?w=100&format=jpeg&sig=${sig}&utm_source=newsletter&fbclid=abc`), 100);
    const extra = await t!.get(`/photo.jpg?w=100&format=jpeg&sig=${sig}&x=1`);
    expect(extra.status).toBe(403);
    expect((await extra.json()).error).toBe('EDGE_BAD_SIGNATURE');
    expect(t!.origin.count('/photo.jpg')).toBe(1);
  });

  it('the signature still covers unknown parameters the signer included: signed, then refused as unknown', async () => {
    await start({ imageSigningKey: key });
    const sig = await signImagePath(key, '/photo.jpg', new URLSearchParams('w=100&x=1'));
    await expectBadParameter(await t!.get(`/photo.jpg?w=100&x=1&sig=${sig}`), 'x');
  });
});
