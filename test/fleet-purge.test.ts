/**
 * Fleet purge (issue 11), end to end: real edges and shields on ephemeral
 * ports with real LMDB directories, `--peers` naming each node's admin URL.
 * A recording proxy in front of a node logs when each purge copy arrives
 * and when the node answered it, so the order across nodes is asserted
 * from what the nodes saw.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { SHIELD_DEFAULTS } from '../origin-shield/defaults.js';
import { createGate, startTestOrigin, type Gate, type TestOrigin } from './helpers/origin.js';

const TOKEN = 'f'.repeat(32);
const AUTH = { authorization: `Bearer ${TOKEN}` };

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-fleet-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function startNode(input: Record<string, unknown>, at: { port?: number; dataDir?: string } = {}): Promise<EdgeServer> {
  const options = resolveEdgeOptions({
    host: '127.0.0.1',
    logLevel: 'silent',
    adminToken: TOKEN,
    ...input,
    port: at.port ?? 0,
    dataDir: at.dataDir ?? (await tempDir()),
  });
  const node = await startEdgeServer(options, { logger: false });
  cleanups.push(() => node.close());
  return node;
}

async function startOrigin(): Promise<TestOrigin> {
  const origin = await startTestOrigin();
  cleanups.push(() => origin.close());
  return origin;
}

/** Every node serves one public host, as behind one DNS name. */
async function get(base: string, path: string) {
  const res = await request(base + path, { headers: { host: 'cdn.example.com' } });
  const body = await res.body.text();
  const status = res.headers['cache-status'];
  return { status: res.statusCode, body, cacheStatus: Array.isArray(status) ? status.join(', ') : (status ?? '') };
}

