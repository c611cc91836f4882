/**
 * State shared across cluster workers (issues 11 and 16), on the CLI with
 * `--workers 2` (real processes, one LMDB directory, a real origin):
 * request collapsing across workers (one origin request per object,
 * whichever worker misses it; a leader killed mid-fill is replaced by a
 * new fill), rate-limit counters for the whole node, and presigned-upload
 * nonces that one worker's use spends for every worker.
 *
 * Which worker answered is read from the X-Request-Id prefix. Nothing here
 * sleeps: the origin holds its answers until the test has seen every
 * request waiting (the `edge_collapsed_waiting` gauge, summed over the
 * workers), then lets them go.
 */
import { readdir, readFile, readlink } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { answeredBy, CLUSTER_AUTH, clusterHealth, metricSum, send, startCluster, stopCluster, type ClusterAnswer, type ClusterNode } from './helpers/cluster-node.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

const CONCURRENT = 30;

/** Bytes that differ along the body (a truncated or shifted copy never compares equal). */
function patterned(size: number, seed: number): Buffer {
  const body = Buffer.alloc(size);
  for (let i = 0; i < size; i++) body[i] = (i * 31 + seed + (i >> 10)) & 0xff;
  return body;
}

/** Poll until `done` holds (each poll is a real request to the node; no sleeping). */
async function until(done: () => Promise<boolean>): Promise<void> {
  while (!(await done())) await new Promise((resolve) => setImmediate(resolve));
}

/** Which of `pids` owns the TCP socket bound to local port `port` (Linux /proc). */
async function ownerOfPort(port: number, pids: number[]): Promise<number | undefined> {
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(table, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const columns = line.trim().split(/\s+/);
      if (columns.length > 9 && parseInt(columns[1]!.split(':')[1]!, 16) === port && columns[9] !== '0') inodes.add(columns[9]!);
    }
  }
  for (const pid of pids) {
    for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
      const inode = /^socket:\[(\d+)\]$/.exec(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''))?.[1];
      if (inode && inodes.has(inode)) return pid;
    }
  }
  return undefined;
}

