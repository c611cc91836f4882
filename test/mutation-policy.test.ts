/**
 * The parsers and verbs of `edge/core/policy.ts`, tested directly where
 * mutation testing (`npm run test:mutation`) found the end-to-end suites
 * silent: Cache-Control, delta-seconds, HTTP-dates, Structured Field
 * Dictionaries and targeted fields (RFC 9111, 9110, 9651, 9213), 304
 * selection, and the stale windows of a stored response. Behaviour a client
 * sees is pinned end to end in the conformance suites; these are the
 * grammar's corners.
 */
import { describe, expect, it } from 'vitest';
import {
  createPolicyFactory,
  deltaSeconds,
  fieldsNotToStore,
  formatHttpDate,
  governingDirectives,
  notModifiedSelects,
  parseCacheControl,
  parseHttpDate,
  parseSfDictionary,
  parseTargetedField,
  type SfMember,
} from '../edge/core/policy.js';

const TARGETED = ['edge-cache-control', 'cdn-cache-control'];

describe('parseCacheControl', () => {
  it('is empty for nothing', () => {
    expect(parseCacheControl(undefined).size).toBe(0);
    expect(parseCacheControl(null).size).toBe(0);
    expect(parseCacheControl('').size).toBe(0);
  });

  it('reads names case-insensitively, arguments as given, bare directives as true', () => {
    expect([...parseCacheControl('Max-Age=60, NO-CACHE, s-maxage = 30')]).toEqual([
      ['max-age', '60'],
      ['no-cache', true],
      ['s-maxage', '30'],
    ]);
  });

  it('reads quoted arguments with escapes, commas inside quotes included', () => {
    const cc = parseCacheControl('no-cache="Set-Cookie, X-A", private="a\\"b", x="\\\\"');
    expect(cc.get('no-cache')).toBe('Set-Cookie, X-A');
    expect(cc.get('private')).toBe('a"b');
    expect(cc.get('x')).toBe('\\');
  });

  it('keeps the first of duplicated directives (RFC 9111 4.2.1)', () => {
    expect(parseCacheControl('max-age=10, max-age=20').get('max-age')).toBe('10');
    expect(parseCacheControl('MAX-AGE=10, max-age=20').get('max-age')).toBe('10');
  });

  it('an empty argument is a bare directive', () => {
    expect(parseCacheControl('max-age=').get('max-age')).toBe(true);
    expect(parseCacheControl('max-age=""').get('max-age')).toBe(true);
  });

  it('skips to the next comma after a malformed part, so it cannot shift what follows', () => {
    expect([...parseCacheControl('max-age=10 garbage=5, public')]).toEqual([
      ['max-age', '10'],
      ['public', true],
    ]);
    expect([...parseCacheControl('max-age=10 no-store')]).toEqual([['max-age', '10']]);
    expect([...parseCacheControl(',, public,,private')]).toEqual([
      ['public', true],
      ['private', true],
    ]);
  });
});

describe('deltaSeconds', () => {
  it.each([
    ['60', 60],
    ['0', 0],
    ['007', 7],
    ['2147483648', 2 ** 31],
    ['99999999999999', 2 ** 31],
  ])('%s is %d', (arg, expected) => {
    expect(deltaSeconds(arg)).toBe(expected);
  });

  it.each([['-1'], ['1.5'], [''], [' 5'], ['5s'], ['0x10']])('%j is invalid', (arg) => {
    expect(deltaSeconds(arg)).toBeUndefined();
  });

  it('a bare directive or none has no value', () => {
    expect(deltaSeconds(true)).toBeUndefined();
    expect(deltaSeconds(undefined)).toBeUndefined();
  });
});

