/**
 * SharpImageTransformer against real sharp, on images generated here
 * (no committed binaries, no mocks). Every output is decoded again with
 * sharp to check its format and dimensions.
 */
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { isEdgeError } from '../edge/core/errors.js';
import type { ImageOutputFormat, ResolvedImageParams, TransformedImage } from '../edge/core/image/types.js';
import { SharpImageTransformer } from '../edge/node/sharp-transformer.js';

const SHARP_FORMAT: Record<ImageOutputFormat, string> = { avif: 'heif', webp: 'webp', jpeg: 'jpeg', png: 'png' };

function params(overrides: Partial<ResolvedImageParams> = {}): ResolvedImageParams {
  return { fit: 'inside', quality: 75, format: 'jpeg', position: 'centre', enlarge: false, ...overrides };
}

/** Decode a result with sharp and check it is what the transformer says it is. */
async function decode(result: TransformedImage) {
  const meta = await sharp(result.body).metadata();
  expect(meta.format).toBe(SHARP_FORMAT[result.format]);
  expect(result.contentType).toBe(`image/${result.format}`);
  expect([meta.width, meta.pageHeight ?? meta.height]).toEqual([result.width, result.height]);
  return meta;
}

/** The first pixel of a decoded image, as [r, g, b]. */
async function firstPixel(body: Uint8Array): Promise<number[]> {
  const raw = await sharp(body).removeAlpha().raw().toBuffer();
  return [raw[0]!, raw[1]!, raw[2]!];
}

async function rejection(promise: Promise<unknown>) {
  try {
    await promise;
  } catch (err) {
    expect(isEdgeError(err)).toBe(true);
    return err as { code: string; status: number; message: string; headers: Record<string, string>; cause?: unknown };
  }
  throw new Error('expected the transform to reject');
}

const noise = (width: number, height: number) =>
  sharp({ create: { width, height, channels: 3, background: 'grey', noise: { type: 'gaussian', mean: 128, sigma: 40 } } });

const fx = {} as {
  photo: Buffer; // 800x600 JPEG
  transparentPng: Buffer; // 100x100, left half opaque red, right half transparent
  cmyk: Buffer;
  p3: Buffer;
  rotated: Buffer; // stored 200x100, EXIF orientation 6 (displays 100x200)
  animatedGif: Buffer; // 3 frames of 64x48
  animatedWebp: Buffer; // 3 frames of 64x48
  huge: Buffer; // 12000x12000 JPEG
  bigAvifSource: Buffer; // noisy 1024x1024 PNG: about a second to encode as AVIF
};

beforeAll(async () => {
  fx.photo = await noise(800, 600).jpeg().toBuffer();

  const red = await sharp({ create: { width: 50, height: 100, channels: 4, background: { r: 255, g: 0, b: 0, alpha: 1 } } })
    .png()
    .toBuffer();
  fx.transparentPng = await sharp({ create: { width: 100, height: 100, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } } })
    .composite([{ input: red, left: 0, top: 0 }])
    .png()
    .toBuffer();

  fx.cmyk = await sharp({ create: { width: 64, height: 64, channels: 3, background: { r: 200, g: 30, b: 40 } } })
    .toColourspace('cmyk')
    .jpeg()
    .toBuffer();

  // sRGB red converted into Display P3 values, with the P3 profile attached.
  fx.p3 = await sharp({ create: { width: 64, height: 64, channels: 3, background: { r: 255, g: 0, b: 0 } } })
    .withIccProfile('p3')
    .png()
    .toBuffer();

  fx.rotated = await sharp({ create: { width: 200, height: 100, channels: 3, background: 'blue' } })
    .jpeg()
    .withMetadata({ orientation: 6 })
    .toBuffer();

  const frames = await Promise.all(
    ['red', 'lime', 'blue'].map((background) =>
      sharp({ create: { width: 64, height: 48, channels: 4, background } }).png().toBuffer(),
    ),
  );
  fx.animatedGif = await sharp(frames, { join: { animated: true } }).gif({ delay: 100 }).toBuffer();
  fx.animatedWebp = await sharp(frames, { join: { animated: true } }).webp({ delay: 100 }).toBuffer();

  // Flat colour and low quality: cheap to make, still 144 megapixels.
  fx.huge = await sharp({ create: { width: 12000, height: 12000, channels: 3, background: 'white' } })
    .jpeg({ quality: 10 })
    .toBuffer();

  fx.bigAvifSource = await noise(1024, 1024).png({ compressionLevel: 0 }).toBuffer();
});

