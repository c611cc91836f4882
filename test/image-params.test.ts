import { describe, expect, it } from 'vitest';

import { isEdgeError } from '../edge/core/errors.js';
import {
  IMAGE_PARAM_NAMES,
  avifQuality,
  hasImageParams,
  imageSignaturePayload,
  isTransformableContentType,
  negotiateFormat,
  parseImageParams,
  resolveImageParams,
  signImagePath,
  sniffImageFormat,
  sourceFormatFromContentType,
  variantCacheSuffix,
  verifyImageSignature,
  widthsFromRange,
  type ImageParamLimits,
} from '../edge/core/image/params.js';
import type { ImageParams } from '../edge/core/image/types.js';

const q = (s: string) => new URLSearchParams(s);
const parse = (s: string, limits: ImageParamLimits = { maxOutputSide: 4096 }) => parseImageParams(q(s), limits);

/** Runs `fn`, expects an EDGE_BAD_PARAMETER, returns it for further checks. */
function badParameter(fn: () => unknown) {
  try {
    fn();
  } catch (err) {
    expect(isEdgeError(err)).toBe(true);
    const e = err as { code: string; status: number; message: string; details: Record<string, unknown> };
    expect(e.code).toBe('EDGE_BAD_PARAMETER');
    expect(e.status).toBe(400);
    return e;
  }
  throw new Error('expected EDGE_BAD_PARAMETER, nothing was thrown');
}

const CHROME_ACCEPT = 'image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8';
const OLD_SAFARI_ACCEPT = 'image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5';
const LEGACY_ACCEPT = 'image/png,image/*;q=0.8,*/*;q=0.5';

describe('hasImageParams / IMAGE_PARAM_NAMES', () => {
  it('lists long and short names and sig', () => {
    for (const name of ['width', 'w', 'height', 'h', 'fit', 'quality', 'q', 'format', 'f', 'dpr', 'position', 'enlarge', 'sig']) {
      expect(IMAGE_PARAM_NAMES).toContain(name);
    }
  });

  it('is true for any transform parameter, false for none or only sig / other params', () => {
    expect(hasImageParams(q('w=400'))).toBe(true);
    expect(hasImageParams(q('v=2&format=webp'))).toBe(true);
    expect(hasImageParams(q(''))).toBe(false);
    expect(hasImageParams(q('v=2&width_x=3'))).toBe(false);
    expect(hasImageParams(q('sig=abc'))).toBe(false);
  });
});

