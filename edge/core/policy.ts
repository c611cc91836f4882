/**
 * HTTP caching policy (RFC 9111 shared cache, RFC 5861 stale extensions,
 * RFC 9213 targeted fields), kept behind a few verbs so the rest of the
 * node never touches `http-cache-semantics` directly.
 *
 * `http-cache-semantics` computes storability, freshness lifetime, age and
 * revalidation headers. We deliberately do NOT use its `evaluateRequest()`:
 * it treats `must-revalidate` as "always revalidate" even while fresh, and
 * `proxy-revalidate` as "never fresh" in a shared cache, both stricter than
 * RFC 9111 5.2.2.2 / 5.2.2.8 (which only forbid serving *stale*). We strip
 * those two directives from what the library sees and apply them here.
 */
import CachePolicy from 'http-cache-semantics';

/** Statuses that may get heuristic freshness (RFC 9110 15.1 "heuristically cacheable"). */
const HEURISTICALLY_CACHEABLE = new Set([200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501]);

/**
 * Final statuses whose caching requirements this node implements, for
 * `must-understand` (RFC 9111 5.2.2.3): those RFC 9110 defines, less 206
 * (partial content is never stored here) and 304 (an answer to a
 * conditional request, never stored as such).
 */
const UNDERSTOOD_STATUSES = new Set([
  200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 305, 307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411,
  412, 413, 414, 415, 416, 417, 421, 422, 426, 500, 501, 502, 503, 504, 505,
]);

/** Directives whose argument is delta-seconds (RFC 9111 1.2.2; RFC 5861). */
const DELTA_SECONDS_DIRECTIVES = new Set(['max-age', 's-maxage', 'stale-while-revalidate', 'stale-if-error']);

/**
 * Directives that only ever restrict reuse. In a targeted field they apply
 * whatever the type of their value (failing safe); a String argument to
 * no-cache / private names fields, as the quoted form does in Cache-Control.
 */
const RESTRICTIVE_DIRECTIVES = new Set(['no-store', 'no-cache', 'private', 'must-revalidate', 'proxy-revalidate']);

/** Directives without an argument: only a Boolean true member means them. */
const BOOLEAN_DIRECTIVES = new Set(['public', 'immutable', 'no-transform', 'must-understand']);

/** delta-seconds beyond what a cache can represent count as 2^31 (RFC 9111 1.2.2). */
const MAX_DELTA_SECONDS = 2 ** 31;

/** Fields a 304 must not overwrite: they describe the stored body (RFC 9111 3.2). */
const NOT_UPDATED_BY_304 = new Set(['content-length', 'content-encoding', 'content-range', 'transfer-encoding']);

export type CacheControl = Map<string, string | true>;

/**
 * Parse a Cache-Control-style field. Hand-written because the library does
 * not export its parser and we need quoted field lists (`no-cache="a, b"`).
 * Directive names are case-insensitive; unknown directives are kept and ignored.
 */
export function parseCacheControl(value: string | undefined | null): CacheControl {
  const out: CacheControl = new Map();
  if (!value) return out;
  const re = /([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*)))?/g;
  let match: RegExpExecArray | null;
  while ((match = re.exec(value)) !== null) {
    const name = match[1]!.toLowerCase();
    const arg = match[2] !== undefined ? match[2].replace(/\\(.)/g, '$1') : match[3];
    // RFC 9111 4.2.1: with duplicated directives, the first one wins.
    if (!out.has(name)) out.set(name, arg === undefined || arg === '' ? true : arg);
    // Skip to the next comma so a malformed token does not shift parsing.
    const comma = value.indexOf(',', re.lastIndex);
    if (comma === -1) break;
    re.lastIndex = comma + 1;
  }
  return out;
}

