/**
 * Cache keys: the one home of the key format. A `CacheKey` is a typed value;
 * `formatCacheKey` / `parseCacheKey` are the only code that turns it into
 * the string the stores index by, or back. Pull, images, admin (purge,
 * listing), invalidation and the Workers stores all go through here.
 *
 * String form (what the stores see):
 *   pulled  `<path>?<query> <scheme>://<host>[#h:<name>=<value>&...][#img:<params>]`
 *   pushed  `<path> push:[#img:<params> | #enc:<coding>]`
 *   sliced  `<pulled key>#slice:` (the record) and `<pulled key>#slice:<n>` (piece n)
 * The path comes first so keys sort by path: purge by prefix is a range
 * scan, and every host's copy of `/a.css` sits beside the pushed one. The
 * path and query are percent-encoded by the URL parser, header values by
 * `encodeURIComponent`, so none of the parts holds a space or a `#`.
 * GET and HEAD share a key (HEAD is answered from the stored GET).
 */
import { splitList } from './headers.js';

/** Keys longer than this are not cached (LMDB keys are bounded; such URLs are rare and unshared). */
export const MAX_KEY_LENGTH = 1500;

/** What a derived entry was made with: an image variant of a source, or a pushed object in a content coding. */
export type DerivedKeyPart =
  | {
      kind: 'image';
      /** The resolved operation, e.g. `w=400;h=;fit=cover;q=80;f=webp;pos=centre;e=0`. */
      params: string;
    }
  | {
      kind: 'coding';
      /** The content coding the node made (`compression.ts`): `br`, `gzip`, or `identity` for a decoded one. */
      coding: string;
    }
  | {
      kind: 'slice';
      /**
       * A piece of a sliced object (`slice.ts`), numbered from 0; absent for
       * the object's record (its fields, policy and length, no body).
       */
      piece?: number;
    };

interface KeyCommon {
  /** Pathname and normalised `?query` (pushed keys: the pathname only). */
  readonly path: string;
  /** Set for entries made from another entry; the key without it is the source's. */
  readonly derived?: DerivedKeyPart;
}

/** A pulled object: one per path, query, scheme, host and keyed request headers. */
export interface PulledCacheKey extends KeyCommon {
  readonly kind: 'pulled';
  readonly scheme: string;
  /** Normalised: lower case, no trailing dot, no default port (or the fixed `--cache-key-host`). */
  readonly host: string;
  /** Request headers a route puts in the key (`keyHeaders`), in the route's order. */
  readonly headers?: readonly (readonly [name: string, value: string])[];
}

/** A pushed object: answers its path on every host and with any query string. */
export interface PushedCacheKey extends KeyCommon {
  readonly kind: 'pushed';
}

export type CacheKey = PulledCacheKey | PushedCacheKey;

const PUSHED_MARK = 'push:';
const HEADERS_MARK = '#h:';
const IMAGE_MARK = '#img:';
const CODING_MARK = '#enc:';
const SLICE_MARK = '#slice:';

/** The string the stores index by. */
export function formatCacheKey(key: CacheKey): string {
  let out = key.path + ' ';
  if (key.kind === 'pushed') {
    out += PUSHED_MARK;
  } else {
    out += `${key.scheme}://${key.host}`;
    if (key.headers?.length) out += HEADERS_MARK + key.headers.map(([name, value]) => `${name}=${encodeURIComponent(value)}`).join('&');
  }
  if (key.derived) out += derivedSuffix(key.derived);
  return out;
}

function derivedSuffix(derived: DerivedKeyPart): string {
  if (derived.kind === 'image') return IMAGE_MARK + derived.params;
  if (derived.kind === 'coding') return CODING_MARK + derived.coding;
  return SLICE_MARK + (derived.piece === undefined ? '' : String(derived.piece));
}