describe('parseImageParams', () => {
  it('returns null without image parameters', () => {
    expect(parse('')).toBeNull();
    expect(parse('utm_source=x')).toBeNull();
  });

  it('fills defaults', () => {
    expect(parse('width=400')).toEqual({
      width: 400,
      fit: 'inside',
      format: 'auto',
      dpr: 1,
      position: 'centre',
      enlarge: false,
    });
  });

  it('reads long and short names alike', () => {
    const long = parse('width=400&height=300&quality=60&format=webp&fit=cover&position=top&dpr=2&enlarge=1');
    const short = parse('w=400&h=300&q=60&f=webp&fit=cover&position=top&dpr=2&enlarge=1');
    expect(short).toEqual(long);
    expect(long).toEqual({
      width: 400,
      height: 300,
      quality: 60,
      format: 'webp',
      fit: 'cover',
      position: 'top',
      dpr: 2,
      enlarge: true,
    });
  });

  it('accepts aliases: jpg, center, compass and either word order', () => {
    expect(parse('f=jpg')!.format).toBe('jpeg');
    expect(parse('fit=cover&position=center')!.position).toBe('centre');
    expect(parse('fit=cover&position=northeast')!.position).toBe('right top');
    expect(parse('fit=cover&position=top+right')!.position).toBe('right top');
    expect(parse('fit=cover&position=Top-Left')!.position).toBe('left top');
    expect(parse('fit=cover&position=attention')!.position).toBe('attention');
    expect(parse('dpr=1.5')!.dpr).toBe(1.5);
    expect(parse('enlarge')!.enlarge).toBe(true);
    expect(parse('enlarge=0')!.enlarge).toBe(false);
  });

  it('accepts the same value given twice under both spellings', () => {
    expect(parse('width=400&w=400')!.width).toBe(400);
  });

  it.each([
    ['width=0', 'width', 'width must be an integer from 1 to 4096 (got \'0\')'],
    ['width=abc', 'width', "width must be an integer from 1 to 4096 (got 'abc')"],
    ['w=4097', 'w', "w must be an integer from 1 to 4096 (got '4097')"],
    ['width=12.5', 'width', undefined],
    ['width=-1', 'width', undefined],
    ['width=', 'width', undefined],
    ['height=99999999', 'height', undefined],
    ['fit=squash', 'fit', "fit must be one of cover, contain, fill, inside, outside (got 'squash')"],
    ['quality=500', 'quality', "quality must be an integer from 1 to 100 (got '500')"],
    ['q=0', 'q', undefined],
    ['dpr=0.5', 'dpr', undefined],
    ['dpr=4', 'dpr', undefined],
    ['dpr=two', 'dpr', undefined],
    ['fit=cover&position=middle', 'position', undefined],
    ['format=gif', 'format', "format must be one of auto, avif, webp, jpeg, png (got 'gif')"],
    ['f=svg', 'f', undefined],
    ['enlarge=yes', 'enlarge', undefined],
  ])('rejects %s naming %s and the allowed values', (query, parameter, message) => {
    const err = badParameter(() => parse(query));
    expect(err.details.parameter).toBe(parameter);
    expect(err.details.allowed).toBeDefined();
    if (message) expect(err.message).toBe(message);
  });

  it('gives ranges and enumerations as allowed values', () => {
    expect(badParameter(() => parse('width=abc')).details.allowed).toBe('1..4096');
    expect(badParameter(() => parse('fit=x')).details.allowed).toEqual(['cover', 'contain', 'fill', 'inside', 'outside']);
  });

  it('rejects conflicting duplicates (width=1&w=2, width=1&width=2)', () => {
    const a = badParameter(() => parse('width=1&w=2'));
    expect(a.message).toMatch(/width and w were given conflicting values/);
    expect(a.details.parameter).toBe('width');
    const b = badParameter(() => parse('width=1&width=2'));
    expect(b.message).toMatch(/width was given conflicting values/);
  });

  it('needs fit=cover for the entropy/attention crop strategies', () => {
    const err = badParameter(() => parse('position=attention'));
    expect(err.message).toMatch(/needs fit=cover/);
  });

  it('honours maxOutputSide', () => {
    expect(parse('w=2000', { maxOutputSide: 2000 })!.width).toBe(2000);
    const err = badParameter(() => parse('w=2001', { maxOutputSide: 2000 }));
    expect(err.message).toBe("w must be an integer from 1 to 2000 (got '2001')");
  });

  it('defaults maxOutputSide to 4096', () => {
    expect(parseImageParams(q('w=4096'))!.width).toBe(4096);
    badParameter(() => parseImageParams(q('w=4097')));
  });

  it('enforces an allow-list of widths', () => {
    const allowedWidths = widthsFromRange('16..3840:16');
    expect(parse('w=400', { maxOutputSide: 4096, allowedWidths })!.width).toBe(400);
    const err = badParameter(() => parse('w=401', { maxOutputSide: 4096, allowedWidths }));
    expect(err.details.parameter).toBe('w');
    expect(err.details.allowed).toBe(allowedWidths);
    expect(err.message).toMatch(/^w 401 is not an allowed width; use one of 16, 32, /);
  });

  it('keeps error messages printable and short', () => {
    const err = badParameter(() => parse(`width=${encodeURIComponent('<script>\u0000' + 'x'.repeat(200))}`));
    expect(err.message.length).toBeLessThan(120);
    expect(err.message).not.toMatch(/\u0000/);
  });
});