describe('--workers 2: request collapsing across workers, shared upload nonces', () => {
  let origin: TestOrigin;
  let node: ClusterNode;

  beforeAll(async () => {
    origin = await startTestOrigin();
    // Far beyond the tests' own time limits: a lease only moves because its holder died, never because it stalled.
    node = await startCluster(origin.url, ['--collapse-timeout', '300s']);
  }, 60_000);

  afterAll(async () => {
    await stopCluster(node);
    await origin?.close();
  });

  /** Send `CONCURRENT` requests for `path`, each on its own connection, and wait until all but one wait on the one origin fetch. */
  async function concurrentMisses(path: string): Promise<Array<Promise<ClusterAnswer | Error>>> {
    const answers = Array.from({ length: CONCURRENT }, () => send(`${node.url}${path}`, { timeoutMs: 30_000 }).catch((error: Error) => error));
    // Every request but the leader waits: in its worker's flight, or (the other worker's first) on the leader's fill lease.
    // A second origin request means a worker did not wait: the assertions below then fail instead of this waiting forever.
    await until(async () => origin.count(path) > 1 || (await metricSum(node, 'edge_collapsed_waiting')) === CONCURRENT - 1);
    return answers;
  }

  it('30 concurrent misses over separate connections, a slow origin: one origin request, 30 identical bodies, both workers answering', async () => {
    const body = patterned(256 * 1024, 1);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    // A slow origin: half the body at once, the rest once every request is waiting.
    origin.route('/shared/one.bin', async (_req, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=600', 'content-type': 'application/octet-stream', 'content-length': String(body.length) });
      res.write(body.subarray(0, body.length >> 1));
      await released;
      res.end(body.subarray(body.length >> 1));
    });
    const pending = await concurrentMisses('/shared/one.bin');
    release();
    const answers = await Promise.all(pending);
    expect(origin.count('/shared/one.bin')).toBe(1);
    for (const answer of answers) {
      if (answer instanceof Error) throw answer;
      expect(answer.status).toBe(200);
      expect(answer.body.equals(body)).toBe(true);
    }
    expect(new Set(answers.map((answer) => answeredBy(answer as ClusterAnswer))).size).toBe(2);
  }, 60_000);

  it('an origin error that may be shared reaches the waiters of both workers from one origin request', async () => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    origin.route('/shared/failing.txt', async (_req, res) => {
      await released;
      res.writeHead(503, { 'content-type': 'text/plain', 'retry-after': '7', 'content-length': '14' });
      res.end('origin is down');
    });
    const pending = await concurrentMisses('/shared/failing.txt');
    release();
    const answers = (await Promise.all(pending)) as ClusterAnswer[];
    expect(origin.count('/shared/failing.txt')).toBe(1);
    for (const answer of answers) {
      expect(answer.status).toBe(503);
      expect(answer.body.toString()).toBe('origin is down');
      expect(answer.headers['retry-after']).toBe('7');
    }
    expect(new Set(answers.map(answeredBy)).size).toBe(2);
  }, 60_000);

  it('30 revalidations at once (Cache-Control: no-cache) of an entry both workers hold in memory: one origin request, every answer the new version', async () => {
    const path = '/shared/revalidated.txt';
    origin.set(path, { headers: { 'cache-control': 'max-age=600', etag: '"v1"' }, body: 'version 1' });
    const warm = await Promise.all(Array.from({ length: 20 }, () => send(`${node.url}${path}`)));
    expect(warm.map((answer) => answer.body.toString())).toEqual(warm.map(() => 'version 1'));
    expect(new Set(warm.map(answeredBy)).size).toBe(2);
    const before = origin.count(path);

    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    origin.route(path, async (_req, res) => {
      await released;
      res.writeHead(200, { 'cache-control': 'max-age=600', etag: '"v2"', 'content-type': 'text/plain', 'content-length': '9' });
      res.end('version 2');
    });
    const pending = Array.from({ length: CONCURRENT }, () => send(`${node.url}${path}`, { headers: { 'cache-control': 'no-cache' } }));
    await until(async () => origin.count(path) > before + 1 || (await metricSum(node, 'edge_collapsed_waiting')) === CONCURRENT - 1);
    release();
    const answers = await Promise.all(pending);
    // The other worker's memory copy of version 1 is dropped before it reads the new one.
    expect(answers.map((answer) => answer.body.toString())).toEqual(answers.map(() => 'version 2'));
    expect(new Set(answers.map(answeredBy)).size).toBe(2);
    expect(origin.count(path)).toBe(before + 1);
  }, 60_000);

  it('the leader worker killed with SIGKILL mid-fill: the others get complete bodies from one new fill, nothing partial', async () => {
    const body = patterned(512 * 1024, 2);
    let leaderPort: number | undefined;
    origin.route('/shared/killed.bin', (req, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=600', 'content-type': 'application/octet-stream', 'content-length': String(body.length) });
      if (leaderPort !== undefined) return void res.end(body);
      // The first fill never finishes: its worker is killed half way.
      leaderPort = req.socket.remotePort;
      res.write(body.subarray(0, body.length >> 1));
    });
    const { workers } = await clusterHealth(node);
    const pending = await concurrentMisses('/shared/killed.bin');
    const victim = await ownerOfPort(leaderPort!, workers.map((w) => w.pid));
    expect(victim).toBeDefined();
    process.kill(victim!, 'SIGKILL');
    await node.waitFor(new RegExp(`worker ${victim} exited \\(SIGKILL\\)`));

    const answers = await Promise.all(pending);
    const served = answers.filter((answer): answer is ClusterAnswer => !(answer instanceof Error));
    // The killed worker's clients lose their connection (never a short 200); the other worker's all get the whole body.
    expect(served.length).toBeGreaterThan(0);
    expect(served.length).toBeLessThan(CONCURRENT);
    for (const answer of served) {
      expect(answer.status).toBe(200);
      expect(answer.body.equals(body)).toBe(true);
    }
    expect(new Set(served.map(answeredBy)).size).toBe(1);
    expect(origin.count('/shared/killed.bin')).toBe(2);

    // The new fill was stored whole: any worker (the replacement too, once it listens) answers it without the origin.
    let now = await clusterHealth(node);
    while (now.workers.length < 2 || now.workers.some((w) => w.pid === victim)) now = await clusterHealth(node);
    const later = await Promise.all(Array.from({ length: 6 }, () => send(`${node.url}/shared/killed.bin`)));
    for (const answer of later) expect(answer.body.equals(body)).toBe(true);
    expect(origin.count('/shared/killed.bin')).toBe(2);
  }, 60_000);

  async function uploadUrl(path: string): Promise<string> {
    const made = await send(`${node.url}/_edge/push-urls`, {
      method: 'POST',
      headers: { ...CLUSTER_AUTH, 'content-type': 'application/json' },
      body: JSON.stringify({ path, expiresIn: 600 }),
    });
    expect(made.status).toBe(200);
    return (JSON.parse(made.body.toString()) as { url: string }).url;
  }

  it('a presigned upload URL used through one worker is refused (403) through the other', async () => {
    const url = await uploadUrl('/uploads/once.txt');
    const first = await send(`${node.url}${url}`, { method: 'PUT', body: 'first' });
    expect(first.status).toBe(201);
    const again: ClusterAnswer[] = [];
    while (!again.some((answer) => answeredBy(answer) !== answeredBy(first))) {
      expect(again.length).toBeLessThan(50);
      again.push(await send(`${node.url}${url}`, { method: 'PUT', body: 'again' }));
    }
    for (const answer of again) {
      expect(answer.status).toBe(403);
      expect(JSON.parse(answer.body.toString())).toMatchObject({ error: 'EDGE_FORBIDDEN', reason: 'used' });
    }
    expect((await send(`${node.url}/uploads/once.txt`)).body.toString()).toBe('first');
  }, 30_000);

  it('one presigned upload URL sent to both workers at once stores exactly one upload', async () => {
    const url = await uploadUrl('/uploads/raced.txt');
    const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => send(`${node.url}${url}`, { method: 'PUT', body: `upload ${i}` })));
    expect(new Set(answers.map(answeredBy)).size).toBe(2);
    const stored = answers.map((answer, i) => ({ answer, i })).filter(({ answer }) => answer.status === 201);
    expect(stored).toHaveLength(1);
    for (const answer of answers) if (answer.status !== 201) expect(answer.status).toBe(403);
    expect((await send(`${node.url}/uploads/raced.txt`)).body.toString()).toBe(`upload ${stored[0]!.i}`);
  }, 30_000);
});

