/**
 * Origin offload: N requests with a Zipf key distribution over M keys,
 * spread over 3 edges, once with the edges going straight to the origin
 * and once through one origin shield. Counts origin requests (not
 * timing), so the nodes run in this process.
 *   BENCH_SHIELD_REQUESTS (default 6000), BENCH_SHIELD_KEYS (default 1000)
 */
import { createServer } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { SHIELD_DEFAULTS } from '../origin-shield/defaults.js';

const N = Number(process.env.BENCH_SHIELD_REQUESTS ?? 6000);
const M = Number(process.env.BENCH_SHIELD_KEYS ?? 1000);
const ZIPF_S = 1.1;
const CONCURRENCY = 32;

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

async function run(withShield: boolean): Promise<{ originRequests: number; errors: number; distinct: number }> {
  let originRequests = 0;
  const origin = createServer((req, res) => {
    originRequests++;
    res.writeHead(200, { 'cache-control': 'public, max-age=600', 'content-type': 'application/json' });
    res.end(JSON.stringify({ path: req.url }));
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  const originUrl = `http://127.0.0.1:${(origin.address() as { port: number }).port}`;
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
  const edges = await Promise.all([0, 1, 2].map(() => start({ origin: originUrl, ...(shield ? { shield: shield.url } : {}) })));
  const next = zipfSampler(M, ZIPF_S);
  const dispatcher = new Agent({ connections: CONCURRENCY });
  let sent = 0;
  let errors = 0;
  const distinct = new Set<number>();
  const worker = async () => {
    while (sent < N) {
      const i = sent++;
      if (i % 1000 === 0) process.stderr.write('.');
      const edge = edges[i % 3]!;
      try {
        const key = next();
        distinct.add(key);
        const res = await request(`${edge.url}/obj/${key}`, { dispatcher, headers: { host: 'cdn.example.com' } });
        await res.body.dump();
        if (res.statusCode !== 200) errors++;
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  await dispatcher.close();
  for (const node of nodes.reverse()) await node.close();
  await new Promise((resolve) => origin.close(resolve));
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  return { originRequests, errors, distinct: distinct.size };
}

export async function shieldSection(): Promise<void> {
  console.error(`\norigin offload: ${N} requests, Zipf(s=${ZIPF_S}) over ${M} keys, 3 edges, ${CONCURRENCY} concurrent`);
  process.stderr.write('  without shield ');
  const direct = await run(false);
  process.stderr.write(` ${direct.originRequests} origin requests\n  with one shield `);
  const shielded = await run(true);
  process.stderr.write(` ${shielded.originRequests} origin requests\n`);
  console.log('\n| topology | requests | distinct keys requested | origin requests | offload | errors |');
  console.log('|---|---:|---:|---:|---:|---:|');
  for (const [name, result] of [
    ['3 edges, no shield', direct],
    ['3 edges + 1 shield', shielded],
  ] as const) {
    console.log(`| ${name} | ${N} | ${result.distinct} | ${result.originRequests} | ${((1 - result.originRequests / N) * 100).toFixed(1)} % | ${result.errors} |`);
  }
}
