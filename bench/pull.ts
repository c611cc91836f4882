/**
 * The pull section of `npm run bench` (`BENCH_ONLY=pull`): every row as a
 * ratio to a bare node:http server serving the same bytes in the same
 * round. Servers, each its own process group:
 *   origin   bench/child.ts origin-image: /blob/<n> and a photo-like JPEG
 *   bare     bench/child.ts bare: /blob/<n>, nothing else (the baseline)
 *   edges    memory tier 256MB (access log on, as shipped), the same with
 *            the access log off, memory tier off (`memorySize: 0`: every hit
 *            from LMDB), and one for misses; all in front of the origin
 *   nginx    proxy_cache, 1 worker, when nginx is installed
 *   Varnish  malloc storage, when varnishd is installed
 * Rounds are interleaved (round 1 of every scenario, then round 2, ...), so
 * drift on a shared machine hits every row alike; each row reports the
 * median over rounds and the min-max spread.
 */
import { availableParallelism as availableCores } from 'node:os';
import { fmtRatio, median, otherCpu, spread, warmUp, type LoadGenerator, type LoadResult } from './load.js';
import { startChild, startNginx, startVarnish, stop, type Peer, type Started } from './procs.js';

export interface PullConfig {
  generator: LoadGenerator;
  duration: number;
  rounds: number;
  connections: number;
  threads: number;
}

const KB = 1024;
const VARIANT = '/photo.jpg?width=800&format=avif';
const WARMUP_SECONDS = 1;

interface Scenario {
  key: string;
  label: string;
  bytes: number;
  url: string;
  /** The bare scenario this one is compared with (none for a bare one). */
  baseline?: string;
  uniquePaths?: boolean;
  groups: number[];
  /** For the targets: a cache hit (p99 compared with bare). */
  hit?: boolean;
  /** Set when the priming requests did not end in a hit. */
  warning?: string;
}

const progress = (text: string) => process.stderr.write(text);

const fmtRps = (n: number) => (Number.isFinite(n) ? (n >= 100 ? Math.round(n).toString() : n.toFixed(1)) : 'n/a');
const fmtMs = (n: number) => (Number.isFinite(n) ? (n >= 10 ? n.toFixed(1) : n.toFixed(2)) : 'n/a');
const fmtCpu = (n: number) => (Number.isFinite(n) ? `${Math.round(n * 100)} %` : 'n/a');
const fmtCpuRange = (values: number[]) => {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return 'n/a';
  const [lo, hi] = [Math.round(Math.min(...finite) * 100), Math.round(Math.max(...finite) * 100)];
  return lo === hi ? `${lo} %` : `${lo}-${hi} %`;
};

const fmtSize = (bytes: number) => (bytes % KB === 0 ? `${bytes / KB} KB` : `${(bytes / KB).toFixed(1)} KB`);

async function get(url: string): Promise<{ status: number; headers: Headers; bytes: number }> {
  const res = await fetch(url);
  const body = await res.arrayBuffer();
  return { status: res.status, headers: res.headers, bytes: body.byteLength };
}

/** Request twice; say what is wrong if the second answer is not a cache hit. */
async function primeHit(url: string, isHit: (headers: Headers) => boolean): Promise<string | undefined> {
  const first = await get(url);
  if (first.status !== 200) return `first request answered ${first.status}`;
  await new Promise((resolve) => setTimeout(resolve, 50)); // let the fill commit
  const second = await get(url);
  if (second.status !== 200) return `answered ${second.status}`;
  return isHit(second.headers) ? undefined : 'not served from cache while priming';
}

const edgeHit = (h: Headers) => /;\s*hit\b/.test(h.get('cache-status') ?? '');
const nginxHit = (h: Headers) => h.get('x-cache-status') === 'HIT';
// Varnish's X-Varnish carries two transaction ids on a hit.
const varnishHit = (h: Headers) => (h.get('x-varnish') ?? '').trim().split(/\s+/).length === 2;