describe('parseImageParams: hardening', () => {
  it('refuses values that name Object.prototype members (400, never a lookup into the prototype)', () => {
    for (const [query, parameter] of [
      ['fit=constructor', 'fit'],
      ['fit=__proto__', 'fit'],
      ['format=constructor', 'format'],
      ['f=__proto__', 'f'],
      ['fit=cover&position=constructor', 'position'],
      ['fit=cover&position=__proto__', 'position'],
      ['fit=cover&position=toString', 'position'],
    ] as const) {
      expect(badParameter(() => parse(`w=100&${query}`)).details.parameter).toBe(parameter);
    }
    expect(sourceFormatFromContentType('constructor')).toBeUndefined();
    expect(isTransformableContentType('__proto__')).toBe(false);
  });

  it('refuses a parameter that is neither an image parameter, sig, nor ignored, naming it', () => {
    const e = badParameter(() => parse('w=100&x=1'));
    expect(e.details.parameter).toBe('x');
    expect(e.message).toMatch(/'x' is not an image parameter/);
    expect(badParameter(() => parse('w=100&constructor=1')).details.parameter).toBe('constructor');
    expect(parse('w=100&sig=abc')!.width).toBe(100);
    // Without an image parameter there is nothing to refuse.
    expect(parse('x=1')).toBeNull();
  });

  it('tolerates the parameters ignoreParam accepts', () => {
    const ignoreParam = (name: string) => name.startsWith('utm_') || name === 'fbclid';
    expect(parse('w=100&utm_source=a&fbclid=b', { ignoreParam })!.width).toBe(100);
    expect(badParameter(() => parse('w=100&gclid=c', { ignoreParam })).details.parameter).toBe('gclid');
  });
});

describe('widthsFromRange', () => {
  it('expands ranges and lists', () => {
    const w = widthsFromRange('16..3840:16');
    expect(w[0]).toBe(16);
    expect(w.at(-1)).toBe(3840);
    expect(w).toHaveLength(240);
    expect(widthsFromRange('640, 320,100..300:100,320')).toEqual([100, 200, 300, 320, 640]);
  });

  it('throws TypeError on malformed specs', () => {
    expect(() => widthsFromRange('abc')).toThrow(TypeError);
    expect(() => widthsFromRange('100..50')).toThrow(TypeError);
    expect(() => widthsFromRange('0..50')).toThrow(TypeError);
    expect(() => widthsFromRange('1..100000000')).toThrow(/more than/);
  });
});

describe('content types and sniffing', () => {
  it('maps content types to source formats', () => {
    expect(sourceFormatFromContentType('image/jpeg')).toBe('jpeg');
    expect(sourceFormatFromContentType('IMAGE/PNG; charset=binary')).toBe('png');
    expect(sourceFormatFromContentType('image/webp')).toBe('webp');
    expect(sourceFormatFromContentType('image/avif')).toBe('avif');
    expect(sourceFormatFromContentType('image/gif')).toBe('gif');
    expect(sourceFormatFromContentType('image/tiff')).toBe('tiff');
    expect(sourceFormatFromContentType(null)).toBeUndefined();
  });

  it('never transforms SVG, HEIC or non-images', () => {
    for (const ct of ['image/svg+xml', 'image/heic', 'text/html', 'application/json', null, '']) {
      expect(isTransformableContentType(ct)).toBe(false);
    }
    for (const ct of ['image/jpeg', 'image/png', 'image/webp', 'image/avif', 'image/gif', 'image/tiff']) {
      expect(isTransformableContentType(ct)).toBe(true);
    }
  });

  it('sniffs supported formats by magic bytes only', () => {
    const bytes = (...parts: Array<number[] | string>) =>
      Uint8Array.from(parts.flatMap((p) => (typeof p === 'string' ? [...p].map((c) => c.charCodeAt(0)) : p)));
    expect(sniffImageFormat(bytes([0xff, 0xd8, 0xff, 0xe0]))).toBe('jpeg');
    expect(sniffImageFormat(bytes([0x89], 'PNG', [0x0d, 0x0a, 0x1a, 0x0a]))).toBe('png');
    expect(sniffImageFormat(bytes('GIF89a'))).toBe('gif');
    expect(sniffImageFormat(bytes('RIFF', [0, 0, 0, 0], 'WEBPVP8 '))).toBe('webp');
    expect(sniffImageFormat(bytes([0, 0, 0, 0x1c], 'ftypavif', [0, 0, 0, 0], 'avifmif1miaf'))).toBe('avif');
    expect(sniffImageFormat(bytes([0, 0, 0, 0x18], 'ftypheic', [0, 0, 0, 0], 'mif1heic'))).toBeUndefined();
    expect(sniffImageFormat(bytes('II*', [0]))).toBe('tiff');
    expect(sniffImageFormat(bytes('<svg xmlns="http://www.w3.org/2000/svg"/>'))).toBeUndefined();
    expect(sniffImageFormat(bytes('%PDF-1.7'))).toBeUndefined();
    expect(sniffImageFormat(new Uint8Array())).toBeUndefined();
  });
});

