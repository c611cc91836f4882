/**
 * Cache keys, where mutation testing (`npm run test:mutation`) found the
 * end-to-end suites silent: the key format's edges (round trips, strings no
 * version produced), host and query normalisation, Vary names and the
 * secondary key. Pure functions, tested directly; the behaviours a client
 * can see are pinned end to end at the bottom.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  compileParamMatcher,
  derivedKey,
  formatCacheKey,
  keyPath,
  keysOfPathPrefix,
  normaliseHost,
  normaliseQuery,
  parseCacheKey,
  pushedKey,
  variantFor,
  varyNames,
  type CacheKey,
} from '../edge/core/cache-key.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

describe('formatCacheKey / parseCacheKey', () => {
  const keys: [string, CacheKey][] = [
    ['/a.css?v=1 https://example.com', { kind: 'pulled', path: '/a.css?v=1', scheme: 'https', host: 'example.com' }],
    [
      '/a.css http://example.com:8080#h:x-tenant=a%20b&x-plan=pro',
      { kind: 'pulled', path: '/a.css', scheme: 'http', host: 'example.com:8080', headers: [['x-tenant', 'a b'], ['x-plan', 'pro']] },
    ],
    [
      '/p.jpg http://example.com#img:w=400;h=;fit=inside;q=75;f=webp;pos=centre;e=0',
      { kind: 'pulled', path: '/p.jpg', scheme: 'http', host: 'example.com', derived: { kind: 'image', params: 'w=400;h=;fit=inside;q=75;f=webp;pos=centre;e=0' } },
    ],
    ['/a.css push:', { kind: 'pushed', path: '/a.css' }],
    ['/a.css push:#enc:br', { kind: 'pushed', path: '/a.css', derived: { kind: 'coding', coding: 'br' } }],
    ['/a.css http://example.com#enc:gzip', { kind: 'pulled', path: '/a.css', scheme: 'http', host: 'example.com', derived: { kind: 'coding', coding: 'gzip' } }],
    ['/p.jpg push:#img:w=10;h=;fit=inside;q=75;f=png;pos=centre;e=0', { kind: 'pushed', path: '/p.jpg', derived: { kind: 'image', params: 'w=10;h=;fit=inside;q=75;f=png;pos=centre;e=0' } }],
    // A sliced object (--slice-size): its record, and its pieces numbered from 0.
    ['/v.mp4 http://example.com#slice:', { kind: 'pulled', path: '/v.mp4', scheme: 'http', host: 'example.com', derived: { kind: 'slice' } }],
    ['/v.mp4 http://example.com#slice:0', { kind: 'pulled', path: '/v.mp4', scheme: 'http', host: 'example.com', derived: { kind: 'slice', piece: 0 } }],
    ['/v.mp4?q=1 https://example.com#h:x-plan=pro#slice:12', { kind: 'pulled', path: '/v.mp4?q=1', scheme: 'https', host: 'example.com', headers: [['x-plan', 'pro']], derived: { kind: 'slice', piece: 12 } }],
  ];

  it.each(keys)('%s round-trips', (text, key) => {
    expect(formatCacheKey(key)).toBe(text);
    expect(parseCacheKey(text)).toEqual(key);
  });

  it('keeps the marks apart: a pushed key is no pulled one, keyed headers and image parameters are separate parts', () => {
    expect(parseCacheKey('/a push:')?.kind).toBe('pushed');
    expect(parseCacheKey('/a http://h')).toEqual({ kind: 'pulled', path: '/a', scheme: 'http', host: 'h' });
    expect(parseCacheKey('/a http://h#h:n=v')).toEqual({ kind: 'pulled', path: '/a', scheme: 'http', host: 'h', headers: [['n', 'v']] });
    expect(parseCacheKey('/a http://h#img:p')).toEqual({ kind: 'pulled', path: '/a', scheme: 'http', host: 'h', derived: { kind: 'image', params: 'p' } });
    expect(formatCacheKey({ kind: 'pulled', path: '/a', scheme: 'http', host: 'h', headers: [] })).toBe('/a http://h');
  });

  it.each([
    ['no space', '/a'],
    ['an empty path', ' http://example.com'],
    ['no scheme', '/a ://example.com'],
    ['no scheme separator', '/a example.com'],
    ['a piece number that is not digits', '/v http://h#slice:x'],
    ['a piece number with a sign', '/v http://h#slice:-1'],
    ['a piece number followed by more', '/v http://h#slice:1a'],
    ['a piece number after something else', '/v http://h#slice:a1'],
  ])('is undefined for a string no version produced (%s)', (_, text) => {
    expect(parseCacheKey(text)).toBeUndefined();
  });

  it('pushedKey and derivedKey build on the same format; derivedKey refuses what is not a key', () => {
    expect(pushedKey('/x.js')).toBe('/x.js push:');
    expect(derivedKey('/p.jpg http://h', { kind: 'image', params: 'w=1' })).toBe('/p.jpg http://h#img:w=1');
    expect(derivedKey('/p.jpg push:', { kind: 'image', params: 'w=1' })).toBe('/p.jpg push:#img:w=1');
    expect(() => derivedKey('not-a-key', { kind: 'image', params: 'w=1' })).toThrow(/derivedKey: not a cache key: not-a-key/);
  });

  it('keyPath is the path-and-query part; keysOfPathPrefix is what every key of exactly that path starts with', () => {
    expect(keyPath('/a?b=1 http://h#h:x=1')).toBe('/a?b=1');
    expect(keyPath('/a push:')).toBe('/a');
    expect(keyPath('/no-space')).toBe('/no-space');
    expect(keysOfPathPrefix('/a?b=1')).toBe('/a?b=1 ');
    const prefix = keysOfPathPrefix('/a');
    expect('/a push:'.startsWith(prefix)).toBe(true);
    expect('/a http://h'.startsWith(prefix)).toBe(true);
    expect('/ab http://h'.startsWith(prefix)).toBe(false);
    expect('/a?x=1 http://h'.startsWith(prefix)).toBe(false);
  });
});

describe('normaliseHost', () => {
  it.each([
    ['Example.COM.', 'https', 'example.com'],
    ['example.com:443', 'https', 'example.com'],
    ['example.com:80', 'http', 'example.com'],
    // A default port only for its own scheme.
    ['example.com:80', 'https', 'example.com:80'],
    ['example.com:443', 'http', 'example.com:443'],
    ['example.com:8080', 'http', 'example.com:8080'],
    // An empty port is no port.
    ['example.com:', 'http', 'example.com'],
    ['EXAMPLE.com.:8443', 'https', 'example.com:8443'],
    ['[::1]:80', 'http', '[::1]'],
    ['[::1]', 'http', '[::1]'],
    ['[::1]:9000', 'http', '[::1]:9000'],
  ])('%s over %s is %s', (host, scheme, expected) => {
    expect(normaliseHost(host, scheme)).toBe(expected);
  });
});

describe('compileParamMatcher', () => {
  it('matches exact names and `*` prefixes, and nothing else', () => {
    const match = compileParamMatcher(['utm_*', 'fbclid', 'ref_*']);
    expect(['utm_source', 'utm_', 'fbclid', 'ref_x'].every(match)).toBe(true);
    // The prefix is the pattern without its `*`, whole: not its first letter.
    expect(['u', 'ut', 'url', 'utm', 'fbclid2', 'xfbclid', 'ref', 'r'].some(match)).toBe(false);
    // Any one of several prefixes is enough.
    expect(match('ref_only')).toBe(true);
  });

  it('an empty list matches nothing', () => {
    const none = compileParamMatcher([]);
    expect(['', 'a', 'utm_source', '*'].some(none)).toBe(false);
  });
});

describe('normaliseQuery', () => {
  const drop = compileParamMatcher(['utm_*', 'fbclid']);
  const keep = () => false;

  it('is empty for no query', () => {
    expect(normaliseQuery('', drop, true)).toEqual({ keyed: '', forwarded: '' });
    expect(normaliseQuery('?', drop, true)).toEqual({ keyed: '', forwarded: '' });
    expect(normaliseQuery('?utm_source=x&fbclid=1', drop, true)).toEqual({ keyed: '', forwarded: '' });
  });

  it('takes the query with or without its `?`', () => {
    expect(normaliseQuery('b=2&a=1', keep, true)).toEqual({ keyed: '?a=1&b=2', forwarded: '?b=2&a=1' });
    expect(normaliseQuery('?b=2&a=1', keep, true)).toEqual({ keyed: '?a=1&b=2', forwarded: '?b=2&a=1' });
  });

  it('drops empty parameters (`&&`, a trailing `&`)', () => {
    expect(normaliseQuery('?a=1&&b=2&', keep, true)).toEqual({ keyed: '?a=1&b=2', forwarded: '?a=1&b=2' });
  });

  it('sorts by name only and stably: a repeated parameter keeps its order', () => {
    expect(normaliseQuery('?c=1&b=1&a=1', keep, true).keyed).toBe('?a=1&b=1&c=1');
    expect(normaliseQuery('?id=2&a=0&id=1', keep, true).keyed).toBe('?a=0&id=2&id=1');
    expect(normaliseQuery('?id=1&a=0&id=2', keep, true).keyed).toBe('?a=0&id=1&id=2');
    expect(normaliseQuery('?z=1&id=3&id=1&id=2&a=1', keep, true).keyed).toBe('?a=1&id=3&id=1&id=2&z=1');
    expect(normaliseQuery('?b=2&b=1&a=2&a=1', keep, true).keyed).toBe('?a=2&a=1&b=2&b=1');
  });

  it('without sorting, the key is the query as forwarded', () => {
    expect(normaliseQuery('?b=2&utm_x=1&a=1', drop, false)).toEqual({ keyed: '?b=2&a=1', forwarded: '?b=2&a=1' });
  });

  it('matches dropped names decoded (`+` is a space, percent-escapes), and keeps undecodable ones as sent', () => {
    const match = compileParamMatcher(['a b', 'é', 'flag', '%E0']);
    expect(normaliseQuery('?a+b=1&x=1', match, true).keyed).toBe('?x=1');
    expect(normaliseQuery('?a%20b=1&x=1', match, true).keyed).toBe('?x=1');
    expect(normaliseQuery('?%C3%A9=1&x=1', match, true).keyed).toBe('?x=1');
    // A name without `=` is the whole parameter.
    expect(normaliseQuery('?flag&x=1', match, true).keyed).toBe('?x=1');
    expect(normaliseQuery('?flagged&x=1', match, true).keyed).toBe('?flagged&x=1');
    // Not valid percent-encoding: matched as sent.
    expect(normaliseQuery('?%E0=1&x=1', match, true).keyed).toBe('?x=1');
    expect(normaliseQuery('?%E0x=1&x=1', match, true).keyed).toBe('?%E0x=1&x=1');
  });

  it('sorts undecodable names by their text, not as missing', () => {
    expect(normaliseQuery('?b=1&%E0=1&a=1', keep, true).keyed).toBe('?%E0=1&a=1&b=1');
  });

  it('alsoDrop drops more, from the key and upstream alike', () => {
    expect(normaliseQuery('?w=1&a=1', keep, true, (name) => name === 'w')).toEqual({ keyed: '?a=1', forwarded: '?a=1' });
  });
});

describe('varyNames / variantFor', () => {
  it('varyNames: lower case, deduplicated, sorted; `*` wins', () => {
    expect(varyNames('Accept-Encoding, accept, ACCEPT-ENCODING')).toEqual(['accept', 'accept-encoding']);
    expect(varyNames('b, a')).toEqual(['a', 'b']);
    expect(varyNames('accept, *')).toBe('*');
    expect(varyNames(undefined)).toEqual([]);
    expect(varyNames('')).toEqual([]);
  });

  it('variantFor: each named header, whitespace collapsed and trimmed, one per line; empty without names', () => {
    expect(variantFor([], { accept: 'x' })).toBe('');
    expect(variantFor(['x-flavour', 'x-size'], { 'x-flavour': '  salt \t and   pepper ', 'x-size': 'l' })).toBe('x-flavour:salt and pepper\nx-size:l');
    expect(variantFor(['x-flavour'], { 'x-flavour': 'saltandpepper' })).toBe('x-flavour:saltandpepper');
    expect(variantFor(['x-flavour'], {})).toBe('x-flavour:');
    // Other fields keep their order and case.
    expect(variantFor(['x-flavour'], { 'x-flavour': 'B, a' })).toBe('x-flavour:B, a');
  });

  it.each(['accept', 'accept-language', 'accept-charset', 'accept-encoding'])(
    'variantFor: %s is a list whose member order, case and spacing carry no meaning',
    (name) => {
      const one = variantFor([name], { [name]: 'en-US, fr;q=0.5' });
      expect(one).toBe(`${name}:en-us,fr;q=0.5`);
      expect(variantFor([name], { [name]: 'fr ; Q=0.5,EN-us' })).toBe(one);
      expect(variantFor([name], { [name]: ' ,fr;;q=0.5, ,en-US,' })).toBe(one);
      // Weights still count.
      expect(variantFor([name], { [name]: 'en-US;q=0.5, fr' })).not.toBe(one);
      // The same value again (remembered) gives the same answer.
      expect(variantFor([name], { [name]: 'en-US, fr;q=0.5' })).toBe(one);
    },
  );

  it('variantFor: list values stay right however many different ones were seen', () => {
    for (let i = 0; i < 1100; i++) expect(variantFor(['accept-language'], { 'accept-language': `x${i}, a` })).toBe(`accept-language:a,x${i}`);
    expect(variantFor(['accept-language'], { 'accept-language': 'x5, a' })).toBe('accept-language:a,x5');
    expect(variantFor(['a', 'b'], { a: 'x', b: 'y' })).not.toBe(variantFor(['a'], { a: 'x\nb:y' }));
  });
});

describe('what clients see of key normalisation', () => {
  let t: TestEdge;
  afterEach(async () => {
    await t?.close();
  });

  it('a repeated query parameter in another order is another object; other parameters may be reordered', async () => {
    t = await startTestEdge();
    t.origin.route('/ids', (req, res) => {
      res.setHeader('cache-control', 'max-age=60');
      res.end(req.url);
    });
    expect(await (await t.get('/ids?id=2&id=1&a=0')).text()).toBe('/ids?id=2&id=1&a=0');
    const reordered = await t.get('/ids?a=0&id=2&id=1');
    expect(reordered.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(await reordered.text()).toBe('/ids?id=2&id=1&a=0');
    const swapped = await t.get('/ids?a=0&id=1&id=2');
    expect(swapped.headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss/);
    expect(await swapped.text()).toBe('/ids?a=0&id=1&id=2');
    expect(t.origin.count('/ids')).toBe(2);
  });

  it('Vary: requests whose named header differs only in whitespace share a variant', async () => {
    t = await startTestEdge({ forwardHeaders: ['x-flavour'] });
    t.origin.route('/v', (req, res) => {
      res.setHeader('cache-control', 'max-age=60');
      res.setHeader('vary', 'X-Flavour');
      res.end(`flavour ${req.headers['x-flavour']}`);
    });
    expect(await (await t.get('/v', { headers: { 'x-flavour': 'salt  and   pepper' } })).text()).toBe('flavour salt  and   pepper');
    const same = await t.get('/v', { headers: { 'x-flavour': 'salt and pepper' } });
    expect(same.headers.get('cache-status')).toMatch(/^edge; hit/);
    const other = await t.get('/v', { headers: { 'x-flavour': 'saltandpepper' } });
    expect(other.headers.get('cache-status')).toMatch(/^edge; fwd=vary-miss/);
    expect(t.origin.count('/v')).toBe(2);
  });
});
