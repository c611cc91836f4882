/**
 * Image parameter parsing (`edge/core/image/params.ts`), where mutation
 * testing (`npm run test:mutation`) found image-params.test.ts silent: the
 * exact grammar of numbers, positions and flags, the messages and allowed
 * values a 400 carries, width allow-lists, magic-byte sniffing near misses,
 * Accept parameters, the resolved form and the signed payload. Pure
 * functions, tested directly.
 */
import { describe, expect, it } from 'vitest';

import { isEdgeError } from '../edge/core/errors.js';
import {
  IMAGE_CONTENT_TYPES,
  IMAGE_PARAM_NAMES,
  IMAGE_SIGNATURE_PARAM,
  hasImageParams,
  imageSignaturePayload,
  negotiateFormat,
  parseImageParams,
  resolveImageParams,
  sniffImageFormat,
  sourceFormatFromContentType,
  variantCacheSuffix,
  verifyImageSignature,
  signImagePath,
  widthsFromRange,
  type ImageParamLimits,
} from '../edge/core/image/params.js';
import type { ImageParams } from '../edge/core/image/types.js';

const parse = (s: string, limits: ImageParamLimits = {}) => parseImageParams(new URLSearchParams(s), limits);

function refusal(fn: () => unknown): { message: string; details: { parameter: string; allowed: unknown } } {
  try {
    fn();
  } catch (err) {
    expect(isEdgeError(err)).toBe(true);
    expect((err as { code: string }).code).toBe('EDGE_BAD_PARAMETER');
    return err as { message: string; details: { parameter: string; allowed: unknown } };
  }
  throw new Error('expected EDGE_BAD_PARAMETER, nothing was thrown');
}

const bytes = (...parts: Array<number[] | string>) =>
  Uint8Array.from(parts.flatMap((p) => (typeof p === 'string' ? [...p].map((c) => c.charCodeAt(0)) : p)));

describe('names', () => {
  it('sig is the signature parameter, listed with every spelling; it alone asks for no transform', () => {
    expect(IMAGE_SIGNATURE_PARAM).toBe('sig');
    expect([...IMAGE_PARAM_NAMES].sort()).toEqual(['dpr', 'enlarge', 'f', 'fit', 'format', 'h', 'height', 'position', 'q', 'quality', 'sig', 'w', 'width']);
    expect(hasImageParams(new URLSearchParams('sig=abc'))).toBe(false);
    for (const name of IMAGE_PARAM_NAMES.filter((n) => n !== 'sig')) expect(hasImageParams(new URLSearchParams(`${name}=1`)), name).toBe(true);
  });
});

