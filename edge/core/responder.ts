/**
 * One way out. Every answer the node gives (hit, miss, revalidated, stale,
 * pass, error) is built here as an `Answer`: plain data (status, a header
 * record, the body bytes, a stream or nothing). Runtimes then write it:
 * `toResponse()` wraps it in a Web `Response` (Hono, Workers); the Node
 * adapter writes a fresh hit straight to `ServerResponse` without building
 * either a Request or a Response. Because both paths take the same `Answer`
 * from the same functions, they cannot answer differently.
 *
 * Also here: client validators (RFC 9110 13.2), single byte ranges
 * (RFC 9110 14), HEAD, and the headers a stored response carries downstream.
 */
import { formatCacheStatus, type CacheStatusFields } from './cache-status.js';
import { CODED_FIELD, ORIGIN_ETAG_FIELD, VARY_ADDED_FIELD } from './compression.js';
import { EdgeError, isEdgeError } from './errors.js';
import { parseHttpDate } from './policy.js';
import type { CacheEntry, CacheEntryMeta } from './store/types.js';

/** A finished answer, before any runtime writes it. */
export interface Answer {
  status: number;
  /** Lower-case names; multi-valued fields joined with `, ` (RFC 9110 5.3), except: */
  headers: Record<string, string>;
  /** `Set-Cookie` lines, which cannot be joined. */
  setCookies?: string[];
  /** Whole bytes (hits), a stream (misses, large disk hits) or no body. */
  body: Uint8Array | ReadableStream<Uint8Array> | null;
}

/**
 * Fields meant for CDN nodes, not clients: removed from answers unless this
 * node serves other CDN nodes (`--forward-cdn-headers`, a shield's default),
 * which need them (CDN-Cache-Control per RFC 9213, tags for their purges).
 */
export const CDN_RESPONSE_FIELDS = ['cache-tag', 'surrogate-key', 'surrogate-control', 'cdn-cache-control'];

/** Fields used only inside this node; never sent anywhere (image sources; codings the node made, see `compression.ts`). */
const NODE_RESPONSE_FIELDS = ['x-edge-source-etag', CODED_FIELD, ORIGIN_ETAG_FIELD, VARY_ADDED_FIELD];

/** The response fields a node removes from every answer: its own targeted field, and CDN fields unless forwarded. */
export function droppedResponseFields(targetedField: string, forwardCdnFields: boolean): ReadonlySet<string> {
  return new Set([targetedField, ...NODE_RESPONSE_FIELDS, ...(forwardCdnFields ? [] : CDN_RESPONSE_FIELDS)]);
}

const NO_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

export function statusAllowsBody(status: number): boolean {
  return !NO_BODY_STATUSES.has(status);
}

/** The facts of a request an answer from the cache depends on. */
export interface AnswerRequest {
  isHead: boolean;
  /** Client request headers, lower-case names (validators, Range, If-Range). */
  headers: Record<string, string>;
}

/**
 * Headers a stored entry carries on every answer (without Age and
 * Cache-Status), computed once per stored metadata object.
 */
export function storedAnswerHeaders(meta: CacheEntryMeta, dropped: ReadonlySet<string>, name: string): Record<string, string> {
  // Built by copying rather than `delete`, which would turn the object into a slow dictionary.
  const headers: Record<string, string> = {};
  for (const field in meta.headers) {
    if (dropped.has(field)) continue;
    headers[field] = meta.headers[field]!;
  }
  headers.via = headers.via ? `${headers.via}, 1.1 ${name}` : `1.1 ${name}`;
  if (statusAllowsBody(meta.status)) headers['content-length'] = String(meta.size);
  else delete headers['content-length'];
  if (meta.status === 200) headers['accept-ranges'] = 'bytes';
  return headers;
}

/**
 * A copy of the stored headers with this answer's `Age` and `Cache-Status`.
 * Object.assign, then the two fields: on Node 20 an object spread followed by
 * more fields (`{ ...prepared, age }`) cost about 2 µs per copy against
 * 0.1 µs this way (the spread's copy takes a slow path once extended), a
 * fifth of a memory hit's decision.
 */
function withAgeAndStatus(prepared: Record<string, string>, age: number, cacheStatus: string): Record<string, string> {
  const headers: Record<string, string> = Object.assign({}, prepared);
  headers.age = String(Math.max(0, Math.floor(age)));
  headers['cache-status'] = cacheStatus;
  return headers;
}

/**
 * Answer from a stored entry: 304 for matching client validators, 206/416
 * for a single range, no body for HEAD. `prepared` comes from
 * {@link storedAnswerHeaders}; `bodyless` lets a runtime ask for the
 * decision without reading the body (HEAD).
 */
