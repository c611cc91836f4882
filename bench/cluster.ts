/**
 * The cluster section of `npm run bench` (`BENCH_ONLY=cluster`, about 80 s
 * with the defaults): the CLI with `--workers 1` against `--workers N` (N:
 * one per core, at least 2), in front of one bare node:http origin, in
 * interleaved rounds (median and min-max spread), with the scaling factor
 * per core (the ratio to `--workers 1` divided by N: 1 is perfect scaling),
 * requests per second of server CPU (what the cluster costs per request,
 * less sensitive to other work on the machine than req/s), and the CPU the
 * load generator itself used, in cores of the machine (on a 2-core machine
 * it competes with the second worker for the second core):
 *   - 1 KB memory-tier hits (hits never touch the cluster's IPC);
 *   - the same with `--rate-limit 999999999/1s` (a limit never reached): with
 *     one process the counters are in memory and hits keep the synchronous
 *     path; with N workers every limited request asks the primary's
 *     counters (one IPC round trip) and takes the general path;
 *   - misses (a unique query string per request): with N workers each miss
 *     also asks the primary for its fill lease (cross-worker collapsing).
 * Servers run in their own process groups (bench/procs.ts); the workers are
 * in their primary's group, so "server CPU" covers the whole cluster.
 * Then one shared rate-limit take alone, over the cluster bus without HTTP
 * (bench/cluster-ipc.ts).
 */
import { availableParallelism } from 'node:os';
import { measureRateIpc, type IpcCost } from './cluster-ipc.js';
import { fmtRatio, median, otherCpu, spread, warmUp, type LoadGenerator, type LoadResult } from './load.js';
import { startChild, startEdgeCli, stop, type Started } from './procs.js';

export interface ClusterBenchConfig {
  generator: LoadGenerator;
  duration: number;
  rounds: number;
  connections: number;
  threads: number;
}

const KB = 1024;
const WARMUP_SECONDS = 1;
const NEVER_REACHED = '999999999/1s';
/** Workers of the cluster compared with one process: one per core, as `npx edge` defaults to (at least two, to have a cluster). */
const WORKERS = Math.max(2, availableParallelism());
const CORES = availableParallelism();

interface Scenario {
  key: string;
  label: string;
  url: string;
  group: number;
  uniquePaths?: boolean;
  /** The row this one is compared with (the same load on `--workers 1`). */
  baseline?: string;
}

const progress = (text: string) => process.stderr.write(text);
const fmtRps = (n: number) => (Number.isFinite(n) ? (n >= 100 ? Math.round(n).toString() : n.toFixed(1)) : 'n/a');
const fmtMs = (n: number) => (Number.isFinite(n) ? (n >= 10 ? n.toFixed(1) : n.toFixed(2)) : 'n/a');

const fmtCores = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : 'n/a');

/** Fill the cache, then ask until both workers have answered from memory (a few requests on new connections). */
async function prime(url: string): Promise<void> {
  for (let i = 0; i < 8; i++) {
    const res = await fetch(url, { headers: { connection: 'close' } });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`${url} answered ${res.status} while priming`);
  }
}

