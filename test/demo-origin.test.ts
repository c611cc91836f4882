import { createHash } from 'node:crypto';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDemoOrigin, type DemoOrigin } from '../edge/node/demo-origin.js';
import { DEMO_INDEX_PATH, DEMO_OBJECTS, type DemoObject } from '../fixtures/demo-objects.js';

let origin: DemoOrigin;
let startedBefore: number;

beforeAll(async () => {
  startedBefore = Date.now();
  origin = await startDemoOrigin();
});

afterAll(async () => {
  await origin?.close();
});

function get(path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Response> {
  return fetch(`${origin.url}${path}`, { method, headers });
}

async function bytes(res: Response): Promise<Buffer> {
  return Buffer.from(await res.arrayBuffer());
}

function byPath(path: string): DemoObject {
  const object = DEMO_OBJECTS.find((o) => o.path === path);
  if (!object) throw new Error(`no demo object ${path}`);
  return object;
}

const JSON_PATH = '/data/products.json';

describe('demo origin: objects', () => {
  it.each(DEMO_OBJECTS.map((o) => [o.path, o] as const))('serves %s with its declared metadata', async (path, object) => {
    const res = await get(path);
    const body = await bytes(res);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(object.contentType);
    expect(res.headers.get('content-length')).toBe(String(body.length));
    expect(res.headers.get('accept-ranges')).toBe('bytes');
    expect(res.headers.get('x-amz-request-id')).toMatch(/^[0-9A-F]{16}$/);
    expect(res.headers.get('etag')).toBe(`"${createHash('md5').update(body).digest('hex')}"`);
    expect(res.headers.get('date')).toBeTruthy();
    for (const [name, value] of Object.entries(object.headers)) {
      expect(res.headers.get(name)).toBe(value);
    }
    if (object.headers['cache-control'] === undefined) expect(res.headers.has('cache-control')).toBe(false);
    if (object.body !== undefined) expect(body.toString('utf8')).toBe(object.body);
    if (typeof object.lastModified === 'string') {
      expect(res.headers.get('last-modified')).toBe(new Date(object.lastModified).toUTCString());
    }
  });

  it('covers the behaviours the README promises', () => {
    const cacheControl = DEMO_OBJECTS.map((o) => o.headers['cache-control'] ?? '');
    expect(cacheControl).toContain('public, max-age=60');
    expect(cacheControl).toContain('public, max-age=5, stale-while-revalidate=30');
    expect(cacheControl).toContain('public, max-age=31536000, immutable');
    expect(cacheControl).toContain('no-cache');
    expect(cacheControl.some((cc) => cc.startsWith('private'))).toBe(true);
    expect(DEMO_OBJECTS.some((o) => o.headers['cache-tag'] !== undefined)).toBe(true);
    expect(DEMO_OBJECTS.some((o) => Object.keys(o.headers).length === 0)).toBe(true);
    for (const o of DEMO_OBJECTS) expect((o.body === undefined) !== (o.image === undefined)).toBe(true);
  });

  it('answers GET / with the index listing, which links every object', async () => {
    const [root, index] = await Promise.all([get('/'), get(DEMO_INDEX_PATH)]);
    const html = await root.text();
    expect(root.status).toBe(200);
    expect(root.headers.get('content-type')).toMatch(/^text\/html/);
    expect(html).toBe(await index.text());
    expect(root.headers.get('etag')).toBe(index.headers.get('etag'));
    for (const o of DEMO_OBJECTS) {
      if (o.path !== DEMO_INDEX_PATH) expect(html).toContain(`href="${o.path}"`);
    }
  });

  it('gives the heuristic-freshness object a Last-Modified relative to start-up', async () => {
    const object = DEMO_OBJECTS.find((o) => typeof o.lastModified !== 'string')!;
    const res = await get(object.path);
    expect(res.headers.has('cache-control')).toBe(false);
    const lastModified = Date.parse(res.headers.get('last-modified')!);
    const offset = (object.lastModified as { secondsBeforeStart: number }).secondsBeforeStart * 1000;
    expect(lastModified).toBeGreaterThanOrEqual(startedBefore - offset - 1000);
    expect(lastModified).toBeLessThanOrEqual(Date.now() - offset);
  });

  it('answers HEAD with the GET headers and no body', async () => {
    const [head, full] = await Promise.all([get(JSON_PATH, {}, 'HEAD'), get(JSON_PATH)]);
    expect(head.status).toBe(200);
    expect((await bytes(head)).length).toBe(0);
    for (const name of ['etag', 'last-modified', 'content-type', 'content-length', 'cache-control', 'cache-tag']) {
      expect(head.headers.get(name)).toBe(full.headers.get(name));
    }
  });

  it('ignores the query string, like S3 GetObject', async () => {
    const res = await get(`${JSON_PATH}?utm_source=test`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe(byPath(JSON_PATH).body);
  });
});

describe('demo origin: images', () => {
  it.each([
    ['/images/gradient.jpg', 'jpeg', 2400, 1600, false],
    ['/images/logo.png', 'png', 512, 512, true],
    ['/images/photo.webp', 'webp', 1200, 800, false],
  ] as const)('%s decodes as %s %dx%d', async (path, format, width, height, alpha) => {
    const spec = byPath(path).image!;
    expect([spec.format, spec.width, spec.height]).toEqual([format, width, height]);
    const res = await get(path);
    const meta = await sharp(await bytes(res)).metadata();
    expect(meta.format).toBe(format);
    expect(meta.width).toBe(width);
    expect(meta.height).toBe(height);
    expect(meta.hasAlpha).toBe(alpha);
  });

  it('renders the same bytes (same ETag) in a second origin', async () => {
    const second = await startDemoOrigin();
    try {
      for (const path of ['/images/gradient.jpg', '/images/logo.png', '/images/photo.webp']) {
        const [a, b] = await Promise.all([get(path, {}, 'HEAD'), fetch(`${second.url}${path}`, { method: 'HEAD' })]);
        expect(b.headers.get('etag')).toBe(a.headers.get('etag'));
      }
    } finally {
      await second.close();
    }
  });

  it('has a partly transparent logo (anti-aliased alpha, not just 0/255)', async () => {
    const { data } = await sharp(await bytes(await get('/images/logo.png')))
      .extractChannel('alpha')
      .raw()
      .toBuffer({ resolveWithObject: true });
    const values = new Set(data);
    expect(values.has(0)).toBe(true);
    expect(values.has(255)).toBe(true);
    expect(values.size).toBeGreaterThan(2);
  });
});

describe('demo origin: conditional requests', () => {
  async function validators(path = JSON_PATH): Promise<{ etag: string; lastModified: string }> {
    const res = await get(path, {}, 'HEAD');
    return { etag: res.headers.get('etag')!, lastModified: res.headers.get('last-modified')! };
  }

  it('answers a matching If-None-Match with 304, validators and cache headers, no body', async () => {
    const { etag, lastModified } = await validators();
    const res = await get(JSON_PATH, { 'if-none-match': etag });
    expect(res.status).toBe(304);
    expect(res.headers.get('etag')).toBe(etag);
    expect(res.headers.get('last-modified')).toBe(lastModified);
    expect(res.headers.get('cache-control')).toBe('public, max-age=60');
    expect(res.headers.get('cache-tag')).toBe('catalog');
    expect(res.headers.get('date')).toBeTruthy();
    expect(res.headers.has('content-type')).toBe(false);
    expect((await bytes(res)).length).toBe(0);
  });

  it('uses weak comparison and lists for If-None-Match', async () => {
    const { etag } = await validators();
    expect((await get(JSON_PATH, { 'if-none-match': `W/${etag}` })).status).toBe(304);
    expect((await get(JSON_PATH, { 'if-none-match': `"nope", ${etag}` })).status).toBe(304);
    expect((await get(JSON_PATH, { 'if-none-match': '*' })).status).toBe(304);
    expect((await get(JSON_PATH, { 'if-none-match': '"nope"' })).status).toBe(200);
  });

  it('answers HEAD conditionally too', async () => {
    const { etag } = await validators();
    expect((await get(JSON_PATH, { 'if-none-match': etag }, 'HEAD')).status).toBe(304);
  });

  it('answers If-Modified-Since at or after Last-Modified with 304', async () => {
    const { lastModified } = await validators();
    const later = new Date(Date.parse(lastModified) + 3_600_000).toUTCString();
    const earlier = new Date(Date.parse(lastModified) - 1000).toUTCString();
    expect((await get(JSON_PATH, { 'if-modified-since': lastModified })).status).toBe(304);
    expect((await get(JSON_PATH, { 'if-modified-since': later })).status).toBe(304);
    const changed = await get(JSON_PATH, { 'if-modified-since': earlier });
    expect(changed.status).toBe(200);
    expect(await changed.text()).toBe(byPath(JSON_PATH).body);
    expect((await get(JSON_PATH, { 'if-modified-since': 'not a date' })).status).toBe(200);
  });

  it('ignores If-Modified-Since when If-None-Match is present (RFC 9110 13.1.3)', async () => {
    const { lastModified } = await validators();
    const res = await get(JSON_PATH, { 'if-none-match': '"other"', 'if-modified-since': lastModified });
    expect(res.status).toBe(200);
  });

  it('answers a failed If-Match or If-Unmodified-Since with 412', async () => {
    const { etag, lastModified } = await validators();
    expect((await get(JSON_PATH, { 'if-match': '"other"' })).status).toBe(412);
    expect((await get(JSON_PATH, { 'if-match': etag })).status).toBe(200);
    const earlier = new Date(Date.parse(lastModified) - 1000).toUTCString();
    expect((await get(JSON_PATH, { 'if-unmodified-since': earlier })).status).toBe(412);
  });
});

describe('demo origin: ranges', () => {
  const path = '/images/logo.png';
  let full: Buffer;
  let etag: string;

  beforeAll(async () => {
    const res = await get(path);
    etag = res.headers.get('etag')!;
    full = await bytes(res);
  });

  it.each([
    ['bytes=0-9', 0, 9],
    ['bytes=100-', 100, -1],
    ['bytes=-20', -20, -1],
    ['bytes=10-999999999', 10, -1],
  ])('answers %s with 206', async (range, first, last) => {
    const start = first < 0 ? full.length + first : first;
    const end = last < 0 ? full.length - 1 : last;
    const res = await get(path, { range });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes ${start}-${end}/${full.length}`);
    expect(res.headers.get('content-length')).toBe(String(end - start + 1));
    expect(res.headers.get('etag')).toBe(etag);
    expect((await bytes(res)).equals(full.subarray(start, end + 1))).toBe(true);
  });

  it('answers an unsatisfiable range with 416 and Content-Range: bytes */size', async () => {
    for (const range of [`bytes=${full.length}-`, 'bytes=-0']) {
      const res = await get(path, { range });
      expect(res.status).toBe(416);
      expect(res.headers.get('content-range')).toBe(`bytes */${full.length}`);
      expect(res.headers.has('cache-control')).toBe(false);
      expect(await res.text()).toContain('<Code>InvalidRange</Code>');
    }
  });

  it('sends the whole object for ranges it does not support or cannot parse', async () => {
    for (const range of ['bytes=0-1,5-6', 'items=0-1', 'bytes=9-2', 'bytes=-']) {
      const res = await get(path, { range });
      expect(res.status).toBe(200);
      expect((await bytes(res)).length).toBe(full.length);
    }
  });

  it('honours If-Range only when it matches', async () => {
    const matching = await get(path, { range: 'bytes=0-9', 'if-range': etag });
    expect(matching.status).toBe(206);
    await matching.arrayBuffer();
    const stale = await get(path, { range: 'bytes=0-9', 'if-range': '"old"' });
    expect(stale.status).toBe(200);
    expect((await bytes(stale)).length).toBe(full.length);
  });
});

describe('demo origin: errors', () => {
  it('answers a missing key with an S3 NoSuchKey XML 404 and no Cache-Control', async () => {
    const res = await get('/data/missing.json');
    const body = await res.text();
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toBe('application/xml');
    expect(res.headers.has('cache-control')).toBe(false);
    expect(res.headers.has('etag')).toBe(false);
    expect(body).toMatch(/^<\?xml version="1.0" encoding="UTF-8"\?>\n<Error><Code>NoSuchKey<\/Code>/);
    expect(body).toContain('<Key>data/missing.json</Key>');
    expect(body).toContain(`<RequestId>${res.headers.get('x-amz-request-id')}</RequestId>`);
  });

  it('answers other methods with 405 and Allow', async () => {
    const res = await fetch(`${origin.url}${JSON_PATH}`, { method: 'POST', body: '{}' });
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('GET, HEAD');
    expect(await res.text()).toContain('<Code>MethodNotAllowed</Code>');
  });

  it('counts every request it receives', async () => {
    const before = origin.requests;
    await (await get(JSON_PATH)).arrayBuffer();
    await (await get('/nope')).arrayBuffer();
    expect(origin.requests).toBe(before + 2);
  });

  it('rejects bad options with a TypeError naming the option', async () => {
    await expect(startDemoOrigin({ port: -1 })).rejects.toThrow(/"port"/);
  });
});