describe('parseHttpDate / formatHttpDate', () => {
  const now = Date.UTC(2026, 4, 1);
  const at = (year: number, month: number, day: number, hour = 0, minute = 0, second = 0) => Date.UTC(year, month, day, hour, minute, second);

  it.each([
    ['Sun, 06 Nov 1994 08:49:37 GMT', at(1994, 10, 6, 8, 49, 37)],
    ['sun, 06 NOV 1994 08:49:37 gmt', at(1994, 10, 6, 8, 49, 37)],
    ['  Sun, 06 Nov 1994 08:49:37 GMT ', at(1994, 10, 6, 8, 49, 37)],
    ['Sunday, 06-Nov-94 08:49:37 GMT', at(1994, 10, 6, 8, 49, 37)],
    ['Sun Nov  6 08:49:37 1994', at(1994, 10, 6, 8, 49, 37)],
    ['Sun Nov 16 08:49:37 1994', at(1994, 10, 16, 8, 49, 37)],
    ['Thu, 01 Jan 1970 00:00:00 GMT', 0],
    ['Wed, 31 Dec 2025 23:59:59 GMT', at(2025, 11, 31, 23, 59, 59)],
    ['Sat, 31 Jan 2026 12:00:00 GMT', at(2026, 0, 31, 12)],
    ['Fri, 30 Apr 2027 00:00:00 GMT', at(2027, 3, 30)],
    ['Thu, 29 Feb 2024 00:00:00 GMT', at(2024, 1, 29)],
    ['Tue, 29 Feb 2000 00:00:00 GMT', at(2000, 1, 29)],
    ['Tue, 28 Feb 2023 00:00:00 GMT', at(2023, 1, 28)],
    ['Tue, 31 Mar 2026 00:00:00 GMT', at(2026, 2, 31)],
    ['Sun, 31 May 2026 00:00:00 GMT', at(2026, 4, 31)],
    ['Tue, 30 Jun 2026 00:00:00 GMT', at(2026, 5, 30)],
    ['Fri, 31 Jul 2026 00:00:00 GMT', at(2026, 6, 31)],
    ['Mon, 31 Aug 2026 00:00:00 GMT', at(2026, 7, 31)],
    ['Wed, 30 Sep 2026 00:00:00 GMT', at(2026, 8, 30)],
    ['Sat, 31 Oct 2026 00:00:00 GMT', at(2026, 9, 31)],
    ['Mon, 30 Nov 2026 00:00:00 GMT', at(2026, 10, 30)],
    // A leap second counts as the last second of its minute.
    ['Wed, 31 Dec 2016 23:59:60 GMT', at(2016, 11, 31, 23, 59, 59)],
  ])('%j', (text, expected) => {
    expect(parseHttpDate(text, now)).toBe(expected);
  });

  it.each([
    ['Sun, 06 Nov 1994 08:49:37 UTC'],
    ['1994-11-06T08:49:37Z'],
    ['Sun, 6 Nov 1994 08:49:37 GMT'],
    ['Sun, 06 Nov 1994 08:49 GMT'],
    ['Sun,  06 Nov 1994 08:49:37 GMT'],
    ['Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT'],
    ['Fun, 06 Nov 1994 08:49:37 GMT'],
    ['Sun, 06 Nev 1994 08:49:37 GMT'],
    ['Mon, 30 Feb 2026 00:00:00 GMT'],
    ['Sun, 29 Feb 2026 00:00:00 GMT'],
    ['Mon, 29 Feb 2100 00:00:00 GMT'],
    ['Thu, 31 Apr 2026 00:00:00 GMT'],
    ['Wed, 31 Jun 2026 00:00:00 GMT'],
    ['Thu, 31 Sep 2026 00:00:00 GMT'],
    ['Tue, 31 Nov 2026 00:00:00 GMT'],
    ['Thu, 32 Jan 2026 00:00:00 GMT'],
    ['Thu, 00 Jan 2026 00:00:00 GMT'],
    ['Thu, 01 Jan 2026 24:00:00 GMT'],
    ['Thu, 01 Jan 2026 00:60:00 GMT'],
    ['Thu, 01 Jan 2026 00:00:61 GMT'],
    ['Sun Nov 6 08:49:37 1994'],
    ['garbage'],
    [''],
  ])('%j is no HTTP-date', (text) => {
    expect(parseHttpDate(text, now)).toBeUndefined();
  });

  it('undefined is no date', () => {
    expect(parseHttpDate(undefined)).toBeUndefined();
  });

  it('reads an RFC 850 two-digit year as at most 50 years ahead of now', () => {
    expect(new Date(parseHttpDate('Thursday, 01-Jan-26 00:00:00 GMT', now)!).getUTCFullYear()).toBe(2026);
    expect(new Date(parseHttpDate('Saturday, 01-Jan-76 00:00:00 GMT', now)!).getUTCFullYear()).toBe(2076);
    expect(new Date(parseHttpDate('Saturday, 01-Jan-77 00:00:00 GMT', now)!).getUTCFullYear()).toBe(1977);
    expect(new Date(parseHttpDate('Friday, 01-Jan-99 00:00:00 GMT', now)!).getUTCFullYear()).toBe(1999);
    // Relative to the `now` given, not the wall clock.
    expect(new Date(parseHttpDate('Thursday, 01-Jan-70 00:00:00 GMT', Date.UTC(2020, 0, 1))!).getUTCFullYear()).toBe(2070);
    expect(new Date(parseHttpDate('Friday, 01-Jan-71 00:00:00 GMT', Date.UTC(2020, 0, 1))!).getUTCFullYear()).toBe(1971);
  });

  it('keeps four-digit years below 100 as such', () => {
    const ms = parseHttpDate('Sat, 01 Jan 0050 00:00:00 GMT', now)!;
    expect(new Date(ms).getUTCFullYear()).toBe(50);
  });

  it('formats IMF-fixdate', () => {
    expect(formatHttpDate(0)).toBe('Thu, 01 Jan 1970 00:00:00 GMT');
    expect(formatHttpDate(at(1994, 10, 6, 8, 49, 37))).toBe('Sun, 06 Nov 1994 08:49:37 GMT');
  });
});

/** A dictionary as plain data, for toEqual. */
function plain(dictionary: Map<string, SfMember> | undefined): unknown {
  if (!dictionary) return undefined;
  return Object.fromEntries([...dictionary].map(([key, member]) => [key, { value: member.value, params: Object.fromEntries(member.params) }]));
}