describe('numbers', () => {
  it('integers are 1 to 6 digits and nothing else: no sign, space, exponent, hex or fraction', () => {
    for (const value of ['%2B12', '+12', '12+', '1e3', '0x10', '12.0', '1_000', '1234567', ' 1']) {
      const err = refusal(() => parse(`width=${value}`));
      expect(err.details.parameter, value).toBe('width');
    }
    expect(parse('width=000012')!.width).toBe(12);
  });

  it('the bounds are inclusive', () => {
    expect(parse('width=1&height=1&quality=1')).toMatchObject({ width: 1, height: 1, quality: 1 });
    expect(parse('width=4096&quality=100')).toMatchObject({ width: 4096, quality: 100 });
    expect(refusal(() => parse('quality=101')).details.allowed).toBe('1..100');
  });

  it('dpr: 1 to 3, up to three digits before and after the point', () => {
    expect(parse('dpr=1')!.dpr).toBe(1);
    expect(parse('dpr=3')!.dpr).toBe(3);
    expect(parse('dpr=002')!.dpr).toBe(2);
    expect(parse('dpr=1.25')!.dpr).toBe(1.25);
    expect(parse('dpr=2.999')!.dpr).toBe(2.999);
    for (const value of ['+2', '2+', '2.', '.5', '1.2345', '0002', '2x', '3.001', '0.999']) {
      const err = refusal(() => parse(`dpr=${value}`));
      expect(err.message, value).toMatch(/^dpr must be a number from 1 to 3, e\.g\. 2 or 1\.5 \(got '/);
      expect(err.details.allowed).toBe('1..3');
    }
  });
});

describe('positions', () => {
  it.each([
    ['right top', 'right top'],
    ['top right', 'right top'],
    ['left_bottom', 'left bottom'],
    ['bottom-left', 'left bottom'],
    ['  Top__Left  ', 'left top'],
    ['_top', 'top'],
    ['top_', 'top'],
    ['center', 'centre'],
    ['north', 'top'],
    ['northeast', 'right top'],
    ['east', 'right'],
    ['southeast', 'right bottom'],
    ['south', 'bottom'],
    ['southwest', 'left bottom'],
    ['west', 'left'],
    ['northwest', 'left top'],
    ['RIGHT', 'right'],
  ])('position=%j is %j', (value, expected) => {
    expect(parse(`fit=cover&w=10&h=10&position=${encodeURIComponent(value)}`)!.position).toBe(expected);
  });

  it('a crop strategy without fit=cover is refused, offering the other positions', () => {
    const err = refusal(() => parse('position=entropy'));
    expect(err.message).toBe('position=entropy is a crop strategy and needs fit=cover (got fit=inside)');
    expect(err.details.allowed).toEqual(['centre', 'top', 'right top', 'right', 'right bottom', 'bottom', 'left bottom', 'left', 'left top']);
  });
});

describe('enlarge', () => {
  it.each([
    ['1', true],
    ['true', true],
    ['TRUE', true],
    ['True', true],
    ['', true],
    ['0', false],
    ['false', false],
    ['FALSE', false],
  ])('enlarge=%j is %s', (value, expected) => {
    expect(parse(`width=10&enlarge=${value}`)!.enlarge).toBe(expected);
  });

  it('anything else is refused', () => {
    const err = refusal(() => parse('enlarge=yes'));
    expect(err.message).toBe("enlarge must be 1 or 0 (got 'yes')");
    expect(err.details).toEqual({ parameter: 'enlarge', allowed: ['1', '0'] });
  });
});

describe('messages', () => {
  it('quotes values of up to 40 characters whole, longer ones clipped with an ellipsis, unprintable characters as ?', () => {
    const forty = 'a'.repeat(40);
    expect(refusal(() => parse(`fit=${forty}`)).message).toContain(`(got '${forty}')`);
    expect(refusal(() => parse(`fit=${forty}b`)).message).toContain(`(got '${forty}…')`);
    expect(refusal(() => parse(`fit=${encodeURIComponent('a\u0001b\u00e9')}`)).message).toContain("(got 'a?b?')");
  });

  it('an unknown parameter names what image URLs take', () => {
    expect(refusal(() => parse('width=10&x=1')).message).toBe(
      "'x' is not an image parameter; image URLs take only width, w, height, h, fit, quality, q, format, f, dpr, position, enlarge and sig",
    );
  });

  it('conflicting spellings name both', () => {
    expect(refusal(() => parse('width=1&w=2')).message).toBe("width and w were given conflicting values ('1' and '2'); give width once");
    expect(refusal(() => parse('w=1&w=2')).message).toBe("w was given conflicting values ('1' and '2'); give width once");
  });

  it('a width allow-list is listed whole up to 12 values, else summarised', () => {
    const twelve = Array.from({ length: 12 }, (_, i) => (i + 1) * 100);
    expect(refusal(() => parse('w=150', { allowedWidths: twelve })).message).toBe(
      'w 150 is not an allowed width; use one of 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200',
    );
    const thirteen = [...twelve, 1300];
    expect(refusal(() => parse('w=150', { allowedWidths: thirteen })).message).toBe(
      'w 150 is not an allowed width; use one of 100, 200, 300, 400, 500, 600, …, 1100, 1200, 1300 (13 values)',
    );
  });
});

describe('widthsFromRange', () => {
  it('reads single widths, ranges with and without a step', () => {
    expect(widthsFromRange('5')).toEqual([5]);
    expect(widthsFromRange('1..4')).toEqual([1, 2, 3, 4]);
    expect(widthsFromRange(' 10..30:10 , 15 ')).toEqual([10, 15, 20, 30]);
    expect(widthsFromRange('7..7')).toEqual([7]);
  });

  it.each([['x16'], ['16x'], ['16..'], ['..16'], ['16..32:'], ['16.5'], ['']])('refuses %j, naming it', (spec) => {
    expect(() => widthsFromRange(spec)).toThrow(`widths: '${spec.trim()}' is not a width or a range like 16..3840:16`);
  });

  it.each([['100..50'], ['0..50'], ['0'], ['16..32:0']])('refuses %j: from 1 up, to not below from, a step of 1 or more', (spec) => {
    expect(() => widthsFromRange(spec)).toThrow(`widths: '${spec}' needs 1 <= from <= to and step >= 1`);
  });

  it('allows exactly maxEntries widths', () => {
    expect(widthsFromRange('1..10', 10)).toHaveLength(10);
    expect(() => widthsFromRange('1..11', 10)).toThrow("widths: '1..11' expands to more than 10 widths");
  });
});

describe('source formats', () => {
  it('reads the media type case-insensitively, without parameters or spaces', () => {
    expect(sourceFormatFromContentType(' Image/JPEG ;q=1')).toBe('jpeg');
    expect(sourceFormatFromContentType('image/pjpeg')).toBe('jpeg');
    expect(sourceFormatFromContentType('image/jpg')).toBe('jpeg');
    expect(sourceFormatFromContentType('image/png')).toBe('png');
    expect(sourceFormatFromContentType('image/tiff')).toBe('tiff');
    expect(sourceFormatFromContentType('image/png-x')).toBeUndefined();
    expect(sourceFormatFromContentType('')).toBeUndefined();
  });

  it('sniffs only complete signatures', () => {
    expect(sniffImageFormat(bytes([0xff, 0xd8, 0xff]))).toBe('jpeg');
    for (const near of [[0xff, 0xd8, 0x00], [0xff, 0x00, 0xff], [0x00, 0xd8, 0xff], [0xff, 0xd8]]) {
      expect(sniffImageFormat(bytes(near)), JSON.stringify(near)).toBeUndefined();
    }
    expect(sniffImageFormat(bytes([0x89], 'PNG', [0x0d, 0x0a]))).toBe('png');
    for (const near of [bytes([0x88], 'PNG', [0x0d, 0x0a]), bytes([0x89], 'PNF', [0x0d, 0x0a]), bytes([0x89], 'PNG', [0x0a, 0x0a]), bytes([0x89], 'PNG', [0x0d, 0x0d])]) {
      expect(sniffImageFormat(near)).toBeUndefined();
    }
    expect(sniffImageFormat(bytes('RIFF', [1, 2, 3, 4], 'WEBP'))).toBe('webp');
    expect(sniffImageFormat(bytes('RIFX', [1, 2, 3, 4], 'WEBP'))).toBeUndefined();
    expect(sniffImageFormat(bytes('RIFF', [1, 2, 3, 4], 'WAVE'))).toBeUndefined();
    expect(sniffImageFormat(bytes('GIF87a'))).toBe('gif');
    expect(sniffImageFormat(bytes('GIF9'))).toBeUndefined();
  });

  it('sniffs TIFF in both byte orders, and only those', () => {
    expect(sniffImageFormat(bytes([0x49, 0x49, 0x2a, 0x00]))).toBe('tiff');
    expect(sniffImageFormat(bytes([0x4d, 0x4d, 0x00, 0x2a]))).toBe('tiff');
    const near = [
      [0x48, 0x49, 0x2a, 0x00],
      [0x49, 0x48, 0x2a, 0x00],
      [0x49, 0x49, 0x2b, 0x00],
      [0x49, 0x49, 0x2a, 0x01],
      [0x4c, 0x4d, 0x00, 0x2a],
      [0x4d, 0x4c, 0x00, 0x2a],
      [0x4d, 0x4d, 0x01, 0x2a],
      [0x4d, 0x4d, 0x00, 0x2b],
      [0x49, 0x49, 0x00, 0x2a],
      [0x4d, 0x4d, 0x2a, 0x00],
    ];
    for (const b of near) expect(sniffImageFormat(bytes(b)), JSON.stringify(b)).toBeUndefined();
  });

  it('AVIF: the major brand or a compatible brand inside the ftyp box', () => {
    const box = (size: number, major: string, ...compatible: string[]) => bytes([0, 0, 0, size], 'ftyp', major, [0, 0, 0, 0], ...compatible);
    expect(sniffImageFormat(box(16, 'avif'))).toBe('avif');
    expect(sniffImageFormat(box(16, 'avis'))).toBe('avif');
    expect(sniffImageFormat(box(20, 'mif1', 'avis'))).toBe('avif');
    expect(sniffImageFormat(box(24, 'mif1', 'miaf', 'avif'))).toBe('avif');
    // A brand past the box's declared size is not one of its brands.
    expect(sniffImageFormat(box(20, 'mif1', 'miaf', 'avif'))).toBeUndefined();
    expect(sniffImageFormat(box(16, 'heic', 'avif'))).toBeUndefined();
    // No ftyp box: brands mean nothing.
    expect(sniffImageFormat(bytes([0, 0, 0, 16], 'ftip', 'avif', [0, 0, 0, 0]))).toBeUndefined();
  });
});

describe('negotiateFormat: Accept parameters', () => {
  it('reads q among other parameters, wherever it stands', () => {
    expect(negotiateFormat('auto', 'image/avif;x=5;q=0', 'jpeg')).toBe('jpeg');
    expect(negotiateFormat('auto', 'image/avif;q=0;x=5', 'jpeg')).toBe('jpeg');
    expect(negotiateFormat('auto', 'image/webp;level=1', 'jpeg')).toBe('webp');
    expect(negotiateFormat('auto', 'image/webp ; q=0.1', 'jpeg')).toBe('webp');
  });
});

describe('resolveImageParams', () => {
  const base: ImageParams = { fit: 'inside', format: 'auto', dpr: 1, position: 'centre', enlarge: false };

  it('with one side, cover, contain and outside become inside and the position centre; fill stays', () => {
    for (const fit of ['cover', 'contain', 'outside'] as const) {
      expect(resolveImageParams({ ...base, width: 100, fit, position: 'top' }, 'png')).toStrictEqual({
        width: 100,
        fit: 'inside',
        quality: 75,
        format: 'png',
        position: 'centre',
        enlarge: false,
      });
      expect(resolveImageParams({ ...base, height: 50, fit, position: 'top' }, 'png')).toStrictEqual({
        height: 50,
        fit: 'inside',
        quality: 75,
        format: 'png',
        position: 'centre',
        enlarge: false,
      });
    }
    expect(resolveImageParams({ ...base, width: 100, fit: 'fill' }, 'png').fit).toBe('fill');
  });

  it('with both sides, cover and contain keep their position; other fits are centred', () => {
    expect(resolveImageParams({ ...base, width: 10, height: 10, fit: 'cover', position: 'top' }, 'png').position).toBe('top');
    expect(resolveImageParams({ ...base, width: 10, height: 10, fit: 'contain', position: 'left' }, 'png').position).toBe('left');
    for (const fit of ['inside', 'outside', 'fill'] as const) {
      expect(resolveImageParams({ ...base, width: 10, height: 10, fit, position: 'top' }, 'png'), fit).toMatchObject({ fit, position: 'centre' });
    }
  });

  it('no side: neither width nor height in the result', () => {
    expect(resolveImageParams({ ...base, fit: 'cover', position: 'top' }, 'webp')).toStrictEqual({
      fit: 'inside',
      quality: 75,
      format: 'webp',
      position: 'centre',
      enlarge: false,
    });
  });

  it('the cache suffix leaves a missing side empty', () => {
    expect(variantCacheSuffix(resolveImageParams({ ...base, height: 40 }, 'png'))).toBe('w=;h=40;fit=inside;q=75;f=png;pos=centre;e=0');
  });
});

describe('output content types', () => {
  it('one per output format', () => {
    expect({ ...IMAGE_CONTENT_TYPES }).toEqual({ avif: 'image/avif', webp: 'image/webp', jpeg: 'image/jpeg', png: 'image/png' });
  });
});

describe('signatures', () => {
  it('an empty (or missing) key is a configuration error, named as such', async () => {
    const message = 'image signing key must be a non-empty string';
    await expect(signImagePath('', '/p.jpg', new URLSearchParams('w=1'))).rejects.toThrow(new TypeError(message));
    await expect(verifyImageSignature('', '/p.jpg', new URLSearchParams('w=1&sig=x'))).rejects.toThrow(new TypeError(message));
    await expect(signImagePath(undefined as unknown as string, '/p.jpg', new URLSearchParams('w=1'))).rejects.toThrow(new TypeError(message));
  });

  it('takes the signature in base64url only, unpadded, of exactly 32 bytes; anything else is false, never an error', async () => {
    const params = new URLSearchParams('w=100');
    const sig = await signImagePath('k', '/p.jpg', params);
    expect(sig).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const check = (value: string) => verifyImageSignature('k', '/p.jpg', new URLSearchParams(`w=100&sig=${encodeURIComponent(value)}`));
    expect(await check(sig)).toBe(true);
    const standard = sig.replace(/-/g, '+').replace(/_/g, '/');
    expect(await check(`${standard}=`)).toBe(false);
    expect(await check(`${sig}=`)).toBe(false);
    expect(await check('***')).toBe(false);
    expect(await check('abcde')).toBe(false);
    expect(await check(sig.slice(0, 40))).toBe(false);
    expect(await check(`${sig}AAAA`)).toBe(false);
  });

  it('sorts the payload by name, then by value', () => {
    expect(imageSignaturePayload('/p.jpg', new URLSearchParams('w=2&a=2&a=1&b=1&sig=x'))).toBe('/p.jpg\na=1&a=2&b=1&w=2');
    expect(imageSignaturePayload('/p.jpg', new URLSearchParams('a=1&a=2'))).toBe(imageSignaturePayload('/p.jpg', new URLSearchParams('a=2&a=1')));
  });

  it('a signature over repeated parameters verifies in either order', async () => {
    const sig = await signImagePath('k', '/p.jpg', new URLSearchParams('w=100&x=2&x=1'));
    expect(await verifyImageSignature('k', '/p.jpg', new URLSearchParams(`x=1&w=100&x=2&sig=${sig}`))).toBe(true);
    expect(await verifyImageSignature('k', '/p.jpg', new URLSearchParams(`x=1&w=100&x=3&sig=${sig}`))).toBe(false);
  });
});
