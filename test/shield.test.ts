/**
 * Origin shield topologies, end to end on real sockets: edges -> shield(s)
 * -> origin, as in the README's diagram.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { SHIELD_DEFAULTS } from '../origin-shield/defaults.js';
import { createGate, startTestOrigin, type TestOrigin } from './helpers/origin.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-shield-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function startNode(input: Record<string, unknown>, port = 0): Promise<EdgeServer> {
  const options = resolveEdgeOptions({ host: '127.0.0.1', logLevel: 'silent', ...input, port, dataDir: await tempDir() });
  const node = await startEdgeServer(options, { logger: false });
  cleanups.push(() => node.close());
  return node;
}

async function startShield(origin: TestOrigin, port = 0): Promise<EdgeServer> {
  return startNode({ ...SHIELD_DEFAULTS, origin: origin.url }, port);
}

/** All edges serve one public host, as behind one DNS name: the shield keys on it. */
async function get(base: string, path: string) {
  const res = await request(base + path, { headers: { host: 'cdn.example.com' } });
  const body = await res.body.text();
  const header = (name: string) => {
    const value = res.headers[name];
    return Array.isArray(value) ? value.join(', ') : (value ?? null);
  };
  return { status: res.statusCode, body, header };
}

async function startOrigin(): Promise<TestOrigin> {
  const origin = await startTestOrigin();
  cleanups.push(() => origin.close());
  return origin;
}