describe('parseSfDictionary (RFC 9651)', () => {
  it('reads members, bare keys as true, parameters, last duplicate winning', () => {
    expect(plain(parseSfDictionary('a=1, b=2;x=?0;y, c, a=3'))).toEqual({
      a: { value: { type: 'integer', value: 3 }, params: {} },
      b: { value: { type: 'integer', value: 2 }, params: { x: { type: 'boolean', value: false }, y: { type: 'boolean', value: true } } },
      c: { value: { type: 'boolean', value: true }, params: {} },
    });
  });

  it('allows spaces before members and after `;`, spaces and tabs around commas', () => {
    expect(plain(parseSfDictionary('  a=1;  p=2 ,\tb=?1'))).toEqual({
      a: { value: { type: 'integer', value: 1 }, params: { p: { type: 'integer', value: 2 } } },
      b: { value: { type: 'boolean', value: true }, params: {} },
    });
  });

  it('reads each bare item type', () => {
    const d = parseSfDictionary(
      'i=-42, d=1.25, s="x\\"y\\\\z", t=foo/bar:baz*, st=*tok, b=:aGk=:, f=?0, dt=@1659578233, ds=%"caf%c3%a9 %22"',
    )!;
    expect(Object.fromEntries([...d].map(([k, m]) => [k, m.value]))).toEqual({
      i: { type: 'integer', value: -42 },
      d: { type: 'decimal', value: 1.25 },
      s: { type: 'string', value: 'x"y\\z' },
      t: { type: 'token', value: 'foo/bar:baz*' },
      st: { type: 'token', value: '*tok' },
      b: { type: 'binary', value: 'aGk=' },
      f: { type: 'boolean', value: false },
      dt: { type: 'date', value: 1659578233 },
      ds: { type: 'displaystring', value: 'café "' },
    });
  });

  it('reads inner lists with their parameters', () => {
    expect(plain(parseSfDictionary('l=(1 "two" three);p=1, e=(), s=( 1  2 )'))).toEqual({
      l: {
        value: [
          { type: 'integer', value: 1 },
          { type: 'string', value: 'two' },
          { type: 'token', value: 'three' },
        ],
        params: { p: { type: 'integer', value: 1 } },
      },
      e: { value: [], params: {} },
      s: { value: [{ type: 'integer', value: 1 }, { type: 'integer', value: 2 }], params: {} },
    });
  });

  it('strings and display strings take every printable character, ~ included', () => {
    expect(parseSfDictionary('a="~ !#"')?.get('a')?.value).toEqual({ type: 'string', value: '~ !#' });
    expect(parseSfDictionary('a=%"~ x"')?.get('a')?.value).toEqual({ type: 'displaystring', value: '~ x' });
  });

  it('an empty field is an empty dictionary', () => {
    expect(parseSfDictionary('')?.size).toBe(0);
  });

  it('numbers: at most 15 integer digits, decimals with 1 to 3 fraction digits and 12 integer digits', () => {
    expect(parseSfDictionary('a=999999999999999')?.get('a')?.value).toEqual({ type: 'integer', value: 999999999999999 });
    expect(parseSfDictionary('a=999999999999.999')?.get('a')?.value).toEqual({ type: 'decimal', value: 999999999999.999 });
    for (const bad of ['a=1000000000000000', 'a=1.', 'a=1.1234', 'a=1000000000000.5', 'a=-', 'a=-x']) {
      expect(parseSfDictionary(bad), bad).toBeUndefined();
    }
  });

  it.each([
    ['a=1,', 'a trailing comma'],
    ['a=1, ', 'a trailing comma and space'],
    ['a=1 b=2', 'no comma between members'],
    ['a=1;', 'a parameter without a key'],
    ['A=1', 'an upper-case key'],
    ['1a=1', 'a key starting with a digit'],
    ['a=', 'no value'],
    ['a=!', 'no bare item'],
    ['a="unterminated', 'an unterminated string'],
    ['a="\\n"', 'an escape other than \\" and \\\\'],
    ['a="tab\there"', 'a control character in a string'],
    ['a="é"', 'a non-ASCII character'],
    ['a=:aGk=', 'an unterminated byte sequence'],
    ['a=:a*k=:', 'a byte sequence outside base64'],
    ['a=?2', 'a boolean other than ?0 or ?1'],
    ['a=?', 'a boolean without its digit'],
    ['a=@1.5', 'a date that is not an integer'],
    ['a=%"%zz"', 'a display string with a bad escape'],
    ['a=%"%C3%A9"', 'a display string with upper-case hex'],
    ['a=%"%ff"', 'a display string that is not UTF-8'],
    ['a=%"unterminated', 'an unterminated display string'],
    ['a=%"tab\there"', 'a control character in a display string'],
    ['a=%x', 'a display string without its quote'],
    ['a=(1 2', 'an unterminated inner list'],
    ['a=(1,2)', 'a comma inside an inner list'],
    ['a=(1"x")', 'inner list items not separated by a space'],
    ['a=!"x"', 'a display string needs %'],
    ['a=%x"', 'a display string without its opening quote'],
    ['a=-,b=1', 'a minus sign without digits'],
    ['a="del\x7f"', 'DEL in a string'],
    ['a=%"del\x7f"', 'DEL in a display string'],
  ])('%j fails (%s)', (value) => {
    expect(parseSfDictionary(value)).toBeUndefined();
  });
});

