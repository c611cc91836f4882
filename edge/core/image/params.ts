/**
 * Image query parameters: parsing, validation, format negotiation, the
 * variant cache-key suffix and URL signing. Runtime-agnostic (Web APIs
 * only: `URLSearchParams`, `TextEncoder`, `crypto.subtle`), so the same
 * rules hold on Node and on Workers.
 *
 * Everything here runs before any pixel work: user input is rejected with
 * `EDGE_BAD_PARAMETER` (400) and never reaches sharp (STYLE: "user input
 * never produces a 500"). Client strings are only looked up in `Map`s and
 * `Set`s, never as keys of plain objects: `fit=constructor` or
 * `format=__proto__` must not find `Object.prototype`'s members.
 */

import { EdgeError } from '../errors.js';
import type {
  ImageFit,
  ImageFormatParam,
  ImageOutputFormat,
  ImageParams,
  ResolvedImageParams,
} from './types.js';

// ---------------------------------------------------------------------------
// Parameter names

/** Long name -> accepted spellings (long first). */
const PARAM_ALIASES = {
  width: ['width', 'w'],
  height: ['height', 'h'],
  fit: ['fit'],
  quality: ['quality', 'q'],
  format: ['format', 'f'],
  dpr: ['dpr'],
  position: ['position'],
  enlarge: ['enlarge'],
} as const;

type ParamName = keyof typeof PARAM_ALIASES;

/** Query parameter that carries the URL signature (see `signImagePath`). */
export const IMAGE_SIGNATURE_PARAM = 'sig';

/**
 * Every query parameter this module owns, long and short spellings, plus
 * `sig`. The app strips these from the origin request and the source's
 * cache key, so `?width=400` and `?w=400` share one cached source.
 */
export const IMAGE_PARAM_NAMES: readonly string[] = Object.freeze([
  ...Object.values(PARAM_ALIASES).flat(),
  IMAGE_SIGNATURE_PARAM,
]);

/** Names that ask for a transformation (everything except `sig`). */
const TRANSFORM_PARAM_NAMES: readonly string[] = Object.values(PARAM_ALIASES).flat();

const KNOWN_PARAM_NAMES: ReadonlySet<string> = new Set(IMAGE_PARAM_NAMES);

/**
 * True when the query asks for a transformation (any image parameter other
 * than `sig`). Without one the source passes through unchanged.
 */
export function hasImageParams(query: URLSearchParams): boolean {
  return TRANSFORM_PARAM_NAMES.some((name) => query.has(name));
}

// ---------------------------------------------------------------------------
// Allowed values

/** @default 4096 */
export const DEFAULT_MAX_OUTPUT_SIDE = 4096;
/** JPEG-scale quality used when the client gives none. @default 75 */
export const DEFAULT_IMAGE_QUALITY = 75;

export const IMAGE_FITS: readonly ImageFit[] = ['cover', 'contain', 'fill', 'inside', 'outside'];
export const IMAGE_FORMAT_PARAMS: readonly ImageFormatParam[] = ['auto', 'avif', 'webp', 'jpeg', 'png'];
const FORMAT_ALIASES: ReadonlyMap<string, ImageFormatParam> = new Map([['jpg', 'jpeg']]);

/**
 * Canonical positions (sharp's spelling). `entropy` and `attention` are
 * crop strategies and only apply with `fit=cover`.
 */
export const IMAGE_POSITIONS: readonly string[] = [
  'centre',
  'top',
  'right top',
  'right',
  'right bottom',
  'bottom',
  'left bottom',
  'left',
  'left top',
  'entropy',
  'attention',
];
const POSITION_ALIASES: ReadonlyMap<string, string> = new Map([
  ['center', 'centre'],
  ['north', 'top'],
  ['northeast', 'right top'],
  ['east', 'right'],
  ['southeast', 'right bottom'],
  ['south', 'bottom'],
  ['southwest', 'left bottom'],
  ['west', 'left'],
  ['northwest', 'left top'],
]);
const CROP_STRATEGIES = new Set(['entropy', 'attention']);

/** Limits applied while parsing. */
export interface ImageParamLimits {
  /** Largest width or height a client may ask for (also caps `width * dpr`). @default 4096 */
  maxOutputSide?: number;
  /**
   * When set, `width` must be one of these values (before `dpr`), to bound
   * the number of variants per source.
   * @example widthsFromRange('16..3840:16')
   */
  allowedWidths?: readonly number[];
  /**
   * Query parameters the node drops from cache keys (`--ignore-query-params`,
   * e.g. `utm_*`): tolerated beside image parameters. Any other parameter
   * that is not an image parameter is refused (see `parseImageParams`).
   * @default nothing is ignored
   * @example compileParamMatcher(['utm_*', 'fbclid', 'gclid'])
   */
  ignoreParam?: (name: string) => boolean;
}

