/**
 * Purge selection (`selectForPurge`, `parsePurgeTarget` in admin.ts), end
 * to end through `POST /_edge/purge`, where mutation testing
 * (`npm run test:mutation`) and breaks made by hand found the other suites
 * silent: several tags, URLs and prefixes in one purge, what a URL or
 * prefix target is matched against, and the targets that are refused.
 */
import { request as httpRequest } from 'node:http';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import type { OriginResponseSpec } from './helpers/origin.js';

const TOKEN = 'p'.repeat(32);
const AUTH = { authorization: `Bearer ${TOKEN}` };

let t: TestEdge;
afterEach(async () => {
  await t?.close();
});

const cacheable = (body: string, headers: Record<string, string> = {}): OriginResponseSpec => ({
  headers: { 'cache-control': 'public, max-age=600', ...headers },
  body,
});

async function purge(body: unknown): Promise<{ status: number; json: { purged?: number; error?: string; message?: string } }> {
  const res = await t.get('/_edge/purge', { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...AUTH } });
  return { status: res.status, json: await res.json() };
}

async function purged(body: unknown): Promise<number> {
  const { status, json } = await purge(body);
  expect(status, JSON.stringify(json)).toBe(200);
  return json.purged!;
}

/** Cache-Status of a GET (body read), for `hit` / `miss` checks; `host` as sent (fetch would not send it). */
function cacheStatus(path: string, host?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: t.edge.port, path, headers: host ? { host } : {}, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(String(res.headers['cache-status'] ?? '')));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

async function warm(...paths: string[]): Promise<void> {
  for (const path of paths) await (await t.get(path)).arrayBuffer();
  await t.settle();
}

function pushObject(path: string, body: string, headers: Record<string, string> = {}): Promise<Response> {
  return t.get(`/_edge/push${path}`, { method: 'PUT', body, headers: { ...AUTH, ...headers } });
}

describe('purge by tags', () => {
  it('removes what carries any of the tags named, not only the first', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/a.css', cacheable('a', { 'cache-tag': 'alpha' }));
    t.origin.set('/b.css', cacheable('b', { 'cache-tag': 'beta' }));
    t.origin.set('/ab.css', cacheable('ab', { 'cache-tag': 'alpha, beta' }));
    t.origin.set('/c.css', cacheable('c', { 'cache-tag': 'gamma' }));
    await warm('/a.css', '/b.css', '/ab.css', '/c.css');
    expect((await pushObject('/pushed-b.css', 'pb', { 'cache-tag': 'beta' })).status).toBe(201);

    // An entry with both tags counts once; a repeated tag changes nothing.
    expect(await purged({ tags: ['alpha', 'beta', 'alpha'] })).toBe(4);
    for (const path of ['/a.css', '/b.css', '/ab.css']) expect(await cacheStatus(path), path).toMatch(/fwd=uri-miss/);
    expect((await t.get('/pushed-b.css')).status).toBe(404);
    expect(await cacheStatus('/c.css')).toMatch(/^edge; hit/);
  });

  it('the order of the tags does not matter', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/a.css', cacheable('a', { 'cache-tag': 'alpha' }));
    t.origin.set('/b.css', cacheable('b', { 'surrogate-key': 'beta' }));
    await warm('/a.css', '/b.css');
    expect(await purged({ tags: ['beta', 'alpha'] })).toBe(2);
    expect(await cacheStatus('/a.css')).toMatch(/fwd=uri-miss/);
    expect(await cacheStatus('/b.css')).toMatch(/fwd=uri-miss/);
  });
});

