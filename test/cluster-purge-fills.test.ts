/**
 * Issue 10 with `--workers 2`: a purge received by one worker reaches the
 * fills in flight in every worker. A fill starts on worker X (the origin
 * sends the headers and half the body, then waits for the test); the purge
 * goes through worker Y (a kept-alive connection that is known to be on
 * Y); then the origin finishes the old body. The fill's client gets the
 * whole old body, and no later request, on either worker, is answered with
 * it: the fill was not stored (or was stored invalidated, soft purge).
 * The same cases run on `--workers 1` (one process: the purge log alone).
 */
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { answeredBy, CLUSTER_AUTH, connectionAvoiding, onConnection, send, startCluster, stopCluster, type ClusterNode } from './helpers/cluster-node.js';
import { createGate, startTestOrigin, type Gate, type TestOrigin } from './helpers/origin.js';

const OLD_HALF = 'old version, first half; ';
const OLD_BODY = OLD_HALF + 'old version, second half';

/** The first GET of `path` is held half-way until the returned gate opens; every later request gets "new version". */
function slowOldThenNew(origin: TestOrigin, path: string, headers: Record<string, string> = {}): Gate {
  const gate = createGate();
  let first = true;
  origin.route(path, async (req, res) => {
    const cached = { 'cache-control': 'max-age=600', ...headers };
    if (req.method === 'GET' && first) {
      first = false;
      res.writeHead(200, { ...cached, 'content-length': Buffer.byteLength(OLD_BODY) });
      res.write(OLD_HALF);
      await gate.wait();
      res.end(OLD_BODY.slice(OLD_HALF.length));
      return;
    }
    res.writeHead(200, { ...cached, 'content-length': Buffer.byteLength('new version') });
    res.end('new version');
  });
  return gate;
}

/** A GET whose headers have arrived (so the fill is under way); `body` resolves with the whole body. */
function startSlowGet(url: string): Promise<{ worker: string; body: Promise<string> }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers: { connection: 'close' } }, (res) => {
      const chunks: Buffer[] = [];
      const body = new Promise<string>((done, fail) => {
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => done(Buffer.concat(chunks).toString()));
        res.on('error', fail);
        res.on('aborted', () => fail(new Error('aborted')));
      });
      // Once the first bytes are here, the worker's fill has begun.
      res.once('data', () => resolve({ worker: String(res.headers['x-request-id']).split('-')[0]!, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe.each([2, 1])('--workers %i: a purge reaches fills in flight in every worker', (workers) => {
  let origin: TestOrigin;
  let node: ClusterNode;

  beforeAll(async () => {
    origin = await startTestOrigin();
    node = await startCluster(origin.url, [], workers);
  }, 60_000);

  afterAll(async () => {
    await stopCluster(node);
    await origin?.close();
  });

  async function purgeDuringFill(path: string, headers: Record<string, string>, act: (agent: Agent) => Promise<{ status: number; headers: IncomingHttpHeaders }>): Promise<void> {
    const gate = slowOldThenNew(origin, path, headers);
    const slow = await startSlowGet(`${node.url}${path}`);
    // With two workers, the purge goes through the one the fill is not on.
    const { agent, worker } = workers > 1 ? await connectionAvoiding(node, slow.worker) : { agent: new Agent({ keepAlive: true, maxSockets: 1 }), worker: slow.worker };
    try {
      const acted = await act(agent);
      expect(acted.status).toBeLessThan(300);
      expect(String(acted.headers['x-request-id']).split('-')[0]).toBe(worker);
    } finally {
      agent.destroy();
    }
    gate.open();
    // The fill's own client gets the version it started with, whole.
    expect(await slow.body).toBe(OLD_BODY);

    const later = await Promise.all(Array.from({ length: 12 }, () => send(`${node.url}${path}`)));
    expect(new Set(later.map(answeredBy)).size).toBe(workers);
    for (const answer of later) expect(answer.body.toString()).toBe('new version');
    expect(origin.count(path)).toBeGreaterThanOrEqual(2);
  }

  const purge = (body: unknown) => (agent: Agent) =>
    onConnection(agent, `${node.url}/_edge/purge`, { method: 'POST', headers: { ...CLUSTER_AUTH, 'content-type': 'application/json' }, body: JSON.stringify(body) });

  it('by URL', async () => {
    await purgeDuringFill('/pf/url.txt', {}, purge({ urls: ['/pf/url.txt'] }));
  });

  it('by tag', async () => {
    await purgeDuringFill('/pf/tagged.txt', { 'cache-tag': 'pf-tag' }, purge({ tags: ['pf-tag'] }));
  });

  it('by prefix', async () => {
    await purgeDuringFill('/pf/prefixed/a.txt', {}, purge({ prefixes: ['/pf/prefixed/'] }));
  });

  it('of everything', async () => {
    await purgeDuringFill('/pf/all.txt', {}, purge({ all: true }));
  });

  it('soft (the fill is stored invalidated: the next request goes to the origin)', async () => {
    await purgeDuringFill('/pf/soft.txt', {}, purge({ urls: ['/pf/soft.txt'], soft: true }));
  });

  it('by an unsafe method on the URL (RFC 9111 4.4)', async () => {
    await purgeDuringFill('/pf/posted.txt', {}, (agent) => onConnection(agent, `${node.url}/pf/posted.txt`, { method: 'POST', body: 'x' }));
  });
});
