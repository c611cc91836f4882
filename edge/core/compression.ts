/**
 * Content codings (RFC 9110 8.4, 12.5.3): which coding a client gets, which
 * responses the node compresses, and how a representation the node made is
 * labelled. Pure decisions; the streams come from the runtime's
 * {@link BodyCoder} (Node: `edge/node/zlib-coder.ts`; Workers:
 * `edge/workers/web-coder.ts`) and the stored-entry work from `recode.ts`.
 *
 * The model: a compressible response varies on `Accept-Encoding`, and each
 * negotiated coding (`br`, `gzip`, identity) is one Vary variant of the URL,
 * keyed by the coding the origin was asked for, never by the raw header.
 * Every variant holds either the negotiated coding or identity, so any client
 * that negotiates it can read it. The node compresses (or decodes) once, when
 * the variant is filled, and every later hit is an ordinary hit.
 */

/** A content coding this node reads and writes. */
export type ContentCoding = 'br' | 'gzip';

/** What a client gets: a content coding, or the representation as is. */
export type Coding = ContentCoding | 'identity';

/**
 * Encode and decode bodies, per runtime (`EdgeAppDeps.coder`). Streams
 * respect backpressure; a decoder fails (errors its stream) on corrupt or
 * truncated input, so a broken body is never stored.
 */
export interface BodyCoder {
  /** Codings this runtime can produce (Workers: none, Cloudflare compresses downstream). */
  readonly encodes: readonly ContentCoding[];
  /** Codings this runtime can decode. */
  readonly decodes: readonly ContentCoding[];
  /**
   * A stream pair (for `pipeThrough`) that compresses with `coding`; `level`
   * is 0-11 for br, 1-9 for gzip. `sizeHint`, the input's length when known,
   * lets brotli size its window and tables to it (less memory and CPU).
   */
  encoder(coding: ContentCoding, level: number, sizeHint?: number): ReadableWritablePair<Uint8Array, Uint8Array>;
  decoder(coding: ContentCoding): ReadableWritablePair<Uint8Array, Uint8Array>;
}

/** The compression options (a slice of `EdgeOptions`, see `options.ts`). */
export interface CompressionOptions {
  /** Compress compressible responses for clients that accept br or gzip. @default true */
  compress: boolean;
  /** Media types compressed (`type/*`, `type/*+suffix` allowed). @default {@link DEFAULT_COMPRESS_TYPES} */
  compressTypes: string[];
  /** Smaller bodies (by Content-Length) are not compressed. @default 1024 */
  compressMinSize: number;
  /** Brotli quality while a miss streams. @default 5 */
  brotliLevel: number;
  /** gzip level while a miss streams. @default 5 */
  gzipLevel: number;
  /** Re-compress node-made br entries at this quality in the background; 0 turns it off. @default 11 */
  brotliBackgroundLevel: number;
}

/**
 * Compressed by default: text, JSON, JavaScript, CSS, SVG, XML, wasm and the
 * font formats that are not compressed already (TrueType, OpenType, EOT;
 * WOFF and WOFF2 are). Never: images other than SVG/ICO/BMP, audio, video,
 * archives, and `text/event-stream` (a stream must not wait for a block).
 */
export const DEFAULT_COMPRESS_TYPES: readonly string[] = [
  'text/*',
  'application/json',
  'application/*+json',
  'application/javascript',
  'application/x-javascript',
  'application/ecmascript',
  'application/xml',
  'application/*+xml',
  'image/svg+xml',
  'image/x-icon',
  'image/vnd.microsoft.icon',
  'image/bmp',
  'application/wasm',
  'font/ttf',
  'font/otf',
  'font/collection',
  'application/x-font-ttf',
  'application/x-font-otf',
  'application/vnd.ms-fontobject',
];

/** Types never compressed whatever the list says: events must reach the client as they are written. */
const NEVER_COMPRESSED = new Set(['text/event-stream']);

/**
 * Internal field on a representation the node made: its coding, the level
 * and the origin's coding it was made from (`br;level=5;from=identity`,
 * `identity;level=0;from=gzip` for a decoded one). Never sent (see
 * `responder.ts`).
 */
export const CODED_FIELD = 'x-edge-coded';