describe('parseTargetedField (RFC 9213 2.1)', () => {
  const read = (value: string) => {
    const cc = parseTargetedField(value);
    return cc && Object.fromEntries(cc);
  };

  it('is undefined for a field that does not parse, or is empty', () => {
    expect(read('')).toBeUndefined();
    expect(read('max-age=60,')).toBeUndefined();
    expect(read('max-age="60')).toBeUndefined();
  });

  it('delta-seconds members must be non-negative Integers, capped at 2^31', () => {
    expect(read('max-age=60, s-maxage=0, stale-while-revalidate=5, stale-if-error=99999999999')).toEqual({
      'max-age': '60',
      's-maxage': '0',
      'stale-while-revalidate': '5',
      'stale-if-error': String(2 ** 31),
    });
    // Of the wrong type: ignored, leaving an empty set of directives (the field still governs).
    expect(read('max-age="60"')).toEqual({});
    expect(read('max-age=60.0')).toEqual({});
    expect(read('max-age=-1')).toEqual({});
    expect(read('max-age')).toEqual({});
    expect(read('max-age=(60)')).toEqual({});
    for (const name of ['s-maxage', 'stale-while-revalidate', 'stale-if-error']) {
      expect(read(`${name}=-1`), name).toEqual({});
      expect(read(`${name}=1.5`), name).toEqual({});
      expect(read(`${name}="5"`), name).toEqual({});
      expect(read(`${name}=99999999999`), name).toEqual({ [name]: String(2 ** 31) });
    }
  });

  it('restrictive directives apply whatever their value; no-cache and private with a String name fields', () => {
    expect(read('no-store=?0, must-revalidate=1, proxy-revalidate="x", no-cache=(a b)')).toEqual({
      'no-store': true,
      'must-revalidate': true,
      'proxy-revalidate': true,
      'no-cache': true,
    });
    expect(read('no-cache="set-cookie", private="x-a, x-b"')).toEqual({ 'no-cache': 'set-cookie', private: 'x-a, x-b' });
    expect(read('private=tok')).toEqual({ private: true });
  });

  it('public, immutable, no-transform and must-understand only as Boolean true', () => {
    expect(read('public, immutable, no-transform, must-understand')).toEqual({ public: true, immutable: true, 'no-transform': true, 'must-understand': true });
    expect(read('public=?0, immutable=1, no-transform="yes", must-understand=tok')).toEqual({});
    for (const name of ['public', 'immutable', 'no-transform', 'must-understand']) {
      expect(read(`${name}=1`), name).toEqual({});
      expect(read(`${name}=tok`), name).toEqual({});
      // An Inner List is no Boolean either (and no crash).
      expect(read(`${name}=(1 2)`), name).toEqual({});
    }
  });

  it('keeps other directives as Cache-Control would spell them; parameters and byte sequences are ignored', () => {
    expect(read('x-flag, x-off=?0, x-tok=abc, x-num=5, x-str="s", x-bin=:aGk=:, x-list=(1 2), max-age=60;foo=bar')).toEqual({
      'x-flag': true,
      'x-tok': 'abc',
      'x-num': '5',
      'x-str': 's',
      'max-age': '60',
    });
  });
});

describe('governingDirectives / fieldsNotToStore', () => {
  it('takes the first targeted field on the list that parses and is not empty, else Cache-Control', () => {
    const headers = { 'edge-cache-control': 'max-age=5', 'cdn-cache-control': 'max-age=10', 'cache-control': 'max-age=20' };
    expect(governingDirectives(headers, TARGETED)).toMatchObject({ field: 'edge-cache-control' });
    expect(governingDirectives({ ...headers, 'edge-cache-control': 'max-age=5,' }, TARGETED)).toMatchObject({ field: 'cdn-cache-control' });
    expect(governingDirectives({ ...headers, 'edge-cache-control': '' }, TARGETED)).toMatchObject({ field: 'cdn-cache-control' });
    const { 'edge-cache-control': _e, 'cdn-cache-control': _c, ...plainCc } = headers;
    const governing = governingDirectives(plainCc, TARGETED);
    expect(governing.field).toBe('cache-control');
    expect(governing.cc.get('max-age')).toBe('20');
    // Only the fields on the list count.
    expect(governingDirectives(headers, ['cdn-cache-control']).field).toBe('cdn-cache-control');
    expect(governingDirectives(headers, []).field).toBe('cache-control');
  });

  it('fieldsNotToStore: the names qualified no-cache and private list, lower case, from the governing field', () => {
    expect(fieldsNotToStore({ 'cache-control': 'no-cache="Set-Cookie, X-A", private="x-b,", max-age=60' }, TARGETED)).toEqual(['set-cookie', 'x-a', 'x-b']);
    expect(fieldsNotToStore({ 'cache-control': 'no-cache, private' }, TARGETED)).toEqual([]);
    expect(fieldsNotToStore({ 'cache-control': 'private="x-c"', 'cdn-cache-control': 'private="x-d"' }, TARGETED)).toEqual(['x-d']);
  });
});