// ---------------------------------------------------------------------------
// Parsing

function badParameter(parameter: string, message: string, allowed: unknown): EdgeError {
  return new EdgeError('EDGE_BAD_PARAMETER', message, { details: { parameter, allowed } });
}

/**
 * The single value given for a parameter under any of its spellings.
 * Repeating it (`width=1&w=2`, `width=1&width=2`) is an error unless every
 * occurrence carries the same value.
 */
function readParam(query: URLSearchParams, name: ParamName): { used: string; value: string } | undefined {
  let found: { used: string; value: string } | undefined;
  for (const spelling of PARAM_ALIASES[name]) {
    for (const value of query.getAll(spelling)) {
      if (found === undefined) {
        found = { used: spelling, value };
      } else if (found.value !== value) {
        const names = found.used === spelling ? `${spelling} was` : `${found.used} and ${spelling} were`;
        throw badParameter(
          found.used,
          `${names} given conflicting values (${quote(found.value)} and ${quote(value)}); give ${name} once`,
          PARAM_ALIASES[name],
        );
      }
    }
  }
  return found;
}

function quote(value: string): string {
  // Keep error messages short and printable whatever the client sent.
  const clipped = value.length > 40 ? `${value.slice(0, 40)}…` : value;
  return `'${clipped.replace(/[^\x20-\x7e…]/g, '?')}'`;
}

function parseIntegerParam(
  param: { used: string; value: string },
  min: number,
  max: number,
): number {
  const n = /^[0-9]{1,6}$/.test(param.value) ? Number(param.value) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw badParameter(
      param.used,
      `${param.used} must be an integer from ${min} to ${max} (got ${quote(param.value)})`,
      `${min}..${max}`,
    );
  }
  return n;
}

function parseEnumParam<T extends string>(
  param: { used: string; value: string },
  allowed: readonly T[],
  aliases: ReadonlyMap<string, T> = new Map(),
  normalise: (value: string) => string = (value) => value.toLowerCase(),
): T {
  const key = normalise(param.value);
  const value = (allowed as readonly string[]).includes(key) ? (key as T) : aliases.get(key);
  if (value === undefined) {
    throw badParameter(
      param.used,
      `${param.used} must be one of ${allowed.join(', ')} (got ${quote(param.value)})`,
      allowed,
    );
  }
  return value;
}

/** `Top-Right`, `top_right`, `right+top` (decoded as a space) -> `right top`. */
function normalisePosition(value: string): string {
  const words = value.toLowerCase().trim().split(/[\s_-]+/).filter(Boolean);
  if (words.length === 2 && (words[1] === 'left' || words[1] === 'right')) words.reverse();
  return words.join(' ');
}

/**
 * Refuse a query parameter that is neither an image parameter, `sig`, nor
 * one the node ignores. As imgproxy does: an unknown parameter would be
 * passed over yet stay in the cache key, so `&x=1`, `&x=2`, ... would each
 * cost an origin fetch, a stored source and a transform.
 */
function assertKnownParams(query: URLSearchParams, ignoreParam: ((name: string) => boolean) | undefined): void {
  for (const name of query.keys()) {
    if (KNOWN_PARAM_NAMES.has(name) || ignoreParam?.(name)) continue;
    throw badParameter(
      name,
      `${quote(name)} is not an image parameter; image URLs take only ${TRANSFORM_PARAM_NAMES.join(', ')} and ${IMAGE_SIGNATURE_PARAM}`,
      IMAGE_PARAM_NAMES,
    );
  }
}

/**
 * Parse and validate the image parameters of a request.
 *
 * A query with at least one image parameter may hold nothing else but
 * `sig` and the parameters `limits.ignoreParam` accepts (tracking
 * parameters, dropped from the key): anything more is refused.
 *
 * @returns `null` when the query holds no image parameter (the source is
 *   served unchanged), otherwise the validated parameters.
 * @throws EdgeError `EDGE_BAD_PARAMETER` (400) with `details.parameter`
 *   (the spelling the client used, or the unknown name) and `details.allowed`.
 * @example parseImageParams(new URLSearchParams('w=400&fit=cover'), { maxOutputSide: 4096 })
 */