/** Internal field: the origin's ETag of a representation the node recoded (what revalidation sends). */
export const ORIGIN_ETAG_FIELD = 'x-edge-origin-etag';

/**
 * Internal field: the node, not the origin, put `Accept-Encoding` in Vary.
 * Only then may one coding be made from another stored coding: an origin
 * that varies on Accept-Encoding itself is asked for each coding.
 */
export const VARY_ADDED_FIELD = 'x-edge-vary-added';

/** Fields that describe the encoded bytes of the origin's representation: gone once the node recodes it. */
const CODED_BYTES_FIELDS = ['content-length', 'content-md5', 'content-digest', 'repr-digest', 'digest'];

// ---------------------------------------------------------------------------
// Negotiation

const negotiated = new Map<string, Coding>();
const MAX_REMEMBERED_SPELLINGS = 256;

/**
 * The coding a client gets (RFC 9110 12.5.3): the highest q-value among br
 * and gzip (`x-gzip` is gzip; `*` stands for those not named), br on a tie,
 * `q=0` excluded. Identity wins only when the client gives it a higher
 * q-value than every coding, or accepts no coding; a missing header means
 * identity (as browsers and nginx read it). Common spellings are memoised:
 * this runs on every request.
 */
export function negotiateCoding(acceptEncoding: string | undefined): Coding {
  if (acceptEncoding === undefined || acceptEncoding === '') return 'identity';
  let coding = negotiated.get(acceptEncoding);
  if (coding === undefined) {
    coding = negotiate(acceptEncoding);
    if (negotiated.size >= MAX_REMEMBERED_SPELLINGS) negotiated.clear();
    negotiated.set(acceptEncoding, coding);
  }
  return coding;
}

function negotiate(value: string): Coding {
  const q = new Map<string, number>();
  for (const member of value.split(',')) {
    const [rawName, ...params] = member.split(';');
    const name = rawName!.trim().toLowerCase();
    if (name === '') continue;
    let weight = 1;
    for (const param of params) {
      const eq = param.indexOf('=');
      if (eq === -1 || param.slice(0, eq).trim().toLowerCase() !== 'q') continue;
      const parsed = Number(param.slice(eq + 1).trim());
      weight = Number.isFinite(parsed) && parsed >= 0 && parsed <= 1 ? parsed : 0;
    }
    q.set(name === 'x-gzip' ? 'gzip' : name, weight);
  }
  const star = q.get('*');
  const br = q.get('br') ?? star ?? 0;
  const gzip = q.get('gzip') ?? star ?? 0;
  const [best, weight] = br >= gzip ? (['br', br] as const) : (['gzip', gzip] as const);
  if (weight <= 0) return 'identity';
  // Identity is acceptable by default, but below any coding the client names.
  const identity = q.get('identity') ?? star;
  return identity !== undefined && identity > weight ? 'identity' : best;
}

// ---------------------------------------------------------------------------
// What is compressed

/** A predicate on Content-Type values from `--compress-types` patterns. */
export function compileTypeMatcher(patterns: readonly string[]): (contentType: string | undefined) => boolean {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  const suffixes: string[] = [];
  for (const raw of patterns) {
    const pattern = raw.trim().toLowerCase();
    const star = pattern.indexOf('*');
    if (star === -1) exact.add(pattern);
    else if (pattern.endsWith('/*')) prefixes.push(pattern.slice(0, -1));
    else suffixes.push(pattern.slice(0, star) + '\u0000' + pattern.slice(star + 1));
  }
  const memo = new Map<string, boolean>();
  return (contentType) => {
    if (contentType === undefined) return false;
    let known = memo.get(contentType);
    if (known === undefined) {
      const semi = contentType.indexOf(';');
      const type = (semi === -1 ? contentType : contentType.slice(0, semi)).trim().toLowerCase();
      known =
        !NEVER_COMPRESSED.has(type) &&
        (exact.has(type) ||
          prefixes.some((prefix) => type.startsWith(prefix)) ||
          suffixes.some((pair) => {
            const [head, tail] = pair.split('\u0000') as [string, string];
            return type.startsWith(head) && type.endsWith(tail) && type.length > head.length + tail.length;
          }));
      if (memo.size >= MAX_REMEMBERED_SPELLINGS) memo.clear();
      memo.set(contentType, known);
    }
    return known;
  };
}