describe('notModifiedSelects (RFC 9111 4.3.4)', () => {
  const LM = 'Sun, 06 Nov 1994 08:49:37 GMT';
  const LM_850 = 'Sunday, 06-Nov-94 08:49:37 GMT';
  const LM_OTHER = 'Sun, 06 Nov 1994 08:49:38 GMT';
  const cases: [string, Record<string, string>, Record<string, string>, boolean][] = [
    ['the same strong ETag', { etag: '"x"' }, { etag: '"x"' }, true],
    ['the same strong ETag, spaces aside', { etag: ' "x" ' }, { etag: '"x"  ' }, true],
    ['another strong ETag', { etag: '"x"' }, { etag: '"y"' }, false],
    ['a strong ETag against the weak one stored', { etag: 'W/"x"' }, { etag: '"x"' }, false],
    ['a strong ETag when none is stored', { 'last-modified': LM }, { etag: '"x"', 'last-modified': LM }, false],
    ['a weak ETag against the strong one stored (weak comparison)', { etag: '"x"' }, { etag: 'W/"x"' }, true],
    ['a weak ETag against the same weak one', { etag: 'W/"x"' }, { etag: 'W/"x"' }, true],
    ['a weak ETag against another', { etag: 'W/"x"' }, { etag: 'W/"y"' }, false],
    ['a weak ETag that agrees, with a Last-Modified that does not', { etag: 'W/"x"', 'last-modified': LM }, { etag: 'W/"x"', 'last-modified': LM_OTHER }, false],
    ['the same Last-Modified in another HTTP-date form', { 'last-modified': LM }, { 'last-modified': LM_850 }, true],
    ['another Last-Modified', { 'last-modified': LM }, { 'last-modified': LM_OTHER }, false],
    ['a Last-Modified when only an ETag is stored', { etag: '"x"' }, { 'last-modified': LM }, false],
    ['a weak ETag when only a Last-Modified is stored', { 'last-modified': LM }, { etag: 'W/"x"' }, false],
    ['no validator against a stored ETag', { etag: '"x"' }, {}, false],
    ['no validator against a stored Last-Modified', { 'last-modified': LM }, {}, false],
    ['no validator on either side', {}, {}, true],
    ['an invalid Last-Modified in the 304 is none', {}, { 'last-modified': 'yesterday' }, true],
    ['an invalid stored Last-Modified is none', { 'last-modified': 'yesterday' }, { 'last-modified': LM }, false],
    ['a weak ETag and a Last-Modified, both agreeing', { etag: '"x"', 'last-modified': LM }, { etag: 'W/"x"', 'last-modified': LM_850 }, true],
    ['a Last-Modified agreeing, the stored ETag not named', { etag: '"x"', 'last-modified': LM }, { 'last-modified': LM }, true],
    ['a weak ETag agreeing, the stored Last-Modified not named', { etag: '"x"', 'last-modified': LM }, { etag: 'W/"x"' }, true],
    ['a weak ETag agreeing, with a Last-Modified the stored response lacks', { etag: '"x"' }, { etag: 'W/"x"', 'last-modified': LM }, true],
    ['a weak ETag when nothing is stored', {}, { etag: 'W/"x"' }, false],
    ['a Last-Modified when nothing is stored', {}, { 'last-modified': LM }, false],
  ];
  it.each(cases)('%s: %s', (_, stored, notModified, expected) => {
    expect(notModifiedSelects(stored, notModified, Date.UTC(2026, 0, 1))).toBe(expected);
  });
});

describe('EdgePolicy stale windows', () => {
  const T0 = Date.UTC(2026, 0, 1);
  function policyFor(cacheControl: string, extra: Record<string, string> = {}, at = T0) {
    let now = at;
    const factory = createPolicyFactory({ heuristicFraction: 0.1, heuristicMaxAge: 86_400, defaultTtl: 0, targetedFields: TARGETED, now: () => now });
    const policy = factory.fromResponse(
      { url: '/x', method: 'GET', headers: {} },
      { status: 200, headers: { date: formatHttpDate(at), 'cache-control': cacheControl, ...extra } },
    );
    return { policy, advance: (seconds: number) => (now += seconds * 1000), now: () => now };
  }

  it('usefulUntil: freshness plus the longest stale window; the grace only where serving stale is not ruled out', () => {
    expect(policyFor('max-age=10').policy.usefulUntil(600, 0)).toBe(T0 + 610_000);
    // s-maxage implies proxy-revalidate: no grace, so no longer than its freshness.
    expect(policyFor('s-maxage=10').policy.usefulUntil(600, 0)).toBe(T0 + 10_000);
    expect(policyFor('max-age=10, must-revalidate').policy.usefulUntil(600, 0)).toBe(T0 + 10_000);
    // Explicit stale windows count even with s-maxage; the longest wins.
    expect(policyFor('s-maxage=10, stale-while-revalidate=30, stale-if-error=20').policy.usefulUntil(600, 0)).toBe(T0 + 40_000);
    expect(policyFor('max-age=10, stale-if-error=900').policy.usefulUntil(600, 0)).toBe(T0 + 910_000);
    // With a validator it stays for revalidation at least that long.
    expect(policyFor('max-age=10', { etag: '"v"' }).policy.usefulUntil(0, 3600)).toBe(T0 + 3_610_000);
    expect(policyFor('max-age=10').policy.usefulUntil(0, 3600)).toBe(T0 + 10_000);
    expect(policyFor('max-age=10', { 'last-modified': formatHttpDate(T0 - 1000) }).policy.usefulUntil(0, 3600)).toBe(T0 + 3_610_000);
    // Never in the past.
    const late = policyFor('max-age=10');
    late.advance(100);
    expect(late.policy.usefulUntil(0, 0)).toBe(late.now());
  });

  it('canServeStaleOnError: stale-if-error, then the grace unless ruled out, never past either', () => {
    const plain = policyFor('max-age=10');
    plain.advance(10 + 599);
    expect(plain.policy.canServeStaleOnError(600)).toBe(true);
    plain.advance(1);
    expect(plain.policy.canServeStaleOnError(600)).toBe(false);

    const smax = policyFor('s-maxage=10, stale-if-error=30');
    smax.advance(20);
    expect(smax.policy.canServeStaleOnError(600)).toBe(true);
    smax.advance(20);
    expect(smax.policy.canServeStaleOnError(600)).toBe(false);

    const noCache = policyFor('max-age=10, no-cache, stale-if-error=60');
    noCache.advance(11);
    expect(noCache.policy.canServeStaleOnError(600)).toBe(false);
    // A qualified no-cache names fields; it does not forbid stale.
    const qualified = policyFor('max-age=10, no-cache="set-cookie"');
    qualified.advance(11);
    expect(qualified.policy.canServeStaleOnError(600)).toBe(true);
  });
});