export function parseImageParams(query: URLSearchParams, limits: ImageParamLimits = {}): ImageParams | null {
  if (!hasImageParams(query)) return null;
  assertKnownParams(query, limits.ignoreParam);
  const maxOutputSide = limits.maxOutputSide ?? DEFAULT_MAX_OUTPUT_SIDE;

  const params: ImageParams = { fit: 'inside', format: 'auto', dpr: 1, position: 'centre', enlarge: false };

  const width = readParam(query, 'width');
  if (width) {
    params.width = parseIntegerParam(width, 1, maxOutputSide);
    if (limits.allowedWidths && !limits.allowedWidths.includes(params.width)) {
      throw badParameter(
        width.used,
        `${width.used} ${params.width} is not an allowed width; use one of ${describeWidths(limits.allowedWidths)}`,
        limits.allowedWidths,
      );
    }
  }

  const height = readParam(query, 'height');
  if (height) params.height = parseIntegerParam(height, 1, maxOutputSide);

  const fit = readParam(query, 'fit');
  if (fit) params.fit = parseEnumParam(fit, IMAGE_FITS);

  const quality = readParam(query, 'quality');
  if (quality) params.quality = parseIntegerParam(quality, 1, 100);

  const format = readParam(query, 'format');
  if (format) params.format = parseEnumParam(format, IMAGE_FORMAT_PARAMS, FORMAT_ALIASES);

  const dpr = readParam(query, 'dpr');
  if (dpr) {
    const n = /^[0-9]{1,3}(\.[0-9]{1,3})?$/.test(dpr.value) ? Number(dpr.value) : NaN;
    if (!(n >= 1 && n <= 3)) {
      throw badParameter(dpr.used, `dpr must be a number from 1 to 3, e.g. 2 or 1.5 (got ${quote(dpr.value)})`, '1..3');
    }
    params.dpr = n;
  }

  const position = readParam(query, 'position');
  if (position) {
    params.position = parseEnumParam(position, IMAGE_POSITIONS, POSITION_ALIASES, normalisePosition);
    if (CROP_STRATEGIES.has(params.position) && params.fit !== 'cover') {
      throw badParameter(
        position.used,
        `position=${params.position} is a crop strategy and needs fit=cover (got fit=${params.fit})`,
        IMAGE_POSITIONS.filter((p) => !CROP_STRATEGIES.has(p)),
      );
    }
  }

  const enlarge = readParam(query, 'enlarge');
  if (enlarge) {
    const v = enlarge.value.toLowerCase();
    // A bare `?enlarge` (empty value) reads as a flag.
    if (v === '1' || v === 'true' || v === '') params.enlarge = true;
    else if (v === '0' || v === 'false') params.enlarge = false;
    else throw badParameter('enlarge', `enlarge must be 1 or 0 (got ${quote(enlarge.value)})`, ['1', '0']);
  }

  return params;
}

function describeWidths(widths: readonly number[]): string {
  if (widths.length <= 12) return widths.join(', ');
  return `${widths.slice(0, 6).join(', ')}, …, ${widths.slice(-3).join(', ')} (${widths.length} values)`;
}

/**
 * Expand a width allow-list spec: comma-separated items, each a width
 * (`640`) or a range `from..to:step` (`16..3840:16`, step defaults to 1).
 * Sorted, duplicates removed. Throws `TypeError` on a malformed spec
 * (configuration error, checked at start-up).
 * @example widthsFromRange('16..3840:16') // [16, 32, ..., 3840]
 */
export function widthsFromRange(spec: string, maxEntries = 10_000): number[] {
  const out = new Set<number>();
  for (const raw of spec.split(',')) {
    const item = raw.trim();
    const m = /^([0-9]+)(?:\.\.([0-9]+)(?::([0-9]+))?)?$/.exec(item);
    if (!m) throw new TypeError(`widths: '${item}' is not a width or a range like 16..3840:16`);
    const from = Number(m[1]);
    const to = m[2] === undefined ? from : Number(m[2]);
    const step = m[3] === undefined ? 1 : Number(m[3]);
    if (from < 1 || to < from || step < 1) {
      throw new TypeError(`widths: '${item}' needs 1 <= from <= to and step >= 1`);
    }
    for (let w = from; w <= to; w += step) {
      out.add(w);
      if (out.size > maxEntries) throw new TypeError(`widths: '${spec}' expands to more than ${maxEntries} widths`);
    }
  }
  return [...out].sort((a, b) => a - b);
}

