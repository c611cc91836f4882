/**
 * Image variants end to end: a real node in front of a real scriptable
 * origin, every image answer decoded again with sharp (format and
 * dimensions). Source images are generated here with sharp; nothing binary
 * is committed. Parsing and the transformer alone are covered by
 * image-params.test.ts and sharp-transformer.test.ts.
 */
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import sharp, { type Metadata } from 'sharp';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { signImagePath } from '../edge/core/image/params.js';
import { createTestClock } from './helpers/clock.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { createGate, setDated, type OriginResponseSpec } from './helpers/origin.js';

let t: TestEdge;
/** The test clock's start, on a whole second so HTTP-dates are exact. */
let t0: number;

afterEach(async () => {
  await t?.close();
});

async function start(options: Record<string, unknown> = {}): Promise<TestEdge> {
  t0 = Math.floor(Date.now() / 1000) * 1000;
  // No real-time deadline unless a test is about it: a loaded machine may take
  // longer than the default 10 s to encode a large AVIF.
  t = await startTestEdge({ transformTimeout: '1h', ...options }, { clock: createTestClock(t0) });
  return t;
}

const httpDate = (ms: number) => new Date(ms).toUTCString();
const advance = (seconds: number) => t.clock.advance(seconds * 1000);

/** Script `path` on the origin, each answer dated with the node's clock. */
const set = (path: string, spec: OriginResponseSpec | OriginResponseSpec[]) => setDated(t.origin, t.clock.now, path, spec);

/** A cacheable image answer. */
function imageSpec(body: Uint8Array, type: string, headers: Record<string, string> = {}): OriginResponseSpec {
  return { headers: { 'content-type': type, 'cache-control': 'public, max-age=3600', etag: '"v1"', ...headers }, body };
}

type Decoded = { bytes: Buffer; meta: Metadata; format: string };

/** sharp reports AVIF as HEIF with AV1 compression. */
function formatOf(meta: Metadata): string {
  if (meta.format === 'heif') return meta.compression === 'av1' ? 'avif' : 'heif';
  return meta.format ?? 'unknown';
}

/**
 * Decode an image answer and check it: status 200, the content type and
 * the decoded format agree, and the dimensions are the expected ones.
 */
async function expectImage(res: Response, format: 'avif' | 'webp' | 'jpeg' | 'png', width: number, height: number): Promise<Decoded> {
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toBe(`image/${format}`);
  const bytes = Buffer.from(await res.arrayBuffer());
  expect(res.headers.get('content-length')).toBe(String(bytes.length));
  const meta = await sharp(bytes).metadata();
  expect(formatOf(meta)).toBe(format);
  expect([meta.width, meta.pageHeight ?? meta.height]).toEqual([width, height]);
  return { bytes, meta, format: formatOf(meta) };
}

/** A JSON error answer: status, code, no-store, and the body as an object. */
async function expectError(res: Response, status: number, code: string): Promise<{ error: string; message: string; parameter?: string; [k: string]: unknown }> {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  expect(res.headers.get('cache-control')).toBe('no-store');
  const body = await res.json();
  expect(body.error).toBe(code);
  expect(typeof body.message).toBe('string');
  // Messages are for people: no stack traces or libvips internals.
  expect(JSON.stringify(body)).not.toMatch(/\.ts:|vips|at [A-Za-z]+ \(/);
  return body;
}

/**
 * A GET with `node:http`, on its own connection. Not `fetch`: it adds
 * `Cache-Control: no-cache` to conditional requests (as a browser's cache
 * does on reload), which asks the node to revalidate.
 */
function raw(path: string, headers: Record<string, string>): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: t.edge.port, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
        req.destroy();
      });
    });
    req.on('error', reject);
    req.end();
  });
}

/** Every stored key (all tiers; the tiered store lists the last one). */
async function storedKeys(): Promise<string[]> {
  const keys: string[] = [];
  for await (const meta of t.edge.store.list()) keys.push(meta.key);
  return keys;
}

const variantKeys = async () => (await storedKeys()).filter((k) => k.includes('#img:'));

/** Mean [r, g, b] of an image. */
async function meanColour(bytes: Uint8Array): Promise<number[]> {
  const { channels } = await sharp(bytes).stats();
  return channels.slice(0, 3).map((c) => Math.round(c.mean));
}

const noise = (width: number, height: number) =>
  sharp({ create: { width, height, channels: 3, background: 'grey', noise: { type: 'gaussian', mean: 128, sigma: 40 } } });

const ACCEPT_AVIF = 'image/avif,image/webp,image/apng,image/*,*/*;q=0.8';
const ACCEPT_WEBP = 'image/webp,*/*';
const ACCEPT_WEBP_OTHER = 'text/html,application/xhtml+xml,application/xml;q=0.9,image/webp;q=0.9,*/*;q=0.8';

const fx = {} as {
  photo: Buffer; // 800x600 noisy JPEG
  photo2: Buffer; // 400x300 noisy JPEG (a changed source)
  redBlue: Buffer; // 200x100 PNG, left half red, right half blue
  rotated: Buffer; // stored 200x100, EXIF orientation 6 (displays 100x200)
  cmyk: Buffer; // 64x64 CMYK JPEG
  animatedGif: Buffer; // 3 frames of 64x48
  twoK: Buffer; // 2000x2000 flat JPEG
  twoKHeaderOnly: Buffer; // fx.twoK cut just after its scan header: dimensions readable, pixels not decodable
  big: Buffer; // 1600x1600 noisy JPEG: about a second or two to encode as AVIF
};