describe('EdgePolicy.evaluate (RFC 9111 4.2, 5.2.1)', () => {
  const T0 = Date.UTC(2026, 0, 1);
  /** A stored response with `cacheControl`, `age` seconds old, asked for with request Cache-Control `req`. */
  function freshness(cacheControl: string, age: number, req: Record<string, string> = {}, honour = true): string {
    let now = T0;
    const factory = createPolicyFactory({ heuristicFraction: 0.1, heuristicMaxAge: 86_400, defaultTtl: 0, targetedFields: TARGETED, now: () => now });
    const policy = factory.fromResponse({ url: '/x', method: 'GET', headers: {} }, { status: 200, headers: { date: formatHttpDate(T0), 'cache-control': cacheControl } });
    now += age * 1000;
    return policy.evaluate({ url: '/x', method: 'GET', headers: req }, honour);
  }

  it('fresh, stale-while-revalidate, then revalidate, at the window edges', () => {
    expect(freshness('max-age=10', 9)).toBe('fresh');
    expect(freshness('max-age=10', 10)).toBe('revalidate');
    expect(freshness('max-age=10, stale-while-revalidate=30', 10)).toBe('stale-while-revalidate');
    expect(freshness('max-age=10, stale-while-revalidate=30', 39)).toBe('stale-while-revalidate');
    expect(freshness('max-age=10, stale-while-revalidate=30', 40)).toBe('revalidate');
    expect(freshness('max-age=10, stale-while-revalidate=0', 10)).toBe('revalidate');
    expect(freshness('max-age=10, must-revalidate, stale-while-revalidate=30', 11)).toBe('revalidate');
  });

  it('request no-cache, and Pragma: no-cache only without Cache-Control', () => {
    expect(freshness('max-age=600', 1, { 'cache-control': 'no-cache' })).toBe('revalidate');
    expect(freshness('max-age=600', 1, { pragma: 'no-cache' })).toBe('revalidate');
    expect(freshness('max-age=600', 1, { pragma: 'No-Cache' })).toBe('revalidate');
    expect(freshness('max-age=600', 1, { pragma: 'no-cache', 'cache-control': 'max-age=600' })).toBe('fresh');
    expect(freshness('max-age=600', 1, { pragma: 'x' })).toBe('fresh');
  });

  it('request max-age: an age equal to it is still acceptable', () => {
    expect(freshness('max-age=600', 10, { 'cache-control': 'max-age=10' })).toBe('fresh');
    expect(freshness('max-age=600', 10, { 'cache-control': 'max-age=9' })).toBe('revalidate');
    expect(freshness('max-age=600', 10, { 'cache-control': 'max-age=abc' })).toBe('fresh');
  });

  it('request min-fresh: exactly that much freshness left is enough', () => {
    expect(freshness('max-age=60', 10, { 'cache-control': 'min-fresh=50' })).toBe('fresh');
    expect(freshness('max-age=60', 10, { 'cache-control': 'min-fresh=51' })).toBe('revalidate');
    expect(freshness('max-age=60', 10, { 'cache-control': 'min-fresh=x' })).toBe('fresh');
  });

  it('request max-stale: from the moment it is stale, up to and including the limit', () => {
    expect(freshness('max-age=10', 10, { 'cache-control': 'max-stale=0' })).toBe('stale-allowed');
    expect(freshness('max-age=10', 15, { 'cache-control': 'max-stale=5' })).toBe('stale-allowed');
    expect(freshness('max-age=10', 15, { 'cache-control': 'max-stale=4' })).toBe('revalidate');
    expect(freshness('max-age=10', 1000, { 'cache-control': 'max-stale' })).toBe('stale-allowed');
    expect(freshness('max-age=10', 15, { 'cache-control': 'max-stale=abc' })).toBe('revalidate');
    // Fresh stays fresh; stale is not allowed when the response forbids it.
    expect(freshness('max-age=10', 5, { 'cache-control': 'max-stale' })).toBe('fresh');
    expect(freshness('max-age=10, must-revalidate', 15, { 'cache-control': 'max-stale' })).toBe('revalidate');
    expect(freshness('max-age=10, stale-while-revalidate=60', 15, { 'cache-control': 'max-stale=100' })).toBe('stale-allowed');
  });

  it('not honoured, request directives change nothing', () => {
    expect(freshness('max-age=600', 10, { 'cache-control': 'no-cache' }, false)).toBe('fresh');
    expect(freshness('max-age=600', 10, { 'cache-control': 'max-age=0' }, false)).toBe('fresh');
    expect(freshness('max-age=600', 10, { pragma: 'no-cache' }, false)).toBe('fresh');
    expect(freshness('max-age=10', 15, { 'cache-control': 'max-stale' }, false)).toBe('revalidate');
  });
});