export async function pullSection(config: PullConfig): Promise<void> {
  const { generator, duration, rounds, connections, threads } = config;
  const started = performance.now();
  progress(`\npull: ${connections} connections, ${rounds} interleaved rounds of ${duration} s per scenario, ${generator.name}\n`);
  progress('  starting servers ');
  const [origin, bare] = await Promise.all([startChild(['origin-image', '2400x1600']), startChild(['bare', String(KB)])]);
  const [memory, quiet, disk, miss] = await Promise.all([
    startChild(['edge', origin.url, '256MB']),
    startChild(['edge', origin.url, '256MB', 'quiet']),
    startChild(['edge', origin.url, '0']),
    startChild(['edge', origin.url, '256MB']),
  ]);
  const [nginx, varnish] = await Promise.all([startNginx(origin.url, `/blob/${KB}`), startVarnish(origin.url, `/blob/${KB}`)]);
  const all: Started[] = [origin, bare, memory, quiet, disk, miss, ...[nginx, varnish].filter((p): p is Exclude<Peer, { skipped: string }> => 'url' in p)];
  progress('done\n');
  try {
    // The variant's size decides the bare object it is compared with.
    const variant = await get(`${memory.url}${VARIANT}`);
    const g = (s: Started) => [s.child.pid!];
    const scenarios: Scenario[] = [
      { key: 'bare1', label: 'bare node:http', bytes: KB, url: `${bare.url}/blob/${KB}`, groups: g(bare) },
      { key: 'memory1', label: 'edge, memory-tier hit', bytes: KB, url: `${memory.url}/blob/${KB}`, baseline: 'bare1', groups: g(memory), hit: true },
      { key: 'quiet1', label: 'edge, memory-tier hit, access log off', bytes: KB, url: `${quiet.url}/blob/${KB}`, baseline: 'bare1', groups: g(quiet), hit: true },
      { key: 'disk1', label: 'edge, disk-tier hit (memorySize 0)', bytes: KB, url: `${disk.url}/blob/${KB}`, baseline: 'bare1', groups: g(disk), hit: true },
      { key: 'miss1', label: 'edge, miss to a local origin (unique paths)', bytes: KB, url: `${miss.url}/blob/${KB}`, baseline: 'bare1', uniquePaths: true, groups: g(miss) },
    ];
    const skipped: string[] = [];
    if (variant.status !== 200) skipped.push(`image variant hit: the edge answered ${variant.status} to ${VARIANT}`);
    for (const [peer, label, key] of [
      [nginx, 'nginx proxy_cache hit (1 worker)', 'nginx1'],
      [varnish, 'Varnish hit (malloc)', 'varnish1'],
    ] as const) {
      if ('skipped' in peer) skipped.push(peer.skipped);
      else scenarios.push({ key, label: `${label}, ${peer.version}`, bytes: KB, url: `${peer.url}/blob/${KB}`, baseline: 'bare1', groups: g(peer), hit: true });
    }
    scenarios.push(
      { key: 'bare100', label: 'bare node:http', bytes: 100 * KB, url: `${bare.url}/blob/${100 * KB}`, groups: g(bare) },
      { key: 'memory100', label: 'edge, memory-tier hit', bytes: 100 * KB, url: `${memory.url}/blob/${100 * KB}`, baseline: 'bare100', groups: g(memory), hit: true },
      { key: 'disk100', label: 'edge, disk-tier hit (memorySize 0)', bytes: 100 * KB, url: `${disk.url}/blob/${100 * KB}`, baseline: 'bare100', groups: g(disk), hit: true },
    );
    if (variant.status === 200) {
      scenarios.push(
        { key: 'bareVariant', label: 'bare node:http', bytes: variant.bytes, url: `${bare.url}/blob/${variant.bytes}`, groups: g(bare) },
        { key: 'variant', label: 'edge, image variant hit (AVIF, width 800)', bytes: variant.bytes, url: `${memory.url}${VARIANT}`, baseline: 'bareVariant', groups: g(memory), hit: true },
      );
    }
    for (const reason of skipped) progress(`  skipped: ${reason}\n`);

    // Fill the caches and check that the hit rows really are hits.
    for (const s of scenarios) {
      if (!s.hit) continue;
      const check = s.key.startsWith('nginx') ? nginxHit : s.key.startsWith('varnish') ? varnishHit : edgeHit;
      s.warning = await primeHit(s.url, check);
      if (s.warning) progress(`  warning: ${s.label} ${fmtSize(s.bytes)}: ${s.warning}\n`);
    }

    await warmUp(scenarios, WARMUP_SECONDS, (s, duration) => generator.run(s.url, { duration, connections, threads, uniquePaths: s.uniquePaths }));

    const runs = new Map<string, LoadResult[]>(scenarios.map((s) => [s.key, []]));
    for (let round = 1; round <= rounds; round++) {
      for (const s of scenarios) {
        progress(`  [${round}/${rounds}] ${`${s.label} ${fmtSize(s.bytes)}`.padEnd(58)} `);
        const result = await generator.run(s.url, { duration, connections, threads, uniquePaths: s.uniquePaths, serverGroups: s.groups });
        runs.get(s.key)!.push(result);
        progress(
          `${fmtRps(result.rps).padStart(6)} req/s  p99 ${fmtMs(result.p99).padStart(5)} ms  CPU: server ${fmtCpu(result.serverCpu)}, ${generator.name} ${fmtCpu(result.loadCpu)}, other ${fmtCpu(otherCpu(result))}` +
            `${result.errors || result.non2xx ? `  ${result.errors} errors, ${result.non2xx} bad status` : ''}\n`,
        );
        // Let background work (LMDB commits after misses, GC) finish before the next scenario.
        await new Promise((resolve) => setTimeout(resolve, s.uniquePaths ? 1000 : 200));
      }
    }
    report(scenarios, runs, config, skipped);
    console.log(`\nPull section time ${((performance.now() - started) / 1000).toFixed(0)} s.`);
  } finally {
    await Promise.all(all.map((s) => stop(s.child)));
  }
}