beforeAll(async () => {
  fx.photo = await noise(800, 600).jpeg({ quality: 90 }).toBuffer();
  fx.photo2 = await noise(400, 300).jpeg({ quality: 90 }).toBuffer();
  const red = await sharp({ create: { width: 100, height: 100, channels: 3, background: { r: 255, g: 0, b: 0 } } }).png().toBuffer();
  fx.redBlue = await sharp({ create: { width: 200, height: 100, channels: 3, background: { r: 0, g: 0, b: 255 } } })
    .composite([{ input: red, left: 0, top: 0 }])
    .png()
    .toBuffer();
  fx.rotated = await sharp({ create: { width: 200, height: 100, channels: 3, background: 'blue' } })
    .jpeg()
    .withMetadata({ orientation: 6 })
    .toBuffer();
  fx.cmyk = await sharp({ create: { width: 64, height: 64, channels: 3, background: { r: 200, g: 30, b: 40 } } })
    .toColourspace('cmyk')
    .jpeg()
    .toBuffer();
  const frames = await Promise.all(
    ['red', 'lime', 'blue'].map((background) => sharp({ create: { width: 64, height: 48, channels: 4, background } }).png().toBuffer()),
  );
  fx.animatedGif = await sharp(frames, { join: { animated: true } }).gif({ delay: 100 }).toBuffer();
  fx.twoK = await sharp({ create: { width: 2000, height: 2000, channels: 3, background: 'white' } }).jpeg({ quality: 10 }).toBuffer();
  const sos = fx.twoK.indexOf(Buffer.from([0xff, 0xda]));
  fx.twoKHeaderOnly = fx.twoK.subarray(0, sos + 2 + fx.twoK.readUInt16BE(sos + 2) + 16);
  fx.big = await noise(1600, 1600).jpeg({ quality: 90 }).toBuffer();
});

describe('image parameters, long and short forms', () => {
  it('width / w: resizes keeping the aspect ratio; both spellings share one variant', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    const first = await t.get('/photo.jpg?width=200');
    expect(first.headers.get('cache-status')).toMatch(/^edge; fwd=miss; stored; ttl=3600; detail=transformed$/);
    const a = await expectImage(first, 'jpeg', 200, 150);
    const short = await t.get('/photo.jpg?w=200');
    expect(short.headers.get('cache-status')).toMatch(/^edge; hit/);
    const b = await expectImage(short, 'jpeg', 200, 150);
    expect(b.bytes.equals(a.bytes)).toBe(true);
    expect(t.origin.count('/photo.jpg')).toBe(1);
  });

  it('height / h', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    await expectImage(await t.get('/photo.jpg?height=150'), 'jpeg', 200, 150);
    const short = await t.get('/photo.jpg?h=150');
    expect(short.headers.get('cache-status')).toMatch(/^edge; hit/);
    await expectImage(short, 'jpeg', 200, 150);
  });

  it.each([
    ['cover', 300, 300, 300, 300],
    ['contain', 300, 300, 300, 300],
    ['fill', 300, 100, 300, 100],
    ['inside', 300, 300, 300, 225],
    ['outside', 300, 300, 400, 300],
  ] as const)('fit=%s %ix%i gives %ix%i', async (fit, width, height, w, h) => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    await expectImage(await t.get(`/photo.jpg?fit=${fit}&width=${width}&height=${height}`), 'jpeg', w, h);
  });

  it('fit=contain letterboxes (the source is not cropped)', async () => {
    await start();
    set('/rb.png', imageSpec(fx.redBlue, 'image/png'));
    // 200x100 into 100x100: both colours survive, with bars above and below.
    const { bytes } = await expectImage(await t.get('/rb.png?fit=contain&w=100&h=100'), 'png', 100, 100);
    const left = await sharp(bytes).extract({ left: 10, top: 50, width: 1, height: 1 }).removeAlpha().raw().toBuffer();
    const right = await sharp(bytes).extract({ left: 90, top: 50, width: 1, height: 1 }).removeAlpha().raw().toBuffer();
    expect(left[0]).toBeGreaterThan(200);
    expect(right[2]).toBeGreaterThan(200);
  });

  it('never enlarges unless enlarge=1', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    await expectImage(await t.get('/photo.jpg?width=1600'), 'jpeg', 800, 600);
    await expectImage(await t.get('/photo.jpg?fit=fill&width=1600&height=1000'), 'jpeg', 800, 600);
    await expectImage(await t.get('/photo.jpg?width=1600&enlarge=1'), 'jpeg', 1600, 1200);
  });

  it('quality / q: lower quality, fewer bytes; both spellings share one variant', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    const low = await expectImage(await t.get('/photo.jpg?width=400&quality=20'), 'jpeg', 400, 300);
    const high = await expectImage(await t.get('/photo.jpg?width=400&quality=90'), 'jpeg', 400, 300);
    expect(low.bytes.length).toBeLessThan(high.bytes.length * 0.7);
    const lowShort = await t.get('/photo.jpg?width=400&q=20');
    expect(lowShort.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect((await expectImage(lowShort, 'jpeg', 400, 300)).bytes.equals(low.bytes)).toBe(true);
    // AVIF too (its scale is mapped, still monotonic).
    const avifLow = await expectImage(await t.get('/photo.jpg?width=400&f=avif&q=20'), 'avif', 400, 300);
    const avifHigh = await expectImage(await t.get('/photo.jpg?width=400&f=avif&q=90'), 'avif', 400, 300);
    expect(avifLow.bytes.length).toBeLessThan(avifHigh.bytes.length);
  });

  it.each([
    ['format=avif', 'avif'],
    ['f=avif', 'avif'],
    ['format=webp', 'webp'],
    ['f=webp', 'webp'],
    ['format=jpeg', 'jpeg'],
    ['f=jpg', 'jpeg'],
    ['format=png', 'png'],
    ['f=png', 'png'],
  ] as const)('%s converts to %s, whatever Accept says, without Vary', async (query, format) => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    const res = await t.get(`/photo.jpg?width=320&${query}`, { headers: { accept: format === 'avif' ? 'image/webp' : ACCEPT_AVIF } });
    expect(res.headers.get('vary')).toBeNull();
    const { meta } = await expectImage(res, format, 320, 240);
    if (format === 'jpeg') expect(meta.isProgressive).toBe(true);
    // Metadata is stripped: no EXIF, no ICC profile.
    expect(meta.exif).toBeUndefined();
    expect(meta.hasProfile).toBeFalsy();
  });

  it('dpr multiplies width and height', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    await expectImage(await t.get('/photo.jpg?width=100&dpr=2'), 'jpeg', 200, 150);
    await expectImage(await t.get('/photo.jpg?w=100&dpr=1.5'), 'jpeg', 150, 113);
    await expectImage(await t.get('/photo.jpg?w=100&h=100&fit=cover&dpr=3'), 'jpeg', 300, 300);
    // width=200 is the same variant as width=100&dpr=2.
    const same = await t.get('/photo.jpg?width=200');
    expect(same.headers.get('cache-status')).toMatch(/^edge; hit/);
    await expectImage(same, 'jpeg', 200, 150);
  });

  it('position: the cover crop follows the gravity', async () => {
    await start();
    set('/rb.png', imageSpec(fx.redBlue, 'image/png'));
    const left = await expectImage(await t.get('/rb.png?fit=cover&width=100&height=100&position=left'), 'png', 100, 100);
    expect(await meanColour(left.bytes)).toEqual([255, 0, 0]);
    const right = await expectImage(await t.get('/rb.png?fit=cover&width=100&height=100&position=right'), 'png', 100, 100);
    expect(await meanColour(right.bytes)).toEqual([0, 0, 255]);
    // Aliases (west) resolve to the same variant as their canonical name.
    const west = await t.get('/rb.png?fit=cover&width=100&height=100&position=west');
    expect(west.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect((await expectImage(west, 'png', 100, 100)).bytes.equals(left.bytes)).toBe(true);
    // Centre: half and half.
    const centre = await expectImage(await t.get('/rb.png?fit=cover&width=100&height=100'), 'png', 100, 100);
    const [r, , b] = await meanColour(centre.bytes);
    expect(r).toBeGreaterThan(100);
    expect(b).toBeGreaterThan(100);
  });

  it('applies the EXIF orientation (6) before stripping it', async () => {
    await start();
    set('/rotated.jpg', imageSpec(fx.rotated, 'image/jpeg'));
    const full = await expectImage(await t.get('/rotated.jpg?format=png'), 'png', 100, 200);
    expect(full.meta.orientation).toBeUndefined();
    const resized = await expectImage(await t.get('/rotated.jpg?width=50&format=jpeg'), 'jpeg', 50, 100);
    expect(resized.meta.orientation).toBeUndefined();
  });

  it('converts a CMYK source to sRGB', async () => {
    await start();
    set('/cmyk.jpg', imageSpec(fx.cmyk, 'image/jpeg'));
    expect((await sharp(fx.cmyk).metadata()).space).toBe('cmyk');
    for (const format of ['jpeg', 'webp', 'png'] as const) {
      const { bytes, meta } = await expectImage(await t.get(`/cmyk.jpg?width=32&format=${format}`), format, 32, 32);
      expect(meta.space).toBe('srgb');
      expect(meta.channels).toBe(3);
      const [r, g, b] = await meanColour(bytes);
      expect(r).toBeGreaterThan(150);
      expect(g).toBeLessThan(100);
      expect(b).toBeLessThan(100);
    }
  });

  it('keeps a GIF animation in WebP (preferred over AVIF for GIF sources) and flattens it to the first frame in PNG', async () => {
    await start();
    set('/anim.gif', imageSpec(fx.animatedGif, 'image/gif'));
    const webp = await expectImage(await t.get('/anim.gif?width=32', { headers: { accept: ACCEPT_AVIF } }), 'webp', 32, 24);
    expect(webp.meta.pages).toBe(3);
    const png = await expectImage(await t.get('/anim.gif?width=32&format=png'), 'png', 32, 24);
    expect(png.meta.pages ?? 1).toBe(1);
    expect(await meanColour(png.bytes)).toEqual([255, 0, 0]);
  });
});

