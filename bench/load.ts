/**
 * Load generators for `npm run bench`, so the bench measures the server and
 * not the client:
 *   - wrk, when it is on the PATH (`apt-get install wrk`): a C client, its
 *     own process; results come from a Lua `done` hook printing one JSON line;
 *   - otherwise autocannon in worker threads of the bench process (one by
 *     default), never on the bench's own event loop.
 * Both return the same LoadResult, including the CPU the generator itself
 * used and the CPU of the server's process group (Linux /proc), so the
 * output can show whether the server was the bottleneck.
 *   BENCH_LOADGEN=autocannon forces the fallback; BENCH_THREADS sets wrk
 *   threads / autocannon workers (default 1).
 */
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, constants, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, join } from 'node:path';

export interface LoadResult {
  /** Completed requests per second over the run. */
  rps: number;
  /** Latency percentiles, ms. */
  p50: number;
  p99: number;
  requests: number;
  /** Connect, read, write errors and timeouts. */
  errors: number;
  /** wrk: status >= 400; autocannon: not 2xx. */
  non2xx: number;
  /** CPU used by the load generator, in cores (1 = one core busy for the whole run); NaN if unknown. */
  loadCpu: number;
  /** CPU used by the server's process group(s), in cores; NaN if unknown. */
  serverCpu: number;
  /** CPU used by the whole machine (all processes), in cores; NaN if unknown. */
  machineCpu: number;
}

export interface LoadOptions {
  /** Seconds. */
  duration: number;
  connections: number;
  /** wrk threads / autocannon workers. */
  threads: number;
  /** Per-request timeout, seconds. @default 10 */
  timeout?: number;
  /** Append a query parameter unique to every request (`u=<run>-<n>`): misses on a cache. */
  uniquePaths?: boolean;
  /** Process groups whose CPU is the server's (a detached child's pid is its group id). */
  serverGroups?: number[];
  /** Request headers sent with every request, e.g. `{ 'accept-encoding': 'br' }`. */
  headers?: Record<string, string>;
}

export interface LoadGenerator {
  /** 'wrk' or 'autocannon'. */
  name: string;
  /** One line for the output: version, threads, why. */
  describe: string;
  run(url: string, options: LoadOptions): Promise<LoadResult>;
}

/** Absolute path of an executable on the PATH (or in an sbin directory, where nginx and varnishd live), or undefined. */
export function onPath(command: string): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin']) {
    if (!dir) continue;
    const candidate = join(dir, command);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // next
    }
  }
  return undefined;
}

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/**
 * CPU seconds (user + system) used so far by every live process in these
 * process groups, from /proc; undefined where /proc is not available.
 */
export function groupCpuSeconds(groups: number[]): number | undefined {
  if (!groups.length) return undefined;
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return undefined;
  }
  const wanted = new Set(groups);
  let ticks = 0;
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // Fields after the command name (which may contain spaces): state ppid pgrp ... utime(14) stime(15).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (!wanted.has(Number(fields[2]))) continue;
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return ticks / ticksPerSecond();
}

/** CPU seconds the whole machine has been busy (not idle, not waiting for I/O), from /proc/stat. */
export function machineCpuSeconds(): number | undefined {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    const busy = fields.slice(0, 8).reduce((a, b) => a + b, 0) - fields[3]! - fields[4]!;
    return busy / ticksPerSecond();
  } catch {
    return undefined;
  }
}

type Measured = Omit<LoadResult, 'serverCpu' | 'machineCpu'>;

/** Measure the server groups' and the machine's CPU around `work`, in cores. */
async function withServerCpu(groups: number[] | undefined, work: () => Promise<Measured>): Promise<LoadResult> {
  const before = groupCpuSeconds(groups ?? []);
  const machineBefore = machineCpuSeconds();
  const started = performance.now();
  const result = await work();
  const after = groupCpuSeconds(groups ?? []);
  const machineAfter = machineCpuSeconds();
  const seconds = (performance.now() - started) / 1000;
  const rate = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? Number.NaN : (b - a) / seconds);
  return { ...result, serverCpu: rate(before, after), machineCpu: rate(machineBefore, machineAfter) };
}