describe('SharpImageTransformer: output', () => {
  const t = new SharpImageTransformer();
  afterAll(() => t.close());

  it.each(['avif', 'webp', 'jpeg', 'png'] as const)('resizes to %s', async (format) => {
    const result = await t.transform(fx.photo, params({ width: 400, format }));
    expect([result.width, result.height]).toEqual([400, 300]);
    const meta = await decode(result);
    expect(meta.hasProfile).toBeFalsy();
    if (format === 'avif') expect(meta.compression).toBe('av1');
    if (format === 'jpeg') expect(meta.isProgressive).toBe(true);
  });

  it('transcodes without resizing when no size is given', async () => {
    const result = await t.transform(fx.photo, params({ format: 'webp' }));
    expect([result.width, result.height]).toEqual([800, 600]);
    await decode(result);
  });

  it.each([
    ['inside', 300, 300, 300, 225],
    ['outside', 300, 300, 400, 300],
    ['cover', 300, 300, 300, 300],
    ['contain', 300, 300, 300, 300],
    ['fill', 300, 100, 300, 100],
  ] as const)('fit=%s %ix%i gives %ix%i', async (fit, width, height, w, h) => {
    const result = await t.transform(fx.photo, params({ width, height, fit, format: 'png' }));
    expect([result.width, result.height]).toEqual([w, h]);
    await decode(result);
  });

  it('crops with a position and with the attention strategy', async () => {
    for (const position of ['top', 'right bottom', 'attention', 'entropy']) {
      const result = await t.transform(fx.photo, params({ width: 100, height: 200, fit: 'cover', position }));
      expect([result.width, result.height]).toEqual([100, 200]);
      await decode(result);
    }
  });

  it('never enlarges unless enlarge is set', async () => {
    const kept = await t.transform(fx.photo, params({ width: 1600 }));
    expect([kept.width, kept.height]).toEqual([800, 600]);
    const enlarged = await t.transform(fx.photo, params({ width: 1600, enlarge: true }));
    expect([enlarged.width, enlarged.height]).toEqual([1600, 1200]);
    await decode(enlarged);
  });

  it('auto-orients from EXIF before stripping metadata', async () => {
    expect((await sharp(fx.rotated).metadata()).orientation).toBe(6);
    const result = await t.transform(fx.rotated, params({ width: 50 }));
    expect([result.width, result.height]).toEqual([50, 100]);
    const meta = await decode(result);
    expect(meta.orientation).toBeUndefined();
    expect(meta.exif).toBeUndefined();
  });

  it('converts CMYK to sRGB', async () => {
    expect((await sharp(fx.cmyk).metadata()).space).toBe('cmyk');
    const result = await t.transform(fx.cmyk, params({ width: 32, format: 'png' }));
    const meta = await decode(result);
    expect(meta.space).toBe('srgb');
    expect(meta.channels).toBe(3);
    const [r, g, b] = await firstPixel(result.body);
    // A strong red, not an inverted or 4-channel misreading.
    expect(r).toBeGreaterThan(150);
    expect(g).toBeLessThan(80);
    expect(b).toBeLessThan(80);
  });

  it('converts an ICC (Display P3) source to sRGB and drops the profile', async () => {
    const source = await sharp(fx.p3).metadata();
    expect(source.hasProfile).toBe(true);
    // The stored P3 values of sRGB red are far from (255, 0, 0)...
    const [sr, sg] = await sharp(fx.p3, { ignoreIcc: true }).raw().toBuffer();
    expect(sg).toBeGreaterThan(20);
    expect(sr).toBeLessThan(245);
    // ...and the output is sRGB red again.
    const result = await t.transform(fx.p3, params({ width: 32, format: 'png' }));
    const meta = await decode(result);
    expect(meta.hasProfile).toBeFalsy();
    const [r, g, b] = await firstPixel(result.body);
    expect(r).toBeGreaterThan(245);
    expect(g).toBeLessThan(12);
    expect(b).toBeLessThan(12);
  });

  it('keeps transparency in PNG/WebP/AVIF and flattens JPEG on white', async () => {
    for (const format of ['png', 'webp', 'avif'] as const) {
      const meta = await decode(await t.transform(fx.transparentPng, params({ format })));
      expect(meta.hasAlpha).toBe(true);
    }
    const jpeg = await t.transform(fx.transparentPng, params({ format: 'jpeg' }));
    const meta = await decode(jpeg);
    expect(meta.hasAlpha).toBe(false);
    const raw = await sharp(jpeg.body).raw().toBuffer({ resolveWithObject: true });
    const at = (x: number) => [...raw.data.subarray(x * 3, x * 3 + 3)];
    expect(at(10)[0]).toBeGreaterThan(230); // red half
    expect(Math.min(...at(90))).toBeGreaterThan(240); // transparent half is white, not black
  });
});