// ---------------------------------------------------------------------------
// Source formats

/** Formats a source can have; the output formats plus GIF and TIFF. */
export type SourceImageFormat = ImageOutputFormat | 'gif' | 'tiff';

// A Map: the origin's Content-Type (`constructor`, `__proto__`) must not find Object.prototype.
const TRANSFORMABLE_TYPES: ReadonlyMap<string, SourceImageFormat> = new Map([
  ['image/jpeg', 'jpeg'],
  ['image/jpg', 'jpeg'],
  ['image/pjpeg', 'jpeg'],
  ['image/png', 'png'],
  ['image/webp', 'webp'],
  ['image/avif', 'avif'],
  ['image/gif', 'gif'],
  ['image/tiff', 'tiff'],
]);

function mediaType(ct: string | null): string {
  return (ct ?? '').split(';', 1)[0]!.trim().toLowerCase();
}

/**
 * The source format named by a `Content-Type`, or `undefined` when the type
 * is not one we transform (see `isTransformableContentType`).
 */
export function sourceFormatFromContentType(ct: string | null): SourceImageFormat | undefined {
  return TRANSFORMABLE_TYPES.get(mediaType(ct));
}

/**
 * Whether a response with this `Content-Type` may be transformed: JPEG,
 * PNG, WebP, AVIF, GIF and TIFF.
 *
 * Not transformed (the app answers 415 when image parameters are present):
 * - `image/svg+xml`: rasterising untrusted SVG runs an XML parser and a
 *   renderer on attacker-controlled markup (external entities, billion-laughs
 *   expansion, references to local files or URLs); it is also already
 *   resolution-independent. SVG sources are never rasterised.
 * - `image/heic`/`heif`: the prebuilt sharp/libvips has no HEVC decoder.
 * - Anything else (HTML, JSON, `image/x-icon`, `image/bmp`, ...).
 *
 * The transformer also sniffs the bytes (`sniffImageFormat`), so a source
 * that lies about its type still cannot reach another decoder.
 */
export function isTransformableContentType(ct: string | null): boolean {
  return sourceFormatFromContentType(ct) !== undefined;
}

/**
 * Identify a source by its magic bytes. Only the formats we decode are
 * recognised; everything else (SVG, PDF, HEIC/HEVC, text) is `undefined`.
 */