describe('purge by URLs', () => {
  it('removes every URL named, not only the first', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    for (const p of ['/u1', '/u2', '/u3']) t.origin.set(p, cacheable(p));
    await warm('/u1', '/u2', '/u3');
    expect(await purged({ urls: ['/u1', '/u3'] })).toBe(2);
    expect(await cacheStatus('/u1')).toMatch(/fwd=uri-miss/);
    expect(await cacheStatus('/u2')).toMatch(/^edge; hit/);
    expect(await cacheStatus('/u3')).toMatch(/fwd=uri-miss/);
  });

  it('matches the exact path and query, normalised as the pull path keys it, on every host', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/q', cacheable('q'));
    t.origin.set('/q2', cacheable('q2'));
    await warm('/q?a=1&b=2', '/q?a=1', '/q', '/q2?a=1&b=2');
    // Parameters in another order, plus an ignored one: the same key.
    expect(await purged({ urls: ['/q?b=2&utm_source=x&a=1'] })).toBe(1);
    expect(await cacheStatus('/q?a=1&b=2')).toMatch(/fwd=uri-miss/);
    for (const path of ['/q?a=1', '/q', '/q2?a=1&b=2']) expect(await cacheStatus(path), path).toMatch(/^edge; hit/);
  });

  it('an absolute URL selects its own host only; a path selects every host', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/h.css', cacheable('h'));
    const local = `127.0.0.1:${t.edge.port}`;
    await warm('/h.css');
    await cacheStatus('/h.css', 'other.example');
    await t.settle();
    expect(await purged({ urls: ['http://other.example/h.css'] })).toBe(1);
    expect(await cacheStatus('/h.css')).toMatch(/^edge; hit/);
    expect(await cacheStatus('/h.css', 'other.example')).toMatch(/fwd=uri-miss/);
    // Another scheme is another site.
    expect(await purged({ urls: [`https://${local}/h.css`] })).toBe(0);
    expect(await cacheStatus('/h.css')).toMatch(/^edge; hit/);
    expect(await purged({ urls: [`http://${local}/h.css`] })).toBe(1);
    expect(await cacheStatus('/h.css')).toMatch(/fwd=uri-miss/);
    await t.settle();
    expect(await purged({ urls: ['/h.css'] })).toBe(2);
  });

  it('takes the image variants of the URL along, also when their source is no longer stored (evicted)', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const photo = await sharp({ create: { width: 64, height: 48, channels: 3, background: 'teal' } }).jpeg().toBuffer();
    t.origin.set('/photo.jpg', { headers: { 'content-type': 'image/jpeg', 'cache-control': 'public, max-age=600' }, body: photo });
    await warm('/photo.jpg?width=32&format=png');
    expect(await cacheStatus('/photo.jpg?width=32&format=png')).toMatch(/^edge; hit/);
    // The source leaves the cache (as eviction would take it); its variant stays.
    const sources = new Set<string>();
    for await (const meta of t.edge.store.list()) if (meta.sourceKey !== undefined) sources.add(meta.sourceKey);
    expect(sources.size).toBe(1);
    expect(await t.edge.store.delete([...sources][0]!)).toBeGreaterThan(0);
    expect(await cacheStatus('/photo.jpg?width=32&format=png')).toMatch(/^edge; hit/);
    expect(await purged({ urls: ['/photo.jpg'] })).toBe(1);
    expect(await cacheStatus('/photo.jpg?width=32&format=png')).not.toMatch(/^edge; hit/);
  });

  it('takes a pushed object at that path along, whatever the query', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    expect((await pushObject('/pushed.js', 'v1')).status).toBe(201);
    expect(await purged({ urls: ['/pushed.js?v=3'] })).toBe(1);
    expect((await t.get('/pushed.js')).status).toBe(404);
  });

  it('refuses targets that are neither a path nor an http(s) URL, or carry credentials, naming the field and index', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const refused: [unknown, RegExp][] = [
      [{ urls: ['/ok', 'relative.css'] }, /urls\[1\]: "relative\.css" is neither a path starting with \/ nor an absolute URL/],
      [{ urls: ['ftp://example.com/a'] }, /urls\[0\]: "ftp:\/\/example\.com\/a" is not an http\(s\) URL/],
      [{ prefixes: ['https://user:pw@example.com/a/'] }, /prefixes\[0\]: .* carries credentials/],
      [{ prefixes: ['https://user@example.com/a/'] }, /prefixes\[0\]: .* carries credentials/],
      [{ urls: ['https://:pw@example.com/a'] }, /urls\[0\]: .* carries credentials/],
    ];
    for (const [body, message] of refused) {
      const { status, json } = await purge(body);
      expect(status, JSON.stringify(body)).toBe(400);
      expect(json.error).toBe('EDGE_BAD_REQUEST');
      expect(json.message).toMatch(message);
      expect(json.message).toMatch(/^Bad purge request: /);
    }
  });

  it('refuses the same targets in a soft purge', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const soft: [unknown, RegExp][] = [
      [{ urls: ['/ok', 'relative.css'], soft: true }, /^Bad purge request: urls\[1\]: "relative\.css" is neither a path starting with \/ nor an absolute URL\.$/],
      [{ prefixes: ['ftp://example.com/'], soft: true }, /^Bad purge request: prefixes\[0\]: "ftp:\/\/example\.com\/" is not an http\(s\) URL\.$/],
    ];
    for (const [body, message] of soft) {
      const { status, json } = await purge(body);
      expect(status, JSON.stringify(body)).toBe(400);
      expect(json.message).toMatch(message);
    }
  });

  it('takes the record and every piece of a sliced object (--slice-size) along', async () => {
    t = await startTestEdge({ adminToken: TOKEN, sliceSize: 1024 });
    const object = Buffer.alloc(4096, 'x');
    t.origin.route('/movie.bin', (req, res) => {
      const match = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ''));
      const [start, end] = match ? [Number(match[1]), Math.min(Number(match[2]), object.length - 1)] : [0, object.length - 1];
      res.setHeader('cache-control', 'public, max-age=600');
      res.setHeader('etag', '"m"');
      res.setHeader('accept-ranges', 'bytes');
      if (match) {
        res.statusCode = 206;
        res.setHeader('content-range', `bytes ${start}-${end}/${object.length}`);
      }
      res.end(object.subarray(start, end + 1));
    });
    const range = async () => {
      const res = await t.get('/movie.bin', { headers: { range: 'bytes=1500-1599' } });
      await res.arrayBuffer();
      return { status: res.status, cacheStatus: res.headers.get('cache-status') ?? '' };
    };
    expect((await range()).status).toBe(206);
    await t.settle();
    expect((await range()).cacheStatus).toMatch(/^edge; hit/);
    expect(t.origin.count('/movie.bin')).toBe(1);

    expect(await purged({ urls: ['/movie.bin'] })).toBeGreaterThanOrEqual(2);
    const left: string[] = [];
    for await (const meta of t.edge.store.list()) left.push(meta.key);
    expect(left).toEqual([]);
    expect((await range()).cacheStatus).not.toMatch(/hit/);
    expect(t.origin.count('/movie.bin')).toBe(2);
  });

  it('`//a` is a path, not a host', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('//a', cacheable('double'));
    await warm('//a');
    expect(await purged({ urls: ['//a'] })).toBe(1);
  });
});