interface Row {
  s: Scenario;
  rps: number[];
  p99: number[];
  ratio: number[];
  /** Median p99 over median bare p99. */
  p99Ratio: number;
  base?: Scenario;
  baseRps: number[];
  baseP99: number[];
  cpu: string;
  errors: number;
}

/** Median CPU of the server, the load generator and everything else, in % of a core. */
function cpuCell(results: LoadResult[]): string {
  const pct = (n: number) => (Number.isFinite(n) ? Math.round(n * 100).toString() : 'n/a');
  return `${pct(median(results.map((r) => r.serverCpu)))} / ${pct(median(results.map((r) => r.loadCpu)))} / ${pct(median(results.map(otherCpu)))}`;
}

function report(scenarios: Scenario[], runs: Map<string, LoadResult[]>, config: PullConfig, skipped: string[]): void {
  const byKey = new Map(scenarios.map((s) => [s.key, s]));
  const rows: Row[] = scenarios
    .filter((s) => s.baseline)
    .map((s) => {
      const own = runs.get(s.key)!;
      const base = runs.get(s.baseline!)!;
      return {
        s,
        base: byKey.get(s.baseline!),
        rps: own.map((r) => r.rps),
        p99: own.map((r) => r.p99),
        // Per round: each round's ratio pairs two runs made seconds apart.
        ratio: own.map((r, i) => r.rps / base[i]!.rps),
        p99Ratio: median(own.map((r) => r.p99)) / median(base.map((r) => r.p99)),
        baseRps: base.map((r) => r.rps),
        baseP99: base.map((r) => r.p99),
        cpu: cpuCell(own),
        errors: own.reduce((n, r) => n + r.errors + r.non2xx, 0),
      };
    });
  const bareRows = scenarios.filter((s) => !s.baseline);

  const { generator, rounds, duration, connections, threads } = config;
  const gen = generator.name;
  console.log(`\n### Pull mode: ratio to a bare node:http server serving the same bytes, same round\n`);
  console.log(`Median of ${rounds} interleaved rounds of ${duration} s (min-max over rounds in parentheses), ${connections} connections.\n`);
  console.log(`| scenario | size | req/s | p99 ms | req/s vs bare | p99 vs bare | bare req/s | bare p99 ms | CPU % server / ${gen} / other |`);
  console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const s of bareRows) {
    const own = runs.get(s.key)!;
    const rps = own.map((r) => r.rps);
    const p99 = own.map((r) => r.p99);
    console.log(
      `| ${s.label} | ${fmtSize(s.bytes)} | ${fmtRps(median(rps))}${spread(rps, fmtRps)} | ${fmtMs(median(p99))}${spread(p99, fmtMs)} | 1x | 1x | | | ${cpuCell(own)} |`,
    );
  }
  for (const row of rows) {
    const note = [row.s.warning ? `**${row.s.warning}**` : '', row.errors ? `**${row.errors} errors / bad status**` : ''].filter(Boolean).join(', ');
    console.log(
      `| ${row.s.label}${note ? ` (${note})` : ''} | ${fmtSize(row.s.bytes)} | ${fmtRps(median(row.rps))}${spread(row.rps, fmtRps)} | ${fmtMs(median(row.p99))}${spread(row.p99, fmtMs)} | ` +
        `**${fmtRatio(median(row.ratio))}**${spread(row.ratio, fmtRatio)} | ${fmtRatio(row.p99Ratio)} | ${fmtRps(median(row.baseRps))} | ${fmtMs(median(row.baseP99))} | ${row.cpu} |`,
    );
  }
  const all = [...runs.values()].flat();
  const bareServer = bareRows.flatMap((s) => runs.get(s.key)!.map((r) => r.serverCpu));
  console.log('');
  console.log(
    `- Load generator: ${generator.describe}; it used ${fmtCpuRange(all.map((r) => r.loadCpu))} ` +
      `of a core during the runs. On this ${availableCores()}-core machine it competes with the server for CPU, so absolute req/s are lower ` +
      'than with the client on another machine; every row, the bare server included, carries the same handicap.',
  );
  console.log(
    `- CPU columns: medians over rounds, 100 % = one core busy for the whole run. "server": the server's process group (the bare ` +
      `server used ${fmtCpuRange(bareServer)}; near 100 % means the server, not the client, was the limit); "other": the rest of the ` +
      `machine (${fmtCpuRange(all.map(otherCpu))}): other processes, and for the miss row the origin. ` +
      'Varnish is multi-threaded and may use more than one core; nginx runs one worker, the edge and the bare server one Node main thread each.',
  );
  console.log(
    '- "req/s vs bare": the median of the per-round ratios (each run against the bare run of the same round), min-max over rounds. ' +
      '"p99 vs bare": median p99 over median bare p99; with a fixed number of connections latency rises as throughput falls, so it mostly mirrors the req/s ratio.',
  );
  for (const reason of skipped) console.log(`- Row skipped: ${reason}.`);
  // The miss row's "other" is mostly its origin; every other row should leave the rest of the machine idle.
  const others = scenarios.filter((s) => !s.uniquePaths).flatMap((s) => runs.get(s.key)!.map(otherCpu)).filter(Number.isFinite);
  if (others.length && median(others) > 0.25) {
    const warning =
      `**The machine was busy**: other processes used a median ${fmtCpu(median(others))} of a core (up to ${fmtCpu(Math.max(...others))}) ` +
      'during the runs, so these figures measure contention as much as the servers; rerun on an idle machine before comparing them.';
    console.log(`- ${warning}`);
    progress(`  warning: ${warning.replaceAll('**', '')}\n`);
  }

  const find = (key: string) => rows.find((r) => r.s.key === key);
  console.log('\nTargets (median over rounds):\n');
  const target = (label: string, key: string, min: number) => {
    const row = find(key);
    if (!row) return;
    const value = median(row.ratio);
    console.log(`- ${label} >= ${min.toFixed(1)}x bare node:http: ${fmtRatio(value)}${spread(row.ratio, fmtRatio)}: ${value >= min ? 'met' : 'NOT met'}`);
  };
  target('memory-tier hit 1 KB', 'memory1', 0.8);
  target('disk-tier hit 1 KB', 'disk1', 0.6);
  target('memory-tier hit 100 KB', 'memory100', 0.9);
  for (const key of ['memory1', 'memory100', 'disk1', 'disk100', 'variant']) {
    const row = find(key);
    if (!row) continue;
    const value = row.p99Ratio;
    console.log(
      `- hit p99 within 2x of bare p99, ${row.s.label.replace(/^edge, /, '')} ${fmtSize(row.s.bytes)}: ${fmtMs(median(row.p99))} ms vs ${fmtMs(median(row.baseP99))} ms = ${fmtRatio(value)}: ${value <= 2 ? 'met' : 'NOT met'}`,
    );
  }
}