describe('format=auto negotiation and the variant key', () => {
  it.each([
    [ACCEPT_AVIF, 'avif'],
    [ACCEPT_WEBP, 'webp'],
    ['*/*', 'jpeg'],
    ['image/*', 'jpeg'],
  ] as const)('Accept %s gives %s, with Vary: Accept', async (accept, format) => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    for (const query of ['width=400', 'width=400&format=auto', 'w=400&f=auto']) {
      const res = await t.get(`/photo.jpg?${query}`, { headers: { accept } });
      expect(res.headers.get('vary')).toBe('Accept');
      const { meta } = await expectImage(res, format, 400, 300);
      if (format === 'avif') {
        expect(meta.format).toBe('heif');
        expect(meta.compression).toBe('av1');
      }
    }
  });

  it('a PNG source without AVIF/WebP support stays PNG', async () => {
    await start();
    set('/rb.png', imageSpec(fx.redBlue, 'image/png'));
    await expectImage(await t.get('/rb.png?width=100', { headers: { accept: '*/*' } }), 'png', 100, 50);
  });

  it('keys the variant by the negotiated format, not the Accept string', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    const first = await t.get('/photo.jpg?width=200', { headers: { accept: ACCEPT_WEBP } });
    expect(first.headers.get('cache-status')).toMatch(/fwd=miss; stored/);
    const a = await expectImage(first, 'webp', 200, 150);

    // Another browser's Accept that also negotiates WebP: the same variant.
    const second = await t.get('/photo.jpg?width=200', { headers: { accept: ACCEPT_WEBP_OTHER } });
    expect(second.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(second.headers.get('vary')).toBe('Accept');
    expect((await expectImage(second, 'webp', 200, 150)).bytes.equals(a.bytes)).toBe(true);

    // An AVIF client: its own variant.
    const avif = await t.get('/photo.jpg?width=200', { headers: { accept: ACCEPT_AVIF } });
    expect(avif.headers.get('cache-status')).not.toMatch(/hit/);
    expect(avif.headers.get('cache-status')).toMatch(/fwd=miss; stored/);
    await expectImage(avif, 'avif', 200, 150);
    const avifAgain = await t.get('/photo.jpg?width=200', { headers: { accept: 'image/avif' } });
    expect(avifAgain.headers.get('cache-status')).toMatch(/^edge; hit/);
    await expectImage(avifAgain, 'avif', 200, 150);

    // Neither: the source format, a third variant.
    const plain = await t.get('/photo.jpg?width=200', { headers: { accept: '*/*' } });
    expect(plain.headers.get('cache-status')).not.toMatch(/hit/);
    await expectImage(plain, 'jpeg', 200, 150);

    expect(await variantKeys()).toHaveLength(3);
    expect(t.origin.count('/photo.jpg')).toBe(1);
  });

  it('an explicit format and the same negotiated format are the same variant', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    await expectImage(await t.get('/photo.jpg?width=200', { headers: { accept: ACCEPT_WEBP } }), 'webp', 200, 150);
    const explicit = await t.get('/photo.jpg?width=200&format=webp', { headers: { accept: '*/*' } });
    expect(explicit.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(explicit.headers.get('vary')).toBeNull();
    await expectImage(explicit, 'webp', 200, 150);
  });
});

