/**
 * Compression end to end (issue 13): a real test origin, a real edge node
 * (memory over LMDB), and raw `node:http` clients that send Accept-Encoding
 * as curl does and get the bytes as sent; bodies are decoded with node:zlib
 * here and compared byte for byte. Compressions are counted by wrapping the
 * real zlib coder, and stored codings by the admin listing.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { brotliCompressSync, brotliDecompressSync, gunzipSync, gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import type { BodyCoder } from '../edge/core/compression.js';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { createZlibCoder } from '../edge/node/zlib-coder.js';
import { createTestClock, type TestClock } from './helpers/clock.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

const TOKEN = 'compression-test-token-0123456789';
const AUTH = { authorization: `Bearer ${TOKEN}` };

/** A stylesheet of about 20 KB, the same every run. */
const CSS = Buffer.from(
  Array.from({ length: 400 }, (_, i) => `.card-${i} { color: #${((i * 7919) % 0xffffff).toString(16).padStart(6, '0')}; margin: ${i % 17}px ${i % 5}px; }\n`).join(''),
);
const JSON_BODY = Buffer.from(JSON.stringify({ products: Array.from({ length: 120 }, (_, i) => ({ id: i, name: `Product ${i}`, price: (i * 3.7).toFixed(2), tags: ['a', 'b'] })) }));

interface Node {
  origin: TestOrigin;
  edge: EdgeServer;
  clock: TestClock;
  /** Every encoder and decoder the node asked for: `encode br 5`, `decode gzip`. */
  coded: string[];
  close(): Promise<void>;
}

let node: Node | undefined;
afterEach(async () => {
  await node?.close();
  node = undefined;
});

/**
 * The zlib coder, counting what it is asked for (the real streams do the
 * work). A level-11 (background) encoder starts only once `hold` resolves.
 */
function countingCoder(coded: string[], hold?: Promise<void>): BodyCoder {
  const inner = createZlibCoder();
  return {
    encodes: inner.encodes,
    decodes: inner.decodes,
    encoder(coding, level) {
      coded.push(`encode ${coding} ${level}`);
      if (level !== 11 || !hold) return inner.encoder(coding, level);
      const held = new TransformStream<Uint8Array, Uint8Array>({ start: () => hold });
      return { writable: held.writable, readable: held.readable.pipeThrough(inner.encoder(coding, level)) };
    },
    decoder(coding) {
      coded.push(`decode ${coding}`);
      return inner.decoder(coding);
    },
  };
}

