/**
 * `npm run bench`: loopback load tests, bounded in time, printed as one
 * table of ratios against a bare node:http server serving the same bytes.
 * Each server runs in its own child process; autocannon runs here.
 *   BENCH_DURATION   seconds per scenario (default 5)
 *   BENCH_CONNECTIONS concurrent connections (default 32)
 *   BENCH_ONLY       comma list of sections to run: pull,images,shield (default all available)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import autocannon from 'autocannon';

const DURATION = Number(process.env.BENCH_DURATION ?? 5);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32);
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

async function pullSection(): Promise<Row[]> {
  const rows: Row[] = [];
  for (const [size, bytes] of [
    ['1 KB', 1024],
    ['100 KB', 100 * 1024],
  ] as const) {
    console.error(`\npull mode, ${size} object, ${CONNECTIONS} connections, ${DURATION} s per scenario`);
    const bare = await startChild(['bare', String(bytes)]);
    const baseline = await load('bare node:http', `${bare.url}/obj`);
    // The same kind of server is the origin for the edge.
    const memoryEdge = await startChild(['edge', bare.url, '256MB']);
    await warm(`${memoryEdge.url}/obj`);
    rows.push({ scenario: 'edge, memory-tier hit', size, result: await load('edge, memory-tier hit', `${memoryEdge.url}/obj`), baseline });
    rows.push({ scenario: 'edge, miss (local origin)', size, result: await load('edge, miss (local origin)', memoryEdge.url, { uniquePaths: true }), baseline });
    await stop(memoryEdge.child);
    const diskEdge = await startChild(['edge', bare.url, '0']);
    await warm(`${diskEdge.url}/obj`);
    rows.push({ scenario: 'edge, disk-tier hit (no memory tier)', size, result: await load('edge, disk-tier hit', `${diskEdge.url}/obj`), baseline });
    await stop(diskEdge.child);
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