describe('caching of variants and of the source', () => {
  it('caches the variant, and the source once for every width', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    const first = await t.get('/photo.jpg?width=300');
    const a = await expectImage(first, 'jpeg', 300, 225);
    const etag = first.headers.get('etag');
    expect(etag).toMatch(/^"[0-9a-f]+"$/);
    expect(etag).not.toBe('"v1"');

    advance(10);
    const second = await t.get('/photo.jpg?width=300');
    expect(second.headers.get('cache-status')).toBe('edge; hit; ttl=3590');
    expect(second.headers.get('age')).toBe('10');
    expect(second.headers.get('etag')).toBe(etag);
    expect((await expectImage(second, 'jpeg', 300, 225)).bytes.equals(a.bytes)).toBe(true);

    for (const width of [100, 200, 400, 500]) {
      await expectImage(await t.get(`/photo.jpg?width=${width}`), 'jpeg', width, (width * 3) / 4);
    }
    await expectImage(await t.get('/photo.jpg?width=200', { headers: { accept: ACCEPT_AVIF } }), 'avif', 200, 150);
    expect(t.origin.count('/photo.jpg')).toBe(1);
    // Image parameters never reach the origin.
    expect(t.origin.requests.map((r) => r.url)).toEqual(['/photo.jpg']);
  });

  it('passes the source through unchanged without parameters, and serves it from cache', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    const direct = await t.get('/photo.jpg', { headers: { accept: ACCEPT_AVIF } });
    expect(direct.status).toBe(200);
    expect(direct.headers.get('content-type')).toBe('image/jpeg');
    expect(direct.headers.get('etag')).toBe('"v1"');
    expect(direct.headers.get('vary')).toBeNull();
    expect(Buffer.from(await direct.arrayBuffer()).equals(fx.photo)).toBe(true);

    // The variant is made from the cached source.
    await expectImage(await t.get('/photo.jpg?width=100'), 'jpeg', 100, 75);
    const again = await t.get('/photo.jpg');
    expect(again.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(Buffer.from(await again.arrayBuffer()).equals(fx.photo)).toBe(true);
    expect(t.origin.count('/photo.jpg')).toBe(1);
  });

  it('a variant asked first caches its source for direct requests too', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    await expectImage(await t.get('/photo.jpg?width=100'), 'jpeg', 100, 75);
    await t.settle();
    const direct = await t.get('/photo.jpg');
    expect(direct.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(Buffer.from(await direct.arrayBuffer()).equals(fx.photo)).toBe(true);
    expect(t.origin.count('/photo.jpg')).toBe(1);
  });

  it('takes its freshness from the source, and refreshes without re-encoding when the source is unchanged (304)', async () => {
    await start();
    const headers = { 'content-type': 'image/jpeg', 'cache-control': 'max-age=60', etag: '"v1"' };
    set('/fresh.jpg', [{ headers, body: fx.photo }, { status: 304, headers: { 'cache-control': 'max-age=60', etag: '"v1"' } }]);

    const first = await t.get('/fresh.jpg?width=200');
    const ttl = Number(/ttl=(-?\d+)/.exec(first.headers.get('cache-status') ?? '')?.[1]);
    expect(ttl).toBeLessThanOrEqual(60);
    expect(ttl).toBeGreaterThan(55);
    const a = await expectImage(first, 'jpeg', 200, 150);
    const etag = first.headers.get('etag');

    advance(30);
    const fresh = await t.get('/fresh.jpg?width=200');
    expect(fresh.headers.get('cache-status')).toBe('edge; hit; ttl=30');
    await fresh.arrayBuffer();

    advance(31);
    const refreshed = await t.get('/fresh.jpg?width=200');
    expect(refreshed.headers.get('cache-status')).toMatch(/fwd=stale.*detail=source-unchanged/);
    expect(refreshed.headers.get('etag')).toBe(etag);
    expect((await expectImage(refreshed, 'jpeg', 200, 150)).bytes.equals(a.bytes)).toBe(true);
    // The source was revalidated conditionally, once.
    expect(t.origin.count('/fresh.jpg')).toBe(2);
    expect(t.origin.requests[1]!.headers['if-none-match']).toBe('"v1"');

    const hit = await t.get('/fresh.jpg?width=200');
    expect(hit.headers.get('cache-status')).toBe('edge; hit; ttl=60');
    await expectImage(hit, 'jpeg', 200, 150);
    expect(t.origin.count('/fresh.jpg')).toBe(2);
  });

  it('re-transforms a stale variant whose source changed', async () => {
    await start();
    set('/changing.jpg', [
      { headers: { 'content-type': 'image/jpeg', 'cache-control': 'max-age=60', etag: '"v1"' }, body: fx.photo },
      { headers: { 'content-type': 'image/jpeg', 'cache-control': 'max-age=60', etag: '"v2"' }, body: fx.photo2 },
    ]);
    const first = await t.get('/changing.jpg?width=600');
    await expectImage(first, 'jpeg', 600, 450);
    const etag1 = first.headers.get('etag');
    advance(61);
    const second = await t.get('/changing.jpg?width=600');
    expect(second.headers.get('cache-status')).toMatch(/fwd=stale.*detail=transformed/);
    expect(second.headers.get('etag')).not.toBe(etag1);
    // The new source is 400x300: never enlarged.
    await expectImage(second, 'jpeg', 400, 300);
    expect(t.origin.count('/changing.jpg')).toBe(2);
  });

  it('gives variants of a source without ETag an identity from its bytes (a changed source of the same size gets a new ETag)', async () => {
    await start();
    const [a, b] = await Promise.all([noise(100, 100).png({ compressionLevel: 0 }).toBuffer(), noise(100, 100).png({ compressionLevel: 0 }).toBuffer()]);
    expect(a.length).toBe(b.length);
    expect(a.equals(b)).toBe(false);
    const headers = { 'content-type': 'image/png', 'cache-control': 'max-age=60', 'last-modified': httpDate(t0 - 3_600_000) };
    set('/no-etag.png', [
      { headers, body: a },
      { headers: { ...headers, 'last-modified': httpDate(t0) }, body: b },
    ]);
    const first = await t.get('/no-etag.png?width=50&format=webp');
    const v1 = await expectImage(first, 'webp', 50, 50);
    const etag = first.headers.get('etag');
    expect(etag).toMatch(/^"[0-9a-f]+"$/);

    advance(61);
    const second = await raw('/no-etag.png?width=50&format=webp', { 'if-none-match': etag! });
    expect(second.status).toBe(200);
    expect(second.headers['cache-status']).toMatch(/detail=transformed/);
    expect(second.headers.etag).not.toBe(etag);
    expect(second.body.equals(v1.bytes)).toBe(false);
    expect(t.origin.count('/no-etag.png')).toBe(2);
    expect(t.origin.requests[1]!.headers['if-modified-since']).toBe(httpDate(t0 - 3_600_000));
  });

  it('refreshes a variant of an unchanged source without ETag (Last-Modified, 304) without re-encoding', async () => {
    await start();
    const headers = { 'content-type': 'image/jpeg', 'cache-control': 'max-age=60', 'last-modified': httpDate(t0 - 3_600_000) };
    set('/lm.jpg', [{ headers, body: fx.photo }, { status: 304, headers: { 'cache-control': 'max-age=60', 'last-modified': headers['last-modified'] } }]);
    const first = await t.get('/lm.jpg?width=200');
    const a = await expectImage(first, 'jpeg', 200, 150);
    advance(61);
    const second = await t.get('/lm.jpg?width=200');
    expect(second.headers.get('cache-status')).toMatch(/detail=source-unchanged/);
    expect(second.headers.get('etag')).toBe(first.headers.get('etag'));
    expect((await expectImage(second, 'jpeg', 200, 150)).bytes.equals(a.bytes)).toBe(true);
    expect(t.origin.count('/lm.jpg')).toBe(2);
  });

  it('does not store a variant of a source that may not be stored', async () => {
    await start();
    set('/private.jpg', imageSpec(fx.photo, 'image/jpeg', { 'cache-control': 'no-store' }));
    await expectImage(await t.get('/private.jpg?width=100'), 'jpeg', 100, 75);
    const again = await t.get('/private.jpg?width=100');
    expect(again.headers.get('cache-status')).not.toMatch(/hit|stored/);
    await expectImage(again, 'jpeg', 100, 75);
    expect(await storedKeys()).toEqual([]);
    expect(t.origin.count('/private.jpg')).toBe(2);
  });

  it('a PUT to the source through the edge invalidates the source and its variants (RFC 9111 4.4)', async () => {
    await start();
    let version = 1;
    t.origin.route('/photo.jpg', (req, res) => {
      if (req.method === 'PUT') {
        version++;
        res.statusCode = 204;
        res.end();
        return;
      }
      res.setHeader('date', httpDate(t.clock.now()));
      res.setHeader('content-type', 'image/jpeg');
      res.setHeader('cache-control', 'public, max-age=3600');
      res.setHeader('etag', `"v${version}"`);
      res.end(version === 1 ? fx.photo : fx.photo2);
    });
    await expectImage(await t.get('/photo.jpg?width=500'), 'jpeg', 500, 375);
    await expectImage(await t.get('/photo.jpg?width=100', { headers: { accept: ACCEPT_WEBP } }), 'webp', 100, 75);
    expect(await variantKeys()).toHaveLength(2);

    const put = await t.get('/photo.jpg', { method: 'PUT', body: 'new' });
    expect(put.status).toBe(204);
    expect(await storedKeys()).toEqual([]);

    const after = await t.get('/photo.jpg?width=500');
    expect(after.headers.get('cache-status')).not.toMatch(/hit/);
    await expectImage(after, 'jpeg', 400, 300);
    expect(t.origin.requests.filter((r) => r.method === 'GET')).toHaveLength(2);
  });

  it('a soft purge of the source by tag covers its variants: revalidated through the source, not re-encoded', async () => {
    const token = 'admin-token-for-image-tests-0123';
    await start({ adminToken: token });
    const headers = { 'content-type': 'image/jpeg', 'cache-control': 'public, max-age=3600', etag: '"v1"', 'cache-tag': 'photos' };
    set('/tagged.jpg', [{ headers, body: fx.photo }, { status: 304, headers: { 'cache-control': 'public, max-age=3600', etag: '"v1"' } }]);
    const first = await t.get('/tagged.jpg?width=200');
    const a = await expectImage(first, 'jpeg', 200, 150);
    expect((await t.get('/tagged.jpg?width=200')).headers.get('cache-status')).toMatch(/^edge; hit/);

    const purge = await t.get('/_edge/purge', {
      method: 'POST',
      body: JSON.stringify({ tags: ['photos'], soft: true }),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    });
    expect(purge.status).toBe(200);
    // The variant carries its source's tags.
    expect((await purge.json()).purged).toBe(2);

    const after = await t.get('/tagged.jpg?width=200');
    expect(after.headers.get('cache-status')).toMatch(/fwd=stale.*detail=source-unchanged/);
    expect(after.headers.get('etag')).toBe(first.headers.get('etag'));
    expect((await expectImage(after, 'jpeg', 200, 150)).bytes.equals(a.bytes)).toBe(true);
    expect(t.origin.count('/tagged.jpg')).toBe(2);
    expect(t.origin.requests[1]!.headers['if-none-match']).toBe('"v1"');
    expect((await t.get('/tagged.jpg?width=200')).headers.get('cache-status')).toMatch(/^edge; hit/);
  });
});