let runCounter = 0;
/** A prefix no earlier run used, so unique paths stay misses across rounds. */
const runPrefix = () => `${process.pid.toString(36)}${Date.now().toString(36)}${(runCounter++).toString(36)}`;

/** Lua `done` hook: one JSON line after wrk's own report. Latencies are µs. */
const WRK_REPORT = `
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests":%.0f,"duration_us":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.0f,"p99_us":%.0f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
`;

/** Every request a new query string: `u=<run prefix>-<thread>-<n>` (the prefix is the script's argument). */
const WRK_UNIQUE = `${WRK_REPORT}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local base, n = nil, 0
function init(args)
  local sep = "?"
  if string.find(wrk.path, "?", 1, true) then sep = "&" end
  base = wrk.path .. sep .. "u=" .. (args[1] or "run") .. "-" .. tostring(tid) .. "-"
end
function request()
  n = n + 1
  return wrk.format(nil, base .. n)
end
`;

interface WrkReport {
  requests: number;
  duration_us: number;
  connect: number;
  read: number;
  write: number;
  status: number;
  timeout: number;
  p50_us: number;
  p99_us: number;
}

function wrkGenerator(wrk: string, scriptDir: string, threads: number): LoadGenerator {
  const report = join(scriptDir, 'wrk-report.lua');
  const unique = join(scriptDir, 'wrk-unique.lua');
  writeFileSync(report, WRK_REPORT);
  writeFileSync(unique, WRK_UNIQUE);
  let version = 'wrk';
  try {
    execFileSync(wrk, ['-v'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch (error) {
    // `wrk -v` prints its version and usage, then exits 1.
    version = String((error as { stdout?: string }).stdout ?? '').split('\n')[0]!.replace(/\s*Copyright.*$/, '').trim() || 'wrk';
  }
  return {
    name: 'wrk',
    describe: `${version}, its own process, ${threads} thread${threads === 1 ? '' : 's'}`,
    run(url, options) {
      const args = [
        '-t', String(options.threads),
        '-c', String(Math.max(options.connections, options.threads)),
        '-d', `${options.duration}s`,
        '--timeout', `${options.timeout ?? 10}s`,
        '-s', options.uniquePaths ? unique : report,
        ...Object.entries(options.headers ?? {}).flatMap(([name, value]) => ['-H', `${name}: ${value}`]),
        url,
        ...(options.uniquePaths ? ['--', runPrefix()] : []),
      ];
      return withServerCpu(options.serverGroups, () => runWrk(wrk, args));
    },
  };
}

/** wrk under `sh`, whose `times` builtin then prints wrk's own CPU time exactly. */
function runWrk(wrk: string, args: string[]): Promise<Measured> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn('/bin/sh', ['-c', '"$0" "$@"; status=$?; times; exit $status', wrk, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.once('error', reject);
    child.once('close', (code) => {
      const wall = (performance.now() - started) / 1000;
      const line = stdout.split('\n').find((l) => l.startsWith('BENCH-JSON '));
      if (code !== 0 || !line) {
        reject(new Error(`wrk ${args.join(' ')} exited with ${code}: ${(stderr || stdout).trim().slice(0, 500)}`));
        return;
      }
      const r = JSON.parse(line.slice('BENCH-JSON '.length)) as WrkReport;
      // `times`: our (sh's) user and system time, then the children's (wrk's).
      const times = [...stdout.matchAll(/^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/gm)];
      const last = times.at(-1);
      const loadCpu = last ? (Number(last[1]) * 60 + Number(last[2]) + Number(last[3]) * 60 + Number(last[4])) / wall : Number.NaN;
      resolve({
        rps: r.requests / (r.duration_us / 1e6),
        p50: r.p50_us / 1000,
        p99: r.p99_us / 1000,
        requests: r.requests,
        errors: r.connect + r.read + r.write + r.timeout,
        non2xx: r.status,
        loadCpu,
      });
    });
  });
}

function autocannonGenerator(why: string, threads: number): LoadGenerator {
  return {
    name: 'autocannon',
    describe: `autocannon ${autocannonVersion()} in ${threads} worker thread${threads === 1 ? '' : 's'} of the bench process (${why})`,
    async run(url, options) {
      const { default: autocannon } = await import('autocannon');
      const target = options.uniquePaths ? `${url}${url.includes('?') ? '&' : '?'}u=${runPrefix()}-[<id>]` : url;
      return withServerCpu(options.serverGroups, async () => {
        const cpu = process.cpuUsage();
        const started = performance.now();
        const result = await autocannon({
          url: target,
          idReplacement: Boolean(options.uniquePaths),
          connections: options.connections,
          duration: options.duration,
          timeout: options.timeout ?? 10,
          headers: options.headers,
          // Worker threads: the load runs off this process's event loop (options must be cloneable).
          workers: options.threads,
        });
        const used = process.cpuUsage(cpu);
        const wall = (performance.now() - started) / 1000;
        return {
          rps: result.requests.total / options.duration,
          p50: result.latency.p50,
          p99: result.latency.p99,
          requests: result.requests.total,
          errors: result.errors + result.timeouts,
          non2xx: result.non2xx,
          loadCpu: (used.user + used.system) / 1e6 / wall,
        };
      });
    },
  };
}

function autocannonVersion(): string {
  try {
    return (createRequire(import.meta.url)('autocannon/package.json') as { version: string }).version;
  } catch {
    return '(version unknown)';
  }
}

/** wrk when it is on the PATH (unless BENCH_LOADGEN=autocannon), else autocannon in worker threads. */
export function chooseLoadGenerator(scriptDir: string, threads: number): LoadGenerator {
  const forced = process.env.BENCH_LOADGEN;
  if (forced && forced !== 'wrk' && forced !== 'autocannon') throw new Error(`BENCH_LOADGEN: got "${forced}": expected wrk or autocannon`);
  if (forced === 'autocannon') return autocannonGenerator('BENCH_LOADGEN=autocannon', threads);
  const wrk = onPath('wrk');
  if (wrk) return wrkGenerator(wrk, scriptDir, threads);
  if (forced === 'wrk') throw new Error('BENCH_LOADGEN=wrk: wrk is not on the PATH (apt-get install wrk)');
  return autocannonGenerator('wrk not found on the PATH: apt-get install wrk for a client that costs the server less CPU', threads);
}

/** Warm-up, not measured (JIT, connection pools, page cache): `seconds` of load on each scenario, a dot each on stderr. */
export async function warmUp<S>(scenarios: readonly S[], seconds: number, runOne: (scenario: S, seconds: number) => Promise<unknown>): Promise<void> {
  process.stderr.write(`  warm-up, ${seconds} s per scenario `);
  for (const scenario of scenarios) {
    await runOne(scenario, seconds);
    process.stderr.write('.');
  }
  process.stderr.write(' done\n');
}

/** The median of the finite values (NaN when there are none). */
export function median(values: number[]): number {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (!sorted.length) return Number.NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** ` (min-max)` of the finite values, formatted; empty below two values. */
export function spread(values: number[], format: (n: number) => string): string {
  const finite = values.filter(Number.isFinite);
  return finite.length < 2 ? '' : ` (${format(Math.min(...finite))}-${format(Math.max(...finite))})`;
}

export const fmtRatio = (n: number) => (Number.isFinite(n) ? `${n.toFixed(2)}x` : 'n/a');

/** CPU the machine used besides the server and the load generator: other processes (for misses, the origin too). */
export const otherCpu = (r: LoadResult) => Math.max(0, r.machineCpu - r.serverCpu - r.loadCpu);
