/**
 * Origin offload: N requests with a Zipf key distribution over M keys,
 * spread over 3 edges (request i goes to edge i mod 3), in front of one
 * counting origin, in four topologies:
 *   - 3 edges in this process, straight to the origin, and through one
 *     shield in this process;
 *   - 3 edge processes (the CLI, `--workers 2` each), straight to the
 *     origin, and through one `origin-shield --workers 2` process: here the
 *     origin sees one request per object only if request collapsing works
 *     across the workers of a node (the primary's fill leases).
 * Counts origin requests (not timing) against what exact collapsing gives:
 * one per distinct key with a shield, one per distinct key of each edge
 * without. The topologies run in interleaved rounds, each on cold caches.
 *   BENCH_SHIELD_REQUESTS (default 6000), BENCH_SHIELD_KEYS (default 1000),
 *   rounds from BENCH_ROUNDS
 */
import { createServer } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { SHIELD_DEFAULTS } from '../origin-shield/defaults.js';
import { startEdgeCli, stop, type Started } from './procs.js';
import { median } from './load.js';

const N = Number(process.env.BENCH_SHIELD_REQUESTS ?? 6000);
const M = Number(process.env.BENCH_SHIELD_KEYS ?? 1000);
const ZIPF_S = 1.1;
const CONCURRENCY = 32;
const EDGES = 3;
const WORKERS = 2;

/** Deterministic Zipf sampler (inverse CDF over precomputed weights, seeded LCG). */
function zipfSampler(keys: number, s: number, seed = 42): () => number {
  const cdf: number[] = [];
  let total = 0;
  for (let k = 1; k <= keys; k++) cdf.push((total += 1 / k ** s));
  let state = seed;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const target = (state / 2 ** 32) * total;
    let lo = 0;
    let hi = keys - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid]! < target) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}

interface Repeat {
  /** The node that asked (the last `Via` hop) and the path. */
  asker: string;
  path: string;
  /** Milliseconds after that node's first request for the path. */
  afterMs: number[];
}

interface CountingOrigin {
  url: string;
  requests: () => number;
  /** Requests for a path the same node had asked for before: each is a fill that collapsing should have saved. */
  repeats: () => Repeat[];
  close: () => Promise<void>;
}