describe('origin shield', () => {
  it('3 edges + 1 shield: 30 concurrent requests make exactly one origin request; later requests are hits', async () => {
    const origin = await startOrigin();
    // The origin answers once the 30 requests have reached the edges and the
    // edges' 3 (collapsed) requests have reached the shield.
    const everyone = createGate({ openAt: 33 });
    origin.set('/big.json', { headers: { 'cache-control': 'public, max-age=300', 'content-type': 'application/json' }, body: '{"x":1}', gate: everyone });
    const shield = await startShield(origin);
    const edges = await Promise.all([0, 1, 2].map(() => startNode({ origin: origin.url, shield: shield.url })));
    for (const node of [shield, ...edges]) node.server.on('request', () => everyone.arrive());

    const answers = await Promise.all(Array.from({ length: 30 }, (_, i) => get(edges[i % 3]!.url, '/big.json')));
    expect(answers.every((a) => a.status === 200 && a.body === '{"x":1}')).toBe(true);
    expect(origin.count('/big.json')).toBe(1);

    for (const edge of edges) {
      const later = await get(edge.url, '/big.json');
      expect(later.header('cache-status')).toMatch(/^edge; hit/);
    }
    expect(origin.count('/big.json')).toBe(1);
  });

  it('hands CDN fields to the edges (CDN-Cache-Control governs them, tags reach their purges) and never to clients', async () => {
    const origin = await startOrigin();
    origin.set('/tagged.css', {
      headers: { 'cache-control': 'max-age=5', 'cdn-cache-control': 'max-age=600', 'cache-tag': 'release-1', 'surrogate-key': 'css' },
      body: 'tagged',
    });
    const shield = await startShield(origin);
    const token = 'shield-fields-token';
    const edge = await startNode({ origin: origin.url, shield: shield.url, adminToken: token });
    const first = await get(edge.url, '/tagged.css');
    expect(first.header('cache-status')).toMatch(/edge; fwd=uri-miss; stored; ttl=600/);
    for (const name of ['cdn-cache-control', 'cache-tag', 'surrogate-key']) expect(first.header(name), name).toBeNull();
    expect(first.header('cache-control')).toBe('max-age=5');
    const purge = await request(`${edge.url}/_edge/purge`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ tags: ['release-1'] }),
    });
    expect(await purge.body.json()).toEqual({ purged: 1 });
  });

  it('shows the chain: Cache-Status per tier, Via through both, the client address kept', async () => {
    const origin = await startOrigin();
    origin.set('/chain.txt', { headers: { 'cache-control': 'public, max-age=300' }, body: 'chain' });
    const shield = await startShield(origin);
    const edge = await startNode({ origin: origin.url, shield: shield.url });

    const first = await get(edge.url, '/chain.txt');
    expect(first.header('cache-status')).toMatch(/^shield; fwd=uri-miss; stored; ttl=300, edge; fwd=uri-miss; stored/);
    expect(first.header('via')).toBe('1.1 shield, 1.1 edge');
    expect(origin.requests[0]!.headers['x-forwarded-for']).toMatch(/^127\.0\.0\.1/);
    expect(origin.requests[0]!.headers.via).toBe('1.1 edge, 1.1 shield');

    // A second edge that misses finds the object at the shield.
    const edge2 = await startNode({ origin: origin.url, shield: shield.url });
    const viaShield = await get(edge2.url, '/chain.txt');
    expect(viaShield.header('cache-status')).toMatch(/^shield; hit; ttl=\d+, edge; fwd=uri-miss; stored/);
    expect(origin.count('/chain.txt')).toBe(1);
  });

  it('2 shields split the keys; stopping one moves its keys to the other and nothing fails', async () => {
    const origin = await startOrigin();
    origin.route('/k', (_req, res) => {
      res.writeHead(200, { 'cache-control': 'public, max-age=300' });
      res.end('k');
    });
    const shieldA = await startShield(origin);
    const shieldB = await startShield(origin);
    const edge = await startNode({ origin: origin.url, shield: `${shieldA.url},${shieldB.url}` });

    const keys = Array.from({ length: 40 }, (_, i) => `/k?n=${i}`);
    for (const key of keys) expect((await get(edge.url, key)).status).toBe(200);
    const onA = shieldA.store.stats().entries;
    const onB = shieldB.store.stats().entries;
    expect(onA + onB).toBe(40);
    expect(onA).toBeGreaterThan(0);
    expect(onB).toBeGreaterThan(0);
    expect(origin.count()).toBe(40);

    await shieldA.close();
    const fresh = Array.from({ length: 20 }, (_, i) => `/k?m=${i}`);
    for (const key of fresh) expect((await get(edge.url, key)).status).toBe(200);
    expect(shieldB.store.stats().entries).toBe(onB + 20);
  });

  it('goes to the origin directly when no shield is reachable', async () => {
    const origin = await startOrigin();
    origin.set('/direct.txt', { headers: { 'cache-control': 'public, max-age=300' }, body: 'direct' });
    const shield = await startShield(origin);
    const edge = await startNode({ origin: origin.url, shield: shield.url });
    await shield.close();
    const res = await get(edge.url, '/direct.txt');
    expect(res.status).toBe(200);
    expect(res.body).toBe('direct');
  });

  it('forwards a purge to the shields with "forward": true, and reports shield health at /_edge/origins', async () => {
    const token = 't'.repeat(32);
    const origin = await startOrigin();
    origin.set('/p.css', { headers: { 'cache-control': 'public, max-age=300' }, body: 'p' });
    const shield = await startNode({ ...SHIELD_DEFAULTS, origin: origin.url, adminToken: token });
    const edge = await startNode({ origin: origin.url, shield: shield.url, adminToken: token });
    await get(edge.url, '/p.css');
    expect(origin.count('/p.css')).toBe(1);

    const res = await fetch(`${edge.url}/_edge/purge`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ urls: ['/p.css'], forward: true }),
    });
    const answer = await res.json();
    expect(answer.purged).toBe(1);
    expect(answer.shields).toEqual([{ shield: shield.url, status: 200, purged: 1 }]);
    await get(edge.url, '/p.css');
    expect(origin.count('/p.css')).toBe(2);

    const origins = await (await fetch(`${edge.url}/_edge/origins`, { headers: { authorization: `Bearer ${token}` } })).json();
    expect(origins.status.shields).toEqual([expect.objectContaining({ shield: shield.url, healthy: true })]);
  });
});