describe('purge by prefixes', () => {
  it('removes under every prefix named; a prefix is matched as typed, its query kept in order', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    for (const p of ['/p1/a', '/p2/b', '/p3/c', '/s']) t.origin.set(p, cacheable(p));
    await warm('/p1/a', '/p2/b', '/p3/c', '/s?b=1&a=2', '/s?a=2&b=1');
    expect(await purged({ prefixes: ['/p1/', '/p3/'] })).toBe(2);
    expect(await cacheStatus('/p1/a')).toMatch(/fwd=uri-miss/);
    expect(await cacheStatus('/p2/b')).toMatch(/^edge; hit/);
    expect(await cacheStatus('/p3/c')).toMatch(/fwd=uri-miss/);
    // Keys sort their parameters: `?a=2&b=1` is stored; a prefix is not reordered, so `?b=1&a=2` is no prefix of it.
    expect(await purged({ prefixes: ['/s?b=1'] })).toBe(0);
    expect(await purged({ prefixes: ['/s?b=1&a=2'] })).toBe(0);
    expect(await purged({ prefixes: ['/s?a=2'] })).toBe(1);
  });

  it('an absolute prefix selects its own host only', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/d/x', cacheable('x'));
    await warm('/d/x');
    await cacheStatus('/d/x', 'other.example');
    await t.settle();
    expect(await purged({ prefixes: ['http://other.example/d/'] })).toBe(1);
    expect(await cacheStatus('/d/x')).toMatch(/^edge; hit/);
    expect(await purged({ prefixes: ['/d/'] })).toBe(1);
  });

  it('an absolute prefix takes pushed objects under it along (they answer on every host)', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.set('/assets/pulled.css', cacheable('pulled'));
    await warm('/assets/pulled.css');
    expect((await pushObject('/assets/pushed.css', 'pushed')).status).toBe(201);
    expect((await pushObject('/other/pushed.css', 'other')).status).toBe(201);
    expect(await purged({ prefixes: ['http://other.example/assets/'] })).toBe(1);
    expect((await t.get('/assets/pushed.css')).status).toBe(404);
    expect(await cacheStatus('/assets/pulled.css')).toMatch(/^edge; hit/);
    expect(await purged({ prefixes: [`http://127.0.0.1:${t.edge.port}/assets/`] })).toBe(1);
    expect((await t.get('/other/pushed.css')).status).toBe(200);
  });
});