describe('--workers 2 --collapse-timeout 3s: a fill that stalls', () => {
  let origin: TestOrigin;
  let node: ClusterNode;

  beforeAll(async () => {
    origin = await startTestOrigin();
    node = await startCluster(origin.url, ['--collapse-timeout', '3s']);
  }, 60_000);

  afterAll(async () => {
    await stopCluster(node);
    await origin?.close();
  });

  it('past --collapse-timeout one waiter in the whole node takes the fill over: two origin requests, not one per worker', async () => {
    const path = '/stalled/one.bin';
    const body = patterned(64 * 1024, 3);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let first = true;
    origin.route(path, async (_req, res) => {
      // The first fill stalls before its headers until the test lets it go; later ones answer at once.
      if (first) {
        first = false;
        await released;
      }
      res.writeHead(200, { 'cache-control': 'max-age=600', 'content-type': 'application/octet-stream', 'content-length': String(body.length) });
      res.end(body);
    });
    let settled = 0;
    let allButOne!: () => void;
    const allButOneSettled = new Promise<void>((resolve) => (allButOne = resolve));
    const pending = Array.from({ length: CONCURRENT }, () =>
      send(`${node.url}${path}`, { timeoutMs: 30_000 }).finally(() => {
        if (++settled === CONCURRENT - 1) allButOne();
      }),
    );
    await until(async () => origin.count(path) > 1 || (await metricSum(node, 'edge_collapsed_waiting')) === CONCURRENT - 1);
    // Everyone but the stalled leader's own client is answered by the one fill that took over.
    await allButOneSettled;
    expect(origin.count(path)).toBe(2);
    release();
    const answers = await Promise.all(pending);
    for (const answer of answers) {
      expect(answer.status).toBe(200);
      expect(answer.body.equals(body)).toBe(true);
    }
    expect(new Set(answers.map(answeredBy)).size).toBe(2);
    expect(origin.count(path)).toBe(2);
  }, 60_000);
});

describe('--workers 2 --rate-limit 5/1s: one limit for the node', () => {
  let origin: TestOrigin;
  let node: ClusterNode;

  beforeAll(async () => {
    origin = await startTestOrigin();
    origin.set('/limited.txt', { headers: { 'cache-control': 'max-age=600' }, body: 'limited' });
    node = await startCluster(origin.url, ['--rate-limit', '5/1s']);
  }, 60_000);

  afterAll(async () => {
    await stopCluster(node);
    await origin?.close();
  });

  it('20 quick requests over separate connections, both workers answering: 5 per window answered, the rest 429 with Retry-After', async () => {
    const first = Date.now();
    const answers = await Promise.all(Array.from({ length: 20 }, () => send(`${node.url}/limited.txt`)));
    const last = Date.now();
    // Fixed windows: a burst that crosses a second boundary may use the next window's quota too (README "Access control").
    const windows = Math.floor(last / 1000) - Math.floor(first / 1000) + 1;
    expect(new Set(answers.map(answeredBy)).size).toBe(2);
    const admitted = answers.filter((answer) => answer.status === 200);
    expect(admitted.length).toBeLessThanOrEqual(5 * windows);
    if (windows === 1) {
      expect(admitted).toHaveLength(5);
      // One counter for the node: the remaining counts handed out are 4, 3, 2, 1, 0, each once.
      const remaining = admitted.map((answer) => Number(/;r=(\d+)/.exec(String(answer.headers.ratelimit))?.[1])).sort();
      expect(remaining).toEqual([0, 1, 2, 3, 4]);
    }
    for (const answer of answers) {
      if (answer.status === 200) continue;
      expect(answer.status).toBe(429);
      expect(answer.headers['retry-after']).toMatch(/^[1-9]\d*$/);
      expect(JSON.parse(answer.body.toString())).toMatchObject({ error: 'EDGE_RATE_LIMITED' });
    }
  }, 30_000);
});
