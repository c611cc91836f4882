/**
 * Start a real edge node for end-to-end tests: a real test origin on an
 * ephemeral port, a fresh LMDB directory, the node on `listen(0)`, and an
 * injected clock so TTL tests move time instead of sleeping.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, fetch as undiciFetch } from 'undici';
import { resolveEdgeOptions, type EdgeOptions } from '../../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../../edge/node/server.js';
import { createTestClock, type TestClock } from './clock.js';
import { startTestOrigin, type TestOrigin } from './origin.js';

export interface TestEdge {
  origin: TestOrigin;
  edge: EdgeServer;
  clock: TestClock;
  options: EdgeOptions;
  dataDir: string;
  /** fetch a path on the edge. */
  get(path: string, init?: RequestInit): Promise<Response>;
  /** Wait for background refreshes and cache fills. */
  settle(): Promise<void>;
  /** Stop the node (keeping the data dir) and start a new one on it. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export async function startTestEdge(input: Record<string, unknown> = {}, opts: { clock?: TestClock; origin?: TestOrigin } = {}): Promise<TestEdge> {
  const origin = opts.origin ?? (await startTestOrigin());
  const clock = opts.clock ?? createTestClock(Date.now());
  const dataDir = await mkdtemp(join(tmpdir(), 'edge-test-'));
  const options = resolveEdgeOptions({ origin: origin.url, port: 0, host: '127.0.0.1', dataDir, logLevel: 'silent', ...input });
  let edge = await startEdgeServer(options, { now: clock.now, logger: false });
  // Our own client pool, renewed on restart, so no request rides a socket the old node closed.
  let client = new Agent();
  const handle: TestEdge = {
    origin,
    edge,
    clock,
    options,
    dataDir,
    get: (path, init) => undiciFetch(edge.url + path, { ...(init as object), dispatcher: client }) as unknown as Promise<Response>,
    settle: () => edge.edge.settle(),
    async restart() {
      const port = edge.port;
      await client.close();
      await edge.close();
      client = new Agent();
      // Same port: the Host header, and so the cache key, stays the same, as on a real restart.
      edge = await startEdgeServer({ ...options, port }, { now: clock.now, logger: false });
      handle.edge = edge;
    },
    async close() {
      await client.close();
      await edge.close();
      if (!opts.origin) await origin.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  return handle;
}
