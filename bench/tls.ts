/**
 * The TLS section of `npm run bench` (`BENCH_ONLY=tls`): memory-tier hits
 * over HTTPS, each as a ratio to a bare Node TLS server serving the same
 * bytes in the same round:
 *   HTTP/1.1 over TLS  the bench's HTTP/1.1 generator (wrk, else autocannon)
 *                      against node:https
 *   HTTP/2             h2load (`apt-get install nghttp2-client`), else a
 *                      node:http2 client in worker threads, against
 *                      node:http2's secure server with the edge's options
 * Same concurrency on both protocols: N connections with one request each
 * over HTTP/1.1, N/4 connections with 4 streams each over HTTP/2.
 * Certificate: ECDSA P-256, self-signed, made with openssl in the scratch
 * directory (the clients do not verify it). Bounded: 2 s runs, 2
 * interleaved rounds, about 45 s with the servers' start.
 */
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { Agent, request } from 'undici';
import { fmtRatio, groupCpuSeconds, median, onPath, warmUp, type LoadGenerator } from './load.js';
import { scratch, startChild, stop, type Started } from './procs.js';

export interface TlsBenchConfig {
  generator: LoadGenerator;
  connections: number;
  threads: number;
}

const KB = 1024;
const SIZES = [KB, 100 * KB];
const DURATION = 2;
const ROUNDS = 2;
const WARMUP = 1;
/** HTTP/2 streams per connection: the same requests in flight as HTTP/1.1 with 4x the connections. */
const STREAMS = 4;

const progress = (text: string) => process.stderr.write(text);

interface Run {
  rps: number;
  /** ms; what the generator gives: p50 (wrk, autocannon) or the mean (h2load, the Node client). */
  latency: number;
  errors: number;
  serverCpu: number;
  loadCpu: number;
}

interface H2Generator {
  name: string;
  describe: string;
  /** Latency statistic it reports. */
  latency: 'mean';
  run(url: string, options: { duration: number; connections: number; streams: number; threads: number }): Promise<Omit<Run, 'serverCpu'>>;
}