describe('SharpImageTransformer: animation', () => {
  const t = new SharpImageTransformer();
  afterAll(() => t.close());

  it.each(['animatedGif', 'animatedWebp'] as const)('keeps the animation of %s when the output is WebP', async (name) => {
    const result = await t.transform(fx[name], params({ width: 32, format: 'webp' }));
    expect([result.width, result.height]).toEqual([32, 24]);
    const meta = await decode(result);
    expect(meta.pages).toBe(3);
  });

  it.each(['avif', 'png', 'jpeg'] as const)('flattens to the first frame for %s', async (format) => {
    const result = await t.transform(fx.animatedGif, params({ width: 32, format }));
    expect([result.width, result.height]).toEqual([32, 24]);
    const meta = await decode(result);
    expect(meta.pages ?? 1).toBe(1);
    const [r, g, b] = await firstPixel(result.body);
    expect(r).toBeGreaterThan(200); // the first frame is red
    expect(g + b).toBeLessThan(60);
  });

  it('flattens WebP output too when animated is off', async () => {
    const still = new SharpImageTransformer({ animated: false });
    const result = await still.transform(fx.animatedGif, params({ width: 32, format: 'webp' }));
    expect((await decode(result)).pages ?? 1).toBe(1);
    await still.close();
  });

  it('counts every frame against the pixel limit', async () => {
    // One frame is 3072 px, three frames 9216 px.
    const limited = new SharpImageTransformer({ maxInputPixels: 5000 });
    await decode(await limited.transform(fx.animatedGif, params({ format: 'png' })));
    const err = await rejection(limited.transform(fx.animatedGif, params({ format: 'webp' })));
    expect(err.code).toBe('EDGE_UNPROCESSABLE_IMAGE');
    expect(err.message).toMatch(/64x48x3 frames/);
    await limited.close();
  });
});