async function start(input: Record<string, unknown> = {}, hold?: Promise<void>): Promise<Node> {
  const origin = await startTestOrigin();
  const clock = createTestClock(Date.now());
  const dataDir = await mkdtemp(join(tmpdir(), 'edge-compression-'));
  const options = resolveEdgeOptions({ origin: origin.url, port: 0, host: '127.0.0.1', dataDir, logLevel: 'silent', adminToken: TOKEN, ...input });
  const coded: string[] = [];
  const edge = await startEdgeServer(options, { now: clock.now, logger: false, coder: countingCoder(coded, hold) });
  node = {
    origin,
    edge,
    clock,
    coded,
    async close() {
      await edge.close();
      await origin.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  return node;
}

interface Raw {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** A curl-like request: the headers given and nothing else, the body as sent. */
function get(path: string, headers: Record<string, string> = {}, method = 'GET', body?: string): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: node!.edge.port, path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers as Record<string, string>, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const ae = (value: string) => ({ 'accept-encoding': value });

function decoded(answer: Raw): Buffer {
  const coding = answer.headers['content-encoding'];
  if (coding === 'br') return brotliDecompressSync(answer.body);
  if (coding === 'gzip') return gunzipSync(answer.body);
  expect(coding).toBeUndefined();
  return answer.body;
}

async function settle(): Promise<void> {
  await node!.edge.edge.settle();
}

async function listing(prefix: string): Promise<{ key: string; variant: string; size: number; etag: string | null }[]> {
  const answer = await get(`/_edge/objects?prefix=${encodeURIComponent(prefix)}`, AUTH);
  return (JSON.parse(answer.body.toString()) as { objects: { key: string; variant: string; size: number; etag: string | null }[] }).objects;
}

function purge(body: unknown): Promise<Raw> {
  return get('/_edge/purge', { ...AUTH, 'content-type': 'application/json' }, 'POST', JSON.stringify(body));
}

const cssSpec = (headers: Record<string, string> = {}) => ({
  headers: { 'content-type': 'text/css; charset=utf-8', 'cache-control': 'public, max-age=600', etag: '"css-v1"', ...headers },
  body: CSS,
});

const fills = (coded: string[]) => coded.filter((line) => line.startsWith('encode') && !line.endsWith(' 11'));

describe('negotiation and one compression per object and coding', () => {
  it('br, gzip and identity clients each get their coding, all made from one origin fetch, each made once', async () => {
    await start();
    node!.origin.set('/app.css', cssSpec());

    const br = await get('/app.css', ae('gzip, deflate, br, zstd'));
    expect(br.status).toBe(200);
    expect(br.headers['content-encoding']).toBe('br');
    expect(br.headers.vary).toMatch(/accept-encoding/i);
    expect(br.headers.etag).toBe('W/"css-v1-br"');
    expect(br.headers['cache-status']).toMatch(/^edge; fwd=uri-miss; stored/);
    expect(decoded(br).equals(CSS)).toBe(true);
    expect(br.body.length).toBeLessThan(CSS.length / 4);
    // The origin was asked for exactly the negotiated coding.
    expect(node!.origin.requests[0]!.headers['accept-encoding']).toBe('br');
    await settle();

    const gzip = await get('/app.css', ae('gzip'));
    expect(gzip.headers['content-encoding']).toBe('gzip');
    expect(gzip.headers.etag).toBe('W/"css-v1-gzip"');
    expect(gunzipSync(gzip.body).equals(CSS)).toBe(true);
    expect(gzip.headers['cache-status']).toMatch(/^edge; hit; .*detail=recoded/);

    const identity = await get('/app.css');
    expect(identity.headers['content-encoding']).toBeUndefined();
    expect(identity.body.equals(CSS)).toBe(true);
    // Decoded back into the origin's own bytes: the origin's own ETag.
    expect(identity.headers.etag).toBe('"css-v1"');
    expect(identity.headers.vary).toMatch(/accept-encoding/i);
    await settle();

    for (let round = 0; round < 3; round++) {
      for (const [header, coding] of [['br', 'br'], ['gzip', 'gzip'], ['identity', undefined]] as const) {
        const hit = await get('/app.css', ae(header));
        expect(hit.headers['cache-status'], header).toMatch(/^edge; hit/);
        expect(hit.headers['content-encoding']).toBe(coding);
        expect(decoded(hit).equals(CSS)).toBe(true);
        expect(hit.headers['content-length']).toBe(String(hit.body.length));
      }
    }
    expect(node!.origin.count('/app.css')).toBe(1);
    // One compression per coding: br at the fill level, gzip once (the background brotli pass aside).
    expect(fills(node!.coded)).toEqual(['encode br 5', 'encode gzip 5']);
    const stored = await listing('/app.css');
    expect(stored.map((entry) => entry.variant).sort()).toEqual(['accept-encoding:', 'accept-encoding:br', 'accept-encoding:gzip']);
  });

  it('concurrent clients of each coding: one origin fetch, one compression per coding', async () => {
    await start();
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let arrived = 0;
    const everyone = 12;
    node!.edge.server.on('request', () => {
      if (++arrived === everyone) release();
    });
    node!.origin.route('/hot.json', async (_req, res) => {
      await held;
      res.setHeader('content-type', 'application/json');
      res.setHeader('cache-control', 'public, max-age=600');
      res.setHeader('etag', '"j1"');
      res.end(JSON_BODY);
    });
    const answers = await Promise.all(Array.from({ length: everyone }, (_, i) => get('/hot.json', ae(['br', 'gzip', 'identity'][i % 3]!))));
    for (const answer of answers) expect(decoded(answer).equals(JSON_BODY)).toBe(true);
    await settle();
    expect(node!.origin.count('/hot.json')).toBe(1);
    expect(fills(node!.coded).sort()).toEqual(['encode br 5', 'encode gzip 5']);
    expect((await listing('/hot.json')).length).toBe(3);
  });

  it('q-values, q=0 and * decide the coding; the key is the coding, never the header', async () => {
    await start();
    node!.origin.set('/a.css', cssSpec());
    const cases: [string, string | undefined][] = [
      ['*', 'br'],
      ['br;q=0, gzip', 'gzip'],
      ['gzip;q=1, br;q=0.5', 'gzip'],
      ['br;q=0, gzip;q=0', undefined],
      ['*;q=0', undefined],
      ['identity;q=1, br;q=0.5', undefined],
      ['x-gzip', 'gzip'],
      ['BR;Q=0.9, GZIP;q=0.8', 'br'],
      ['deflate, zstd', undefined],
    ];
    for (const [header, coding] of cases) {
      const answer = await get('/a.css', ae(header));
      expect(answer.headers['content-encoding'], header).toBe(coding);
      expect(decoded(answer).equals(CSS), header).toBe(true);
      await settle();
    }
    expect(node!.origin.count('/a.css')).toBe(1);
    expect((await listing('/a.css')).length).toBe(3);
  });
});

/** curl's answer (`-i`): the header block, lower case, and the body as curl decoded it. */
function curl(args: string[]): Promise<{ headers: string; body: Buffer }> {
  return new Promise((resolve, reject) => {
    execFile('curl', ['-s', '-S', '-i', ...args], { encoding: 'buffer', maxBuffer: 1 << 24 }, (error, stdout) => {
      if (error) return reject(error);
      const end = stdout.indexOf('\r\n\r\n');
      resolve({ headers: stdout.subarray(0, end).toString().toLowerCase(), body: stdout.subarray(end + 4) });
    });
  });
}

const CURL = ['/usr/bin/curl', '/usr/local/bin/curl'].some((path) => existsSync(path));

describe.skipIf(!CURL)('curl', () => {
  it('--compressed (deflate, gzip, br, zstd) gets br and decodes it to the origin bytes; plain curl gets identity', async () => {
    await start();
    node!.origin.set('/curl.css', cssSpec());
    const url = `${node!.edge.url}/curl.css`;
    const compressed = await curl(['--compressed', url]);
    expect(compressed.headers).toMatch(/^content-encoding: br\r?$/m);
    expect(compressed.body.equals(CSS)).toBe(true);
    await settle();
    const gzip = await curl(['--compressed', '-H', 'Accept-Encoding: gzip', url]);
    expect(gzip.headers).toMatch(/^content-encoding: gzip\r?$/m);
    expect(gzip.body.equals(CSS)).toBe(true);
    const plain = await curl([url]);
    expect(plain.headers).not.toMatch(/^content-encoding:/m);
    expect(plain.body.equals(CSS)).toBe(true);
    await settle();
    const again = await curl(['--compressed', url]);
    expect(again.headers).toMatch(/^cache-status: edge; hit/m);
    expect(again.body.equals(CSS)).toBe(true);
    expect(node!.origin.count('/curl.css')).toBe(1);
  });
});

describe('what is not compressed', () => {
  it('an image, a small body, no-transform and an already encoded body pass as they are', async () => {
    await start();
    const png = Buffer.alloc(8000, 7);
    node!.origin.set('/logo.png', { headers: { 'content-type': 'image/png', 'cache-control': 'max-age=600' }, body: png });
    node!.origin.set('/small.css', { headers: { 'content-type': 'text/css', 'cache-control': 'max-age=600' }, body: '.a{color:red}' });
    node!.origin.set('/nt.css', cssSpec({ 'cache-control': 'public, max-age=600, no-transform' }));
    node!.origin.set('/font.woff2', { headers: { 'content-type': 'font/woff2', 'cache-control': 'max-age=600' }, body: CSS });
    for (const path of ['/logo.png', '/small.css', '/nt.css', '/font.woff2']) {
      for (const header of ['br', 'gzip']) {
        const answer = await get(path, ae(header));
        expect(answer.headers['content-encoding'], `${path} ${header}`).toBeUndefined();
        await settle();
      }
    }
    // An image does not vary: one entry serves every client, no Vary added.
    const image = await get('/logo.png', ae('br'));
    expect(image.headers.vary).toBeUndefined();
    expect(image.body.equals(png)).toBe(true);
    expect(image.headers['cache-status']).toMatch(/^edge; hit/);
    expect(node!.origin.count('/logo.png')).toBe(1);
    expect(fills(node!.coded)).toEqual([]);
  });

  it('an origin gzip body goes as is to gzip clients and decoded, once, to clients that do not take gzip', async () => {
    await start();
    // An S3-style origin: the object is stored gzipped and sent so whatever the request says.
    const gz = gzipSync(CSS);
    node!.origin.set('/pre.css', { headers: { 'content-type': 'text/css', 'content-encoding': 'gzip', 'cache-control': 'max-age=600', etag: '"gz1"' }, body: gz });
    const gzip = await get('/pre.css', ae('gzip'));
    expect(gzip.headers['content-encoding']).toBe('gzip');
    expect(gzip.body.equals(gz)).toBe(true);
    expect(gzip.headers.etag).toBe('"gz1"');

    const identity = await get('/pre.css', ae('identity'));
    expect(identity.headers['content-encoding']).toBeUndefined();
    expect(identity.body.equals(CSS)).toBe(true);
    expect(identity.headers.etag).toBe('W/"gz1-identity"');
    await settle();
    const again = await get('/pre.css');
    expect(again.headers['cache-status']).toMatch(/^edge; hit/);
    expect(again.body.equals(CSS)).toBe(true);
    expect(again.headers['content-length']).toBe(String(CSS.length));

    // br client: made once from the stored identity (the gzip was decoded once, for the identity client).
    const br = await get('/pre.css', ae('br'));
    expect(br.headers['content-encoding']).toBe('br');
    expect(br.headers['cache-status']).toMatch(/detail=recoded/);
    expect(brotliDecompressSync(br.body).equals(CSS)).toBe(true);
    await settle();
    expect((await get('/pre.css', ae('br'))).headers['cache-status']).toMatch(/^edge; hit/);
    expect(node!.coded.filter((line) => line === 'decode gzip')).toHaveLength(1);
    expect(fills(node!.coded)).toEqual(['encode br 5']);
    expect(node!.origin.count('/pre.css')).toBe(1);
  });

  it('a gzip body marked no-transform reaches an identity client unchanged and is not stored for others', async () => {
    await start();
    const gz = gzipSync(CSS);
    node!.origin.set('/nt-gz.css', { headers: { 'content-type': 'text/css', 'content-encoding': 'gzip', 'cache-control': 'max-age=600, no-transform' }, body: gz });
    const answer = await get('/nt-gz.css');
    expect(answer.headers['content-encoding']).toBe('gzip');
    expect(answer.body.equals(gz)).toBe(true);
    await settle();
    await get('/nt-gz.css');
    expect(node!.origin.count('/nt-gz.css')).toBe(2);
  });

  it('a corrupt gzip body is never stored', async () => {
    await start();
    const broken = gzipSync(CSS).subarray(0, 500);
    node!.origin.set('/broken.css', { headers: { 'content-type': 'text/css', 'content-encoding': 'gzip', 'cache-control': 'max-age=600' }, body: broken });
    await get('/broken.css').catch(() => undefined);
    await settle();
    await get('/broken.css').catch(() => undefined);
    await settle();
    expect(node!.origin.count('/broken.css')).toBe(2);
    expect(await listing('/broken.css')).toEqual([]);
  });
});

describe('validators, ranges, HEAD', () => {
  it('ETags differ per coding; If-None-Match matches only its own coding', async () => {
    await start();
    node!.origin.set('/e.css', cssSpec());
    await get('/e.css', ae('br'));
    await settle();
    expect((await get('/e.css', { ...ae('br'), 'if-none-match': 'W/"css-v1-br"' })).status).toBe(304);
    const notModified = await get('/e.css', { ...ae('br'), 'if-none-match': '"css-v1-br"' });
    expect(notModified.status).toBe(304);
    expect(notModified.headers.etag).toBe('W/"css-v1-br"');
    expect(notModified.headers.vary).toMatch(/accept-encoding/i);
    // The br validator does not select the gzip or identity representation, nor the other way round.
    expect((await get('/e.css', { ...ae('gzip'), 'if-none-match': 'W/"css-v1-br"' })).status).toBe(200);
    await settle();
    expect((await get('/e.css', { 'if-none-match': 'W/"css-v1-br"' })).status).toBe(200);
    await settle();
    expect((await get('/e.css', { 'if-none-match': '"css-v1"' })).status).toBe(304);
    expect((await get('/e.css', { ...ae('br'), 'if-none-match': '"css-v1"' })).status).toBe(200);
  });

  it('a range is cut from the negotiated representation, with its own length and Content-Range', async () => {
    await start({ brotliBackgroundLevel: 0 });
    node!.origin.set('/r.css', cssSpec());
    // A range that misses gets the whole coded body (its length is not known before the end).
    const miss = await get('/r.css', { ...ae('br'), range: 'bytes=0-99' });
    expect(miss.status).toBe(200);
    expect(miss.headers['content-encoding']).toBe('br');
    await settle();
    const whole = (await get('/r.css', ae('br'))).body;
    expect(brotliDecompressSync(whole).equals(CSS)).toBe(true);
    const part = await get('/r.css', { ...ae('br'), range: 'bytes=10-109' });
    expect(part.status).toBe(206);
    expect(part.headers['content-encoding']).toBe('br');
    expect(part.headers['content-range']).toBe(`bytes 10-109/${whole.length}`);
    expect(part.headers['content-length']).toBe('100');
    expect(part.body.equals(whole.subarray(10, 110))).toBe(true);
    const tail = await get('/r.css', { ...ae('br'), range: 'bytes=-20' });
    expect(tail.body.equals(whole.subarray(whole.length - 20))).toBe(true);
    // The identity representation's range, for an identity client.
    const plain = await get('/r.css', { range: 'bytes=0-9' });
    await settle();
    expect(plain.status).toBe(200);
    const plainPart = await get('/r.css', { range: 'bytes=0-9' });
    expect(plainPart.status).toBe(206);
    expect(plainPart.headers['content-range']).toBe(`bytes 0-9/${CSS.length}`);
    expect(plainPart.body.equals(CSS.subarray(0, 10))).toBe(true);
    // If-Range needs a strong validator: the node's weak one gets the whole body.
    const ifRange = await get('/r.css', { ...ae('br'), range: 'bytes=0-9', 'if-range': 'W/"css-v1-br"' });
    expect(ifRange.status).toBe(200);
  });

  it('HEAD answers with the coded representation fields, without a body', async () => {
    await start({ brotliBackgroundLevel: 0 });
    node!.origin.set('/h.css', cssSpec());
    const miss = await get('/h.css', ae('br'), 'HEAD');
    expect(miss.headers['content-encoding']).toBe('br');
    expect(miss.body.length).toBe(0);
    await settle();
    const hit = await get('/h.css', ae('br'), 'HEAD');
    expect(hit.headers['cache-status']).toMatch(/^edge; hit/);
    expect(hit.headers['content-encoding']).toBe('br');
    const full = await get('/h.css', ae('br'));
    expect(hit.headers['content-length']).toBe(String(full.body.length));
    expect(hit.headers.etag).toBe('W/"css-v1-br"');
    expect(node!.origin.count('/h.css')).toBe(1);
  });

  it('a stale coded variant is revalidated with the origin ETag; a 304 keeps the coded bytes and ETag', async () => {
    await start();
    node!.origin.set('/stale.css', [
      cssSpec({ 'cache-control': 'max-age=10' }),
      { status: 304, headers: { etag: '"css-v1"', 'cache-control': 'max-age=100' } },
    ]);
    const first = await get('/stale.css', ae('br'));
    await settle();
    node!.clock.advance(20_000);
    const revalidated = await get('/stale.css', ae('br'));
    expect(revalidated.headers['cache-status']).toMatch(/fwd=stale; fwd-status=304/);
    expect(revalidated.headers.etag).toBe('W/"css-v1-br"');
    expect(revalidated.headers['content-encoding']).toBe('br');
    expect(brotliDecompressSync(revalidated.body).equals(CSS)).toBe(true);
    expect(node!.origin.requests[1]!.headers['if-none-match']).toBe('"css-v1"');
    expect(node!.origin.requests[1]!.headers['accept-encoding']).toBe('br');
    expect(decoded(first).equals(CSS)).toBe(true);
  });
});

describe('background re-compression', () => {
  it('a hit replaces the fill-time brotli entry with a smaller one at --brotli-background-level, same ETag, same content', async () => {
    await start({ brotliLevel: 1, brotliBackgroundLevel: 11 });
    node!.origin.set('/bg.css', cssSpec());
    const filled = await get('/bg.css', ae('br'));
    await settle();
    // Filled and not yet hit: nothing is spent on it (an object asked for once never is).
    expect(node!.coded).not.toContain('encode br 11');
    const firstHit = await get('/bg.css', ae('br'));
    expect(firstHit.body.equals(filled.body)).toBe(true);
    await settle();
    expect(node!.coded.filter((line) => line === 'encode br 11')).toHaveLength(1);
    const later = await get('/bg.css', ae('br'));
    expect(later.headers['cache-status']).toMatch(/^edge; hit/);
    expect(later.body.length).toBeLessThan(filled.body.length);
    expect(brotliDecompressSync(later.body).equals(CSS)).toBe(true);
    expect(later.headers.etag).toBe(filled.headers.etag);
    expect((await listing('/bg.css'))[0]!.size).toBe(later.body.length);
    // Once per version: later hits queue nothing.
    await get('/bg.css', ae('br'));
    await settle();
    expect(node!.coded.filter((line) => line === 'encode br 11')).toHaveLength(1);
  });

  it('another coding filled meanwhile does not stop it', async () => {
    let release!: () => void;
    await start({ brotliLevel: 1, brotliBackgroundLevel: 11 }, new Promise<void>((resolve) => (release = resolve)));
    node!.origin.set('/two.css', cssSpec());
    await get('/two.css');
    await settle();
    const filled = await get('/two.css', ae('br'));
    await settle();
    await get('/two.css', ae('br'));
    // While the br pass is held, the gzip variant of the same URL is filled.
    expect((await get('/two.css', ae('gzip'))).headers['content-encoding']).toBe('gzip');
    release();
    await settle();
    const later = await get('/two.css', ae('br'));
    expect(later.body.length).toBeLessThan(filled.body.length);
    expect(brotliDecompressSync(later.body).equals(CSS)).toBe(true);
  });

  it('is not applied over a newer version stored meanwhile', async () => {
    let release!: () => void;
    await start({ brotliLevel: 1, brotliBackgroundLevel: 11 }, new Promise<void>((resolve) => (release = resolve)));
    const v2 = Buffer.from(CSS.toString().replace(/card/g, 'tile'));
    node!.origin.set('/moving.css', [cssSpec(), { ...cssSpec({ etag: '"css-v2"' }), body: v2 }]);
    await get('/moving.css', ae('br'));
    await settle();
    await get('/moving.css', ae('br'));
    // The pass over v1 is under way (held); v1 is purged and v2 stored meanwhile.
    await purge({ urls: ['/moving.css'] });
    const second = await get('/moving.css', ae('br'));
    expect(decoded(second).equals(v2)).toBe(true);
    release();
    await settle();
    const hit = await get('/moving.css', ae('br'));
    expect(hit.headers['cache-status']).toMatch(/^edge; hit/);
    expect(brotliDecompressSync(hit.body).equals(v2)).toBe(true);
    expect(hit.headers.etag).toBe('W/"css-v2-br"');
  });
});

describe('purges and pushes', () => {
  it('a purge by URL, by tag or a soft purge reaches every coding of the object', async () => {
    await start();
    node!.origin.set('/p.css', cssSpec({ 'cache-tag': 'styles' }));
    const fillAll = async () => {
      for (const header of ['br', 'gzip', 'identity']) {
        await get('/p.css', ae(header));
        await settle();
      }
    };
    await fillAll();
    expect((await listing('/p.css')).length).toBe(3);
    expect(JSON.parse((await purge({ urls: ['/p.css'] })).body.toString())).toEqual({ purged: 3 });
    expect(await listing('/p.css')).toEqual([]);
    await fillAll();
    expect(JSON.parse((await purge({ tags: ['styles'] })).body.toString())).toEqual({ purged: 3 });
    expect(await listing('/p.css')).toEqual([]);
    await fillAll();
    expect(JSON.parse((await purge({ prefixes: ['/p'] })).body.toString())).toEqual({ purged: 3 });
    await fillAll();
    expect(JSON.parse((await purge({ urls: ['/p.css'], soft: true })).body.toString())).toEqual({ purged: 3 });
    const count = node!.origin.count('/p.css');
    const after = await get('/p.css', ae('gzip'));
    expect(after.headers['cache-status']).toMatch(/fwd=stale/);
    expect(node!.origin.count('/p.css')).toBe(count + 1);
  });

  it('an unsafe method invalidates every coding', async () => {
    await start();
    node!.origin.set('/u.css', cssSpec());
    for (const header of ['br', 'gzip']) {
      await get('/u.css', ae(header));
      await settle();
    }
    node!.origin.set('/u.css', [{ status: 204 }, cssSpec()]);
    await get('/u.css', {}, 'POST', 'x');
    expect(await listing('/u.css')).toEqual([]);
  });

  it('a pushed object is compressed once per coding, replaced with the push, and purged with it', async () => {
    await start();
    const push = (body: Buffer, headers: Record<string, string> = {}) =>
      get('/_edge/push/assets/site.css', { ...AUTH, 'content-type': 'text/css', 'cache-tag': 'deploy', ...headers }, 'PUT', body as unknown as string);
    expect((await push(CSS)).status).toBe(201);
    const br = await get('/assets/site.css', ae('br'));
    expect(br.headers['content-encoding']).toBe('br');
    expect(br.headers.vary).toMatch(/accept-encoding/i);
    expect(br.headers['cache-status']).toMatch(/detail=pushed/);
    expect(brotliDecompressSync(br.body).equals(CSS)).toBe(true);
    await settle();
    const hit = await get('/assets/site.css', ae('br'));
    expect(hit.headers['cache-status']).toMatch(/^edge; hit; .*detail=pushed/);
    expect(hit.headers.etag).toMatch(/^W\/".*-br"$/);
    const plain = await get('/assets/site.css');
    expect(plain.body.equals(CSS)).toBe(true);
    expect(plain.headers.vary).toMatch(/accept-encoding/i);
    expect(fills(node!.coded)).toEqual(['encode br 5']);
    expect((await listing('/assets/site.css')).map((entry) => entry.key).sort()).toEqual(['/assets/site.css push:', '/assets/site.css push:#enc:br']);

    // A new push: the br made from the old bytes is gone, the new bytes are compressed.
    const v2 = Buffer.from(CSS.toString().replace(/card/g, 'tile'));
    expect((await push(v2)).status).toBe(201);
    const fresh = await get('/assets/site.css', ae('br'));
    expect(brotliDecompressSync(fresh.body).equals(v2)).toBe(true);
    await settle();

    expect(JSON.parse((await purge({ urls: ['/assets/site.css'] })).body.toString()).purged).toBe(2);
    expect(await listing('/assets/site.css')).toEqual([]);
    expect(node!.origin.count('/assets/site.css')).toBe(0);
  });

  it('an object pushed gzipped is served as is to gzip clients and decoded or re-coded for the others', async () => {
    await start();
    const gz = gzipSync(CSS);
    const pushed = await get(
      '/_edge/push/assets/pre.css',
      { ...AUTH, 'content-type': 'text/css', 'content-encoding': 'gzip' },
      'PUT',
      gz as unknown as string,
    );
    expect(pushed.status).toBe(201);
    const gzip = await get('/assets/pre.css', ae('gzip'));
    expect(gzip.headers['content-encoding']).toBe('gzip');
    expect(gzip.body.equals(gz)).toBe(true);
    const identity = await get('/assets/pre.css');
    expect(identity.headers['content-encoding']).toBeUndefined();
    expect(identity.body.equals(CSS)).toBe(true);
    const br = await get('/assets/pre.css', ae('br'));
    expect(br.headers['content-encoding']).toBe('br');
    expect(brotliDecompressSync(br.body).equals(CSS)).toBe(true);
    await settle();
    expect((await get('/assets/pre.css')).headers['cache-status']).toMatch(/^edge; hit/);
    expect(node!.origin.count()).toBe(0);
  });
});

describe('options', () => {
  it('--compress false leaves bodies as the origin sent them, still keyed by the negotiated coding', async () => {
    await start({ compress: false });
    node!.origin.set('/off.css', cssSpec());
    const answer = await get('/off.css', ae('br'));
    expect(answer.headers['content-encoding']).toBeUndefined();
    expect(answer.body.equals(CSS)).toBe(true);
    expect(node!.coded).toEqual([]);
  });

  it('--compress-types and --compress-min-size decide what is compressed', async () => {
    await start({ compressTypes: 'application/x-custom', compressMinSize: '100KB' });
    node!.origin.set('/c.bin', { headers: { 'content-type': 'application/x-custom', 'cache-control': 'max-age=60' }, body: CSS });
    node!.origin.route('/chunked.bin', (_req, res) => {
      res.setHeader('content-type', 'application/x-custom');
      res.setHeader('cache-control', 'max-age=60');
      res.write(CSS.subarray(0, 1000));
      res.end(CSS.subarray(1000));
    });
    node!.origin.set('/c.css', cssSpec());
    expect((await get('/c.bin', ae('br'))).headers['content-encoding']).toBeUndefined();
    // A chunked body has no length to compare: it is compressed.
    const chunked = await get('/chunked.bin', ae('br'));
    expect(chunked.headers['content-encoding']).toBe('br');
    expect(brotliDecompressSync(chunked.body).equals(CSS)).toBe(true);
    expect((await get('/c.css', ae('br'))).headers['content-encoding']).toBeUndefined();
  });

  it('refuses a --compress-types entry that is no media type, naming the flag', () => {
    expect(() => resolveEdgeOptions({ compressTypes: 'text/css, css' })).toThrow(/--compress-types \(EDGE_COMPRESS_TYPES\)/);
    expect(() => resolveEdgeOptions({ brotliLevel: 12 })).toThrow(/--brotli-level/);
  });
});

it('a brotli body from the origin for br clients passes as is', async () => {
  await start();
  const br = brotliCompressSync(CSS);
  node!.origin.set('/o.css', { headers: { 'content-type': 'text/css', 'content-encoding': 'br', vary: 'Accept-Encoding', 'cache-control': 'max-age=60', etag: '"ob"' }, body: br });
  const answer = await get('/o.css', ae('br'));
  expect(answer.body.equals(br)).toBe(true);
  expect(answer.headers.etag).toBe('"ob"');
  expect(node!.coded).toEqual([]);
});