/** h2load, under `sh` so `times` gives its CPU time (as for wrk in load.ts). */
function h2load(path: string): H2Generator {
  let version = 'h2load';
  try {
    version = `h2load ${/nghttp2\/([\d.]+)/.exec(execFileSync(path, ['--version'], { encoding: 'utf8' }))?.[1] ?? ''}`.trim();
  } catch {
    // keep the name
  }
  return {
    name: 'h2load',
    describe: `${version}, its own process`,
    latency: 'mean',
    run(url, { duration, connections, streams, threads }) {
      const args = ['-c', String(connections), '-m', String(streams), '-t', String(Math.min(threads, connections)), '-D', String(duration), url];
      return new Promise((resolve, reject) => {
        const started = performance.now();
        const child = spawn('/bin/sh', ['-c', '"$0" "$@"; status=$?; times; exit $status', path, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
        child.stderr.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
        child.once('error', reject);
        child.once('close', (code) => {
          const wall = (performance.now() - started) / 1000;
          const finished = /finished in [\d.]+s, ([\d.]+) req\/s/.exec(out);
          const requests = /requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(out);
          const status = /status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out);
          const latency = /time for request:\s+\S+\s+\S+\s+(\S+)/.exec(out);
          if (code !== 0 || !finished || !requests) {
            reject(new Error(`h2load ${args.join(' ')} exited with ${code}: ${out.trim().slice(-500)}`));
            return;
          }
          const times = [...out.matchAll(/^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/gm)].at(-1);
          resolve({
            rps: Number(finished[1]),
            latency: latency ? toMs(latency[1]!) : Number.NaN,
            errors: Number(requests[3]) + Number(requests[4]) + Number(requests[5]) + (status ? Number(status[1]) + Number(status[2]) : 0),
            loadCpu: times ? (Number(times[1]) * 60 + Number(times[2]) + Number(times[3]) * 60 + Number(times[4])) / wall : Number.NaN,
          });
        });
      });
    },
  };
}

/** h2load prints `1.23ms`, `456us` or `1.2s`. */
function toMs(value: string): number {
  const match = /^([\d.]+)(us|ms|s)$/.exec(value);
  if (!match) return Number.NaN;
  const n = Number(match[1]);
  return match[2] === 'us' ? n / 1000 : match[2] === 's' ? n * 1000 : n;
}

/** The fallback: node:http2 sessions in worker threads (plain CommonJS, evaluated: no TypeScript loader needed). */
const NODE_H2_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const http2 = require('node:http2');
const { url, connections, streams, durationMs } = workerData;
const target = new URL(url);
const path = target.pathname + target.search;
let done = 0, errors = 0, latencyTotal = 0, stopped = false;
const sessions = [];
const cpu = process.cpuUsage();
for (let c = 0; c < connections; c++) {
  const session = http2.connect(target.origin, { rejectUnauthorized: false });
  session.on('error', () => errors++);
  sessions.push(session);
  for (let s = 0; s < streams; s++) next(session);
}
function next(session) {
  if (stopped || session.destroyed) return;
  const started = performance.now();
  let bad = false;
  const stream = session.request({ ':path': path });
  stream.on('response', (headers) => { bad = headers[':status'] >= 400; });
  stream.on('data', () => {});
  stream.on('end', () => { if (bad) errors++; else { done++; latencyTotal += performance.now() - started; } next(session); });
  stream.on('error', () => { errors++; });
}
setTimeout(() => {
  stopped = true;
  const used = process.cpuUsage(cpu);
  for (const session of sessions) session.destroy();
  parentPort.postMessage({ done, errors, latencyTotal, cpuSeconds: (used.user + used.system) / 1e6 });
}, durationMs);
`;

function nodeH2(): H2Generator {
  return {
    name: 'node:http2',
    describe: 'node:http2 client in worker threads of the bench process (h2load not on the PATH: apt-get install nghttp2-client)',
    latency: 'mean',
    async run(url, { duration, connections, streams, threads }) {
      const workers = Math.max(1, Math.min(threads, connections));
      const results = await Promise.all(
        Array.from({ length: workers }, (_, i) => {
          const share = Math.floor(connections / workers) + (i < connections % workers ? 1 : 0);
          return new Promise<{ done: number; errors: number; latencyTotal: number; cpuSeconds: number }>((resolve, reject) => {
            const worker = new Worker(NODE_H2_WORKER, { eval: true, workerData: { url, connections: share, streams, durationMs: duration * 1000 } });
            worker.once('message', (message) => {
              resolve(message);
              void worker.terminate();
            });
            worker.once('error', reject);
          });
        }),
      );
      const done = results.reduce((n, r) => n + r.done, 0);
      return {
        rps: done / duration,
        latency: results.reduce((n, r) => n + r.latencyTotal, 0) / Math.max(1, done),
        errors: results.reduce((n, r) => n + r.errors, 0),
        // cpuUsage in a worker is the whole process's: the largest is the closest to the clients' own.
        loadCpu: Math.max(...results.map((r) => r.cpuSeconds)) / duration,
      };
    },
  };
}

/** Server-group CPU around `work`, in cores. */
async function measured<T extends Omit<Run, 'serverCpu'>>(groups: number[], work: () => Promise<T>): Promise<Run> {
  const before = groupCpuSeconds(groups);
  const started = performance.now();
  const result = await work();
  const after = groupCpuSeconds(groups);
  const seconds = (performance.now() - started) / 1000;
  return { ...result, serverCpu: before === undefined || after === undefined ? Number.NaN : (after - before) / seconds };
}

interface Scenario {
  key: string;
  label: string;
  protocol: 'h1' | 'h2';
  bytes: number;
  url: string;
  baseline?: string;
  group: number;
}

const fmtRps = (n: number) => (Number.isFinite(n) ? Math.round(n).toString() : 'n/a');
const fmtMs = (n: number) => (Number.isFinite(n) ? (n >= 10 ? n.toFixed(1) : n.toFixed(2)) : 'n/a');
const fmtPct = (n: number) => (Number.isFinite(n) ? `${Math.round(n * 100)} %` : 'n/a');

const range = (values: number[], format: (n: number) => string) => {
  const finite = values.filter(Number.isFinite);
  return finite.length < 2 ? '' : ` (${format(Math.min(...finite))}-${format(Math.max(...finite))})`;
};

export async function tlsSection(config: TlsBenchConfig): Promise<void> {
  const started = performance.now();
  const { generator, connections, threads } = config;
  const openssl = onPath('openssl');
  if (!openssl) {
    console.log('\n### TLS: skipped (openssl not on the PATH, needed for the test certificate)\n');
    return;
  }
  const h2Path = onPath('h2load');
  const h2 = h2Path ? h2load(h2Path) : nodeH2();
  const h2Connections = Math.max(1, Math.round(connections / STREAMS));
  progress(`\ntls: HTTP/1.1 ${connections} connections (${generator.name}), HTTP/2 ${h2Connections} connections x ${STREAMS} streams (${h2.name}); ${ROUNDS} rounds of ${DURATION} s\n`);
  if (generator.name === 'autocannon') process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'; // its workers cannot be given a CA

  const cert = join(scratch, 'tls-cert.pem');
  const key = join(scratch, 'tls-key.pem');
  execFileSync(openssl, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], {
    stdio: 'ignore',
  });

  progress('  starting servers ');
  const origin = await startChild(['origin-image', '64x64']);
  const [bareH1, bareH2, edge] = await Promise.all([startChild(['bare-tls', 'h1', cert, key]), startChild(['bare-tls', 'h2', cert, key]), startChild(['edge-tls', origin.url, cert, key])]);
  const all: Started[] = [origin, bareH1, bareH2, edge];
  progress('done\n');
  const insecure = new Agent({ connect: { rejectUnauthorized: false } });
  try {
    const scenarios: Scenario[] = [];
    for (const bytes of SIZES) {
      const path = `/blob/${bytes}`;
      scenarios.push(
        { key: `bareH1-${bytes}`, label: 'bare node:https, HTTP/1.1', protocol: 'h1', bytes, url: bareH1.url + path, group: bareH1.child.pid! },
        { key: `edgeH1-${bytes}`, label: 'edge memory-tier hit, HTTP/1.1 over TLS', protocol: 'h1', bytes, url: edge.url + path, baseline: `bareH1-${bytes}`, group: edge.child.pid! },
        { key: `bareH2-${bytes}`, label: 'bare node:http2 secure server, HTTP/2', protocol: 'h2', bytes, url: bareH2.url + path, group: bareH2.child.pid! },
        { key: `edgeH2-${bytes}`, label: 'edge memory-tier hit, HTTP/2', protocol: 'h2', bytes, url: edge.url + path, baseline: `bareH2-${bytes}`, group: edge.child.pid! },
      );
      // Fill the edge and check the rows measure hits.
      for (let i = 0; i < 2; i++) {
        const res = await request(edge.url + path, { dispatcher: insecure });
        await res.body.arrayBuffer();
        if (i === 1 && !/;\s*hit\b/.test(String(res.headers['cache-status']))) progress(`  warning: ${path} was not a hit while priming\n`);
        if (i === 0) await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }

    const runOne = (s: Scenario, duration: number) =>
      s.protocol === 'h1'
        ? generator.run(s.url, { duration, connections, threads, serverGroups: [s.group] }).then((r): Run => ({ rps: r.rps, latency: r.p50, errors: r.errors + r.non2xx, serverCpu: r.serverCpu, loadCpu: r.loadCpu }))
        : measured([s.group], () => h2.run(s.url, { duration, connections: h2Connections, streams: STREAMS, threads }));

    await warmUp(scenarios, WARMUP, runOne);

    const runs = new Map<string, Run[]>(scenarios.map((s) => [s.key, []]));
    for (let round = 1; round <= ROUNDS; round++) {
      for (const s of scenarios) {
        progress(`  [${round}/${ROUNDS}] ${`${s.label} ${s.bytes / KB} KB`.padEnd(52)} `);
        const run = await runOne(s, DURATION);
        runs.get(s.key)!.push(run);
        progress(`${fmtRps(run.rps).padStart(6)} req/s  ${s.protocol === 'h1' ? 'p50' : 'mean'} ${fmtMs(run.latency)} ms  CPU server ${fmtPct(run.serverCpu)}, client ${fmtPct(run.loadCpu)}${run.errors ? `  ${run.errors} errors` : ''}\n`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }

    console.log('\n### TLS: hits over HTTP/1.1 and HTTP/2, ratio to a bare Node TLS server serving the same bytes, same round\n');
    console.log(`Median of ${ROUNDS} interleaved rounds of ${DURATION} s (min-max in parentheses). HTTP/1.1: ${connections} connections, ${generator.describe}. HTTP/2: ${h2Connections} connections x ${STREAMS} streams, ${h2.describe}.\n`);
    console.log('| scenario | size | req/s | vs bare, same protocol | server CPU per request | latency ms | CPU server / client |');
    console.log('|---|---|---:|---:|---:|---:|---:|');
    for (const s of scenarios) {
      const own = runs.get(s.key)!;
      const base = s.baseline ? runs.get(s.baseline)! : undefined;
      const rps = own.map((r) => r.rps);
      const ratios = base ? own.map((r, i) => r.rps / base[i]!.rps) : [];
      const errors = own.reduce((n, r) => n + r.errors, 0);
      const latency = median(own.map((r) => r.latency));
      // CPU time per answer: steadier than req/s when other work shares the machine.
      const perRequest = median(own.map((r) => (r.serverCpu / r.rps) * 1e6));
      console.log(
        `| ${s.label}${errors ? ` (**${errors} errors**)` : ''} | ${s.bytes / KB} KB | ${fmtRps(median(rps))}${range(rps, fmtRps)} | ${base ? `**${fmtRatio(median(ratios))}**${range(ratios, fmtRatio)}` : '1x'} | ` +
          `${Number.isFinite(perRequest) ? `${Math.round(perRequest)} µs` : 'n/a'} | ${fmtMs(latency)} ${s.protocol === 'h1' ? 'p50' : 'mean'} | ${fmtPct(median(own.map((r) => r.serverCpu)))} / ${fmtPct(median(own.map((r) => r.loadCpu)))} |`,
      );
    }
    console.log('');
    console.log('- One Node main thread per server; the clients share the machine with it, so absolute req/s understate a server on its own cores. Ratios pair runs made seconds apart.');
    console.log('- "server CPU per request": the server process group\'s CPU time over the requests it answered (median over rounds); a server below 100 % CPU was not the limit, and then this column, not req/s, says what each answer costs.');
    console.log(`- Latency: wrk and autocannon give the median (p50), ${h2.name} the mean.`);
    console.log(`\nTLS section time ${((performance.now() - started) / 1000).toFixed(0)} s.`);
  } finally {
    await insecure.close();
    await Promise.all(all.map((s) => stop(s.child)));
  }
}
