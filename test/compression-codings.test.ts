/**
 * The decisions of `edge/core/compression.ts` as tables (negotiation, types,
 * plans, labels), and both runtimes' coders on real bytes: node:zlib on
 * Node, `DecompressionStream` for Workers (a Web global in Node too).
 */
import { brotliCompressSync, gunzipSync, gzipSync, brotliDecompressSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import {
  codedEtag,
  compileTypeMatcher,
  DEFAULT_COMPRESS_TYPES,
  negotiateCoding,
  originHeaders,
  planCoding,
  recodedHeaders,
  type BodyCoder,
  type Coding,
} from '../edge/core/compression.js';
import { createZlibCoder } from '../edge/node/zlib-coder.js';
import { createWebCoder } from '../edge/workers/web-coder.js';

describe('negotiateCoding (RFC 9110 12.5.3)', () => {
  const table: [string | undefined, Coding][] = [
    [undefined, 'identity'],
    ['', 'identity'],
    ['gzip, deflate, br, zstd', 'br'],
    ['gzip, deflate', 'gzip'],
    ['br', 'br'],
    ['*', 'br'],
    ['*;q=0.5, br;q=0', 'gzip'],
    ['br;q=0, gzip;q=0.5', 'gzip'],
    ['gzip;q=1.0, br;q=0.9', 'gzip'],
    ['br;q=0.5, gzip;q=0.5', 'br'],
    ['br;q=0, gzip;q=0', 'identity'],
    ['*;q=0', 'identity'],
    ['*;q=0, identity', 'identity'],
    ['identity', 'identity'],
    ['identity;q=1, br;q=0.5', 'identity'],
    ['identity;q=0.5, br', 'br'],
    ['x-gzip', 'gzip'],
    ['GZIP;Q=0.2,  BR ; q=0.1', 'gzip'],
    ['br;q=abc, gzip', 'gzip'],
    ['br;q=2, gzip', 'gzip'],
    ['deflate, compress', 'identity'],
    [' , ,', 'identity'],
  ];
  for (const [header, coding] of table) {
    it(`${JSON.stringify(header)} -> ${coding}`, () => expect(negotiateCoding(header)).toBe(coding));
  }
});

describe('compressible types', () => {
  const matches = compileTypeMatcher(DEFAULT_COMPRESS_TYPES);
  const yes = [
    'text/css',
    'text/html; charset=utf-8',
    'TEXT/PLAIN',
    'application/json',
    'application/ld+json',
    'application/manifest+json',
    'application/javascript',
    'text/javascript; charset=utf-8',
    'application/xml',
    'application/rss+xml',
    'image/svg+xml',
    'application/wasm',
    'font/ttf',
    'font/otf',
    'image/x-icon',
  ];
  const no = [undefined, 'image/png', 'image/jpeg', 'image/webp', 'video/mp4', 'audio/mpeg', 'application/zip', 'application/gzip', 'font/woff', 'font/woff2', 'application/octet-stream', 'text/event-stream', 'application/pdf'];
  it.each(yes)('%s is compressed', (type) => expect(matches(type)).toBe(true));
  it.each(no)('%s is not', (type) => expect(matches(type)).toBe(false));
  it('patterns: exact, type/*, type/*+suffix', () => {
    const custom = compileTypeMatcher(['application/x-thing', 'model/*', 'application/*+yaml']);
    expect(custom('application/x-thing')).toBe(true);
    expect(custom('model/gltf+json')).toBe(true);
    expect(custom('application/openapi+yaml')).toBe(true);
    expect(custom('application/+yaml')).toBe(false);
    expect(custom('text/css')).toBe(false);
  });
});

describe('planCoding', () => {
  const abilities = { options: { compress: true, compressMinSize: 1024 }, coder: createZlibCoder(), isCompressible: compileTypeMatcher(DEFAULT_COMPRESS_TYPES) };
  type Response = { status: number; headers: Record<string, string>; size?: number };
  const css = (headers: Record<string, string> = {}, size = 5000, status = 200): Response => ({ status, headers: { 'content-type': 'text/css', ...headers }, size });
  const summary = (plan: ReturnType<typeof planCoding>) => `${plan.from}>${plan.to}${plan.recode ? ' recode' : ''}${plan.varies ? ' varies' : ''}${plan.storable ? '' : ' unstorable'}`;
  const table: [string, Response, Coding, boolean, string][] = [
    ['identity css for br', css(), 'br', true, 'identity>br recode varies'],
    ['identity css for gzip', css(), 'gzip', true, 'identity>gzip recode varies'],
    ['identity css for identity', css(), 'identity', true, 'identity>identity varies'],
    ['not to be stored: not compressed, does not vary', css(), 'br', false, 'identity>identity'],
    ['too small: does not vary', css({}, 100), 'br', true, 'identity>identity'],
    ['unknown length', { status: 200, headers: { 'content-type': 'text/css' } }, 'br', true, 'identity>br recode varies'],
    ['no-transform', css({ 'cache-control': 'max-age=1, no-transform' }), 'br', true, 'identity>identity'],
    ['a 404', css({}, 5000, 404), 'br', true, 'identity>identity'],
    ['an image', { status: 200, headers: { 'content-type': 'image/png' }, size: 5000 }, 'br', true, 'identity>identity'],
    ['gzip for gzip', css({ 'content-encoding': 'gzip' }), 'gzip', true, 'gzip>gzip varies'],
    ['gzip for identity', css({ 'content-encoding': 'gzip' }), 'identity', true, 'gzip>identity recode varies'],
    ['gzip for br', css({ 'content-encoding': 'gzip' }), 'br', true, 'gzip>br recode varies'],
    ['gzip for br, unstored pass', css({ 'content-encoding': 'gzip' }), 'br', false, 'gzip>identity recode varies'],
    ['gzip image for identity', { status: 200, headers: { 'content-type': 'image/png', 'content-encoding': 'gzip' }, size: 50 }, 'identity', true, 'gzip>identity recode varies'],
    ['zstd for br', css({ 'content-encoding': 'zstd' }), 'br', true, 'other>other varies unstorable'],
    ['gzip, no-transform, for identity', css({ 'content-encoding': 'gzip', 'cache-control': 'no-transform' }), 'identity', true, 'gzip>gzip varies unstorable'],
  ];
  for (const [name, response, wanted, mayEncode, expected] of table) {
    it(name, () => expect(summary(planCoding(response, wanted, abilities, mayEncode))).toBe(expected));
  }
  it('without a coder (or with --compress false) nothing is recoded, and a foreign coding is not stored', () => {
    const bare = { ...abilities, coder: undefined };
    expect(summary(planCoding(css(), 'br', bare, true))).toBe('identity>identity');
    expect(summary(planCoding(css({ 'content-encoding': 'br' }), 'identity', bare, true))).toBe('br>br varies unstorable');
  });
  it('a decode-only coder (Workers) decodes gzip but compresses nothing', () => {
    const workers = { ...abilities, coder: createWebCoder() };
    expect(summary(planCoding(css(), 'br', workers, true))).toBe('identity>identity');
    expect(summary(planCoding(css({ 'content-encoding': 'gzip' }), 'identity', workers, true))).toBe('gzip>identity recode varies');
    expect(summary(planCoding(css({ 'content-encoding': 'br' }), 'identity', workers, true))).toBe('br>br varies unstorable');
  });
});

describe('labels of a representation the node made', () => {
  it('ETags: weak, suffixed with the coding, never equal across codings', () => {
    expect(codedEtag('"abc"', 'br')).toBe('W/"abc-br"');
    expect(codedEtag('W/"abc"', 'gzip')).toBe('W/"abc-gzip"');
    expect(codedEtag('abc', 'identity')).toBe('W/"abc-identity"');
  });

  it('fields: coded from the origin, back to the origin for revalidation, and back to its own bytes when decoded', () => {
    const origin = { 'content-type': 'text/css', 'content-length': '5000', etag: '"v1"', 'content-digest': 'sha-256=:x:', 'cache-control': 'max-age=60' };
    const br = recodedHeaders(origin, 'br', 5);
    expect(br).toMatchObject({ 'content-encoding': 'br', etag: 'W/"v1-br"', vary: 'Accept-Encoding', 'x-edge-origin-etag': '"v1"', 'x-edge-coded': 'br;level=5;from=identity' });
    expect(br['content-length']).toBeUndefined();
    expect(br['content-digest']).toBeUndefined();
    const back = originHeaders(br);
    expect(back.etag).toBe('"v1"');
    expect(back['content-encoding']).toBeUndefined();
    expect(back['x-edge-coded']).toBeUndefined();
    // gzip made from the node's br: still labelled from the origin's identity.
    const gzip = recodedHeaders(br, 'gzip', 5);
    expect(gzip).toMatchObject({ 'content-encoding': 'gzip', etag: 'W/"v1-gzip"', 'x-edge-coded': 'gzip;level=5;from=identity' });
    // Decoded back to identity: the origin's representation, strong ETag and all.
    const identity = recodedHeaders(br, 'identity', 0);
    expect(identity.etag).toBe('"v1"');
    expect(identity['content-encoding']).toBeUndefined();
    expect(identity['x-edge-coded']).toBeUndefined();
    expect(identity.vary).toBe('Accept-Encoding');
  });

  it('Vary keeps what the origin listed and never goes past *', () => {
    expect(recodedHeaders({ vary: 'Accept-Language' }, 'br', 5).vary).toBe('Accept-Language, Accept-Encoding');
    expect(recodedHeaders({ vary: 'accept-encoding' }, 'br', 5).vary).toBe('accept-encoding');
    expect(recodedHeaders({ vary: '*' }, 'br', 5).vary).toBe('*');
  });
});

/** Pipe `input` through a coder stream, in small chunks (so streaming is exercised), and collect the output. */
async function through(pair: ReadableWritablePair<Uint8Array, Uint8Array>, input: Uint8Array): Promise<Buffer> {
  const source = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let i = 0; i < input.length; i += 777) controller.enqueue(input.subarray(i, i + 777));
      controller.close();
    },
  });
  const chunks: Uint8Array[] = [];
  const reader = source.pipeThrough(pair).getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}