function formatCacheControl(cc: CacheControl): string {
  return [...cc].map(([name, arg]) => (arg === true ? name : /[\s,"]/.test(arg) ? `${name}="${arg}"` : `${name}=${arg}`)).join(', ');
}

/** delta-seconds (RFC 9111 1.2.2): digits only, anything else is invalid. */
export function deltaSeconds(arg: string | true | undefined): number | undefined {
  if (typeof arg !== 'string' || !/^\d+$/.test(arg)) return undefined;
  return Math.min(Number(arg), 2 ** 31);
}

const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];
const DAY_NAME = '(?:mon|tue|wed|thu|fri|sat|sun)';
const MONTH = `(?<month>${MONTHS.join('|')})`;
const TIME = '(?<hour>\\d{2}):(?<minute>\\d{2}):(?<second>\\d{2})';
/** The three forms of HTTP-date (RFC 9110 5.6.7), matched case-insensitively (RFC 9111 4.2). */
const HTTP_DATE_FORMS = [
  // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
  new RegExp(`^${DAY_NAME}, (?<day>\\d{2}) ${MONTH} (?<year>\\d{4}) ${TIME} GMT$`, 'i'),
  // obsolete RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
  new RegExp(`^(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday), (?<day>\\d{2})-${MONTH}-(?<year2>\\d{2}) ${TIME} GMT$`, 'i'),
  // obsolete asctime: Sun Nov  6 08:49:37 1994
  new RegExp(`^${DAY_NAME} ${MONTH} (?<day>\\d{2}| \\d) ${TIME} (?<year>\\d{4})$`, 'i'),
];

function daysInMonth(year: number, month: number): number {
  if (month !== 1) return [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month]!;
  return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0 ? 29 : 28;
}

/**
 * Parse an HTTP-date (RFC 9110 5.6.7): IMF-fixdate, or the obsolete RFC 850
 * and asctime forms, always UTC. Letter case is ignored, as RFC 9111 4.2
 * asks of caches; anything else (ISO 8601, other zones, missing parts,
 * extra spaces, impossible days or times, a list) is `undefined`. Unlike
 * `Date.parse`, which accepts almost anything and reads asctime in the
 * local zone. The day name is not checked against the date.
 *
 * @param now ms since epoch; an RFC 850 two-digit year more than 50 years
 *   after it is read as the century before (RFC 9110 5.6.7).
 * @returns ms since epoch
 */
export function parseHttpDate(value: string | undefined, now: number = Date.now()): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  let parts: Record<string, string> | undefined;
  for (const form of HTTP_DATE_FORMS) {
    parts = form.exec(text)?.groups;
    if (parts) break;
  }
  if (!parts) return undefined;
  let year: number;
  if (parts.year2 !== undefined) {
    const thisYear = new Date(now).getUTCFullYear();
    year = thisYear - (thisYear % 100) + Number(parts.year2);
    if (year > thisYear + 50) year -= 100;
  } else {
    year = Number(parts.year);
  }
  const month = MONTHS.indexOf(parts.month!.toLowerCase());
  const day = Number(parts.day!.trim());
  const [hour, minute, second] = [Number(parts.hour), Number(parts.minute), Number(parts.second)];
  if (day < 1 || day > daysInMonth(year, month) || hour > 23 || minute > 59 || second > 60) return undefined;
  const date = new Date(0);
  // setUTCFullYear, not Date.UTC: years 0-99 are years, not 1900 + year.
  date.setUTCFullYear(year, month, day);
  // A leap second (60) counts as the last second of its minute.
  date.setUTCHours(hour, minute, Math.min(second, 59), 0);
  return date.getTime();
}

/** An HTTP-date in the preferred IMF-fixdate form. */
export function formatHttpDate(ms: number): string {
  return new Date(ms).toUTCString();
}

/** A Structured Field bare item (RFC 9651 3.3), Integer and Decimal kept apart. */
export type SfBareItem =
  | { type: 'integer' | 'decimal' | 'date'; value: number }
  | { type: 'string' | 'token' | 'binary' | 'displaystring'; value: string }
  | { type: 'boolean'; value: boolean };

/** A Dictionary member: an Item, or an Inner List (`value` an array), with Parameters. */
export interface SfMember {
  value: SfBareItem | SfBareItem[];
  params: Map<string, SfBareItem>;
}

class SfParseError extends Error {}

/** The parsing algorithms of RFC 9651 section 4.2, for a Dictionary. */
class SfParser {
  private i = 0;
  constructor(private readonly s: string) {}

  private fail(): never {
    throw new SfParseError();
  }

  private peek(): string | undefined {
    return this.s[this.i];
  }

  private skip(chars: string): void {
    while (this.i < this.s.length && chars.includes(this.s[this.i]!)) this.i++;
  }

  dictionary(): Map<string, SfMember> {
    const out = new Map<string, SfMember>();
    this.skip(' ');
    while (this.i < this.s.length) {
      const key = this.key();
      let member: SfMember;
      if (this.peek() === '=') {
        this.i++;
        member = this.peek() === '(' ? this.innerList() : this.item();
      } else {
        member = { value: { type: 'boolean', value: true }, params: this.params() };
      }
      // Duplicate keys: the last one wins.
      out.set(key, member);
      this.skip(' \t');
      if (this.i >= this.s.length) return out;
      if (this.s[this.i++] !== ',') this.fail();
      this.skip(' \t');
      if (this.i >= this.s.length) this.fail();
    }
    return out;
  }

  private key(): string {
    const match = /^[a-z*][a-z0-9_\-.*]*/.exec(this.s.slice(this.i));
    if (!match) this.fail();
    this.i += match[0].length;
    return match[0];
  }

  private innerList(): SfMember {
    this.i++;
    const items: SfBareItem[] = [];
    while (this.i < this.s.length) {
      this.skip(' ');
      if (this.peek() === ')') {
        this.i++;
        return { value: items, params: this.params() };
      }
      items.push(this.item().value as SfBareItem);
      const next = this.peek();
      if (next !== ' ' && next !== ')') this.fail();
    }
    return this.fail();
  }

  private item(): SfMember {
    const value = this.bareItem();
    return { value, params: this.params() };
  }

  private params(): Map<string, SfBareItem> {
    const out = new Map<string, SfBareItem>();
    while (this.peek() === ';') {
      this.i++;
      this.skip(' ');
      const key = this.key();
      let value: SfBareItem = { type: 'boolean', value: true };
      if (this.peek() === '=') {
        this.i++;
        value = this.bareItem();
      }
      out.set(key, value);
    }
    return out;
  }

  private bareItem(): SfBareItem {
    const c = this.peek();
    if (c === undefined) return this.fail();
    if (c === '-' || (c >= '0' && c <= '9')) return this.number();
    if (c === '"') return { type: 'string', value: this.string() };
    if (/[A-Za-z*]/.test(c)) return this.token();
    if (c === ':') return this.binary();
    if (c === '?') return this.boolean();
    if (c === '@') return this.date();
    if (c === '%') return this.displayString();
    return this.fail();
  }

  private number(): SfBareItem {
    const match = /^(-?)(\d+)(?:\.(\d*))?/.exec(this.s.slice(this.i));
    if (!match) return this.fail();
    const [text, , whole, fraction] = match;
    if (fraction === undefined) {
      if (whole!.length > 15) this.fail();
      this.i += text.length;
      return { type: 'integer', value: Number(text) };
    }
    if (whole!.length > 12 || fraction.length === 0 || fraction.length > 3) this.fail();
    this.i += text.length;
    return { type: 'decimal', value: Number(text) };
  }

  private string(): string {
    this.i++;
    let out = '';
    while (this.i < this.s.length) {
      const c = this.s[this.i++]!;
      if (c === '\\') {
        const next = this.s[this.i++];
        if (next !== '"' && next !== '\\') this.fail();
        out += next;
      } else if (c === '"') {
        return out;
      } else if (c < ' ' || c > '~') {
        this.fail();
      } else {
        out += c;
      }
    }
    return this.fail();
  }

  private token(): SfBareItem {
    const match = /^[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*/.exec(this.s.slice(this.i))!;
    this.i += match[0].length;
    return { type: 'token', value: match[0] };
  }

  private binary(): SfBareItem {
    const match = /^:([A-Za-z0-9+/=]*):/.exec(this.s.slice(this.i));
    if (!match) return this.fail();
    this.i += match[0].length;
    return { type: 'binary', value: match[1]! };
  }

  private boolean(): SfBareItem {
    const c = this.s[this.i + 1];
    if (c !== '0' && c !== '1') return this.fail();
    this.i += 2;
    return { type: 'boolean', value: c === '1' };
  }

  private date(): SfBareItem {
    this.i++;
    const value = this.number();
    if (value.type !== 'integer') this.fail();
    return { type: 'date', value: value.value as number };
  }

  private displayString(): SfBareItem {
    if (this.s[this.i + 1] !== '"') return this.fail();
    this.i += 2;
    const bytes: number[] = [];
    while (this.i < this.s.length) {
      const c = this.s[this.i++]!;
      if (c === '%') {
        const hex = this.s.slice(this.i, this.i + 2);
        if (!/^[0-9a-f]{2}$/.test(hex)) this.fail();
        bytes.push(parseInt(hex, 16));
        this.i += 2;
      } else if (c === '"') {
        try {
          return { type: 'displaystring', value: new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(bytes)) };
        } catch {
          return this.fail();
        }
      } else if (c < ' ' || c > '~') {
        this.fail();
      } else {
        bytes.push(c.charCodeAt(0));
      }
    }
    return this.fail();
  }
}

/**
 * Parse a field value as a Structured Field Dictionary (RFC 9651 4.2, the
 * successor of RFC 8941). `undefined` when it does not parse: the whole
 * field is then to be ignored.
 */
export function parseSfDictionary(value: string): Map<string, SfMember> | undefined {
  // Field values are ASCII; anything else fails parsing (RFC 9651 4.2).
  if (/[^\x00-\x7f]/.test(value)) return undefined;
  const parser = new SfParser(value);
  try {
    return parser.dictionary();
  } catch (error) {
    if (error instanceof SfParseError) return undefined;
    throw error;
  }
}

/**
 * The cache directives of a targeted field (RFC 9213 2.1), or `undefined`
 * when the field is to be ignored as a whole: it does not parse as a
 * Dictionary, or it is empty. Members whose value has the wrong type are
 * ignored (`max-age="60"`, `max-age=60.0`, `max-age=-1`), except the
 * restrictive directives, which apply whatever their value; parameters
 * are ignored. Arguments come back as Cache-Control would spell them.
 */
export function parseTargetedField(value: string): CacheControl | undefined {
  const dictionary = parseSfDictionary(value);
  if (!dictionary || dictionary.size === 0) return undefined;
  const out: CacheControl = new Map();
  for (const [name, { value: item }] of dictionary) {
    const bare = Array.isArray(item) ? undefined : item;
    if (RESTRICTIVE_DIRECTIVES.has(name)) {
      const fieldList = (name === 'no-cache' || name === 'private') && bare?.type === 'string';
      out.set(name, fieldList ? (bare.value as string) : true);
    } else if (DELTA_SECONDS_DIRECTIVES.has(name)) {
      if (bare?.type === 'integer' && bare.value >= 0) out.set(name, String(Math.min(bare.value, MAX_DELTA_SECONDS)));
    } else if (BOOLEAN_DIRECTIVES.has(name)) {
      if (bare?.type === 'boolean' && bare.value) out.set(name, true);
    } else if (bare?.type === 'boolean') {
      // Unknown (extension) directives are kept, as in Cache-Control, and ignored.
      if (bare.value) out.set(name, true);
    } else if (bare && bare.type !== 'binary') {
      out.set(name, String(bare.value));
    }
  }
  return out;
}

export interface PolicyOptions {
  /** Fraction of (Date - Last-Modified) used as heuristic freshness. @default 0.1 */
  heuristicFraction: number;
  /** Upper bound for heuristic freshness, seconds. @default 86400 */
  heuristicMaxAge: number;
  /** Freshness for responses that carry none, seconds; 0 disables (RFC default). @default 0 */
  defaultTtl: number;
  /** Targeted cache-control fields, highest precedence first (RFC 9213). @default ['edge-cache-control', 'cdn-cache-control'] */
  targetedFields: string[];
  /** The clock, ms since epoch. */
  now: () => number;
}

interface LibraryInternals {
  _rescc: Record<string, string | boolean>;
  _resHeaders: Record<string, string>;
  _status: number;
  _reqcc: Record<string, string | boolean>;
  _method: string;
  _noAuthorization: boolean;
  _responseTime: number;
}

/** Request as the policy needs it: lower-case header record. */
export interface PolicyRequest {
  url: string;
  method: string;
  headers: Record<string, string>;
}

export interface StoredResponseInfo {
  status: number;
  /** Stored headers (see CacheEntryMeta.headers). */
  headers: Record<string, string>;
}

/**
 * The directives this cache obeys and the field they come from: the first
 * targeted field on the target list with a valid, non-empty value, which
 * then replaces Cache-Control and Expires (and Pragma) for this cache;
 * otherwise Cache-Control (RFC 9213 2.2). A targeted field that does not
 * parse is ignored as if absent.
 *
 * What goes downstream (RFC 9213 2.2, 3): targeted fields not on the
 * target list are passed through untouched. The node's own field
 * (`targetedCacheControl`, by default `Edge-Cache-Control`) concerns this
 * node only and is removed. CDN-Cache-Control "will typically" be
 * forwarded so that CDN caches further downstream (an edge behind this
 * node acting as shield) can obey it, but a CDN MAY remove it; the node
 * removes it today (`INTERNAL_RESPONSE_FIELDS` in respond.ts), which is
 * right for the last CDN hop before clients only.
 */
export function governingDirectives(
  headers: Record<string, string>,
  targetedFields: string[],
): { field: string; cc: CacheControl } {
  for (const field of targetedFields) {
    const value = headers[field];
    if (value === undefined) continue;
    const cc = parseTargetedField(value);
    if (cc) return { field, cc };
  }
  return { field: 'cache-control', cc: parseCacheControl(headers['cache-control']) };
}

/**
 * What `http-cache-semantics` should see of a response, and the directives
 * this cache obeys. The library reads dates with `Date.parse`, so Date,
 * Expires and Last-Modified reach it only as IMF-fixdates: an invalid
 * Expires as a date in the past (RFC 9111 5.3: already expired), an
 * invalid Date or Last-Modified not at all (the response time stands in
 * for the one, the other is no validator and no base for heuristics).
 * The stored headers keep the origin's values.
 */
function policyHeaders(
  headers: Record<string, string>,
  targetedFields: string[],
  now: number,
): { view: Record<string, string>; cc: CacheControl } {
  const view: Record<string, string> = { ...headers };
  const { field, cc } = governingDirectives(headers, targetedFields);
  if (field !== 'cache-control') {
    delete view.expires;
    delete view.pragma;
  }
  const libCc: CacheControl = new Map(cc);
  libCc.delete('must-revalidate');
  libCc.delete('proxy-revalidate');
  // Qualified no-cache/private name fields we already dropped at store time,
  // after which the rest of the response may be reused (RFC 9111 5.2.2.4, 5.2.2.7).
  if (typeof cc.get('no-cache') === 'string') libCc.delete('no-cache');
  if (typeof cc.get('private') === 'string') libCc.delete('private');
  for (const [name, arg] of libCc) {
    if (DELTA_SECONDS_DIRECTIVES.has(name)) {
      // The library reads delta-seconds with parseInt ("60abc", "1.5" and "-10" would count as 60, 1 and -10).
      // An invalid max-age or s-maxage is still explicit freshness information, and invalid freshness
      // information is best taken as stale (RFC 9111 4.2.1): 0. The stale-* extensions are read here.
      if (typeof arg === 'string' && /^\d+$/.test(arg)) libCc.set(name, String(deltaSeconds(arg)));
      else if (name === 'max-age' || name === 's-maxage') libCc.set(name, '0');
      else libCc.delete(name);
    } else if (typeof arg === 'string' && /[",]/.test(arg)) {
      // The library splits the field on every comma, quoted or not: `ext="a, max-age=9999"` would give it a
      // max-age. Such arguments belong to extensions it does not read (qualified no-cache/private went above).
      libCc.delete(name);
    }
  }
  if (headers[field] !== undefined || libCc.size > 0) view['cache-control'] = formatCacheControl(libCc);
  normaliseDates(view, now);
  // An invalid Age is ignored (RFC 9111 5.1); the library would parse "12abc" as 12.
  if (view.age !== undefined) {
    const first = view.age.split(',')[0]!.trim();
    if (/^\d+$/.test(first)) view.age = first;
    else delete view.age;
  }
  return { view, cc };
}

/** See `policyHeaders`. Idempotent: a normalised record is left as it is. */
function normaliseDates(view: Record<string, string>, now: number): void {
  for (const name of ['date', 'last-modified'] as const) {
    if (view[name] === undefined) continue;
    const ms = parseHttpDate(view[name], now);
    if (ms === undefined) delete view[name];
    else view[name] = formatHttpDate(ms);
  }
  if (view.expires !== undefined) view.expires = formatHttpDate(parseHttpDate(view.expires, now) ?? 0);
}

/**
 * The names a qualified `no-cache="..."` / `private="..."` asks a shared
 * cache not to store (RFC 9111 5.2.2.4, 5.2.2.7). Dropped before storing.
 */
export function fieldsNotToStore(headers: Record<string, string>, targetedFields: string[]): string[] {
  const { cc } = governingDirectives(headers, targetedFields);
  const names: string[] = [];
  for (const directive of ['no-cache', 'private']) {
    const arg = cc.get(directive);
    if (typeof arg === 'string') names.push(...arg.split(',').map((n) => n.trim().toLowerCase()).filter(Boolean));
  }
  return names;
}

export type Freshness =
  /** Serve as is. */
  | 'fresh'
  /** Stale but inside stale-while-revalidate: serve and refresh in the background. */
  | 'stale-while-revalidate'
  /** The client accepts it stale (`max-stale`). */
  | 'stale-allowed'
  /** Must be revalidated before use. */
  | 'revalidate';

/** A stored response's policy, with the verbs the proxy needs. */
export class EdgePolicy {
  readonly lib: CachePolicy;
  private readonly cc: CacheControl;
  private readonly options: PolicyOptions;

  constructor(lib: CachePolicy, cc: CacheControl, options: PolicyOptions) {
    this.lib = lib;
    this.cc = cc;
    this.options = options;
  }

  private get internals(): LibraryInternals {
    return this.lib as unknown as LibraryInternals;
  }

  /** May a shared cache store this response at all (RFC 9111 3)? */
  storable(): boolean {
    // The factory's policy class judges it on the directives this node obeys.
    return this.lib.storable();
  }

  /** Freshness lifetime in seconds (RFC 9111 4.2.1), heuristics bounded. */
  freshnessLifetime(): number {
    return this.lib.maxAge();
  }

  /** Current age in seconds (RFC 9111 4.2.3). */
  age(): number {
    return Math.max(0, this.lib.age());
  }

  isFresh(): boolean {
    return this.freshnessLifetime() > this.age();
  }

  /**
   * must-revalidate, proxy-revalidate, or an unqualified no-cache: never
   * serve stale, not even with stale-while-revalidate, stale-if-error or
   * max-stale (RFC 9111 4.2.4, 5.2.2.2, 5.2.2.4, 5.2.2.8).
   */
  forbidsStale(): boolean {
    return this.cc.has('must-revalidate') || this.cc.has('proxy-revalidate') || this.cc.get('no-cache') === true;
  }

  /** s-maxage implies proxy-revalidate (RFC 9111 5.2.2.10) for uses the origin did not opt into. */
  private forbidsImplicitStale(): boolean {
    return this.forbidsStale() || this.cc.has('s-maxage');
  }

  staleWhileRevalidateSeconds(): number {
    return deltaSeconds(this.cc.get('stale-while-revalidate')) ?? 0;
  }

  staleIfErrorSeconds(): number {
    return deltaSeconds(this.cc.get('stale-if-error')) ?? 0;
  }

  /** Does the response carry a validator we can revalidate with? */
  hasValidator(): boolean {
    const h = this.internals._resHeaders;
    return h.etag !== undefined || h['last-modified'] !== undefined;
  }

  /**
   * How this stored response may answer `request` (RFC 9111 4.2, 5.2.1).
   * Vary matching is done by the caller (variant selection).
   */
  evaluate(request: PolicyRequest, honorRequestCacheControl: boolean): Freshness {
    const age = this.age();
    const lifetime = this.freshnessLifetime();
    if (honorRequestCacheControl) {
      const reqCc = parseCacheControl(request.headers['cache-control']);
      const pragmaNoCache = !request.headers['cache-control'] && /no-cache/i.test(request.headers.pragma ?? '');
      if (reqCc.has('no-cache') || pragmaNoCache) return 'revalidate';
      const maxAge = deltaSeconds(reqCc.get('max-age'));
      if (maxAge !== undefined && age > maxAge) return 'revalidate';
      const minFresh = deltaSeconds(reqCc.get('min-fresh'));
      if (minFresh !== undefined && lifetime - age < minFresh) return 'revalidate';
      if (lifetime <= age && reqCc.has('max-stale') && !this.forbidsStale()) {
        const maxStale = deltaSeconds(reqCc.get('max-stale'));
        if (reqCc.get('max-stale') === true || (maxStale !== undefined && age - lifetime <= maxStale)) return 'stale-allowed';
      }
    }
    if (lifetime > age) return 'fresh';
    if (!this.forbidsStale()) {
      const swr = this.staleWhileRevalidateSeconds();
      if (swr > 0 && lifetime + swr > age) return 'stale-while-revalidate';
    }
    return 'revalidate';
  }

  /**
   * May this stale response be served because the origin failed
   * (RFC 5861 stale-if-error, or the node's grace period)?
   */
  canServeStaleOnError(graceSeconds: number): boolean {
    if (this.forbidsStale()) return false;
    const overdue = this.age() - this.freshnessLifetime();
    if (overdue < this.staleIfErrorSeconds()) return true;
    return !this.forbidsImplicitStale() && overdue < graceSeconds;
  }

  /**
   * The ms timestamp after which this entry is of no use even stale:
   * freshness plus the longest stale window. Entries that can be
   * revalidated stay useful for `keepWithValidator` longer.
   */
  usefulUntil(graceSeconds: number, keepWithValidatorSeconds: number): number {
    const remaining = this.freshnessLifetime() - this.age();
    const staleWindow = this.forbidsStale()
      ? 0
      : Math.max(this.staleWhileRevalidateSeconds(), this.staleIfErrorSeconds(), this.forbidsImplicitStale() ? 0 : graceSeconds);
    const validatorWindow = this.hasValidator() ? keepWithValidatorSeconds : 0;
    return this.options.now() + Math.max(0, remaining + Math.max(staleWindow, validatorWindow)) * 1000;
  }

  toObject(): Record<string, unknown> {
    return this.lib.toObject() as unknown as Record<string, unknown>;
  }
}

const isWeak = (etag: string) => etag.startsWith('W/');
const opaqueTag = (etag: string) => (isWeak(etag) ? etag.slice(2) : etag);

/**
 * Does a 304 select this stored response for update (RFC 9111 4.3.4)?
 * The node keeps one response per variant, the one it revalidated, so the
 * rules come down to:
 * - a strong ETag in the 304 selects it only if it holds the same strong
 *   ETag (a weak `W/"x"` stored is not the strong `"x"`);
 * - otherwise weak validators (a weak ETag, Last-Modified) select it when
 *   those both sides carry agree (weak comparison; dates as instants, so
 *   the same time in another HTTP-date form matches), and at least one does;
 * - a 304 with no validator at all selects it only if it has none either.
 *   A 304 that names no validator when the stored response has one is not
 *   applied: nothing says it is about the stored bytes.
 * An invalid Last-Modified is no validator.
 */
export function notModifiedSelects(stored: Record<string, string>, notModified: Record<string, string>, now: number = Date.now()): boolean {
  const etag = notModified.etag?.trim();
  const storedEtag = stored.etag?.trim();
  if (etag !== undefined && !isWeak(etag)) return storedEtag !== undefined && storedEtag === etag;
  const lastModified = parseHttpDate(notModified['last-modified'], now);
  const storedLastModified = parseHttpDate(stored['last-modified'], now);
  let compared = false;
  if (etag !== undefined && storedEtag !== undefined) {
    if (opaqueTag(etag) !== opaqueTag(storedEtag)) return false;
    compared = true;
  }
  if (lastModified !== undefined && storedLastModified !== undefined) {
    if (lastModified !== storedLastModified) return false;
    compared = true;
  }
  if (compared) return true;
  if (etag !== undefined || lastModified !== undefined) return false;
  return storedEtag === undefined && storedLastModified === undefined;
}

/**
 * Build a policy class bound to a clock: `http-cache-semantics` reads time
 * through an overridable `now()` method, which is how tests inject time.
 */
export function createPolicyFactory(options: PolicyOptions) {
  const { now, heuristicMaxAge, defaultTtl } = options;

  class ClockedPolicy extends CachePolicy {
    /** The directives this node obeys (see `policyHeaders`); set by the factory before first use. */
    directives: CacheControl = new Map();
    /** maxAge() and date() depend only on the stored headers: computed once (they sit on the hit path). */
    private lifetime?: number;
    private dateMs?: number;

    /** The Date field if it is a valid HTTP-date, else the response time (RFC 9111 4.2.3). */
    override date(): number {
      const self = this as unknown as LibraryInternals;
      this.dateMs ??= parseHttpDate(self._resHeaders.date, self._responseTime) ?? self._responseTime;
      return this.dateMs;
    }

    now(): number {
      return now();
    }

    /**
     * RFC 9111 3, on the directives this node obeys. Unlike the library,
     * which stores only the statuses it lists, any final status may be
     * stored when its freshness is explicit (or it is `public`), except
     * 206 (this node stores whole responses only) and 304. A response with
     * `must-understand` is stored only with a status this node implements,
     * and then despite `no-store` (RFC 9111 5.2.2.3).
     */
    override storable(): boolean {
      const self = this as unknown as LibraryInternals;
      const cc = this.directives;
      const status = self._status;
      if (self._reqcc['no-store']) return false;
      if (self._method !== 'GET' && self._method !== 'HEAD') return false;
      if (status < 200 || status > 599 || status === 206 || status === 304) return false;
      const mustUnderstand = cc.has('must-understand');
      if (mustUnderstand && !UNDERSTOOD_STATUSES.has(status)) return false;
      if (cc.has('no-store') && !mustUnderstand) return false;
      // A qualified private="..." only keeps the named fields out of the stored copy.
      if (cc.get('private') === true) return false;
      if (!self._noAuthorization && !cc.has('must-revalidate') && !cc.has('public') && !cc.has('s-maxage')) return false;
      return (
        self._resHeaders.expires !== undefined ||
        cc.has('max-age') ||
        cc.has('s-maxage') ||
        cc.has('public') ||
        HEURISTICALLY_CACHEABLE.has(status)
      );
    }

    override maxAge(): number {
      this.lifetime ??= this.computeMaxAge();
      return this.lifetime;
    }

    /**
     * RFC 9111 4.2.3 corrected age: the library counts only the Age field;
     * the apparent age (response time minus Date) counts too. Whole seconds,
     * since Date has one-second resolution.
     */
    override age(): number {
      const self = this as unknown as LibraryInternals & { _ageValue(): number };
      const apparent = Math.max(0, Math.floor(self._responseTime / 1000) - Math.floor(this.date() / 1000));
      return Math.max(apparent, self._ageValue()) + (now() - self._responseTime) / 1000;
    }

    private computeMaxAge(): number {
      const self = this as unknown as LibraryInternals;
      const explicit =
        self._rescc['s-maxage'] !== undefined || self._rescc['max-age'] !== undefined || self._resHeaders.expires !== undefined;
      let lifetime = super.maxAge();
      if (!explicit && !self._rescc.immutable) {
        // Heuristics only for heuristically cacheable statuses, or responses marked public (RFC 9111 4.2.2).
        if (!HEURISTICALLY_CACHEABLE.has(self._status) && !self._rescc.public) lifetime = 0;
        else lifetime = Math.min(lifetime, heuristicMaxAge);
        // Opt-in default TTL, only for responses that say nothing at all.
        if (lifetime === 0 && defaultTtl > 0 && !self._rescc['no-cache'] && this.storable()) lifetime = defaultTtl;
      }
      return lifetime;
    }
  }

  // immutableMinTimeToLive is documented in milliseconds, but the library compares it with seconds
  // (maxAge()): one day is 86400 here, or an immutable response without max-age would stay fresh 1000 days.
  const libOptions = { shared: true, cacheHeuristic: options.heuristicFraction, immutableMinTimeToLive: 24 * 3600 };

  return {
    /** Policy for a response just received from upstream. */
    fromResponse(request: PolicyRequest, response: StoredResponseInfo): EdgePolicy {
      const { view, cc } = policyHeaders(response.headers, options.targetedFields, now());
      const lib = new ClockedPolicy(
        { url: request.url, method: request.method === 'HEAD' ? 'GET' : request.method, headers: request.headers },
        { status: response.status, headers: view },
        libOptions,
      );
      lib.directives = cc;
      return new EdgePolicy(lib, cc, options);
    },

    /** Rehydrate a stored policy; the stored headers carry the targeted fields again. */
    fromStored(serialized: Record<string, unknown>, storedHeaders: Record<string, string>): EdgePolicy {
      const lib = ClockedPolicy.fromObject(serialized as never) as ClockedPolicy;
      const self = lib as unknown as LibraryInternals;
      // Entries stored by earlier versions may hold dates the library would misread.
      const view = { ...self._resHeaders };
      normaliseDates(view, self._responseTime);
      self._resHeaders = view;
      const { cc } = policyHeaders(storedHeaders, options.targetedFields, self._responseTime);
      lib.directives = cc;
      return new EdgePolicy(lib, cc, options);
    },

    /**
     * Apply a 304 to a stored response (RFC 9111 4.3.4): every field in the
     * 304 replaces or joins the stored ones, except those describing the
     * stored bytes (RFC 9111 3.2). Returns null when the 304 does not
     * select the stored response (`notModifiedSelects`): then the stored
     * entry must not be updated, and the caller asks again unconditionally.
     */
    freshen(
      stored: EdgePolicy,
      storedHeaders: Record<string, string>,
      storedStatus: number,
      request: PolicyRequest,
      notModified: StoredResponseInfo,
    ): { policy: EdgePolicy; headers: Record<string, string> } | null {
      if (!notModifiedSelects(storedHeaders, notModified.headers, now())) return null;
      const headers: Record<string, string> = { ...storedHeaders };
      // The 304 is a new response: its Age and Date describe it, not the stored ones.
      delete headers.age;
      headers.date = notModified.headers.date ?? formatHttpDate(now());
      for (const [name, value] of Object.entries(notModified.headers)) {
        if (NOT_UPDATED_BY_304.has(name)) continue;
        headers[name] = value;
      }
      const policy = this.fromResponse(request, { status: storedStatus, headers });
      return { policy, headers };
    },
  };
}

export type PolicyFactory = ReturnType<typeof createPolicyFactory>;