export function answerFromEntry(entry: CacheEntry, prepared: Record<string, string>, request: AnswerRequest, age: number, cacheStatus: string): Answer {
  const { meta } = entry;
  const headers = withAgeAndStatus(prepared, age, cacheStatus);
  if (meta.status === 200 && clientValidatorsMatch(request.headers, meta.headers)) {
    return { status: 304, headers: notModifiedHeaders(headers), body: null };
  }
  if (!statusAllowsBody(meta.status)) return { status: meta.status, headers, body: null };
  const size = entry.body.size;
  if (meta.status === 200 && request.headers.range !== undefined && !request.isHead) {
    const range = decideRange(request.headers, meta.headers, size);
    if (range.kind === 'unsatisfiable') {
      headers['content-range'] = `bytes */${size}`;
      delete headers['content-length'];
      return { status: 416, headers, body: null };
    }
    if (range.kind === 'partial') {
      headers['content-range'] = `bytes ${range.start}-${range.end}/${size}`;
      headers['content-length'] = String(range.end - range.start + 1);
      return { status: 206, headers, body: request.isHead ? null : entryBody(entry, range.start, range.end) };
    }
  }
  return { status: meta.status, headers, body: request.isHead ? null : entryBody(entry) };
}

/**
 * Answer with a representation stored as it streams (one the node makes
 * from a stored entry, see `recode.ts`): the stored fields, without a
 * length unless `lengthKnown` (a recoded one's is known at the last byte;
 * `meta.size` holds a copy's), client validators (304), HEAD. A Range gets the
 * whole body (RFC 9110 14.2 allows it); the next request is a hit and gets
 * its range. A body no client reads is cancelled, which lets the fill read
 * it to the end and store it.
 */
export function answerWhileFilling(
  meta: CacheEntryMeta,
  prepared: Record<string, string>,
  request: AnswerRequest,
  age: number,
  cacheStatus: string,
  body: ReadableStream<Uint8Array>,
  lengthKnown = false,
): Answer {
  const headers = withAgeAndStatus(prepared, age, cacheStatus);
  if (!lengthKnown) delete headers['content-length'];
  if (meta.status === 200 && clientValidatorsMatch(request.headers, meta.headers)) {
    void body.cancel();
    return { status: 304, headers: notModifiedHeaders(headers), body: null };
  }
  if (request.isHead || !statusAllowsBody(meta.status)) {
    void body.cancel();
    return { status: meta.status, headers, body: null };
  }
  return { status: meta.status, headers, body };
}

/**
 * Client-facing headers of an origin response (miss or pass): hop-by-hop
 * fields already removed by the caller, internal and targeted fields
 * dropped here, `Via` appended, `Cache-Status` set.
 */
export function answerFromOrigin(
  status: number,
  clean: Headers,
  body: ReadableStream<Uint8Array> | null,
  cacheStatus: string,
  opts: { dropped: ReadonlySet<string>; name: string },
): Answer {
  const headers: Record<string, string> = {};
  clean.forEach((value, field) => {
    if (field === 'set-cookie' || opts.dropped.has(field)) return;
    headers[field] = value;
  });
  headers.via = headers.via ? `${headers.via}, 1.1 ${opts.name}` : `1.1 ${opts.name}`;
  headers['cache-status'] = cacheStatus;
  const setCookies = clean.getSetCookie();
  return { status, headers, ...(setCookies.length > 0 ? { setCookies } : {}), body: statusAllowsBody(status) ? body : null };
}

/**
 * The single renderer for errors: `{ "error": code, "message": ... }`.
 * Anything that is not an EdgeError becomes a generic 500 without details
 * (no stack trace, internal message or origin address reaches a client).
 */
export function answerError(err: unknown, cacheStatus?: string): Answer {
  const edgeError = isEdgeError(err) ? err : new EdgeError('EDGE_INTERNAL', 'The edge node failed to handle this request.', { cause: err });
  const body = new TextEncoder().encode(JSON.stringify(publicError(edgeError)));
  const headers: Record<string, string> = {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    ...edgeError.headers,
    'content-length': String(body.byteLength),
  };
  if (cacheStatus) headers['cache-status'] = cacheStatus;
  return { status: edgeError.status, headers, body };
}

/**
 * Origin failures as a public client sees them: what happened, never where
 * (no origin URL, pool member, bucket or endpoint; the access log and the
 * admin API keep those).
 */
const PUBLIC_ORIGIN_MESSAGES: Partial<Record<string, string>> = {
  EDGE_ORIGIN_UNREACHABLE: 'The origin could not be reached.',
  EDGE_ORIGIN_TIMEOUT: 'The origin did not answer in time.',
  EDGE_ORIGIN_BAD_RESPONSE: 'The origin sent an answer this node cannot use.',
};

/** Detail fields a public error may carry about an origin failure. */
const PUBLIC_ORIGIN_DETAILS = new Set(['upstreamStatus']);

