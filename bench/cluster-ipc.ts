/**
 * Part of the cluster section of `npm run bench`: what one shared
 * rate-limit take costs over the cluster bus (edge/node/cluster-rate-limit.ts),
 * without HTTP around it. The bench process is the primary (it answers
 * with the real `serveRateCounters`), and forks this file as one worker
 * that times `ClusterRateCounters.take()`: one at a time (a full round
 * trip each) and 32 at once (takes of one event-loop turn share a message).
 */
import cluster from 'node:cluster';
import { PrimaryBus, WorkerBus } from '../edge/node/cluster-bus.js';
import { ClusterRateCounters, serveRateCounters } from '../edge/node/cluster-rate-limit.js';

export interface IpcCost {
  concurrency: number;
  /** Wall time per take, µs. */
  wallUs: number;
  /** CPU per take, µs: in the worker, and in the primary. */
  workerCpuUs: number;
  primaryCpuUs: number;
}

const TAKES = 20_000;
const LIMIT = { quota: 999_999_999, windowMs: 1000 };

/** In the bench process: fork the measuring worker, answer it, return what it measured. */
export async function measureRateIpc(): Promise<IpcCost[]> {
  const bus = new PrimaryBus();
  serveRateCounters(bus, { maxEntries: 100_000 });
  cluster.setupPrimary({ exec: new URL(import.meta.url).pathname });
  const worker = cluster.fork({ EDGE_BENCH_IPC_WORKER: '1' });
  bus.add(worker);
  const costs: IpcCost[] = [];
  let primaryStart = process.cpuUsage();
  bus.handle('bench-start', () => {
    primaryStart = process.cpuUsage();
    return null;
  });
  bus.handle('bench-result', (payload) => {
    const used = process.cpuUsage(primaryStart);
    costs.push({ ...(payload as Omit<IpcCost, 'primaryCpuUs'>), primaryCpuUs: (used.user + used.system) / TAKES });
    return null;
  });
  await new Promise((resolve) => worker.once('exit', resolve));
  return costs;
}

async function workerMain(): Promise<void> {
  const bus = new WorkerBus();
  const counters = new ClusterRateCounters(bus, { maxEntries: 1000 });
  // Warm-up: JIT on both sides.
  for (let i = 0; i < 2000; i++) await counters.take('default', LIMIT, `ip:${i % 50}`);
  for (const concurrency of [1, 32]) {
    await bus.request('bench-start');
    const started = performance.now();
    const cpu = process.cpuUsage();
    let sent = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (sent < TAKES) {
          sent++;
          await counters.take('default', LIMIT, `ip:${sent % 50}`);
        }
      }),
    );
    const wallUs = ((performance.now() - started) * 1000) / TAKES;
    const used = process.cpuUsage(cpu);
    await bus.request('bench-result', { concurrency, wallUs, workerCpuUs: (used.user + used.system) / TAKES });
  }
  process.exit(0);
}

if (cluster.isWorker && process.env.EDGE_BENCH_IPC_WORKER === '1') void workerMain();
