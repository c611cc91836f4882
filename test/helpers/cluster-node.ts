/**
 * The CLI with `--workers N` as a real process tree, for cluster tests:
 * start it, send requests on connections of their own (so node:cluster
 * spreads them over its workers), tell which worker answered (the
 * X-Request-Id prefix, one per process), read the aggregated metrics.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Agent, request, type IncomingHttpHeaders } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export const CLUSTER_TOKEN = 'cluster-admin-token-0123456789';
export const CLUSTER_AUTH = { authorization: `Bearer ${CLUSTER_TOKEN}` };

export interface ClusterAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** One request on its own connection; rejects when the connection breaks before the whole body arrived. */
export function send(url: string, options: { method?: string; headers?: Record<string, string>; body?: string; timeoutMs?: number } = {}): Promise<ClusterAnswer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? 'GET', agent: false, headers: { connection: 'close', ...options.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('aborted')));
    });
    req.on('error', reject);
    if (options.timeoutMs !== undefined) req.setTimeout(options.timeoutMs, () => req.destroy(new Error('no answer')));
    req.end(options.body);
  });
}

/** Which process answered (the X-Request-Id prefix). */
export const answeredBy = (answer: ClusterAnswer): string => String(answer.headers['x-request-id']).split('-')[0]!;

export interface ClusterNode {
  child: ChildProcess;
  url: string;
  dir: string;
  /** Resolves with the first stderr line matching. */
  waitFor(pattern: RegExp): Promise<RegExpExecArray>;
  exited: Promise<number | null>;
}

export async function startCluster(origin: string, extra: string[] = [], workers = 2): Promise<ClusterNode> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-cluster-'));
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', 'edge/node/cli.ts', '--workers', String(workers), '--origin', origin, '--port', '0', '--host', '127.0.0.1', '--data-dir', dir, '--admin-token', CLUSTER_TOKEN, ...extra],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const lines: string[] = [];
  const waiters: Array<{ pattern: RegExp; resolve: (match: RegExpExecArray) => void }> = [];
  createInterface({ input: child.stderr! }).on('line', (line) => {
    if (process.env.DEBUG_CLUSTER) console.error(line);
    lines.push(line);
    for (const waiter of [...waiters]) {
      const match = waiter.pattern.exec(line);
      if (match) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(match);
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const waitFor = (pattern: RegExp) =>
    new Promise<RegExpExecArray>((resolve, reject) => {
      const seen = lines.map((line) => pattern.exec(line)).find(Boolean);
      if (seen) return resolve(seen);
      waiters.push({ pattern, resolve });
      void exited.then((code) => reject(new Error(`edge exited with ${code}: ${lines.join('\n')}`)));
    });
  const [, url] = await waitFor(workers > 1 ? new RegExp(`listening on (http:\\/\\/\\S+) .*${workers} workers`) : /listening on (http:\/\/\S+)/);
  return { child, url: url!, dir, waitFor, exited };
}

export async function stopCluster(node: ClusterNode | undefined): Promise<void> {
  if (!node) return;
  if (node.child.exitCode === null && node.child.signalCode === null) node.child.kill('SIGTERM');
  await node.exited;
  await rm(node.dir, { recursive: true, force: true });
}

export async function clusterHealth(node: ClusterNode): Promise<{ pid: number; workers: Array<{ pid: number; uptime: number }> }> {
  return JSON.parse((await send(`${node.url}/_edge/health`)).body.toString());
}

/** The sum of a metric's samples in the aggregated `/_edge/metrics`. */
export async function metricSum(node: ClusterNode, name: string): Promise<number> {
  const text = (await send(`${node.url}/_edge/metrics`, { headers: CLUSTER_AUTH })).body.toString();
  let total = 0;
  for (const line of text.split('\n')) {
    const match = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)`).exec(line);
    if (match) total += Number(match[1]);
  }
  return total;
}

/** One request on `agent`'s single kept-alive connection. */
export function onConnection(agent: Agent, url: string, init: { method?: string; headers?: Record<string, string>; body?: string | Uint8Array } = {}): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent, method: init.method ?? 'GET', headers: init.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(init.body);
  });
}

/**
 * A kept-alive connection served by a worker other than `notWorker`:
 * connections are opened until one is (asking only /_edge/health on
 * them), so what the test sends on it next is handled by another worker
 * and nothing of it reaches `notWorker` first.
 */
export async function connectionAvoiding(node: ClusterNode, notWorker: string): Promise<{ agent: Agent; worker: string }> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const probe = await onConnection(agent, `${node.url}/_edge/health`);
    const worker = String(probe.headers['x-request-id']).split('-')[0]!;
    if (worker !== notWorker) return { agent, worker };
    agent.destroy();
  }
  throw new Error(`every connection landed on worker ${notWorker}`);
}

/** One request handled by a worker other than `notWorker` (on a connection of its own, closed after). */
export async function throughAnotherWorker(
  node: ClusterNode,
  notWorker: string,
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string | Uint8Array } = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  const { agent, worker } = await connectionAvoiding(node, notWorker);
  try {
    const answer = await onConnection(agent, url, init);
    if (String(answer.headers['x-request-id']).split('-')[0] !== worker) throw new Error(`answered by another worker than ${worker}`);
    return answer;
  } finally {
    agent.destroy();
  }
}