describe('createPolicyFactory', () => {
  const T0 = Date.UTC(2026, 0, 1);
  function factoryAt(options: { defaultTtl?: number; heuristicFraction?: number } = {}) {
    let now = T0;
    const factory = createPolicyFactory({
      heuristicFraction: options.heuristicFraction ?? 0.1,
      heuristicMaxAge: 86_400,
      defaultTtl: options.defaultTtl ?? 0,
      targetedFields: TARGETED,
      now: () => now,
    });
    const response = (headers: Record<string, string>, status = 200, request: { method?: string; headers?: Record<string, string> } = {}) =>
      factory.fromResponse({ url: '/x', method: request.method ?? 'GET', headers: request.headers ?? {} }, { status, headers: { date: formatHttpDate(T0), ...headers } });
    return { factory, response, advance: (seconds: number) => (now += seconds * 1000) };
  }

  it('caps delta-seconds at 2^31 for Cache-Control as for targeted fields', () => {
    const { response } = factoryAt();
    expect(response({ 'cache-control': 'max-age=99999999999' }).freshnessLifetime()).toBe(2 ** 31);
    expect(response({ 'cache-control': 's-maxage=99999999999' }).freshnessLifetime()).toBe(2 ** 31);
    expect(response({ 'cache-control': 'max-age=60' }).freshnessLifetime()).toBe(60);
  });

  it('reads the first Age value, spaces aside', () => {
    const { response } = factoryAt();
    expect(response({ 'cache-control': 'max-age=600', age: '12 , 13' }).age()).toBe(12);
    expect(response({ 'cache-control': 'max-age=600', age: '12abc' }).age()).toBe(0);
  });

  it('storable: only GET (HEAD as GET), final statuses but 206 and 304, never against a request no-store', () => {
    const { response } = factoryAt();
    const cc = { 'cache-control': 'max-age=60' };
    expect(response(cc).storable()).toBe(true);
    expect(response(cc, 200, { method: 'HEAD' }).storable()).toBe(true);
    expect(response(cc, 200, { method: 'POST' }).storable()).toBe(false);
    expect(response(cc, 200, { headers: { 'cache-control': 'no-store' } }).storable()).toBe(false);
    for (const status of [200, 203, 302, 404, 500, 599]) expect(response(cc, status).storable(), String(status)).toBe(true);
    for (const status of [100, 199, 206, 304, 600]) expect(response(cc, status).storable(), String(status)).toBe(false);
    // Nothing explicit, not public, not heuristically cacheable: not stored.
    expect(response({}, 302).storable()).toBe(false);
    expect(response({ expires: formatHttpDate(T0 + 60_000) }, 302).storable()).toBe(true);
  });

  it('heuristics only for heuristically cacheable statuses (or public); the default TTL only for responses that say nothing', () => {
    const lastModified = formatHttpDate(T0 - 100_000);
    expect(factoryAt().response({ 'last-modified': lastModified }).freshnessLifetime()).toBe(10);
    expect(factoryAt({ heuristicFraction: 0.2 }).response({ 'last-modified': lastModified }).freshnessLifetime()).toBe(20);
    expect(factoryAt().response({ 'last-modified': lastModified }, 302).freshnessLifetime()).toBe(0);
    expect(factoryAt().response({ 'last-modified': lastModified, 'cache-control': 'public' }, 302).freshnessLifetime()).toBe(10);
    const withDefault = factoryAt({ defaultTtl: 30 });
    expect(withDefault.response({}).freshnessLifetime()).toBe(30);
    expect(withDefault.response({ 'last-modified': lastModified }).freshnessLifetime()).toBe(10);
    expect(withDefault.response({ 'cache-control': 'no-cache' }).freshnessLifetime()).toBe(0);
    expect(withDefault.response({ 'cache-control': 'max-age=5' }).freshnessLifetime()).toBe(5);
    expect(factoryAt().response({}).freshnessLifetime()).toBe(0);
  });

  it('freshen: a 304 updates the stored fields, never those describing the stored bytes; its Date or now', () => {
    const { factory, response, advance } = factoryAt();
    const storedHeaders = {
      date: formatHttpDate(T0),
      'cache-control': 'max-age=10',
      etag: '"v"',
      age: '3',
      'content-length': '1000',
      'content-encoding': 'br',
      'content-range': 'bytes 0-999/1000',
      'transfer-encoding': 'chunked',
      'x-old': 'kept',
    };
    const stored = response(storedHeaders);
    advance(20);
    const notModified = {
      etag: '"v"',
      'cache-control': 'max-age=60',
      'content-length': '0',
      'content-encoding': 'gzip',
      'content-range': 'bytes */0',
      'transfer-encoding': 'identity',
      'x-new': 'added',
    };
    const freshened = factory.freshen(stored, storedHeaders, 200, { url: '/x', method: 'GET', headers: {} }, { status: 304, headers: notModified })!;
    expect(freshened.headers).toEqual({
      date: formatHttpDate(T0 + 20_000),
      'cache-control': 'max-age=60',
      etag: '"v"',
      'content-length': '1000',
      'content-encoding': 'br',
      'content-range': 'bytes 0-999/1000',
      'transfer-encoding': 'chunked',
      'x-old': 'kept',
      'x-new': 'added',
    });
    expect(freshened.policy.freshnessLifetime()).toBe(60);
    const dated = factory.freshen(stored, storedHeaders, 200, { url: '/x', method: 'GET', headers: {} }, { status: 304, headers: { etag: '"v"', date: formatHttpDate(T0 + 15_000) } })!;
    expect(dated.headers.date).toBe(formatHttpDate(T0 + 15_000));
    // Not selected: nothing to apply.
    expect(factory.freshen(stored, storedHeaders, 200, { url: '/x', method: 'GET', headers: {} }, { status: 304, headers: { etag: '"w"' } })).toBeNull();
  });
});