describe('negotiateFormat', () => {
  it('returns an explicit format whatever Accept says', () => {
    expect(negotiateFormat('png', CHROME_ACCEPT, 'jpeg')).toBe('png');
    expect(negotiateFormat('avif', null, 'jpeg')).toBe('avif');
  });

  it('auto: AVIF, then WebP, then the source format', () => {
    expect(negotiateFormat('auto', CHROME_ACCEPT, 'jpeg')).toBe('avif');
    expect(negotiateFormat('auto', OLD_SAFARI_ACCEPT, 'jpeg')).toBe('webp');
    expect(negotiateFormat('auto', LEGACY_ACCEPT, 'jpeg')).toBe('jpeg');
    expect(negotiateFormat('auto', LEGACY_ACCEPT, 'png')).toBe('png');
    expect(negotiateFormat('auto', null, 'jpeg')).toBe('jpeg');
  });

  it('auto: wildcards and q=0 do not count as support', () => {
    expect(negotiateFormat('auto', '*/*', 'jpeg')).toBe('jpeg');
    expect(negotiateFormat('auto', 'image/*', 'jpeg')).toBe('jpeg');
    expect(negotiateFormat('auto', 'image/avif;q=0, image/webp', 'jpeg')).toBe('webp');
    expect(negotiateFormat('auto', 'IMAGE/AVIF;Q=0.5', 'jpeg')).toBe('avif');
  });

  it('auto: falls back to PNG when the source format is not acceptable or not an output format', () => {
    expect(negotiateFormat('auto', LEGACY_ACCEPT, 'webp')).toBe('png');
    expect(negotiateFormat('auto', LEGACY_ACCEPT, 'avif')).toBe('png');
    expect(negotiateFormat('auto', LEGACY_ACCEPT, 'gif')).toBe('png');
    expect(negotiateFormat('auto', LEGACY_ACCEPT, 'tiff')).toBe('png');
    expect(negotiateFormat('auto', LEGACY_ACCEPT, undefined)).toBe('png');
  });

  it('auto: GIF sources prefer WebP (keeps animation) over AVIF', () => {
    expect(negotiateFormat('auto', CHROME_ACCEPT, 'gif')).toBe('webp');
    expect(negotiateFormat('auto', 'image/avif', 'gif')).toBe('avif');
  });
});