async function purge(base: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${base}/_edge/purge`, {
    method: 'POST',
    headers: { ...AUTH, 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, json: (await res.json()) as Record<string, any> };
}

async function objects(node: EdgeServer): Promise<string[]> {
  const res = await fetch(`${node.url}/_edge/objects`, { headers: AUTH });
  return ((await res.json()) as { objects: { path: string }[] }).objects.map((o) => o.path);
}

async function peerStatus(node: EdgeServer): Promise<Record<string, any>[]> {
  const res = await fetch(`${node.url}/_edge/origins`, { headers: AUTH });
  return ((await res.json()) as { peers: Record<string, any>[] }).peers;
}

/** One event seen by a recording proxy: a purge copy arriving at its node, and the node's answer to it. */
interface Seen {
  node: string;
  event: 'arrive' | 'done';
  id?: string;
  status?: number;
  /** The node's answer (done events). */
  answer?: Record<string, unknown>;
}

interface Proxy {
  url: string;
  /** Send what arrives to this node from now on. */
  pointAt(target: string): void;
  /** Purge copies that reached this proxy. */
  purges(): number;
  /** Resolves once `n` purge copies have arrived. */
  arrivals(n: number): Promise<void>;
}

/**
 * An HTTP proxy in front of a node (`target`, or set later with `pointAt`
 * when the node's --peers must name the proxy): forwards everything
 * (content too, so it can stand for a shield) and logs purge arrivals and
 * the node's answers to `log`. A purge waits for `hold`, when given, before
 * it is forwarded.
 */
async function startProxy(name: string, log: Seen[], options: { target?: string; hold?: Gate } = {}): Promise<Proxy> {
  let upstream = options.target ? new URL(options.target) : undefined;
  const seen = createGate();
  const server = createServer((req, res) => {
    const isPurge = req.method === 'POST' && req.url === '/_edge/purge';
    const id = req.headers['edge-purge-id'] as string | undefined;
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', async () => {
      if (isPurge) {
        log.push({ node: name, event: 'arrive', id });
        seen.arrive();
        await options.hold?.wait();
      }
      if (!upstream) {
        res.writeHead(502);
        res.end();
        return;
      }
      const out = httpRequest(
        { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
        (answer: IncomingMessage) => {
          const body: Buffer[] = [];
          answer.on('data', (chunk: Buffer) => body.push(chunk));
          answer.on('end', () => {
            if (isPurge) log.push({ node: name, event: 'done', id, status: answer.statusCode, answer: JSON.parse(Buffer.concat(body).toString() || '{}') });
            res.writeHead(answer.statusCode!, answer.headers);
            res.end(Buffer.concat(body));
          });
        },
      );
      out.on('error', () => {
        res.writeHead(502);
        res.end();
      });
      out.end(Buffer.concat(chunks));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    pointAt: (target) => (upstream = new URL(target)),
    purges: () => seen.arrived,
    arrivals: (n) => seen.arrivals(n),
  };
}

const cacheable = { headers: { 'cache-control': 'public, max-age=300', 'content-type': 'text/css' }, body: 'a{}' };

describe('fleet purge', () => {
  it('a purge sent to one edge empties the shield first, then both edges; each then answers a miss', async () => {
    const origin = await startOrigin();
    origin.set('/o.css', cacheable);
    const log: Seen[] = [];
    const shield = await startNode({ ...SHIELD_DEFAULTS, origin: origin.url });
    const proxyS = await startProxy('shield', log, { target: shield.url });
    // Edges fetch through the shield's proxy; as their --shield it counts as a shield peer.
    const edgeB = await startNode({ origin: origin.url, shield: proxyS.url });
    const proxyB = await startProxy('edgeB', log, { target: edgeB.url });
    const edgeA = await startNode({ origin: origin.url, shield: proxyS.url, peers: proxyB.url });

    expect((await get(edgeA.url, '/o.css')).cacheStatus).toMatch(/^shield; fwd=uri-miss; stored.*, edge; fwd=uri-miss; stored/);
    expect((await get(edgeB.url, '/o.css')).cacheStatus).toMatch(/^shield; hit.*, edge; fwd=uri-miss; stored/);
    expect(origin.count('/o.css')).toBe(1);
    for (const node of [shield, edgeA, edgeB]) expect(await objects(node)).toEqual(['/o.css']);

    const answer = await purge(edgeA.url, { urls: ['/o.css'] });
    expect(answer.status).toBe(200);
    expect(answer.json).toEqual({
      purged: 1,
      id: expect.any(String),
      peers: [
        { url: proxyS.url, role: 'shield', status: 200, purged: 1 },
        { url: proxyB.url, role: 'edge', status: 200, purged: 1 },
      ],
    });
    for (const node of [shield, edgeA, edgeB]) expect(await objects(node)).toEqual([]);

    // The shield answered before the edge's copy was sent.
    expect(log.map((seen) => `${seen.node} ${seen.event}`)).toEqual(['shield arrive', 'shield done', 'edgeB arrive', 'edgeB done']);
    expect(new Set(log.map((seen) => seen.id))).toEqual(new Set([answer.json.id]));

    expect((await get(edgeA.url, '/o.css')).cacheStatus).toMatch(/^shield; fwd=uri-miss; stored.*, edge; fwd=uri-miss; stored/);
    expect((await get(edgeB.url, '/o.css')).cacheStatus).toMatch(/, edge; fwd=uri-miss; stored/);
    expect(origin.count('/o.css')).toBe(2);
  });

  it('waits for every shield before any edge, with two shields and two edges', async () => {
    const origin = await startOrigin();
    const log: Seen[] = [];
    // The second shield answers only once the first has answered: its copy is the last shield copy done.
    const shields = await Promise.all([0, 1].map(() => startNode({ ...SHIELD_DEFAULTS, origin: origin.url })));
    const edges = await Promise.all([0, 1].map(() => startNode({ origin: origin.url })));
    const late = createGate();
    const proxies = [
      await startProxy('shield1', log, { target: shields[0]!.url }),
      await startProxy('shield2', log, { target: shields[1]!.url, hold: late }),
      await startProxy('edge1', log, { target: edges[0]!.url }),
      await startProxy('edge2', log, { target: edges[1]!.url }),
    ];
    const coordinator = await startNode({
      origin: origin.url,
      peers: `${proxies[2]!.url},shield=${proxies[0]!.url},${proxies[3]!.url},shield=${proxies[1]!.url}`,
    });
    const answer = purge(coordinator.url, { prefixes: ['/assets/'] });
    await vi.waitFor(() => expect(log.filter((seen) => seen.event === 'done')).toHaveLength(1), { timeout: 10_000 });
    // shield1 answered, shield2 is held: no edge has seen the purge yet.
    expect(log.map((seen) => `${seen.node} ${seen.event}`).sort()).toEqual(['shield1 arrive', 'shield1 done', 'shield2 arrive']);
    late.open();
    const { json } = await answer;
    expect(json.peers.map((peer: { role: string }) => peer.role)).toEqual(['shield', 'shield', 'edge', 'edge']);
    const lastShieldDone = log.findLastIndex((seen) => seen.node.startsWith('shield') && seen.event === 'done');
    const firstEdge = log.findIndex((seen) => seen.node.startsWith('edge'));
    expect(lastShieldDone).toBeLessThan(firstEdge);
  });

  it('reports a peer that is down, and replays the purge it missed when it is back on the same port', async () => {
    const origin = await startOrigin();
    origin.set('/d.css', cacheable);
    const shield = await startNode({ ...SHIELD_DEFAULTS, origin: origin.url });
    const dataB = await tempDir();
    let edgeB = await startNode({ origin: origin.url, shield: shield.url }, { dataDir: dataB });
    const portB = edgeB.port;
    const edgeA = await startNode({ origin: origin.url, shield: shield.url, peers: edgeB.url, peerRetry: '20ms' });
    await get(edgeA.url, '/d.css');
    await get(edgeB.url, '/d.css');
    expect(await objects(edgeB)).toEqual(['/d.css']);

    await edgeB.close();
    const answer = await purge(edgeA.url, { urls: ['/d.css'] });
    expect(answer.status).toBe(200);
    expect(answer.json.peers).toEqual([
      { url: shield.url, role: 'shield', status: 200, purged: 1 },
      { url: edgeB.url, role: 'edge', status: 0, error: 'EDGE_PEER_UNREACHABLE', cause: 'ECONNREFUSED', queued: true },
    ]);
    expect(JSON.stringify(answer.json)).not.toMatch(/\bat .*\.[jt]s:\d+/);
    const down = (await peerStatus(edgeA)).find((peer) => peer.url === edgeB.url)!;
    expect(down).toMatchObject({ role: 'edge', state: 'down', stale: true, pending: 1, lost: 0, lastSuccess: null, lastError: 'ECONNREFUSED' });
    expect(down.lastFailure).toEqual(expect.any(String));

    // A second purge while it is down is queued without being tried.
    const second = await purge(edgeA.url, { tags: ['none'] });
    expect(second.json.peers[1]).toEqual({ url: edgeB.url, role: 'edge', status: 0, error: 'EDGE_PEER_DOWN', queued: true });

    // Back on the same port with the same disk: the object is still there until the replay lands.
    const replayed: string[] = [];
    let caughtUp!: () => void;
    const allReplayed = new Promise<void>((resolve) => (caughtUp = resolve));
    edgeB = await startNode({ origin: origin.url, shield: shield.url }, { port: portB, dataDir: dataB });
    edgeB.server.on('request', (req: IncomingMessage, res) => {
      if (req.url !== '/_edge/purge') return;
      const id = req.headers['edge-purge-id'] as string;
      res.on('finish', () => {
        replayed.push(id);
        if (replayed.length === 2) caughtUp();
      });
    });
    await allReplayed;
    expect(replayed).toEqual([answer.json.id, second.json.id]);
    await vi.waitFor(async () => expect((await peerStatus(edgeA))[1]).toMatchObject({ state: 'up', stale: false, pending: 0, nextRetry: null }), { timeout: 10_000 });
    expect((await peerStatus(edgeA))[1].lastSuccess).toEqual(expect.any(String));
    expect(await objects(edgeB)).toEqual([]);
    expect((await get(edgeB.url, '/d.css')).cacheStatus).toMatch(/, edge; fwd=uri-miss; stored/);
  });

  it('a peer that answers too late is reported as a timeout; the replay of the same id is answered as a duplicate', async () => {
    const origin = await startOrigin();
    const log: Seen[] = [];
    const edgeB = await startNode({ origin: origin.url });
    const hold = createGate();
    const proxyB = await startProxy('edgeB', log, { target: edgeB.url, hold });
    const edgeA = await startNode({ origin: origin.url, peers: proxyB.url, peerTimeout: '200ms', peerRetry: '20ms' });
    const push = await fetch(`${edgeB.url}/_edge/push/late.css`, { method: 'PUT', headers: { ...AUTH, 'content-type': 'text/css' }, body: 'l{}' });
    expect(push.status).toBe(201);

    const answer = await purge(edgeA.url, { urls: ['/late.css'] });
    expect(answer.json.peers).toEqual([{ url: proxyB.url, role: 'edge', status: 0, error: 'EDGE_PEER_TIMEOUT', queued: true }]);
    expect((await peerStatus(edgeA))[0]).toMatchObject({ state: 'down', pending: 1, lastError: 'EDGE_PEER_TIMEOUT' });

    // Every copy held so far reaches B now, and later replays go straight through.
    hold.open();
    await vi.waitFor(async () => expect((await peerStatus(edgeA))[0]).toMatchObject({ state: 'up', pending: 0 }), { timeout: 10_000 });
    // Copies that timed out at A were still applied at B when released: the first one purges, the rest are duplicates.
    await vi.waitFor(() => expect(log.filter((seen) => seen.event === 'done')).toHaveLength(proxyB.purges()), { timeout: 10_000 });
    const applied = log.filter((seen) => seen.event === 'done' && seen.answer?.duplicate !== true);
    expect(applied.map((seen) => seen.answer)).toEqual([{ purged: 1, id: answer.json.id }]);
    expect(log.filter((seen) => seen.event === 'done').every((seen) => seen.id === answer.json.id && seen.status === 200)).toBe(true);
    expect(await objects(edgeB)).toEqual([]);
  });

  it('applies a purge id once: a repeat is answered as a duplicate, purges nothing and is not sent on', async () => {
    const origin = await startOrigin();
    const log: Seen[] = [];
    const edgeB = await startNode({ origin: origin.url });
    const proxyB = await startProxy('edgeB', log, { target: edgeB.url });
    const edgeA = await startNode({ origin: origin.url, peers: proxyB.url });
    const push = (node: EdgeServer) =>
      fetch(`${node.url}/_edge/push/x.css`, { method: 'PUT', headers: { ...AUTH, 'content-type': 'text/css' }, body: 'x{}' });

    for (const node of [edgeA, edgeB]) expect((await push(node)).status).toBe(201);
    const first = await purge(edgeA.url, { urls: ['/x.css'] }, { 'edge-purge-id': 'deploy-42' });
    expect(first.json).toEqual({ purged: 1, id: 'deploy-42', peers: [{ url: proxyB.url, role: 'edge', status: 200, purged: 1 }] });

    for (const node of [edgeA, edgeB]) expect((await push(node)).status).toBe(201);
    const again = await purge(edgeA.url, { urls: ['/x.css'] }, { 'edge-purge-id': 'deploy-42' });
    expect(again.json).toEqual({ purged: 1, id: 'deploy-42', duplicate: true });
    const copy = await purge(edgeB.url, { urls: ['/x.css'], forward: false }, { 'edge-purge-id': 'deploy-42' });
    expect(copy.json).toEqual({ purged: 1, id: 'deploy-42', duplicate: true });
    expect(proxyB.purges()).toBe(1);
    for (const node of [edgeA, edgeB]) expect(await objects(node)).toEqual(['/x.css']);

    // A bad id is refused before anything happens.
    const bad = await purge(edgeA.url, { urls: ['/x.css'] }, { 'edge-purge-id': 'no spaces' });
    expect(bad.status).toBe(400);
    expect(bad.json.error).toBe('EDGE_BAD_REQUEST');
  });

  it('does not loop when every node lists every node (itself included)', async () => {
    const origin = await startOrigin();
    origin.set('/l.css', cacheable);
    const log: Seen[] = [];
    const names = ['shield', 'edgeA', 'edgeB'];
    const proxies = await Promise.all(names.map((name) => startProxy(name, log)));
    // One list for the whole fleet, each node included.
    const fleet = `shield=${proxies[0]!.url},${proxies[1]!.url},${proxies[2]!.url}`;
    const members = [
      await startNode({ ...SHIELD_DEFAULTS, origin: origin.url, peers: fleet }),
      await startNode({ origin: origin.url, shield: proxies[0]!.url, peers: fleet }),
      await startNode({ origin: origin.url, shield: proxies[0]!.url, peers: fleet }),
    ];
    members.forEach((member, i) => proxies[i]!.pointAt(member.url));
    for (const member of members.slice(1)) await get(member.url, '/l.css');

    for (const [i, member] of members.entries()) {
      log.length = 0;
      const { json } = await purge(member.url, { urls: ['/l.css'] });
      // One copy per listed node, its own included (answered as a duplicate); none sent on.
      expect(json.peers).toHaveLength(3);
      const self = json.peers.find((peer: { url: string }) => peer.url === proxies[i]!.url);
      expect(self).toMatchObject({ status: 200, duplicate: true });
      expect(log.filter((seen) => seen.event === 'arrive').map((seen) => seen.node).sort()).toEqual([...names].sort());
      expect(new Set(log.map((seen) => seen.id))).toEqual(new Set([json.id]));
    }
  });

  it('refuses a purge with 503 and Retry-After when a peer queue is full, before purging anything', async () => {
    const origin = await startOrigin();
    const log: Seen[] = [];
    const edgeB = await startNode({ origin: origin.url });
    const hold = createGate();
    const proxyB = await startProxy('edgeB', log, { target: edgeB.url, hold });
    const edgeA = await startNode({ origin: origin.url, peers: proxyB.url, peerConcurrency: 1, peerQueue: 1 });
    const push = await fetch(`${edgeA.url}/_edge/push/keep.css`, { method: 'PUT', headers: { ...AUTH, 'content-type': 'text/css' }, body: 'k{}' });
    expect(push.status).toBe(201);

    const first = purge(edgeA.url, { urls: ['/a.css'] });
    await proxyB.arrivals(1);
    const second = purge(edgeA.url, { urls: ['/b.css'] });
    await vi.waitFor(async () => expect((await peerStatus(edgeA))[0]).toMatchObject({ inFlight: 1, waiting: 1 }), { timeout: 10_000 });

    const refused = await purge(edgeA.url, { urls: ['/keep.css'] });
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toBe('1');
    expect(refused.json).toMatchObject({ error: 'EDGE_OVERLOADED', peer: proxyB.url });
    expect(await objects(edgeA)).toEqual(['/keep.css']);

    hold.open();
    expect((await first).status).toBe(200);
    expect((await second).status).toBe(200);
    expect(proxyB.purges()).toBe(2);
    // With the queue drained, purges are admitted again.
    expect((await purge(edgeA.url, { urls: ['/keep.css'] })).json.purged).toBe(1);
  });

  it('"forward": false purges this node only', async () => {
    const origin = await startOrigin();
    const log: Seen[] = [];
    const edgeB = await startNode({ origin: origin.url });
    const proxyB = await startProxy('edgeB', log, { target: edgeB.url });
    const edgeA = await startNode({ origin: origin.url, peers: proxyB.url });
    const { json } = await purge(edgeA.url, { all: true, forward: false });
    expect(json).toEqual({ purged: 0 });
    expect(proxyB.purges()).toBe(0);
  });
});