describe('collapsing, conditional requests, HEAD', () => {
  it('collapses 10 concurrent requests for one uncached variant into one origin request', async () => {
    await start();
    // The source comes once all 10 requests have reached the node.
    const everyone = createGate({ openAt: 10 });
    t.edge.server.on('request', () => everyone.arrive());
    set('/photo.jpg', { ...imageSpec(fx.photo, 'image/jpeg'), gate: everyone });
    const responses = await Promise.all(Array.from({ length: 10 }, () => t.get('/photo.jpg?width=640', { headers: { accept: ACCEPT_AVIF } })));
    const images = await Promise.all(responses.map((res) => expectImage(res, 'avif', 640, 480)));
    for (const image of images) expect(image.bytes.equals(images[0]!.bytes)).toBe(true);
    expect(t.origin.count('/photo.jpg')).toBe(1);
    // One transform: exactly one answer says it transformed.
    expect(responses.filter((r) => /detail=transformed/.test(r.headers.get('cache-status') ?? ''))).toHaveLength(1);

    const later = await t.get('/photo.jpg?width=640', { headers: { accept: 'image/avif' } });
    expect(later.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect((await expectImage(later, 'avif', 640, 480)).bytes.equals(images[0]!.bytes)).toBe(true);
    expect(t.origin.count('/photo.jpg')).toBe(1);
  });

  it('collapses concurrent requests for an uncached variant of a cached source', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    await (await t.get('/photo.jpg')).arrayBuffer();
    const responses = await Promise.all(Array.from({ length: 10 }, () => t.get('/photo.jpg?width=700&format=webp')));
    const images = await Promise.all(responses.map((res) => expectImage(res, 'webp', 700, 525)));
    for (const image of images) expect(image.bytes.equals(images[0]!.bytes)).toBe(true);
    expect(responses.filter((r) => /detail=transformed/.test(r.headers.get('cache-status') ?? ''))).toHaveLength(1);
    expect(t.origin.count('/photo.jpg')).toBe(1);
  });

  it('answers If-None-Match with the variant ETag with 304, without asking the origin', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    const first = await t.get('/photo.jpg?width=200', { headers: { accept: ACCEPT_WEBP } });
    await expectImage(first, 'webp', 200, 150);
    const etag = first.headers.get('etag')!;
    t.origin.clearRequests();

    const conditional = await raw('/photo.jpg?width=200', { accept: ACCEPT_WEBP, 'if-none-match': etag });
    expect(conditional.status).toBe(304);
    expect(conditional.headers.etag).toBe(etag);
    expect(conditional.headers.vary).toBe('Accept');
    expect(conditional.headers['cache-status']).toMatch(/^edge; hit/);
    expect(conditional.body.length).toBe(0);
    // Weak comparison, and a list of tags.
    const list = await raw('/photo.jpg?width=200', { accept: ACCEPT_WEBP, 'if-none-match': `"nope", W/${etag}` });
    expect(list.status).toBe(304);
    expect(t.origin.count()).toBe(0);

    // The source's ETag is not the variant's.
    const sourceTag = await raw('/photo.jpg?width=200', { accept: ACCEPT_WEBP, 'if-none-match': '"v1"' });
    expect(sourceTag.status).toBe(200);
    expect((await sharp(sourceTag.body).metadata()).format).toBe('webp');
    // Another format's variant has another ETag.
    const avif = await raw('/photo.jpg?width=200', { accept: ACCEPT_AVIF, 'if-none-match': etag });
    expect(avif.status).toBe(200);
    expect(avif.headers.etag).not.toBe(etag);
    expect(formatOf(await sharp(avif.body).metadata())).toBe('avif');
    expect(t.origin.count()).toBe(0);
  });

  it('a client revalidating with Cache-Control: no-cache gets the variant revalidated through its source, not re-encoded', async () => {
    await start();
    set('/photo.jpg', [imageSpec(fx.photo, 'image/jpeg'), { status: 304, headers: { etag: '"v1"', 'cache-control': 'public, max-age=3600' } }]);
    const first = await t.get('/photo.jpg?width=200');
    await expectImage(first, 'jpeg', 200, 150);
    const etag = first.headers.get('etag')!;
    // fetch adds Cache-Control: no-cache to a conditional request.
    const reload = await t.get('/photo.jpg?width=200', { headers: { 'if-none-match': etag } });
    expect(reload.status).toBe(304);
    expect(reload.headers.get('cache-status')).toMatch(/detail=source-unchanged/);
    expect(t.origin.count('/photo.jpg')).toBe(2);
    expect(t.origin.requests[1]!.headers['if-none-match']).toBe('"v1"');
  });

  it('answers HEAD on a variant with the headers of the GET and no body', async () => {
    await start();
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    const head = await t.get('/photo.jpg?width=250&format=webp', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-type')).toBe('image/webp');
    const length = Number(head.headers.get('content-length'));
    expect(length).toBeGreaterThan(0);
    expect((await head.arrayBuffer()).byteLength).toBe(0);

    const get = await t.get('/photo.jpg?width=250&format=webp');
    expect(get.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(get.headers.get('etag')).toBe(head.headers.get('etag'));
    const { bytes } = await expectImage(get, 'webp', 250, 188);
    expect(bytes.length).toBe(length);

    const head2 = await t.get('/photo.jpg?width=250&format=webp', { method: 'HEAD' });
    expect(head2.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(head2.headers.get('content-length')).toBe(String(length));
    expect(t.origin.requests.map((r) => r.method)).toEqual(['GET']);
  });
});

describe('URL signing and the width allow-list', () => {
  const key = 'test-image-signing-key-0123456789';

  it('transforms only signed URLs (403 EDGE_BAD_SIGNATURE otherwise, origin not asked)', async () => {
    await start({ imageSigningKey: key });
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    const sig = await signImagePath(key, '/photo.jpg', new URLSearchParams('width=200&format=webp'));

    const unsigned = await t.get('/photo.jpg?width=200&format=webp');
    await expectError(unsigned, 403, 'EDGE_BAD_SIGNATURE');
    const tampered = await t.get(`/photo.jpg?width=300&format=webp&sig=${sig}`);
    await expectError(tampered, 403, 'EDGE_BAD_SIGNATURE');
    const extra = await t.get(`/photo.jpg?width=200&format=webp&x=1&sig=${sig}`);
    await expectError(extra, 403, 'EDGE_BAD_SIGNATURE');
    const garbage = await t.get('/photo.jpg?width=200&format=webp&sig=not-a-signature');
    await expectError(garbage, 403, 'EDGE_BAD_SIGNATURE');
    const otherPath = await t.get(`/other.jpg?width=200&format=webp&sig=${sig}`);
    await expectError(otherPath, 403, 'EDGE_BAD_SIGNATURE');
    expect(t.origin.count()).toBe(0);
    expect(await storedKeys()).toEqual([]);

    // Parameter order does not matter to the signature.
    const signed = await t.get(`/photo.jpg?format=webp&sig=${sig}&width=200`);
    await expectImage(signed, 'webp', 200, 150);
    // The original needs no signature.
    const original = await t.get('/photo.jpg');
    expect(Buffer.from(await original.arrayBuffer()).equals(fx.photo)).toBe(true);
  });

  it('rejects widths outside imageWidths with 400 naming the allowed values', async () => {
    await start({ imageWidths: '100,200' });
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    const body = await expectError(await t.get('/photo.jpg?width=150'), 400, 'EDGE_BAD_PARAMETER');
    expect(body.parameter).toBe('width');
    expect(body.message).toMatch(/100, 200/);
    const short = await expectError(await t.get('/photo.jpg?w=150'), 400, 'EDGE_BAD_PARAMETER');
    expect(short.parameter).toBe('w');
    expect(t.origin.count()).toBe(0);
    await expectImage(await t.get('/photo.jpg?width=200'), 'jpeg', 200, 150);
    await expectImage(await t.get('/photo.jpg?w=100'), 'jpeg', 100, 75);
  });
});

describe('bad input', () => {
  const invalid: [string, string, RegExp][] = [
    ['width=0', 'width', /1 to 4096/],
    ['width=abc', 'width', /1 to 4096/],
    ['w=-5', 'w', /1 to 4096/],
    ['width=5000', 'width', /1 to 4096/],
    ['height=0', 'height', /1 to 4096/],
    ['fit=squash', 'fit', /cover, contain, fill, inside, outside/],
    ['quality=500', 'quality', /1 to 100/],
    ['q=0', 'q', /1 to 100/],
    ['format=gif', 'format', /auto, avif, webp, jpeg, png/],
    ['dpr=4', 'dpr', /1 to 3/],
    ['position=middle', 'position', /centre/],
    ['width=100&w=200', 'width', /conflicting/],
  ];
  for (const [query, parameter, range] of invalid) {
    it(`${query}: 400 naming ${parameter} and its range; origin not asked, nothing cached`, async () => {
      await start();
      set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
      const body = await expectError(await t.get(`/photo.jpg?${query}`), 400, 'EDGE_BAD_PARAMETER');
      expect(body.parameter).toBe(parameter);
      expect(body.message).toMatch(range);
      expect(body.allowed).toBeDefined();
      expect(t.origin.count()).toBe(0);
      await t.settle();
      expect(await storedKeys()).toEqual([]);
    });
  }

  it('a source over imageMaxPixels: 422 quickly, from the header', async () => {
    await start({ imageMaxPixels: 1_000_000 });
    set('/big.jpg', imageSpec(fx.twoK, 'image/jpeg'));
    const res = await t.get('/big.jpg?width=100');
    const body = await expectError(res, 422, 'EDGE_UNPROCESSABLE_IMAGE');
    expect(body.message).toMatch(/2000x2000.*4 MP.*limit is 1 MP/);
    // Quickly, without a clock: the verdict comes from the header alone. A
    // source whose pixels cannot be decoded at all gets the same answer; had
    // the node decoded first, it would say the image could not be decoded.
    set('/header-only.jpg', imageSpec(fx.twoKHeaderOnly, 'image/jpeg'));
    const headerOnly = await expectError(await t.get('/header-only.jpg?width=100'), 422, 'EDGE_UNPROCESSABLE_IMAGE');
    expect(headerOnly.message).toMatch(/2000x2000.*4 MP.*limit is 1 MP/);
    expect(await variantKeys()).toEqual([]);
    // Never cached: asked again, answered again.
    await expectError(await t.get('/big.jpg?width=100'), 422, 'EDGE_UNPROCESSABLE_IMAGE');
    // The source itself is still served.
    const direct = await t.get('/big.jpg');
    expect(Buffer.from(await direct.arrayBuffer()).equals(fx.twoK)).toBe(true);
  });

  it('a source over imageMaxSourceSize: 422 (declared length or not)', async () => {
    await start({ imageMaxSourceSize: 10_000 });
    expect(fx.photo.length).toBeGreaterThan(10_000);
    set('/declared.jpg', imageSpec(fx.photo, 'image/jpeg'));
    set('/chunked.jpg', { ...imageSpec(fx.photo, 'image/jpeg'), chunked: true });
    for (const path of ['/declared.jpg', '/chunked.jpg']) {
      const body = await expectError(await t.get(`${path}?width=100`), 422, 'EDGE_UNPROCESSABLE_IMAGE');
      expect(body.message).toMatch(/10000-byte limit/);
    }
    expect(await variantKeys()).toEqual([]);
    await t.settle();
    const direct = await t.get('/declared.jpg');
    expect(Buffer.from(await direct.arrayBuffer()).equals(fx.photo)).toBe(true);
  });

  it.each([
    ['/broken.jpg', 'text/html; charset=utf-8', '<!doctype html><p>not found, but 200</p>', {}],
    ['/img/page', 'text/html; charset=utf-8', '<!doctype html><p>hello</p>', { imagePaths: ['/img/'] }],
    ['/img/data', 'application/json', '{"a":1}', { imagePaths: ['/img/'] }],
  ] as const)('%s (%s) with image parameters: 415, and served normally without them', async (path, type, text, options) => {
    await start(options);
    set(path, { headers: { 'content-type': type, 'cache-control': 'max-age=60' }, body: text });
    const body = await expectError(await t.get(`${path}?width=100`), 415, 'EDGE_UNSUPPORTED_MEDIA_TYPE');
    expect(body.message).toMatch(/not a JPEG, PNG, WebP, AVIF, GIF or TIFF/);
    const direct = await t.get(path);
    expect(direct.status).toBe(200);
    expect(direct.headers.get('content-type')).toBe(type);
    expect(await direct.text()).toBe(text);
    // Now the source is cached: the answer is the same.
    await expectError(await t.get(`${path}?w=100`), 415, 'EDGE_UNSUPPORTED_MEDIA_TYPE');
    expect(await variantKeys()).toEqual([]);
    expect(t.origin.count(path)).toBe(1);
  });

  it('leaves parameters alone on paths that are not image URLs (an API\'s ?q= or ?format=)', async () => {
    await start();
    set('/search', { headers: { 'content-type': 'application/json', 'cache-control': 'max-age=60' }, body: '{"hits":[]}' });
    const res = await t.get('/search?q=cats&format=json&w=abc');
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('{"hits":[]}');
    expect(t.origin.requests[0]!.url).toBe('/search?q=cats&format=json&w=abc');
  });

  it('never rasterises SVG: 415 on an image path, and the SVG itself is served unchanged', async () => {
    await start({ imagePaths: ['/img/'] });
    const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><rect width="100" height="100" fill="red"/></svg>';
    set('/img/logo.svg', { headers: { 'content-type': 'image/svg+xml', 'cache-control': 'max-age=60' }, body: svg });
    const body = await expectError(await t.get('/img/logo.svg?width=50&format=png'), 415, 'EDGE_UNSUPPORTED_MEDIA_TYPE');
    expect(body.message).toMatch(/SVG/);
    const direct = await t.get('/img/logo.svg');
    expect(direct.headers.get('content-type')).toBe('image/svg+xml');
    expect(await direct.text()).toBe(svg);
    await expectError(await t.get('/img/logo.svg?width=50'), 415, 'EDGE_UNSUPPORTED_MEDIA_TYPE');
    expect(await variantKeys()).toEqual([]);
  });

  it('an .svg path is not an image URL: its parameters go to the origin and the SVG comes back as is', async () => {
    await start();
    const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"/>';
    set('/logo.svg', { headers: { 'content-type': 'image/svg+xml', 'cache-control': 'max-age=60' }, body: svg });
    const res = await t.get('/logo.svg?width=50&format=png');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/svg+xml');
    expect(await res.text()).toBe(svg);
    expect(await variantKeys()).toEqual([]);
  });

  it('never rasterises an SVG labelled as PNG: 422', async () => {
    await start();
    const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><rect width="100" height="100" fill="red"/></svg>';
    set('/lying.png', { headers: { 'content-type': 'image/png', 'cache-control': 'max-age=60' }, body: svg });
    await expectError(await t.get('/lying.png?width=50'), 422, 'EDGE_UNPROCESSABLE_IMAGE');
  });

  it('corrupt image bytes: 422 JSON, no crash, the node keeps serving', async () => {
    await start();
    const random = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) % 256));
    set('/random.jpg', imageSpec(random, 'image/jpeg'));
    set('/truncated.jpg', imageSpec(fx.photo.subarray(0, Math.floor(fx.photo.length / 2)), 'image/jpeg'));
    set('/header-only.jpg', imageSpec(fx.photo.subarray(0, 200), 'image/jpeg'));
    set('/photo.jpg', imageSpec(fx.photo, 'image/jpeg'));
    for (const path of ['/random.jpg', '/truncated.jpg', '/header-only.jpg']) {
      for (const query of ['width=100', 'width=100&format=avif']) {
        await expectError(await t.get(`${path}?${query}`), 422, 'EDGE_UNPROCESSABLE_IMAGE');
      }
    }
    expect(await variantKeys()).toEqual([]);
    await expectImage(await t.get('/photo.jpg?width=100'), 'jpeg', 100, 75);
    expect((await t.get('/_edge/health')).status).toBe(200);
  });

  it('transform queue overflow: 503 with Retry-After, never cached, no crash', async () => {
    await start({ transformConcurrency: 1, transformQueue: 0 });
    // The source arrives once all five requests wait for it (one collapsed
    // fetch), so the five transforms are asked for together, not as the
    // requests happen to trickle in.
    const everyone = createGate({ openAt: 5 });
    t.edge.server.on('request', () => everyone.arrive());
    set('/big.jpg', { ...imageSpec(fx.big, 'image/jpeg'), gate: everyone });
    const queries = [50, 51, 52, 53, 54].map((q) => `/big.jpg?format=avif&quality=${q}`);
    const responses = await Promise.all(queries.map((path) => t.get(path)));
    const statuses = responses.map((r) => r.status);
    expect(statuses.every((s) => s === 200 || s === 503)).toBe(true);
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(1);
    expect(statuses.filter((s) => s === 503).length).toBeGreaterThanOrEqual(1);
    let rejected: string | undefined;
    for (const [i, res] of responses.entries()) {
      if (res.status === 200) {
        await expectImage(res, 'avif', 1600, 1600);
      } else {
        expect(res.headers.get('retry-after')).toBe('1');
        const body = await expectError(res, 503, 'EDGE_OVERLOADED');
        expect(body.message).toMatch(/retry/);
        rejected = queries[i];
      }
    }
    // Errors are never cached: the same URL later succeeds.
    const retry = await t.get(rejected!);
    expect(retry.headers.get('cache-status')).toMatch(/detail=transformed/);
    await expectImage(retry, 'avif', 1600, 1600);
    expect(t.origin.count('/big.jpg')).toBe(1);
  });

  it('a transform over transformTimeout: 503 with Retry-After, not cached', async () => {
    // 1 ms: no machine decodes and re-encodes a 1600x1600 noisy JPEG that
    // fast (the deadline also spans two thread-pool round trips through
    // libvips), however fast its CPU.
    await start({ transformTimeout: '1ms' });
    set('/big.jpg', imageSpec(fx.big, 'image/jpeg'));
    const res = await t.get('/big.jpg?format=jpeg&quality=90');
    expect(res.headers.get('retry-after')).toBe('1');
    const body = await expectError(res, 503, 'EDGE_TRANSFORM_TIMEOUT');
    expect(body.message).toMatch(/1 ms/);
    expect(await variantKeys()).toEqual([]);
    // The node keeps going: the next transform is taken on (and times out
    // too, rather than finding the transformer stuck or overloaded), and the
    // source is served from the cache.
    const again = await t.get('/big.jpg?format=jpeg&quality=89');
    expect((await expectError(again, 503, 'EDGE_TRANSFORM_TIMEOUT')).message).toMatch(/1 ms/);
    expect(Buffer.from(await (await t.get('/big.jpg')).arrayBuffer()).equals(fx.big)).toBe(true);
    expect(await variantKeys()).toEqual([]);
    // A small transform of the same (now cached) source still fits once the
    // deadline allows it: the same data directory, restarted with 1 h.
    t.options.transformTimeout = 3_600_000;
    await t.restart();
    await expectImage(await t.get('/big.jpg?width=16&format=jpeg'), 'jpeg', 16, 16);
    expect(t.origin.count('/big.jpg')).toBe(1);
  });

  it('a source 404 passes through as 404', async () => {
    await start();
    set('/missing.jpg', { status: 404, headers: { 'content-type': 'text/plain', 'cache-control': 'max-age=10' }, body: 'not here' });
    const res = await t.get('/missing.jpg?width=100');
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toBe('text/plain');
    expect(await res.text()).toBe('not here');
    const direct = await t.get('/missing.jpg');
    expect(direct.status).toBe(404);
    expect(await direct.text()).toBe('not here');
    expect(await variantKeys()).toEqual([]);
  });

  it('an unreachable origin: 502 JSON', async () => {
    await start();
    await t.origin.close();
    await expectError(await t.get('/photo.jpg?width=100'), 502, 'EDGE_ORIGIN_UNREACHABLE');
  });
});