export async function clusterSection(config: ClusterBenchConfig): Promise<void> {
  const { generator, duration, rounds, connections, threads } = config;
  const started = performance.now();
  progress(`\ncluster: --workers 1 vs --workers ${WORKERS}, ${connections} connections, ${rounds} interleaved rounds of ${duration} s, ${generator.name}\n`);
  progress('  starting servers ');
  const origin = await startChild(['bare', String(KB)]);
  const edges: Started[] = [];
  try {
    const [one, two, oneLimited, twoLimited] = await Promise.all([
      startEdgeCli(['--origin', origin.url, '--workers', '1']),
      startEdgeCli(['--origin', origin.url, '--workers', String(WORKERS)]),
      startEdgeCli(['--origin', origin.url, '--workers', '1', '--rate-limit', NEVER_REACHED]),
      startEdgeCli(['--origin', origin.url, '--workers', String(WORKERS), '--rate-limit', NEVER_REACHED]),
    ]);
    edges.push(one, two, oneLimited, twoLimited);
    progress('done\n');
    const hit = `/blob/${KB}`;
    const scenarios: Scenario[] = [
      { key: 'hit1', label: '--workers 1, memory-tier hit 1 KB', url: one.url + hit, group: one.child.pid! },
      { key: 'hitN', label: `--workers ${WORKERS}, memory-tier hit 1 KB`, url: two.url + hit, group: two.child.pid!, baseline: 'hit1' },
      { key: 'limited1', label: `--workers 1 --rate-limit ${NEVER_REACHED}, hit 1 KB`, url: oneLimited.url + hit, group: oneLimited.child.pid! },
      { key: 'limitedN', label: `--workers ${WORKERS} --rate-limit ${NEVER_REACHED}, hit 1 KB`, url: twoLimited.url + hit, group: twoLimited.child.pid!, baseline: 'limited1' },
      { key: 'miss1', label: '--workers 1, miss 1 KB (unique paths)', url: one.url + hit, group: one.child.pid!, uniquePaths: true },
      { key: 'missN', label: `--workers ${WORKERS}, miss 1 KB (unique paths)`, url: two.url + hit, group: two.child.pid!, uniquePaths: true, baseline: 'miss1' },
    ];
    for (const s of scenarios) if (!s.uniquePaths) await prime(s.url);

    await warmUp(scenarios, WARMUP_SECONDS, (s, duration) => generator.run(s.url, { duration, connections, threads, uniquePaths: s.uniquePaths }));

    const runs = new Map<string, LoadResult[]>(scenarios.map((s) => [s.key, []]));
    for (let round = 1; round <= rounds; round++) {
      for (const s of scenarios) {
        progress(`  [${round}/${rounds}] ${s.label.padEnd(58)} `);
        const result = await generator.run(s.url, { duration, connections, threads, uniquePaths: s.uniquePaths, serverGroups: [s.group] });
        runs.get(s.key)!.push(result);
        progress(
          `${fmtRps(result.rps).padStart(6)} req/s  p99 ${fmtMs(result.p99).padStart(5)} ms  CPU cores: server ${fmtCores(result.serverCpu)}, ${generator.name} ${fmtCores(result.loadCpu)}, others ${fmtCores(otherCpu(result))} of ${CORES}` +
            `${result.errors || result.non2xx ? `  ${result.errors} errors, ${result.non2xx} bad status` : ''}\n`,
        );
        // Let background work (LMDB commits after misses, GC) finish before the next scenario.
        await new Promise((resolve) => setTimeout(resolve, s.uniquePaths ? 1000 : 200));
      }
    }
    progress('  rate-limit take over IPC, without HTTP ');
    const ipc = await measureRateIpc();
    progress('done\n');
    report(scenarios, runs, config, ipc);
    console.log(`\nCluster section time ${((performance.now() - started) / 1000).toFixed(0)} s.`);
  } finally {
    await Promise.all([origin, ...edges].map((s) => stop(s.child)));
  }
}

