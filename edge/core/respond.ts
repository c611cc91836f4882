/**
 * Answering from a stored entry: client validators (RFC 9110 13.2),
 * single byte ranges (RFC 9110 14), HEAD, and the headers a stored
 * response carries downstream.
 */
import type { CacheEntry } from './store/types.js';

/** Fields used only between the origin and this node; never sent to clients. */
export const INTERNAL_RESPONSE_FIELDS = ['cache-tag', 'surrogate-key', 'surrogate-control', 'cdn-cache-control'];

const NO_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

export function statusAllowsBody(status: number): boolean {
  return !NO_BODY_STATUSES.has(status);
}

/** Stored headers as sent downstream: internal and targeted fields removed. */
export function downstreamHeaders(stored: Record<string, string>, targetedField: string): Record<string, string> {
  // Built by copying rather than `delete`, which would turn the object into a slow dictionary.
  const out: Record<string, string> = {};
  for (const name in stored) {
    if (name === targetedField || INTERNAL_RESPONSE_FIELDS.includes(name)) continue;
    out[name] = stored[name]!;
  }
  return out;
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
    const since = Date.parse(ims);
    const modified = Date.parse(stored['last-modified']);
    if (Number.isFinite(since) && Number.isFinite(modified)) return modified <= since;
  }
  return false;
}

/** Headers a 304 carries (RFC 9110 15.4.5): everything but the body's framing. */
export function notModifiedHeaders(headers: Record<string, string>): Record<string, string> {
  const out = { ...headers };
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
    } else if (stored['last-modified'] === undefined || Date.parse(trimmed) !== Date.parse(stored['last-modified'])) {
      return { kind: 'full' };
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

/** The body (or a slice of it) of a stored entry, as a Response body. */
export function entryBody(entry: CacheEntry, start?: number, end?: number): BodyInit {
  const bytes = entry.body.bytes ?? entry.body.readAll?.();
  // Uint8Array<ArrayBufferLike> is a valid body at runtime; TS's BodyInit only names ArrayBuffer-backed views.
  if (bytes !== undefined) return (start === undefined ? bytes : bytes.subarray(start, (end ?? bytes.byteLength - 1) + 1)) as unknown as BodyInit;
  return entry.body.stream(start, end) as unknown as BodyInit;
}