const TEXT = Buffer.from('The quick brown fox jumps over the lazy dog. '.repeat(2000));

describe.each([
  ['node:zlib', createZlibCoder()],
  ['Workers (DecompressionStream)', createWebCoder()],
] as [string, BodyCoder][])('%s coder', (_name, coder) => {
  if (coder.encodes.includes('br')) {
    it('brotli and gzip round-trip, readable by node:zlib', async () => {
      const br = await through(coder.encoder('br', 5), TEXT);
      expect(brotliDecompressSync(br).equals(TEXT)).toBe(true);
      expect(br.length).toBeLessThan(TEXT.length / 20);
      const gz = await through(coder.encoder('gzip', 6), TEXT);
      expect(gunzipSync(gz).equals(TEXT)).toBe(true);
      expect((await through(coder.decoder('br'), brotliCompressSync(TEXT))).equals(TEXT)).toBe(true);
    });
  }

  it('decodes gzip, and fails a corrupt or truncated body with EDGE_ORIGIN_BAD_RESPONSE', async () => {
    const gz = gzipSync(TEXT);
    expect((await through(coder.decoder('gzip'), gz)).equals(TEXT)).toBe(true);
    await expect(through(coder.decoder('gzip'), gz.subarray(0, gz.length - 30))).rejects.toMatchObject({ code: 'EDGE_ORIGIN_BAD_RESPONSE' });
    const corrupt = Buffer.from(gz);
    corrupt.fill(0x55, 20, 60);
    await expect(through(coder.decoder('gzip'), corrupt)).rejects.toMatchObject({ code: 'EDGE_ORIGIN_BAD_RESPONSE' });
  });
});