/** `--compress-types` entries must look like media types or patterns of them. */
export function isTypePattern(value: string): boolean {
  return /^[a-z0-9!#$&^_.+-]+\/(\*|[a-z0-9!#$&^_.+-]+|\*\+[a-z0-9!#$&^_.-]+)$/i.test(value.trim());
}

/** The coding of a representation from its Content-Encoding: 'other' for codings this node does not read (or several). */
export function representationCoding(headers: Record<string, string>): Coding | 'other' {
  const value = headers['content-encoding'];
  if (value === undefined) return 'identity';
  const coding = value.trim().toLowerCase();
  if (coding === '' || coding === 'identity') return 'identity';
  if (coding === 'br') return 'br';
  if (coding === 'gzip' || coding === 'x-gzip') return 'gzip';
  return 'other';
}

/** What the node does with one response body for one negotiated coding. */
export interface CodingPlan {
  /** The coding the body arrives in. */
  from: Coding | 'other';
  /** The coding the client gets and the cache stores. */
  to: Coding | 'other';
  /** The node encodes or decodes (`from !== to`). */
  recode: boolean;
  /**
   * The representation depends on Accept-Encoding (the origin coded it, or
   * the node would compress it for some client): the answer carries `Vary:
   * Accept-Encoding`. A response the node never compresses for anyone
   * (too small, not stored, no encoder) is one entry for every client.
   */
  varies: boolean;
  /**
   * False when the body may not be stored for everyone who negotiates this
   * coding: a coding the node cannot read, or one it may not transform
   * (`no-transform`), that is not the one asked for.
   */
  storable: boolean;
}

/** What a plan needs besides the response. */
export interface CodingAbilities {
  options: Pick<CompressionOptions, 'compress' | 'compressMinSize'>;
  coder?: BodyCoder;
  isCompressible: (contentType: string | undefined) => boolean;
}

/**
 * Decide how a response reaches a client that negotiated `wanted`: as is,
 * compressed (identity in, a compressible type, at least
 * `--compress-min-size` when the length is known, `mayEncode`), decoded
 * (a coding the client did not negotiate), or both. The result is always
 * `wanted` or identity, unless the node may not or cannot change it.
 * Only 200s are recoded; `no-transform` (RFC 9111 5.2.2.6) is left alone.
 */
export function planCoding(
  response: { status: number; headers: Record<string, string>; size?: number },
  wanted: Coding,
  abilities: CodingAbilities,
  mayEncode: boolean,
): CodingPlan {
  const { headers } = response;
  const { coder, options } = abilities;
  const from = representationCoding(headers);
  const untouchable = response.status !== 200 || !options.compress || coder === undefined || /(?:^|,)\s*no-transform\s*(?:,|$)/i.test(headers['cache-control'] ?? '');
  const compressible = !untouchable && mayEncode && coder.encodes.length > 0 && abilities.isCompressible(headers['content-type']);
  const big = response.size === undefined || response.size >= options.compressMinSize;
  const varies = from !== 'identity' || (compressible && big);
  const as = (storable = true): CodingPlan => ({ from, to: from, recode: false, varies, storable });
  if (from === wanted) return as();
  // A coding the client did not ask for, that the node may not or cannot decode: pass it, never store it for others.
  if (untouchable || from === 'other') return as(from === 'identity');
  const encodes = wanted !== 'identity' && compressible && coder.encodes.includes(wanted);
  if (from === 'identity') return encodes && big ? { from, to: wanted, recode: true, varies, storable: true } : as();
  if (!coder.decodes.includes(from)) return as(false);
  return { from, to: encodes ? wanted : 'identity', recode: true, varies, storable: true };
}

// ---------------------------------------------------------------------------
// Labels of a representation the node made

/**
 * The ETag of a representation the node made from the origin's `etag`: weak
 * (equivalent, not byte-identical: a background re-compression may replace
 * the bytes) and suffixed with the coding, so validators never match across
 * codings: `"abc"` -> `W/"abc-br"`.
 */
export function codedEtag(etag: string, coding: Coding): string {
  let opaque = etag.trim();
  if (opaque.startsWith('W/')) opaque = opaque.slice(2);
  opaque = opaque.startsWith('"') && opaque.endsWith('"') && opaque.length >= 2 ? opaque.slice(1, -1) : opaque.replace(/"/g, '');
  return `W/"${opaque}-${coding}"`;
}

/** Put `Accept-Encoding` in `headers.vary` (in place), noting that the node added it. */
export function addCodingVary(headers: Record<string, string>): void {
  const vary = withVaryMember(headers.vary, 'Accept-Encoding');
  if (vary === headers.vary) return;
  headers.vary = vary;
  headers[VARY_ADDED_FIELD] = 'accept-encoding';
}

/** `vary` with `name` among its members (unchanged when it is `*` or already there). */
export function withVaryMember(vary: string | undefined, name: string): string {
  if (vary === undefined || vary.trim() === '') return name;
  const members = vary.split(',').map((member) => member.trim().toLowerCase());
  if (members.includes('*') || members.includes(name.toLowerCase())) return vary;
  return `${vary}, ${name}`;
}

/**
 * The stored (and sent) fields of the representation the node makes in
 * `to` from one with `headers` (the origin's, or one the node made):
 * Content-Encoding set or removed, the length and digests of the old bytes
 * dropped, a coded ETag (the origin's kept for revalidation), `Vary:
 * Accept-Encoding`. Made back into the origin's own coding (a node-made br
 * decoded for an identity client), it is the origin's representation byte
 * for byte, and gets the origin's fields back, ETag included.
 */
export function recodedHeaders(headers: Record<string, string>, to: Coding, level: number): Record<string, string> {
  const made = codedBy(headers);
  const origin = originHeaders(headers);
  const originCoding = made ? made.from : representationCoding(headers);
  const out: Record<string, string> = {};
  for (const name in origin) if (!CODED_BYTES_FIELDS.includes(name)) out[name] = origin[name]!;
  addCodingVary(out);
  if (to === originCoding) return out;
  if (to === 'identity') delete out['content-encoding'];
  else out['content-encoding'] = to;
  if (origin.etag !== undefined) {
    out[ORIGIN_ETAG_FIELD] = origin.etag;
    out.etag = codedEtag(origin.etag, to);
  }
  out[CODED_FIELD] = codedLabel(to, level, originCoding);
  return out;
}

/** The value of {@link CODED_FIELD}. */
export function codedLabel(coding: Coding, level: number, from: Coding | 'other'): string {
  return `${coding};level=${level};from=${from}`;
}

/**
 * A stored representation's fields as the origin sent them, for
 * revalidation: the origin's ETag and Content-Encoding back in place, the
 * node's labels gone. Returns `headers` itself for a representation the
 * node did not make.
 */
export function originHeaders(headers: Record<string, string>): Record<string, string> {
  const made = codedBy(headers);
  if (!made) return headers;
  const out: Record<string, string> = {};
  for (const name in headers) if (name !== CODED_FIELD && name !== ORIGIN_ETAG_FIELD) out[name] = headers[name]!;
  const etag = headers[ORIGIN_ETAG_FIELD];
  if (etag === undefined) delete out.etag;
  else out.etag = etag;
  if (made.from === 'identity') delete out['content-encoding'];
  else out['content-encoding'] = made.from;
  return out;
}

/** The coding and level of a stored representation this node made, and the origin's coding it came from. */
export function codedBy(headers: Record<string, string>): { coding: Coding; level: number; from: Coding } | undefined {
  const value = headers[CODED_FIELD];
  if (value === undefined) return undefined;
  const [coding, ...params] = value.split(';');
  let level = 0;
  let from: Coding = 'identity';
  for (const param of params) {
    if (param.startsWith('level=')) level = Number(param.slice(6)) || 0;
    else if (param.startsWith('from=')) from = param.slice(5) as Coding;
  }
  return { coding: coding as Coding, level, from };
}

/** The level used for `coding` while a miss streams. */
export function fillLevel(options: Pick<CompressionOptions, 'brotliLevel' | 'gzipLevel'>, coding: ContentCoding): number {
  return coding === 'br' ? options.brotliLevel : options.gzipLevel;
}