describe('resolveImageParams', () => {
  const base: ImageParams = { fit: 'inside', format: 'auto', dpr: 1, position: 'centre', enlarge: false };

  it('fills the default quality (75) and maps it for AVIF', () => {
    expect(resolveImageParams({ ...base, width: 400 }, 'jpeg').quality).toBe(75);
    expect(resolveImageParams({ ...base, width: 400 }, 'webp').quality).toBe(75);
    expect(resolveImageParams({ ...base, width: 400 }, 'avif').quality).toBe(56);
    expect(resolveImageParams({ ...base, quality: 80 }, 'avif').quality).toBe(60);
    expect(resolveImageParams({ ...base, quality: 90 }, 'jpeg', { quality: 50 }).quality).toBe(90);
    expect(resolveImageParams(base, 'jpeg', { quality: 50 }).quality).toBe(50);
  });

  it('maps AVIF quality linearly with q80 -> 60, never below 1', () => {
    expect(avifQuality(100)).toBe(75);
    expect(avifQuality(80)).toBe(60);
    expect(avifQuality(50)).toBe(38);
    expect(avifQuality(1)).toBe(1);
  });

  it('applies dpr and caps at maxOutputSide', () => {
    const r = resolveImageParams({ ...base, width: 400, height: 301, dpr: 1.5 }, 'png');
    expect([r.width, r.height]).toEqual([600, 452]);
    const capped = resolveImageParams({ ...base, width: 3000, dpr: 3 }, 'png');
    expect(capped.width).toBe(4096);
    const custom = resolveImageParams({ ...base, width: 3000, dpr: 3 }, 'png', { quality: 75, maxOutputSide: 5000 });
    expect(custom.width).toBe(5000);
  });

  it('never enlarges unless asked, defaults fit to inside', () => {
    const r = resolveImageParams({ ...base, width: 400 }, 'jpeg');
    expect(r.enlarge).toBe(false);
    expect(r.fit).toBe('inside');
    expect(resolveImageParams({ ...base, width: 400, enlarge: true }, 'jpeg').enlarge).toBe(true);
  });

  it('folds equivalent requests together', () => {
    // One side only: cover/contain/outside behave like inside; fill does not.
    expect(resolveImageParams({ ...base, width: 400, fit: 'cover', position: 'top' }, 'jpeg')).toMatchObject({
      fit: 'inside',
      position: 'centre',
    });
    expect(resolveImageParams({ ...base, width: 400, fit: 'fill' }, 'jpeg').fit).toBe('fill');
    // Position matters only for cover/contain with both sides.
    expect(resolveImageParams({ ...base, width: 4, height: 4, fit: 'cover', position: 'top' }, 'jpeg').position).toBe('top');
    expect(resolveImageParams({ ...base, width: 4, height: 4, fit: 'inside', position: 'top' }, 'jpeg').position).toBe('centre');
  });
});

describe('variantCacheSuffix', () => {
  const key = (query: string, accept: string | null, source: 'jpeg' | 'png' = 'jpeg') => {
    const params = parse(query)!;
    return variantCacheSuffix(resolveImageParams(params, negotiateFormat(params.format, accept, source), { quality: 75 }));
  };

  it('is canonical', () => {
    expect(key('width=400', CHROME_ACCEPT)).toBe('w=400;h=;fit=inside;q=56;f=avif;pos=centre;e=0');
    expect(key('w=400&h=300&fit=cover&position=right+top&q=80&enlarge=1', null)).toBe(
      'w=400;h=300;fit=cover;q=80;f=jpeg;pos=right-top;e=1',
    );
  });

  it('does not depend on order, spelling or the raw Accept string', () => {
    expect(key('width=400&format=auto', CHROME_ACCEPT)).toBe(key('format=auto&w=400', 'image/avif'));
    expect(key('w=400&fit=cover&position=center', OLD_SAFARI_ACCEPT)).toBe(key('w=400', 'image/webp, */*'));
    expect(key('w=200&dpr=2', null)).toBe(key('w=400', null));
  });

  it('differs when the output differs', () => {
    const keys = new Set([
      key('w=400', CHROME_ACCEPT),
      key('w=400', OLD_SAFARI_ACCEPT),
      key('w=400', LEGACY_ACCEPT),
      key('w=401', LEGACY_ACCEPT),
      key('w=400&q=74', LEGACY_ACCEPT),
      key('w=400&enlarge=1', LEGACY_ACCEPT),
      key('w=400&h=400&fit=cover', LEGACY_ACCEPT),
      key('w=400&h=400&fit=cover&position=top', LEGACY_ACCEPT),
    ]);
    expect(keys.size).toBe(8);
  });
});

