/**
 * Cluster mode (issue 11): the CLI with `--workers 2`, real processes, one
 * LMDB directory, a real origin. Which worker answered is read from the
 * X-Request-Id prefix (one per process). Nothing here sleeps: it waits on
 * log lines, exits and answers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  answeredBy as worker,
  CLUSTER_AUTH as AUTH,
  clusterHealth as health,
  send,
  startCluster,
  stopCluster,
  type ClusterNode as Node,
} from './helpers/cluster-node.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

function requestsCounted(text: string): number {
  let total = 0;
  for (const line of text.split('\n')) {
    const match = /^edge_requests_total\{[^}]*\} (\d+)/.exec(line);
    if (match) total += Number(match[1]);
  }
  return total;
}

describe('--workers 2', () => {
  let origin: TestOrigin;
  let node: Node;

  beforeAll(async () => {
    origin = await startTestOrigin();
    node = await startCluster(origin.url);
  }, 60_000);

  afterAll(async () => {
    await stopCluster(node);
    await origin?.close();
  });

  it('lists every worker in /_edge/health', async () => {
    const { workers } = await health(node);
    expect(workers).toHaveLength(2);
    expect(new Set(workers.map((w) => w.pid)).size).toBe(2);
  });

  it('serves an object pushed through one worker from every worker at once', async () => {
    const pushed = await send(`${node.url}/_edge/push/cluster/pushed.txt`, { method: 'PUT', headers: AUTH, body: 'pushed once' });
    expect(pushed.status).toBe(201);
    const answers = await Promise.all(Array.from({ length: 50 }, () => send(`${node.url}/cluster/pushed.txt`)));
    for (const answer of answers) {
      expect(answer.status).toBe(200);
      expect(answer.body.toString()).toBe('pushed once');
    }
    expect(new Set(answers.map(worker)).size).toBe(2);
    expect(origin.count('/cluster/pushed.txt')).toBe(0);

    // A replacement and a DELETE are seen at once by every worker too.
    expect((await send(`${node.url}/_edge/push/cluster/pushed.txt`, { method: 'PUT', headers: AUTH, body: 'pushed twice' })).status).toBe(201);
    const replaced = await Promise.all(Array.from({ length: 20 }, () => send(`${node.url}/cluster/pushed.txt`)));
    expect(replaced.map((answer) => answer.body.toString())).toEqual(replaced.map(() => 'pushed twice'));
    expect((await send(`${node.url}/_edge/push/cluster/pushed.txt`, { method: 'DELETE', headers: AUTH })).status).toBe(204);
    origin.set('/cluster/pushed.txt', { status: 404, body: 'gone' });
    const deleted = await Promise.all(Array.from({ length: 20 }, () => send(`${node.url}/cluster/pushed.txt`)));
    for (const answer of deleted) expect(answer.body.toString()).not.toContain('pushed');
  });

  it('answers a purge only once no worker can serve the old version', async () => {
    origin.set('/cluster/purged.txt', { headers: { 'cache-control': 'max-age=600' }, body: 'old version' });
    // Stored once, then every worker gets it into its memory tier.
    expect((await send(`${node.url}/cluster/purged.txt`)).status).toBe(200);
    const warm = await Promise.all(Array.from({ length: 20 }, () => send(`${node.url}/cluster/purged.txt`)));
    expect(new Set(warm.map(worker)).size).toBe(2);
    expect(warm.filter((answer) => String(answer.headers['cache-status']).includes('hit')).length).toBeGreaterThan(0);

    origin.set('/cluster/purged.txt', { headers: { 'cache-control': 'max-age=600' }, body: 'new version' });
    const purge = await send(`${node.url}/_edge/purge`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ urls: ['/cluster/purged.txt'] }) });
    expect(purge.status).toBe(200);
    const after = await Promise.all(Array.from({ length: 50 }, () => send(`${node.url}/cluster/purged.txt`)));
    expect(new Set(after.map(worker)).size).toBe(2);
    for (const answer of after) expect(answer.body.toString()).toBe('new version');
  });

  it('counts every request once in /_edge/metrics, summed over the workers', async () => {
    origin.set('/cluster/counted.txt', { headers: { 'cache-control': 'max-age=600' }, body: 'counted' });
    const before = requestsCounted((await send(`${node.url}/_edge/metrics`, { headers: AUTH })).body.toString());
    const answers = await Promise.all(Array.from({ length: 40 }, () => send(`${node.url}/cluster/counted.txt`)));
    expect(new Set(answers.map(worker)).size).toBe(2);
    const after = requestsCounted((await send(`${node.url}/_edge/metrics`, { headers: AUTH })).body.toString());
    // The 40 requests and the first scrape.
    expect(after - before).toBe(41);
  });
});

describe('--workers 2: a worker killed mid-fill', () => {
  let origin: TestOrigin;
  let node: Node | undefined;

  afterAll(async () => {
    await stopCluster(node);
    await origin?.close();
  });

  it('keeps answering, replaces the worker and never serves a partial body', async () => {
    origin = await startTestOrigin();
    const bodies = new Map<string, Buffer>();
    // The origin sends half of each body, then the rest once the worker is dead: fills are in flight when it dies.
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    for (let i = 0; i < 12; i++) {
      const body = Buffer.alloc(600 * 1024 + i, String.fromCharCode(97 + i));
      const path = `/cluster/big-${i}.bin`;
      bodies.set(path, body);
      origin.route(path, async (_req, res) => {
        res.writeHead(200, { 'cache-control': 'max-age=600', 'content-type': 'application/octet-stream' });
        res.write(body.subarray(0, body.length >> 1));
        await released;
        res.end(body.subarray(body.length >> 1));
      });
    }
    node = await startCluster(origin.url);
    const { workers } = await health(node);
    const victim = workers[0]!.pid;

    // A connection node:cluster was handing to the worker as it died stays open in the primary
    // until the client gives up: those, like resets, count as failed, never as served.
    const first = [...bodies.keys()].map((path) => send(`${node!.url}${path}`, { timeoutMs: 10_000 }).catch((error: Error) => error));
    // Kill once the origin is sending.
    await new Promise<void>((resolve) => {
      const check = () => (origin.requests.length >= 4 ? resolve() : setImmediate(check));
      check();
    });
    process.kill(victim, 'SIGKILL');
    await node.waitFor(new RegExp(`worker ${victim} exited \\(SIGKILL\\); starting another`));
    release();
    const during = await Promise.all(first);
    for (const [i, answer] of during.entries()) {
      if (answer instanceof Error) continue; // in flight on the killed worker
      expect(answer.status).toBe(200);
      expect(answer.body.equals(bodies.get([...bodies.keys()][i]!)!)).toBe(true);
    }

    // The node keeps answering, and the replacement comes up with a new pid.
    let now = await health(node);
    while (now.workers.length < 2 || now.workers.some((w) => w.pid === victim)) now = await health(node);
    expect(now.workers.map((w) => w.pid)).not.toContain(victim);

    for (let round = 0; round < 2; round++) {
      const answers = await Promise.all([...bodies.keys()].map((path) => send(`${node!.url}${path}`)));
      for (const [i, answer] of answers.entries()) {
        expect(answer.status).toBe(200);
        expect(answer.body.equals(bodies.get([...bodies.keys()][i]!)!)).toBe(true);
      }
    }
  }, 120_000);

  it('drains on SIGTERM, and workers never outlive a killed primary', async () => {
    const { workers } = await health(node!);
    node!.child.kill('SIGKILL');
    await node!.exited;
    for (const { pid } of workers) {
      // Each worker exits on its own when the IPC channel closes.
      for (;;) {
        try {
          process.kill(pid, 0);
        } catch {
          break;
        }
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
    const again = await startCluster(origin.url);
    node = again;
    again.child.kill('SIGTERM');
    expect(await again.exited).toBe(0);
    await again.waitFor(/SIGTERM, closing 2 workers/);
  }, 60_000);
});