/** A node:http origin in this process that counts what reaches it, per asking node (answers cacheable for 10 minutes). */
async function startCountingOrigin(): Promise<CountingOrigin> {
  let requests = 0;
  const seen = new Map<string, { asker: string; path: string; at: number[] }>();
  const origin = createServer((req, res) => {
    requests++;
    // Each node names itself in Via (`--name`); the last hop is the node that asked.
    const asker = String(req.headers.via ?? '').split(',').at(-1)!.trim();
    const path = req.url ?? '';
    const entry = seen.get(`${asker} ${path}`) ?? { asker, path, at: [] };
    entry.at.push(performance.now());
    seen.set(`${asker} ${path}`, entry);
    res.writeHead(200, { 'cache-control': 'public, max-age=600', 'content-type': 'application/json' });
    res.end(JSON.stringify({ path }));
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(origin.address() as { port: number }).port}`,
    requests: () => requests,
    repeats: () =>
      [...seen.values()].filter((e) => e.at.length > 1).map((e) => ({ asker: e.asker, path: e.path, afterMs: e.at.slice(1).map((t) => Math.round(t - e.at[0]!)) })),
    close: () => {
      origin.closeAllConnections();
      return new Promise((resolve) => origin.close(() => resolve()));
    },
  };
}

interface Workload {
  errors: number;
  /** Distinct keys over all edges: the origin requests of exact collapsing behind one shield. */
  distinct: number;
  /** Distinct keys of each edge, summed: the origin requests of exact collapsing without a shield. */
  distinctPerEdge: number;
}

/** The same N requests every time (the sampler is seeded; request i goes to edge i mod 3), CONCURRENCY at once. */
async function drive(edgeUrls: string[]): Promise<Workload> {
  const next = zipfSampler(M, ZIPF_S);
  const dispatcher = new Agent({ connections: CONCURRENCY });
  let sent = 0;
  let errors = 0;
  const distinct = new Set<number>();
  const perEdge = edgeUrls.map(() => new Set<number>());
  const worker = async () => {
    while (sent < N) {
      const i = sent++;
      const edge = i % edgeUrls.length;
      const key = next();
      distinct.add(key);
      perEdge[edge]!.add(key);
      try {
        const res = await request(`${edgeUrls[edge]}/obj/${key}`, { dispatcher, headers: { host: 'cdn.example.com' } });
        await res.body.dump();
        if (res.statusCode !== 200) errors++;
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  await dispatcher.close();
  return { errors, distinct: distinct.size, distinctPerEdge: perEdge.reduce((n, keys) => n + keys.size, 0) };
}

interface Offload extends Workload {
  originRequests: number;
  repeats: Repeat[];
  /** Seconds for the N requests (start-up excluded). */
  seconds: number;
}

async function measure(startNodes: (originUrl: string) => Promise<{ edgeUrls: string[]; close: () => Promise<void> }>): Promise<Offload> {
  const origin = await startCountingOrigin();
  const nodes = await startNodes(origin.url);
  try {
    const started = performance.now();
    const workload = await drive(nodes.edgeUrls);
    const seconds = (performance.now() - started) / 1000;
    return { ...workload, originRequests: origin.requests(), repeats: origin.repeats(), seconds };
  } finally {
    await nodes.close();
    await origin.close();
  }
}

/** Edges (and a shield) as EdgeServers in this process: one process each, so collapsing is within the process. */
function inProcess(withShield: boolean) {
  return async (originUrl: string) => {
    const dirs: string[] = [];
    const nodes: EdgeServer[] = [];
    const start = async (input: Record<string, unknown>) => {
      const dataDir = await mkdtemp(join(tmpdir(), 'edge-offload-'));
      dirs.push(dataDir);
      const node = await startEdgeServer(resolveEdgeOptions({ host: '127.0.0.1', port: 0, logLevel: 'silent', ...input, dataDir }), { logger: false });
      nodes.push(node);
      return node;
    };
    const shield = withShield ? await start({ ...SHIELD_DEFAULTS, origin: originUrl }) : undefined;
    const edges = await Promise.all(Array.from({ length: EDGES }, (_, i) => start({ name: `edge-${i}`, origin: originUrl, ...(shield ? { shield: shield.url } : {}) })));
    return {
      edgeUrls: edges.map((edge) => edge.url),
      async close() {
        for (const node of nodes.reverse()) await node.close();
        await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
      },
    };
  };
}

/** Edges (and a shield) as CLI processes with `--workers 2`, each in its own process group (bench/procs.ts). */
function processes(withShield: boolean) {
  return async (originUrl: string) => {
    const started: Started[] = [];
    try {
      const shield = withShield ? await startEdgeCli(['--origin', originUrl, '--workers', String(WORKERS)], 'origin-shield') : undefined;
      if (shield) started.push(shield);
      const edgeArgs = ['--origin', originUrl, '--workers', String(WORKERS), ...(shield ? ['--shield', shield.url] : [])];
      const edges = await Promise.all(
        Array.from({ length: EDGES }, async (_, i) => {
          const edge = await startEdgeCli([...edgeArgs, '--name', `edge-${i}`]);
          started.push(edge);
          return edge;
        }),
      );
      return {
        edgeUrls: edges.map((edge) => edge.url),
        // Edges first, then the shield: nothing is in flight by then, the order only keeps shutdown quiet.
        close: async () => {
          await Promise.all(started.filter((s) => s !== shield).map((s) => stop(s.child)));
          if (shield) await stop(shield.child);
        },
      };
    } catch (error) {
      await Promise.all(started.map((s) => stop(s.child)));
      throw error;
    }
  };
}

interface Topology {
  label: string;
  withShield: boolean;
  start: (originUrl: string) => Promise<{ edgeUrls: string[]; close: () => Promise<void> }>;
}

const TOPOLOGIES: Topology[] = [
  { label: '3 edges, no shield (in-process)', withShield: false, start: inProcess(false) },
  { label: '3 edges + 1 shield (in-process)', withShield: true, start: inProcess(true) },
  { label: `3 edge processes x ${WORKERS} workers, no shield`, withShield: false, start: processes(false) },
  { label: `3 edge processes x ${WORKERS} workers + 1 shield process x ${WORKERS} workers`, withShield: true, start: processes(true) },
];

/** The one value when every round agrees, else the median and the min-max. */
const summary = (values: number[], digits = 0) => {
  const min = Math.min(...values);
  const max = Math.max(...values);
  return min === max ? min.toFixed(digits) : `${median(values).toFixed(digits)} (${min.toFixed(digits)}-${max.toFixed(digits)})`;
};

export async function shieldSection(config: { rounds: number }): Promise<void> {
  const { rounds } = config;
  const started = performance.now();
  console.error(`\norigin offload: ${N} requests, Zipf(s=${ZIPF_S}) over ${M} keys, 3 edges, ${CONCURRENCY} concurrent, ${rounds} interleaved rounds`);
  const results = new Map<Topology, Offload[]>(TOPOLOGIES.map((t) => [t, []]));
  for (let round = 1; round <= rounds; round++) {
    for (const topology of TOPOLOGIES) {
      process.stderr.write(`  [${round}/${rounds}] ${topology.label.padEnd(62)} `);
      const result = await measure(topology.start);
      results.get(topology)!.push(result);
      const exact = topology.withShield ? result.distinct : result.distinctPerEdge;
      process.stderr.write(`${result.originRequests} origin requests (exact collapsing: ${exact}), ${result.errors} errors, ${result.seconds.toFixed(1)} s\n`);
      for (const repeat of result.repeats) {
        process.stderr.write(`    ${repeat.asker} asked the origin for ${repeat.path} again ${repeat.afterMs.join(', ')} ms after its first request\n`);
      }
    }
  }
  console.log(`\n${N} requests, Zipf(s=${ZIPF_S}) over ${M} keys, request i to edge i mod 3, ${CONCURRENCY} concurrent; ${rounds} rounds, each on cold caches (median (min-max) where rounds differ).\n`);
  console.log('| topology | requests | distinct keys requested | origin requests if collapsing is exact | origin requests | offload | errors |');
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  for (const topology of TOPOLOGIES) {
    const own = results.get(topology)!;
    const exact = own.map((r) => (topology.withShield ? r.distinct : r.distinctPerEdge));
    const origin = own.map((r) => r.originRequests);
    const offload = origin.map((n) => (1 - n / N) * 100);
    console.log(
      `| ${topology.label} | ${N} | ${summary(own.map((r) => r.distinct))} | ${summary(exact)} | ${summary(origin)} | ${summary(offload, 1)} % | ${summary(own.map((r) => r.errors))} |`,
    );
  }
  console.log(
    `\nExact collapsing: one origin request per distinct key behind a shield; without one, one per distinct key of each edge. ` +
      `A row above that figure had origin requests collapsing should have saved.`,
  );
  console.log(`\nShield section time ${((performance.now() - started) / 1000).toFixed(0)} s.`);
}