describe('URL signing', () => {
  const KEY = 'test-signing-key';
  const path = '/photos/cat.jpg';

  it('signs with base64url HMAC-SHA256 and verifies', async () => {
    const params = q('w=400&format=auto');
    const sig = await signImagePath(KEY, path, params);
    expect(sig).toMatch(/^[A-Za-z0-9_-]{43}$/);
    params.set('sig', sig);
    expect(await verifyImageSignature(KEY, path, params)).toBe(true);
  });

  it('matches an independent HMAC-SHA256 over the documented payload', async () => {
    const { createHmac } = await import('node:crypto');
    const params = q('w=400&f=webp');
    expect(imageSignaturePayload(path, params)).toBe('/photos/cat.jpg\nf=webp&w=400');
    const expected = createHmac('sha256', KEY).update('/photos/cat.jpg\nf=webp&w=400').digest('base64url');
    expect(await signImagePath(KEY, path, params)).toBe(expected);
  });

  it('ignores parameter order and an existing sig', async () => {
    const a = await signImagePath(KEY, path, q('w=400&f=webp'));
    const b = await signImagePath(KEY, path, q('f=webp&sig=whatever&w=400'));
    expect(a).toBe(b);
    expect(await verifyImageSignature(KEY, path, q(`f=webp&sig=${a}&w=400`))).toBe(true);
  });

  it('rejects tampering, other paths, other keys, extra parameters', async () => {
    const sig = await signImagePath(KEY, path, q('w=400'));
    expect(await verifyImageSignature(KEY, path, q(`w=800&sig=${sig}`))).toBe(false);
    expect(await verifyImageSignature(KEY, '/photos/dog.jpg', q(`w=400&sig=${sig}`))).toBe(false);
    expect(await verifyImageSignature('other-key', path, q(`w=400&sig=${sig}`))).toBe(false);
    expect(await verifyImageSignature(KEY, path, q(`w=400&cachebust=1&sig=${sig}`))).toBe(false);
  });

  it('returns false for missing, repeated or malformed signatures', async () => {
    const sig = await signImagePath(KEY, path, q('w=400'));
    expect(await verifyImageSignature(KEY, path, q('w=400'))).toBe(false);
    expect(await verifyImageSignature(KEY, path, q(`w=400&sig=${sig}&sig=${sig}`))).toBe(false);
    expect(await verifyImageSignature(KEY, path, q('w=400&sig=not+base64!'))).toBe(false);
    expect(await verifyImageSignature(KEY, path, q(`w=400&sig=${sig.slice(0, 20)}`))).toBe(false);
    expect(await verifyImageSignature(KEY, path, q('w=400&sig='))).toBe(false);
  });

  it('leaves out the parameters `ignore` accepts (tracking parameters appended after signing)', async () => {
    const ignore = (name: string) => name.startsWith('utm_');
    expect(imageSignaturePayload(path, q('w=400&utm_source=x&v=2'), ignore)).toBe('/photos/cat.jpg\nv=2&w=400');
    const sig = await signImagePath(KEY, path, q('w=400'));
    expect(await verifyImageSignature(KEY, path, q(`w=400&sig=${sig}&utm_source=mail`), ignore)).toBe(true);
    expect(await verifyImageSignature(KEY, path, q(`w=400&sig=${sig}&utm_source=mail`))).toBe(false);
    expect(await verifyImageSignature(KEY, path, q(`w=400&sig=${sig}&x=1`), ignore)).toBe(false);
  });

  it('throws TypeError for an empty key', async () => {
    await expect(signImagePath('', path, q('w=1'))).rejects.toThrow(TypeError);
    await expect(verifyImageSignature('', path, q('w=1&sig=x'))).rejects.toThrow(TypeError);
  });
});