/** The inverse of {@link formatCacheKey}; undefined for a string no version of it produced. */
export function parseCacheKey(text: string): CacheKey | undefined {
  const space = text.lastIndexOf(' ');
  if (space <= 0) return undefined;
  const path = text.slice(0, space);
  let rest = text.slice(space + 1);
  let derived: DerivedKeyPart | undefined;
  const image = rest.indexOf(IMAGE_MARK);
  const coding = rest.indexOf(CODING_MARK);
  const slice = rest.indexOf(SLICE_MARK);
  if (slice !== -1) {
    const piece = rest.slice(slice + SLICE_MARK.length);
    if (piece !== '' && !/^\d+$/.test(piece)) return undefined;
    derived = piece === '' ? { kind: 'slice' } : { kind: 'slice', piece: Number(piece) };
    rest = rest.slice(0, slice);
  } else if (image !== -1) {
    derived = { kind: 'image', params: rest.slice(image + IMAGE_MARK.length) };
    rest = rest.slice(0, image);
  } else if (coding !== -1) {
    derived = { kind: 'coding', coding: rest.slice(coding + CODING_MARK.length) };
    rest = rest.slice(0, coding);
  }
  if (rest === PUSHED_MARK) return derived ? { kind: 'pushed', path, derived } : { kind: 'pushed', path };
  let headers: [string, string][] | undefined;
  const marked = rest.indexOf(HEADERS_MARK);
  if (marked !== -1) {
    headers = rest
      .slice(marked + HEADERS_MARK.length)
      .split('&')
      .map((pair) => {
        const eq = pair.indexOf('=');
        return [pair.slice(0, eq), decodeURIComponent(pair.slice(eq + 1))] as [string, string];
      });
    rest = rest.slice(0, marked);
  }
  const sep = rest.indexOf('://');
  if (sep <= 0) return undefined;
  return { kind: 'pulled', path, scheme: rest.slice(0, sep), host: rest.slice(sep + 3), ...(headers ? { headers } : {}), ...(derived ? { derived } : {}) };
}

/** The key of a pushed object at `pathname`. */
export function pushedKey(pathname: string): string {
  return formatCacheKey({ kind: 'pushed', path: pathname });
}

/** A derived entry's key: the source key with the operation appended (so prefix purges of the path cover it). */
export function derivedKey(source: string, derived: DerivedKeyPart): string {
  const parsed = parseCacheKey(source);
  if (!parsed) throw new TypeError(`derivedKey: not a cache key: ${source}`);
  return formatCacheKey({ ...parsed, derived });
}

/** The `path?query` part of a key (what purge by URL and prefix match on), without parsing the rest. */
export function keyPath(key: string): string {
  const space = key.lastIndexOf(' ');
  return space === -1 ? key : key.slice(0, space);
}

/** The prefix every stored key for exactly this `path?query` starts with, whatever its host or kind. */
export function keysOfPathPrefix(path: string): string {
  return path + ' ';
}

/**
 * Host as keyed and forwarded: lower case, no trailing dot, no port that is
 * the scheme's default (`Example.COM.:443` over https is `example.com`).
 */
export function normaliseHost(host: string, scheme: string): string {
  let out = host.toLowerCase();
  const bracket = out.lastIndexOf(']');
  const colon = out.lastIndexOf(':');
  let port = '';
  if (colon > bracket) {
    port = out.slice(colon);
    out = out.slice(0, colon);
  }
  if (out.endsWith('.')) out = out.slice(0, -1);
  if ((port === ':80' && scheme === 'http') || (port === ':443' && scheme === 'https') || port === ':') port = '';
  return out + port;
}

export interface CacheKeyOptions {
  /** Query parameter names to drop; `*` at the end matches a prefix. @default ['utm_*', 'fbclid', 'gclid'] */
  ignoreQueryParams: string[];
  /** Sort query parameters so `?a=1&b=2` and `?b=2&a=1` share an entry. @default true */
  sortQuery: boolean;
}

export function compileParamMatcher(patterns: string[]): (name: string) => boolean {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  for (const pattern of patterns) {
    if (pattern.endsWith('*')) prefixes.push(pattern.slice(0, -1));
    else exact.add(pattern);
  }
  return (name) => exact.has(name) || prefixes.some((prefix) => name.startsWith(prefix));
}

