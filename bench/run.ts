/**
 * `npm run bench`: loopback load tests, bounded in time, printed as one
 * table of ratios against a bare node:http server serving the same bytes.
 * Each server runs in its own child process; autocannon runs here.
 *   BENCH_DURATION   seconds per scenario and round (default 3)
 *   BENCH_CONNECTIONS concurrent connections (default 32)
 *   BENCH_ROUNDS      interleaved rounds per scenario, median kept (default 3)
 *   BENCH_ONLY       comma list of sections to run: pull,images,shield (default all available)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import autocannon from 'autocannon';

const DURATION = Number(process.env.BENCH_DURATION ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const children: ChildProcess[] = [];

/** Start `bench/child.ts` with args; resolve with the URL it prints. */
export async function startChild(args: string[]): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ['--import', 'tsx', new URL('./child.ts', import.meta.url).pathname, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  const lines = createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`bench child ${args[0]} exited with ${code}`)));
    lines.once('line', (line) => resolve(JSON.parse(line).url));
  });
  return { url, child };
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

export interface LoadResult {
  rps: number;
  p99: number;
  errors: number;
  non2xx: number;
}

/** Run autocannon against `url`, printing a progress line per second. */
export async function load(label: string, url: string, opts: { uniquePaths?: boolean; duration?: number } = {}): Promise<LoadResult> {
  let n = 0;
  const duration = opts.duration ?? DURATION;
  process.stderr.write(`  ${label.padEnd(34)} `);
  const instance = autocannon({
    url,
    connections: CONNECTIONS,
    duration,
    requests: opts.uniquePaths
      ? [{ setupRequest: (req) => ({ ...req, path: `/obj?n=${n++}` }) }]
      : undefined,
  });
  const ticker = setInterval(() => process.stderr.write('.'), 1000);
  const result = await instance;
  clearInterval(ticker);
  const out = { rps: result.requests.average, p99: result.latency.p99, errors: result.errors + result.timeouts, non2xx: result.non2xx };
  process.stderr.write(` ${Math.round(out.rps)} req/s, p99 ${out.p99} ms${out.errors || out.non2xx ? `, ${out.errors} errors, ${out.non2xx} non-2xx` : ''}\n`);
  return out;
}

async function warm(url: string, times = 3): Promise<void> {
  for (let i = 0; i < times; i++) await (await fetch(url)).arrayBuffer();
}

interface Row {
  scenario: string;
  size: string;
  result: LoadResult;
  baseline: LoadResult;
}

/** Median by requests/s. */
function median(results: LoadResult[]): LoadResult {
  const sorted = [...results].sort((a, b) => a.rps - b.rps);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/**
 * Each scenario runs ROUNDS times, interleaved with the bare server, and
 * the median is kept: on a shared 2-core machine throughput drifts between
 * runs, and interleaving keeps the ratio honest.
 */
async function pullSection(): Promise<Row[]> {
  const rows: Row[] = [];
  for (const [size, bytes] of [
    ['1 KB', 1024],
    ['100 KB', 100 * 1024],
  ] as const) {
    console.error(`\npull mode, ${size} object, ${CONNECTIONS} connections, ${ROUNDS} rounds of ${DURATION} s per scenario`);
    const bare = await startChild(['bare', String(bytes)]);
    // The same kind of server is the origin for the edges.
    const memoryEdge = await startChild(['edge', bare.url, '256MB']);
    const diskEdge = await startChild(['edge', bare.url, '0']);
    const quietEdge = await startChild(['edge', bare.url, '256MB', 'quiet']);
    await warm(`${quietEdge.url}/obj`);
    await warm(`${memoryEdge.url}/obj`);
    await warm(`${diskEdge.url}/obj`);
    const runs: Record<string, LoadResult[]> = { bare: [], memory: [], quiet: [], disk: [], miss: [] };
    for (let round = 1; round <= ROUNDS; round++) {
      console.error(` round ${round}/${ROUNDS}`);
      runs.bare!.push(await load('bare node:http', `${bare.url}/obj`));
      runs.memory!.push(await load('edge, memory-tier hit', `${memoryEdge.url}/obj`));
      runs.quiet!.push(await load('edge, memory hit, no access log', `${quietEdge.url}/obj`));
      runs.disk!.push(await load('edge, disk-tier hit', `${diskEdge.url}/obj`));
      runs.miss!.push(await load('edge, miss (local origin)', memoryEdge.url, { uniquePaths: true }));
    }
    const baseline = median(runs.bare!);
    rows.push({ scenario: 'edge, memory-tier hit', size, result: median(runs.memory!), baseline });
    rows.push({ scenario: 'edge, memory-tier hit, access log off', size, result: median(runs.quiet!), baseline });
    rows.push({ scenario: 'edge, disk-tier hit (no memory tier)', size, result: median(runs.disk!), baseline });
    rows.push({ scenario: 'edge, miss (local origin)', size, result: median(runs.miss!), baseline });
    await Promise.all([stop(memoryEdge.child), stop(diskEdge.child), stop(quietEdge.child)]);
    await stop(bare.child);
  }
  return rows;
}

function printTable(rows: Row[]): void {
  console.log('\n| scenario | size | req/s | p99 ms | bare req/s | bare p99 ms | ratio (req/s vs bare) |');
  console.log('|---|---|---:|---:|---:|---:|---:|');
  for (const row of rows) {
    const ratio = row.result.rps / row.baseline.rps;
    console.log(
      `| ${row.scenario} | ${row.size} | ${Math.round(row.result.rps)} | ${row.result.p99} | ${Math.round(row.baseline.rps)} | ${row.baseline.p99} | ${ratio.toFixed(2)}x |`,
    );
  }
}

async function main(): Promise<void> {
  const only = new Set((process.env.BENCH_ONLY ?? 'pull,images,shield').split(',').map((s) => s.trim()));
  console.error(`bench: node ${process.version}, loopback only, ${DURATION} s per scenario, ${CONNECTIONS} connections`);
  if (only.has('pull')) printTable(await pullSection());
  if (only.has('images')) {
    const { imageSection } = await import('./images.js').catch(() => ({ imageSection: undefined }));
    if (imageSection) await imageSection({ load, startChild });
  }
  if (only.has('shield')) {
    const { shieldSection } = await import('./shield.js');
    await shieldSection();
  }
}

main()
  .catch((error) => {
    console.error(error);
    process.exitCode = 1;
  })
  .finally(async () => {
    await Promise.all(children.map(stop));
  });