function publicError(error: EdgeError): Record<string, unknown> {
  const generic = PUBLIC_ORIGIN_MESSAGES[error.code];
  if (generic === undefined) return { error: error.code, message: error.message, ...error.details };
  const details: Record<string, unknown> = {};
  for (const name in error.details) if (PUBLIC_ORIGIN_DETAILS.has(name)) details[name] = error.details[name];
  return { error: error.code, message: generic, ...details };
}

/** RFC 9111 5.2.1.7: only-if-cached with nothing usable stored. */
export function answerGatewayTimeout(name: string, fields: CacheStatusFields): Answer {
  return { status: 504, headers: { 'cache-status': formatCacheStatus(name, fields) }, body: null };
}

/** A Web `Response` for runtimes that speak Fetch (Hono, Workers). */
export function toResponse(answer: Answer): Response {
  const headers = new Headers(answer.headers);
  if (answer.setCookies) for (const cookie of answer.setCookies) headers.append('set-cookie', cookie);
  // Uint8Array<ArrayBufferLike> is a valid body at runtime; TS's BodyInit only names ArrayBuffer-backed views.
  return new Response(answer.body as BodyInit | null, { status: answer.status, headers });
}

function stripWeak(tag: string): string {
  return tag.startsWith('W/') ? tag.slice(2) : tag;
}

/** If-None-Match / If-Modified-Since against a stored 200 (RFC 9110 13.1.2, 13.1.3, 13.2.2). */
export function clientValidatorsMatch(request: Record<string, string>, stored: Record<string, string>): boolean {
  const inm = request['if-none-match'];
  if (inm !== undefined) {
    const etag = stored.etag;
    if (inm.trim() === '*') return etag !== undefined;
    if (etag === undefined) return false;
    const wanted = stripWeak(etag.trim());
    return inm.split(',').some((candidate) => stripWeak(candidate.trim()) === wanted);
  }
  const ims = request['if-modified-since'];
  if (ims !== undefined && stored['last-modified'] !== undefined) {
    // Only valid HTTP-dates count (RFC 9110 13.1.3): an invalid one is ignored.
    const since = parseHttpDate(ims);
    const modified = parseHttpDate(stored['last-modified']);
    if (since !== undefined && modified !== undefined) return modified <= since;
  }
  return false;
}

/** Headers a 304 carries (RFC 9110 15.4.5): everything but the body's framing. */
export function notModifiedHeaders(headers: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = Object.assign({}, headers);
  delete out['content-length'];
  delete out['content-range'];
  return out;
}

export type RangeDecision = { kind: 'full' } | { kind: 'partial'; start: number; end: number } | { kind: 'unsatisfiable' };

/**
 * Decide how to answer a `Range` request from a stored full response.
 * Multiple ranges are answered with the full body (RFC 9110 14.2 allows it).
 */
export function decideRange(request: Record<string, string>, stored: Record<string, string>, size: number): RangeDecision {
  const range = request.range;
  if (range === undefined) return { kind: 'full' };
  const ifRange = request['if-range'];
  if (ifRange !== undefined) {
    const trimmed = ifRange.trim();
    if (trimmed.startsWith('"') || trimmed.startsWith('W/')) {
      // If-Range needs a strong match (RFC 9110 13.1.5).
      if (trimmed.startsWith('W/') || stored.etag === undefined || stored.etag.startsWith('W/') || stored.etag.trim() !== trimmed) {
        return { kind: 'full' };
      }
    } else {
      const at = parseHttpDate(trimmed);
      if (at === undefined || at !== parseHttpDate(stored['last-modified'])) return { kind: 'full' };
    }
  }
  const match = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(range);
  if (!match) return { kind: 'full' };
  const [, first, last] = match;
  let start: number;
  let end: number;
  if (first === '' && last === '') return { kind: 'full' };
  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0) return { kind: 'unsatisfiable' };
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(first);
    end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
    if (last !== '' && Number(last) < start) return { kind: 'full' };
  }
  if (start >= size || size === 0) return { kind: 'unsatisfiable' };
  return { kind: 'partial', start, end };
}

/** A stored body a synchronous writer (the Node hit path) can write at once. */
export function hasBytes(entry: CacheEntry): boolean {
  return entry.body.bytes !== undefined || entry.body.size === 0 || entry.body.readAll !== undefined;
}

/** The body (or a slice of it) of a stored entry: bytes when the tier has them at hand, else a stream. */
export function entryBody(entry: CacheEntry, start?: number, end?: number): Uint8Array | ReadableStream<Uint8Array> {
  const bytes = entry.body.bytes ?? entry.body.readAll?.();
  if (bytes !== undefined) return start === undefined ? bytes : bytes.subarray(start, (end ?? bytes.byteLength - 1) + 1);
  return entry.body.stream(start, end);
}