describe('second pass of mutation testing', () => {
  const T0 = Date.UTC(2026, 0, 1);
  const factory = createPolicyFactory({ heuristicFraction: 0.1, heuristicMaxAge: 86_400, defaultTtl: 0, targetedFields: TARGETED, now: () => T0 });
  const response = (headers: Record<string, string>) =>
    factory.fromResponse({ url: '/x', method: 'GET', headers: {} }, { status: 200, headers: { date: formatHttpDate(T0), ...headers } });

  it('a max-age or s-maxage whose quoted argument is no number is still explicit: no heuristic freshness (RFC 9111 4.2.1)', () => {
    const lastModified = formatHttpDate(T0 - 10 * 86_400_000);
    // Without the directive, heuristics would give a day.
    expect(response({ 'last-modified': lastModified }).freshnessLifetime()).toBe(86_400);
    expect(response({ 'cache-control': 'max-age="a b"', 'last-modified': lastModified }).freshnessLifetime()).toBe(0);
    expect(response({ 'cache-control': 's-maxage="x, y"', 'last-modified': lastModified }).freshnessLifetime()).toBe(0);
    // A stray quote is an argument too (no closing quote: read up to the next comma or space).
    expect(response({ 'cache-control': 'max-age="', 'last-modified': lastModified }).freshnessLifetime()).toBe(0);
    expect(response({ 'cache-control': 'max-age="  "', 'last-modified': lastModified }).freshnessLifetime()).toBe(0);
  });

  it('a response Pragma: no-cache without Cache-Control is never fresh, whatever Expires says; with Cache-Control it is ignored', () => {
    const expires = formatHttpDate(T0 + 60_000);
    expect(response({ expires }).freshnessLifetime()).toBe(60);
    expect(response({ pragma: 'no-cache', expires }).freshnessLifetime()).toBe(0);
    expect(response({ pragma: 'no-cache', 'last-modified': formatHttpDate(T0 - 10 * 86_400_000) }).freshnessLifetime()).toBe(0);
    expect(response({ pragma: 'no-cache', 'cache-control': 'max-age=60' }).freshnessLifetime()).toBe(60);
  });

  it('a delta-seconds argument that is not all digits is invalid freshness information: stale, never its leading digits', () => {
    for (const value of ['max-age=60abc', 'max-age=1.5', 'max-age=-10', 'max-age=+60', 's-maxage=5x, max-age=600', 'max-age=0x10']) {
      expect(response({ 'cache-control': value }).freshnessLifetime(), value).toBe(0);
      expect(response({ 'cache-control': value }).isFresh(), value).toBe(false);
    }
    expect(response({ 'cache-control': 'max-age=60' }).freshnessLifetime()).toBe(60);
    expect(response({ 'cache-control': 'max-age="60"' }).freshnessLifetime()).toBe(60);
  });

  it('a quoted comma inside an extension\'s argument adds no directive', () => {
    expect(response({ 'cache-control': 'max-age=10, ext="a, max-age=9999"' }).freshnessLifetime()).toBe(10);
    expect(response({ 'cache-control': 'ext="x, public, s-maxage=9999", max-age=10' }).freshnessLifetime()).toBe(10);
    expect(response({ 'cache-control': 'no-store, ext="a, max-age=9999"' }).storable()).toBe(false);
  });

  it('immutable without max-age keeps a response one day (the library\'s minimum, in seconds), not a thousand', () => {
    expect(response({ 'cache-control': 'immutable' }).freshnessLifetime()).toBe(86_400);
    expect(response({ 'cache-control': 'immutable, max-age=600' }).freshnessLifetime()).toBe(600);
  });

  it('immutable without max-age keeps a response at least a day (the library\'s minimum), not the heuristic cap', () => {
    expect(response({ 'cache-control': 'immutable' }).freshnessLifetime()).toBeGreaterThanOrEqual(86_400);
    expect(response({ 'cache-control': 'public, immutable', 'last-modified': formatHttpDate(T0 - 1000) }).freshnessLifetime()).toBeGreaterThanOrEqual(86_400);
  });

  it.each([
    ['A,b', 'a member key starting with an upper-case letter, a valid member after it'],
    ['1,b', 'a member key starting with a digit, a valid member after it'],
    ['a=:?,b=::', 'a byte sequence with a character outside base64, a valid one after it'],
    ['a=%"%e2%82"%ac"', 'a display string whose bytes are not UTF-8 at its closing quote, though what follows would complete them'],
  ])('%j fails as a whole (%s)', (value) => {
    expect(parseSfDictionary(value)).toBeUndefined();
  });
});