describe('SharpImageTransformer: bad input', () => {
  const t = new SharpImageTransformer();
  afterAll(() => t.close());

  it('rejects a 12000x12000 JPEG over the default 50 MP limit with 422', async () => {
    const err = await rejection(t.transform(fx.huge, params({ width: 400 })));
    expect(err.code).toBe('EDGE_UNPROCESSABLE_IMAGE');
    expect(err.status).toBe(422);
    expect(err.message).toBe(
      'The source image is too large to transform (12000x12000, 144 MP; the limit is 50 MP).',
    );
  });

  it('rejects a header claiming 60000x60000 from the header alone', async () => {
    // A small valid JPEG whose SOF0 dimensions are rewritten: a decompression bomb.
    const bomb = Buffer.from(await sharp({ create: { width: 16, height: 16, channels: 3, background: 'red' } }).jpeg().toBuffer());
    const sof = bomb.indexOf(Buffer.from([0xff, 0xc0]));
    expect(sof).toBeGreaterThan(0);
    bomb.writeUInt16BE(60000, sof + 5);
    bomb.writeUInt16BE(60000, sof + 7);
    const err = await rejection(t.transform(bomb, params({ width: 10 })));
    expect(err.code).toBe('EDGE_UNPROCESSABLE_IMAGE');
    expect(err.message).toMatch(/60000x60000/);
  });

  it('honours a configured pixel limit', async () => {
    const small = new SharpImageTransformer({ maxInputPixels: 800 * 600 - 1 });
    const err = await rejection(small.transform(fx.photo, params({ width: 10 })));
    expect(err.code).toBe('EDGE_UNPROCESSABLE_IMAGE');
    await small.close();
  });

  it('rejects a truncated JPEG with 422 and no internals in the message', async () => {
    const truncated = fx.photo.subarray(0, Math.floor(fx.photo.length / 2));
    const err = await rejection(t.transform(truncated, params({ width: 100 })));
    expect(err.code).toBe('EDGE_UNPROCESSABLE_IMAGE');
    expect(err.status).toBe(422);
    expect(err.message).toBe('The source image could not be decoded or converted.');
    expect(err.message).not.toMatch(/vips|jpeg|premature|at /i);
    expect(err.cause).toBeInstanceOf(Error); // kept for logs
  });

  it('rejects a JPEG header followed by garbage with 422', async () => {
    const junk = Buffer.concat([fx.photo.subarray(0, 400), Buffer.alloc(4000, 0x5a)]);
    const err = await rejection(t.transform(junk, params({ width: 100 })));
    expect(err.code).toBe('EDGE_UNPROCESSABLE_IMAGE');
  });

  it.each([
    ['garbage', Buffer.from('definitely not an image, just some text')],
    ['empty', Buffer.alloc(0)],
    ['html', Buffer.from('<!doctype html><title>x</title>')],
    ['svg', Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>')],
  ])('rejects %s bytes without handing them to a decoder', async (_name, bytes) => {
    const err = await rejection(t.transform(bytes, params({ width: 10 })));
    expect(err.code).toBe('EDGE_UNPROCESSABLE_IMAGE');
    expect(err.message).toBe('The source is not a JPEG, PNG, WebP, AVIF, GIF or TIFF image.');
  });

  it('keeps working after bad input', async () => {
    await rejection(t.transform(Buffer.from('nope'), params()));
    await decode(await t.transform(fx.photo, params({ width: 10 })));
    expect(t.stats()).toEqual({ running: 0, queued: 0 });
  });
});

describe('SharpImageTransformer: queue and timeout', () => {
  it('runs `concurrency` at once, queues `maxQueue`, rejects the rest with 503 and Retry-After', async () => {
    const t = new SharpImageTransformer({ concurrency: 1, maxQueue: 1 });
    const first = t.transform(fx.photo, params({ width: 200, format: 'avif' }));
    const second = t.transform(fx.photo, params({ width: 100, format: 'webp' }));
    expect(t.stats()).toEqual({ running: 1, queued: 1 });
    const err = await rejection(t.transform(fx.photo, params({ width: 50 })));
    expect(err.code).toBe('EDGE_OVERLOADED');
    expect(err.status).toBe(503);
    expect(err.headers['retry-after']).toBe('1');

    const [a, b] = await Promise.all([first, second]);
    expect([a.width, b.width]).toEqual([200, 100]);
    await decode(a);
    await decode(b);
    expect(t.stats()).toEqual({ running: 0, queued: 0 });
    await decode(await t.transform(fx.photo, params({ width: 50 }))); // capacity is back
    await t.close();
  });

  it('answers EDGE_TRANSFORM_TIMEOUT (503) for a transform past its deadline, queued ones included', async () => {
    const t = new SharpImageTransformer({ timeoutMs: 1, concurrency: 1, maxQueue: 4 });
    const slow = t.transform(fx.bigAvifSource, params({ format: 'avif', quality: 90 }));
    const queued = t.transform(fx.bigAvifSource, params({ format: 'avif', quality: 80 }));

    const err = await rejection(slow);
    expect(err.code).toBe('EDGE_TRANSFORM_TIMEOUT');
    expect(err.status).toBe(503);
    const queuedErr = await rejection(queued);
    expect(queuedErr.code).toBe('EDGE_TRANSFORM_TIMEOUT');

    // The abandoned transform still holds its slot until sharp stops;
    // close() waits for it, after which nothing runs or waits.
    expect(t.stats().queued).toBe(0);
    await t.close();
    expect(t.stats()).toEqual({ running: 0, queued: 0 });
  });

  it('rejects queued and new work after close()', async () => {
    const t = new SharpImageTransformer({ concurrency: 1, maxQueue: 2 });
    const running = t.transform(fx.photo, params({ width: 100 }));
    const waiting = t.transform(fx.photo, params({ width: 100 }));
    const closed = t.close();
    const closedAgain = t.close();
    expect((await rejection(waiting)).code).toBe('EDGE_OVERLOADED');
    await decode(await running);
    await Promise.all([closed, closedAgain]);
    expect((await rejection(t.transform(fx.photo, params({ width: 100 })))).code).toBe('EDGE_OVERLOADED');
  });
});

describe('SharpImageTransformer: options', () => {
  it('validates options with a TypeError naming the option', () => {
    expect(() => new SharpImageTransformer({ concurrency: 0 })).toThrow(/concurrency/);
    expect(() => new SharpImageTransformer({ maxQueue: -1 })).toThrow(/maxQueue/);
    expect(() => new SharpImageTransformer({ avifEffort: 10 })).toThrow(/avifEffort/);
    expect(() => new SharpImageTransformer({ webpEffort: 1.5 })).toThrow(/webpEffort/);
    expect(() => new SharpImageTransformer({ timeoutMs: 0 })).toThrow(TypeError);
    expect(() => new SharpImageTransformer({ maxInputPixels: Number.NaN })).toThrow(/maxInputPixels/);
  });

  it('has bounded defaults', () => {
    const t = new SharpImageTransformer();
    expect(t.maxInputPixels).toBe(50_000_000);
    expect(t.maxQueue).toBe(64);
    expect(t.timeoutMs).toBe(10_000);
    expect(t.avifEffort).toBe(2);
    expect(t.webpEffort).toBe(4);
    expect(t.animated).toBe(true);
    expect(t.concurrency).toBeGreaterThanOrEqual(1);
  });

  it('disables the libvips operation cache once loaded', async () => {
    const t = new SharpImageTransformer();
    await t.transform(fx.photo, params({ width: 10 }));
    expect(sharp.cache().items.max).toBe(0);
    await t.close();
  });
});