function decodeName(raw: string): string {
  const eq = raw.indexOf('=');
  const name = (eq === -1 ? raw : raw.slice(0, eq)).replace(/\+/g, ' ');
  try {
    return decodeURIComponent(name);
  } catch {
    return name;
  }
}

/** A query as keyed, and as forwarded: the same parameters, the key's sorted. */
export interface NormalisedQuery {
  /** `?query` in the key (or ''): dropped parameters removed, sorted by name when sorting is on. */
  keyed: string;
  /** `?query` sent to the origin (or ''): exactly the keyed parameters, in the client's order. */
  forwarded: string;
}

/**
 * Normalised query with dropped parameters removed: what is not keyed is
 * not forwarded. Parameters are split on `&` only, as URLSearchParams and
 * most origins do: a `;` stays inside its parameter's value in the key and
 * upstream alike. Kept parameters are passed on as the client encoded them.
 */
/**
 * Bounds for what is remembered per raw query string (the describer's
 * normalised queries, the image path's parameters): how many strings, and
 * the longest kept (longer ones are worked out each time).
 */
export const REMEMBERED_QUERIES = { max: 1024, maxLength: 512 } as const;

export function normaliseQuery(search: string, drop: (name: string) => boolean, sort: boolean, alsoDrop?: (name: string) => boolean): NormalisedQuery {
  if (search === '' || search === '?') return { keyed: '', forwarded: '' };
  const kept: { name: string; raw: string }[] = [];
  for (const raw of search.slice(search.startsWith('?') ? 1 : 0).split('&')) {
    if (raw === '') continue;
    const name = decodeName(raw);
    if (drop(name) || alsoDrop?.(name)) continue;
    kept.push({ name, raw });
  }
  if (kept.length === 0) return { keyed: '', forwarded: '' };
  const forwarded = '?' + kept.map((param) => param.raw).join('&');
  if (!sort) return { keyed: forwarded, forwarded };
  // By name only (the sort is stable): the order of a repeated parameter is meaningful (?id=2&id=1).
  kept.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { keyed: '?' + kept.map((param) => param.raw).join('&'), forwarded };
}

/** Normalised header names listed in `Vary`, or '*' when the response varies on everything. */
export function varyNames(vary: string | undefined): string[] | '*' {
  const names = [...new Set(splitList(vary).map((n) => n.toLowerCase()))].sort();
  return names.includes('*') ? '*' : names;
}

/**
 * Secondary key for a request given the stored response's Vary names
 * (RFC 9111 4.1): each named header's value with whitespace normalised.
 * `headers` is the request as the origin received it (see `describe.ts`).
 */
export function variantFor(names: string[], requestHeaders: Record<string, string>): string {
  if (names.length === 0) return '';
  return names.map((name) => `${name}:${normaliseVaried(name, requestHeaders[name] ?? '')}`).join('\n');
}

/**
 * Request fields whose value is a list of case-insensitive tokens with
 * weights, where member order and case carry no meaning beyond the weights
 * (RFC 9110 12.5): `en-US, fr;q=0.5` and `fr;q=0.5,EN-us` select the same
 * representation, so they select the same stored variant (RFC 9111 4.1
 * allows normalising "such as by... reordering... or case").
 */
const LIST_FIELDS = new Set(['accept', 'accept-language', 'accept-charset', 'accept-encoding']);

/** Normalised list values seen lately: a few browsers send a few strings, over and over. */
const normalisedLists = new Map<string, string>();
const MAX_NORMALISED_LISTS = 1000;

function normaliseVaried(name: string, value: string): string {
  if (!LIST_FIELDS.has(name)) return value.replace(/\s+/g, ' ').trim();
  let normalised = normalisedLists.get(value);
  if (normalised === undefined) {
    normalised = normaliseList(value);
    if (normalisedLists.size >= MAX_NORMALISED_LISTS) normalisedLists.clear();
    normalisedLists.set(value, normalised);
  }
  return normalised;
}

function normaliseList(value: string): string {
  return value
    .split(',')
    .map((member) =>
      member
        .split(';')
        .map((part) => part.trim().toLowerCase())
        .filter(Boolean)
        .join(';'),
    )
    .filter(Boolean)
    .sort()
    .join(',');
}
