/**
 * `npm run bench`: loopback load tests, bounded in time (about 5 minutes
 * with the defaults), progress on stderr (one line per scenario and round),
 * tables on stdout. Every server runs in its own process group (bench/procs.ts);
 * the load comes from wrk when it is on the PATH (`apt-get install wrk`),
 * else from autocannon in worker threads (bench/load.ts).
 *   BENCH_DURATION    seconds per scenario and round (default 3)
 *   BENCH_CONNECTIONS concurrent connections (default 32)
 *   BENCH_ROUNDS      interleaved rounds per scenario, median kept (default 3)
 *   BENCH_THREADS     wrk threads / autocannon worker threads (default 1)
 *   BENCH_LOADGEN     wrk | autocannon (default: wrk if installed)
 *   BENCH_ONLY        comma list of sections to run: pull,images,shield,tls,compression,cluster,slicing (default all)
 * The pull section adds nginx (proxy_cache) and Varnish rows when `nginx` /
 * `varnishd` are installed (`apt-get install nginx varnish`); they are
 * started here, on free loopback ports, and stopped at the end.
 * The tls section (bench/tls.ts, about 45 s) compares hits over HTTP/1.1
 * over TLS and HTTP/2 with bare node:https / node:http2 servers; HTTP/2 load
 * from h2load when installed (`apt-get install nghttp2-client`).
 * The compression section (bench/compression.ts, about 50 s) measures bytes
 * saved per type, the cold-miss cost per brotli level, and br / gzip hits
 * against identity hits of the same object on one edge.
 * The shield section (bench/shield.ts, about 3 minutes) counts origin
 * requests for one Zipf workload over 3 edges, with and without a shield, in
 * this process and as CLI processes with --workers 2 (edges and shield).
 * The cluster section (bench/cluster.ts, about 80 s) compares the CLI with
 * --workers 1 and --workers N (one per core, at least 2): hits, hits under a
 * rate limit, misses; the scaling factor per core and the load generator's
 * own CPU.
 * The slicing section (bench/slicing.ts, about a minute) measures seeks into
 * cold 1 GB objects with and without --slice-size, and a full GET of a 200 MB
 * object from its pieces against bare node:http.
 */
import { availableParallelism, cpus } from 'node:os';
import { chooseLoadGenerator, type LoadResult } from './load.js';
import { scratch, startChild, stop, stopAll } from './procs.js';
import { pullSection } from './pull.js';

const DURATION = positive('BENCH_DURATION', 3);
const CONNECTIONS = positive('BENCH_CONNECTIONS', 32);
const ROUNDS = positive('BENCH_ROUNDS', 3);
const THREADS = positive('BENCH_THREADS', 1);
const SECTIONS = ['pull', 'images', 'shield', 'tls', 'compression', 'cluster', 'slicing'];

function positive(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!(value > 0) || !Number.isInteger(value)) throw new Error(`${name}: got "${raw}": expected a whole number above 0`);
  return value;
}

async function main(): Promise<void> {
  const started = performance.now();
  const only = new Set((process.env.BENCH_ONLY ?? SECTIONS.join(',')).split(',').map((s) => s.trim()).filter(Boolean));
  for (const name of only) if (!SECTIONS.includes(name)) throw new Error(`BENCH_ONLY: unknown section "${name}": expected a comma list of ${SECTIONS.join(', ')}`);
  const generator = chooseLoadGenerator(scratch, THREADS);
  console.error(
    `bench: node ${process.version}, ${availableParallelism()} cores (${cpus()[0]?.model.trim() ?? 'unknown CPU'}), loopback only; ` +
      `load from ${generator.describe}; ${CONNECTIONS} connections, ${DURATION} s per scenario`,
  );
  if (generator.name !== 'wrk') console.error(`bench: wrk not used: ${generator.describe}`);

  if (only.has('pull')) await pullSection({ generator, duration: DURATION, rounds: ROUNDS, connections: CONNECTIONS, threads: THREADS });
  if (only.has('images')) {
    const { imageSection } = await import('./images.js');
    await imageSection({
      generator: generator.name,
      startChild,
      stop,
      async load(label, url, opts = {}) {
        const duration = opts.duration ?? DURATION;
        if (!opts.quiet) process.stderr.write(`  ${label.padEnd(42)} `);
        const result: LoadResult = await generator.run(url, {
          duration,
          connections: opts.connections ?? CONNECTIONS,
          threads: THREADS,
          timeout: opts.timeout,
        });
        if (!opts.quiet) {
          const bad = result.errors || result.non2xx ? `, ${result.errors} errors, ${result.non2xx} bad status` : '';
          process.stderr.write(`${result.rps >= 100 ? Math.round(result.rps) : result.rps.toFixed(1)} req/s, p99 ${result.p99.toFixed(2)} ms${bad}\n`);
        }
        return result;
      },
    });
  }
  if (only.has('shield')) {
    const { shieldSection } = await import('./shield.js');
    await shieldSection({ rounds: ROUNDS });
  }
  if (only.has('tls')) {
    const { tlsSection } = await import('./tls.js');
    await tlsSection({ generator, connections: CONNECTIONS, threads: THREADS });
  }
  if (only.has('compression')) {
    const { compressionSection } = await import('./compression.js');
    await compressionSection({ generator, duration: DURATION, rounds: ROUNDS, connections: CONNECTIONS, threads: THREADS });
  }
  if (only.has('cluster')) {
    const { clusterSection } = await import('./cluster.js');
    await clusterSection({ generator, duration: DURATION, rounds: ROUNDS, connections: CONNECTIONS, threads: THREADS });
  }
  if (only.has('slicing')) {
    const { slicingSection } = await import('./slicing.js');
    await slicingSection();
  }
  console.log(`\nbench time ${((performance.now() - started) / 1000).toFixed(0)} s (${generator.name}).`);
}

main()
  .catch((error) => {
    console.error(error);
    process.exitCode = 1;
  })
  .finally(stopAll);