export function sniffImageFormat(bytes: Uint8Array): SourceImageFormat | undefined {
  const at = (i: number) => bytes[i] ?? -1;
  const ascii = (from: number, to: number) => String.fromCharCode(...bytes.subarray(from, to));
  if (at(0) === 0xff && at(1) === 0xd8 && at(2) === 0xff) return 'jpeg';
  if (at(0) === 0x89 && ascii(1, 4) === 'PNG' && at(4) === 0x0d && at(5) === 0x0a) return 'png';
  if (ascii(0, 4) === 'GIF8') return 'gif';
  if (ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return 'webp';
  if ((at(0) === 0x49 && at(1) === 0x49 && at(2) === 0x2a && at(3) === 0) ||
      (at(0) === 0x4d && at(1) === 0x4d && at(2) === 0 && at(3) === 0x2a)) return 'tiff';
  if (ascii(4, 8) === 'ftyp') {
    // ISO BMFF: the major brand, then compatible brands, up to the box size.
    const boxSize = Math.min(((at(0) << 24) | (at(1) << 16) | (at(2) << 8) | at(3)) >>> 0, bytes.length, 64);
    const brands = [ascii(8, 12)];
    for (let i = 16; i + 4 <= boxSize; i += 4) brands.push(ascii(i, i + 4));
    if (brands.includes('avif') || brands.includes('avis')) return 'avif';
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// Format negotiation

/** True when `Accept` names `type` explicitly with q > 0 (wildcards do not count). */
function accepts(accept: string, type: string): boolean {
  for (const range of accept.toLowerCase().split(',')) {
    const [name, ...parameters] = range.split(';').map((s) => s.trim());
    if (name !== type) continue;
    const q = parameters.find((p) => p.startsWith('q='));
    if (q === undefined || Number(q.slice(2)) > 0) return true;
  }
  return false;
}

/**
 * The output format for a request. An explicit `format` wins. For `auto`:
 *
 * 1. AVIF if `Accept` names `image/avif`, else WebP if it names
 *    `image/webp`. Only explicit entries count: `image/*` and `*\/*` are
 *    sent by browsers that cannot decode either. Exception: a GIF source
 *    prefers WebP over AVIF, because animation survives only in WebP (see
 *    `SharpImageTransformer`).
 * 2. Otherwise the source format when it is JPEG or PNG.
 * 3. Otherwise PNG: the client cannot take the source's own format (WebP,
 *    AVIF) or it is not an output format (GIF, TIFF, unknown). PNG is
 *    understood everywhere, lossless, and keeps transparency, which the
 *    content type alone cannot rule out.
 *
 * The result (never the raw `Accept`) goes into the cache key, and the
 * response must carry `Vary: Accept` whenever `requested` is `auto`.
 */
export function negotiateFormat(
  requested: ImageFormatParam,
  accept: string | null,
  sourceFormat: SourceImageFormat | undefined,
): ImageOutputFormat {
  if (requested !== 'auto') return requested;
  const a = accept ?? '';
  const avif = accepts(a, 'image/avif');
  const webp = accepts(a, 'image/webp');
  if (sourceFormat === 'gif' && webp) return 'webp';
  if (avif) return 'avif';
  if (webp) return 'webp';
  if (sourceFormat === 'jpeg' || sourceFormat === 'png') return sourceFormat;
  return 'png';
}

// ---------------------------------------------------------------------------
// Resolution

export interface ImageDefaults {
  /** Quality on the JPEG scale when the client gives none. @default 75 */
  quality?: number;
  /** Caps `width * dpr` and `height * dpr`. @default 4096 */
  maxOutputSide?: number;
}

/**
 * Map a JPEG-scale quality (what clients send, 1..100) to the AVIF
 * encoder's scale. AVIF at q60 looks about like JPEG at q80, so the map is
 * linear with that anchor: `avifQ = max(1, round(q * 0.75))`
 * (q100 -> 75, q80 -> 60, q75 -> 56, q50 -> 38). WebP, JPEG and PNG use the
 * requested value as is (PNG is lossless; sharp ignores it there).
 */
export function avifQuality(jpegQuality: number): number {
  return Math.max(1, Math.round(jpegQuality * 0.75));
}

/**
 * Exactly what the transformer will do: dpr multiplied into width/height
 * (rounded, capped at `maxOutputSide`), default quality filled in and mapped
 * for AVIF, and equivalent requests folded into one form so they share a
 * cache entry:
 * - with one side only, `cover`, `contain` and `outside` behave like
 *   `inside` (aspect ratio kept) and become `inside`; `fill` does not (it
 *   keeps the source's other side), so it stays;
 * - `position` only matters for `cover` and `contain` with both sides;
 *   otherwise it becomes `centre`.
 * Enlargement stays off unless the client sent `enlarge=1`.
 */
export function resolveImageParams(
  params: ImageParams,
  outputFormat: ImageOutputFormat,
  defaults: ImageDefaults = {},
): ResolvedImageParams {
  const maxOutputSide = defaults.maxOutputSide ?? DEFAULT_MAX_OUTPUT_SIDE;
  const scale = (side: number | undefined) =>
    side === undefined ? undefined : Math.min(maxOutputSide, Math.max(1, Math.round(side * params.dpr)));
  const width = scale(params.width);
  const height = scale(params.height);

  let fit = params.fit;
  const bothSides = width !== undefined && height !== undefined;
  if (!bothSides && (fit === 'cover' || fit === 'contain' || fit === 'outside')) fit = 'inside';
  const position = bothSides && (fit === 'cover' || fit === 'contain') ? params.position : 'centre';

  const requestedQuality = params.quality ?? defaults.quality ?? DEFAULT_IMAGE_QUALITY;
  const quality = outputFormat === 'avif' ? avifQuality(requestedQuality) : requestedQuality;

  const resolved: ResolvedImageParams = { fit, quality, format: outputFormat, position, enlarge: params.enlarge };
  if (width !== undefined) resolved.width = width;
  if (height !== undefined) resolved.height = height;
  return resolved;
}

/**
 * Canonical suffix for the variant's cache key, independent of parameter
 * order and spelling, built from the resolved (negotiated) parameters.
 * @example 'w=400;h=;fit=inside;q=56;f=avif;pos=centre;e=0'
 */
export function variantCacheSuffix(resolved: ResolvedImageParams): string {
  return [
    `w=${resolved.width ?? ''}`,
    `h=${resolved.height ?? ''}`,
    `fit=${resolved.fit}`,
    `q=${resolved.quality}`,
    `f=${resolved.format}`,
    `pos=${resolved.position.replace(/ /g, '-')}`,
    `e=${resolved.enlarge ? 1 : 0}`,
  ].join(';');
}

/** Content type of each output format (indexed only by validated formats; null prototype all the same). */
export const IMAGE_CONTENT_TYPES: Readonly<Record<ImageOutputFormat, string>> = Object.freeze(
  Object.assign(Object.create(null) as Record<ImageOutputFormat, string>, {
    avif: 'image/avif',
    webp: 'image/webp',
    jpeg: 'image/jpeg',
    png: 'image/png',
  }),
);

// ---------------------------------------------------------------------------
// URL signing

const encoder = new TextEncoder();
const keyCache = new Map<string, Promise<CryptoKey>>();

function hmacKey(key: string): Promise<CryptoKey> {
  if (typeof key !== 'string' || key.length === 0) {
    throw new TypeError('image signing key must be a non-empty string');
  }
  let cached = keyCache.get(key);
  if (!cached) {
    cached = crypto.subtle.importKey('raw', encoder.encode(key), { name: 'HMAC', hash: 'SHA-256' }, false, [
      'sign',
      'verify',
    ]);
    // One or two configured keys in practice; keep the map bounded anyway.
    if (keyCache.size >= 16) keyCache.clear();
    keyCache.set(key, cached);
  }
  return cached;
}

/**
 * The signed string: the pathname, a newline, then every query parameter
 * except `sig` and those `ignore` accepts, sorted by name then value, each
 * `encodeURIComponent`-ed as `name=value` and joined with `&`. All kept
 * parameters are covered, not only image ones, so a signed URL cannot be
 * varied (e.g. `&x=1`) to force new origin fetches or transforms.
 *
 * `ignore` is the node's `--ignore-query-params` matcher: those parameters
 * (`utm_*`, `fbclid`, ...) are dropped from cache keys, and are often
 * appended to a published URL after it was signed, so they are not covered.
 */
export function imageSignaturePayload(pathname: string, params: URLSearchParams, ignore?: (name: string) => boolean): string {
  const pairs: Array<[string, string]> = [];
  for (const [name, value] of params) if (name !== IMAGE_SIGNATURE_PARAM && !ignore?.(name)) pairs.push([name, value]);
  pairs.sort(([an, av], [bn, bv]) => (an < bn ? -1 : an > bn ? 1 : av < bv ? -1 : av > bv ? 1 : 0));
  const query = pairs.map(([n, v]) => `${encodeURIComponent(n)}=${encodeURIComponent(v)}`).join('&');
  return `${pathname}\n${query}`;
}

function toBase64Url(bytes: Uint8Array): string {
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromBase64Url(text: string): Uint8Array<ArrayBuffer> | undefined {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) return undefined;
  try {
    const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/'));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}

/**
 * HMAC-SHA256 of `imageSignaturePayload(pathname, params, ignore)`, base64url
 * without padding (43 characters). Add it to the URL as `sig=`.
 * `pathname` is as in `new URL(...).pathname` (percent-encoded).
 * @throws TypeError when `key` is empty.
 * @example `${path}?w=400&sig=${await signImagePath(key, path, new URLSearchParams('w=400'))}`
 */
export async function signImagePath(key: string, pathname: string, params: URLSearchParams, ignore?: (name: string) => boolean): Promise<string> {
  const mac = await crypto.subtle.sign('HMAC', await hmacKey(key), encoder.encode(imageSignaturePayload(pathname, params, ignore)));
  return toBase64Url(new Uint8Array(mac));
}

/**
 * True when `params` carries exactly one `sig` that matches. False for a
 * missing, repeated, malformed or wrong signature (answer 403
 * `EDGE_BAD_SIGNATURE`). The comparison is `crypto.subtle.verify`, which
 * compares in constant time. Parameters `ignore` accepts are not covered
 * (see `imageSignaturePayload`).
 * @throws TypeError when `key` is empty (a configuration error, not a client one).
 */
export async function verifyImageSignature(
  key: string,
  pathname: string,
  params: URLSearchParams,
  ignore?: (name: string) => boolean,
): Promise<boolean> {
  const cryptoKey = await hmacKey(key);
  const sigs = params.getAll(IMAGE_SIGNATURE_PARAM);
  if (sigs.length !== 1) return false;
  const sig = fromBase64Url(sigs[0]!);
  if (sig === undefined || sig.length !== 32) return false;
  return crypto.subtle.verify('HMAC', cryptoKey, sig, encoder.encode(imageSignaturePayload(pathname, params, ignore)));
}