function report(scenarios: Scenario[], runs: Map<string, LoadResult[]>, config: ClusterBenchConfig, ipc: IpcCost[]): void {
  const { generator, rounds, duration, connections } = config;
  const gen = generator.name;
  console.log(`\n### Cluster mode: --workers ${WORKERS} against --workers 1, same load, same round\n`);
  console.log(
    `Median of ${rounds} interleaved rounds of ${duration} s (min-max over rounds in parentheses), ${connections} connections, ${CORES} cores. ` +
      `Per core: the ratio to --workers 1 divided by ${WORKERS} (1 would be perfect scaling). CPU in cores of the ${CORES}: the server's process group, ` +
      `the load generator (${gen}) and everything else on the machine.\n`,
  );
  console.log(`| scenario | req/s | p99 ms | vs --workers 1 | per core | server CPU | req/s per server core | ${gen} used | others |`);
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const s of scenarios) {
    const own = runs.get(s.key)!;
    const rps = own.map((r) => r.rps);
    const p99 = own.map((r) => r.p99);
    const base = s.baseline ? runs.get(s.baseline)! : undefined;
    // Per round: each ratio pairs two runs made seconds apart.
    const ratio = base ? own.map((r, i) => r.rps / base[i]!.rps) : [];
    const perCore = ratio.map((r) => r / WORKERS);
    const load = own.map((r) => r.loadCpu);
    const perServerCore = own.map((r) => r.rps / r.serverCpu);
    const errors = own.reduce((n, r) => n + r.errors + r.non2xx, 0);
    console.log(
      `| ${s.label}${errors ? ` (**${errors} errors / bad status**)` : ''} | ${fmtRps(median(rps))}${spread(rps, fmtRps)} | ${fmtMs(median(p99))}${spread(p99, fmtMs)} | ` +
        `${base ? `**${fmtRatio(median(ratio))}**${spread(ratio, fmtRatio)}` : '1x'} | ${base ? `${fmtCores(median(perCore))}${spread(perCore, fmtCores)}` : '1'} | ` +
        `${fmtCores(median(own.map((r) => r.serverCpu)))} | ${fmtRps(median(perServerCore))}${spread(perServerCore, fmtRps)} | ${fmtCores(median(load))}${spread(load, fmtCores)} of ${CORES} cores | ${fmtCores(median(own.map(otherCpu)))} |`,
    );
  }
  const rpsOf = (key: string) => median(runs.get(key)!.map((r) => r.rps));
  const hitRatio = runs.get('hitN')!.map((r, i) => r.rps / runs.get('hit1')![i]!.rps);
  const hitLoad = [...runs.get('hit1')!, ...runs.get('hitN')!].map((r) => r.loadCpu);
  const efficiency = (key: string) => median(runs.get(key)!.map((r) => r.rps / r.serverCpu));
  console.log('');
  console.log(
    `- Hit throughput, --workers ${WORKERS} against --workers 1: ${fmtRatio(median(hitRatio))}${spread(hitRatio, fmtRatio)}, ` +
      `a scaling factor of ${fmtCores(median(hitRatio) / WORKERS)} per core; generator used ${fmtCores(median(hitLoad))}${spread(hitLoad, fmtCores)} of ${CORES} cores ` +
      `(${gen}, median over the hit rounds of both)` +
      (CORES <= WORKERS ? `: on a ${CORES}-core machine the generator competes with the workers for the cores, so the second worker gets what it leaves.` : '.'),
  );
  console.log(
    `- Hits per second of server CPU (less sensitive to what else runs than req/s): ${fmtRps(efficiency('hit1'))} with one process, ` +
      `${fmtRps(efficiency('hitN'))} with ${WORKERS} workers (${fmtRatio(efficiency('hitN') / efficiency('hit1'))}): ` +
      'what the cluster costs per hit, and an estimate of the scaling per core where each worker has a core of its own (and nothing else, such as the generator, limits it).',
  );
  console.log(
    `- Hits under a rate limit never reached, against unlimited hits of the same node (medians): ${fmtRatio(rpsOf('limited1') / rpsOf('hit1'))} with one process ` +
      `(counters in memory, synchronous hit path), ${fmtRatio(rpsOf('limitedN') / rpsOf('hitN'))} with ${WORKERS} workers (a round trip to the primary's counters per request, general path).`,
  );
  for (const cost of ipc) {
    console.log(
      `- One shared rate-limit take over the cluster bus, ${cost.concurrency === 1 ? 'one at a time' : `${cost.concurrency} at once`}: ` +
        `${cost.wallUs.toFixed(1)} µs of wall time per take, CPU ${cost.workerCpuUs.toFixed(1)} µs in the worker and ${cost.primaryCpuUs.toFixed(1)} µs in the primary.`,
    );
  }
  const others = scenarios.flatMap((s) => runs.get(s.key)!.map(otherCpu)).filter(Number.isFinite);
  console.log(
    `- The load generator shares the ${CORES} cores with the servers (${generator.describe}); other processes used a median ${fmtCores(median(others))} ` +
      `of ${CORES} cores (up to ${others.length ? fmtCores(Math.max(...others)) : 'n/a'}) during the rounds: compare rows of the same round, not runs.`,
  );
}
