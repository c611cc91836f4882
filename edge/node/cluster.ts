/**
 * Cluster mode (`--workers N`): a primary process forks N workers with
 * node:cluster; they share one listening socket and one LMDB environment,
 * and each keeps its own memory tier.
 *
 * The primary serves nothing. It
 * - runs the disk tier's start-up housekeeping (recount, orphan sweep,
 *   eviction to budget) once, before any worker opens the directory;
 * - forks the workers, and replaces one that exits with a back-off
 *   (100 ms, doubling while replacements die young, at most 30 s);
 * - routes the cluster bus (`cluster-bus.ts`): broadcasts between workers
 *   (forget a key, with acknowledgements), the worker list for
 *   `/_edge/health`, and the aggregate of every worker's metrics for
 *   `/_edge/metrics` (prom-client's AggregatorRegistry);
 * - keeps what every worker shares besides LMDB: fill leases for request
 *   collapsing across workers (`cluster-fills.ts`), rate-limit counters
 *   (`cluster-rate-limit.ts`) and used upload nonces (`cluster-nonces.ts`);
 * - on SIGTERM or SIGINT, asks every worker to drain and close, and exits
 *   when they have;
 * - on SIGHUP, or a worker's `POST /_edge/reload`, asks every worker to
 *   reload its configuration (each re-reads flags, environment and config
 *   file; the primary re-reads nothing), logs the outcome once and answers
 *   once each worker has applied or refused it.
 *
 * A worker exits when its IPC channel closes, so workers never outlive a
 * primary that dies.
 */
import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { EdgeApp, EdgeAppDeps } from '../core/app.js';
import type { EdgeOptions } from '../core/options.js';
import type { ReloadOutcome } from '../core/reload.js';
import { TieredCacheStore } from '../core/store/tiered.js';
import type { CacheStore } from '../core/store/types.js';
import { PrimaryBus, WorkerBus } from './cluster-bus.js';
import { describeReload } from './config-reload.js';
import { mergeStatsSnapshots, tierFills, type StatsSnapshot, type TierFill } from './status-stats.js';
import { ClusterFillCoordinator, FillLeaseTable, registerCollapseGauge } from './cluster-fills.js';
import { ClusterUploadNonces, serveUploadNonces } from './cluster-nonces.js';
import { ClusterRateCounters, serveRateCounters } from './cluster-rate-limit.js';
import { ClusterCacheStore, createForgetHandler, createPurgeHandler, type ForgetNotice, type PurgeNotice } from './cluster-store.js';
import { LmdbCacheStore } from './lmdb-store.js';
import { createTieredStore } from './server.js';

/** What a worker reports once it listens. */
export interface WorkerReady {
  port: number;
  url: string;
  tls: boolean;
  redirectPort?: number;
  /** With `--admin-listen`: the admin listener's `http://host:port` (every worker listens there too, sharing the socket). */
  adminUrl?: string;
}

/** One worker as `/_edge/health` lists it. */
export interface WorkerInfo {
  id: number;
  pid: number;
  startedAt: number;
}

export interface ClusterPrimaryOptions {
  name: string;
  workers: number;
  options: EdgeOptions;
  /** Extra environment for the workers (the embedded demo origin's URL). */
  env?: Record<string, string>;
  /** The first worker is listening (print the start-up line). */
  onReady(ready: WorkerReady): void;
  /** After every worker has exited on SIGTERM/SIGINT (close the demo origin). */
  onStopped?: () => Promise<void>;
}

const FIRST_RESPAWN_MS = 100;
const MAX_RESPAWN_MS = 30_000;
/** A worker that lived this long resets the back-off. */
const HEALTHY_AFTER_MS = 10_000;
/** Workers still running this long after SIGTERM are killed. */
const DRAIN_DEADLINE_MS = 30_000;
/** A worker has this long to apply or refuse a reload (it builds clients, it reads no network). */
const RELOAD_TIMEOUT_MS = 10_000;

export async function runPrimary(config: ClusterPrimaryOptions): Promise<void> {
  const { name: tag, options } = config;
  await LmdbCacheStore.housekeep({ path: options.dataDir, maxBytes: options.diskSize, evictPushed: options.evictPushed });

  const aggregator = new AggregatorRegistry();
  const bus = new PrimaryBus({
    onLaggard: (worker, type) => console.error(`${tag}: worker ${worker.process.pid} did not acknowledge ${type} in time; killing it`),
  });
  // What every worker shares beyond LMDB: fill leases (cross-worker collapsing), rate-limit counters, upload nonces.
  new FillLeaseTable({ stallMs: options.collapseTimeout }).serve(bus);
  serveRateCounters(bus, { maxEntries: options.rateLimitClients });
  serveUploadNonces(bus);
  const started = new Map<number, WorkerInfo>();
  const ready = new Set<number>();
  let announced = false;
  let stopping = false;
  let delay = FIRST_RESPAWN_MS;

  const publish = () => bus.notify('workers', [...started.values()].filter((info) => ready.has(info.id)));
  bus.handle('metrics', () => aggregator.clusterMetrics());
  // The options the cluster started with: a replacement worker reads the config file as it is now, and must
  // not start with another port, data dir... than its siblings (a reload refused for them may be in the file).
  bus.handle('options', () => options);

  /** Every listening worker reloads its configuration; one outcome, logged once, when all have applied or refused. */
  const reloadAll = async (trigger: string): Promise<ReloadOutcome> => {
    const workers = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => !!worker && ready.has(worker.id));
    const outcomes = await Promise.all(
      workers.map((worker) =>
        bus.deliver(worker, 'reload', trigger, RELOAD_TIMEOUT_MS).then(
          (outcome) => outcome as ReloadOutcome | null,
          (error: Error): ReloadOutcome => ({ applied: false, changed: [], problems: [`worker ${worker.process.pid}: ${error.message}`] }),
        ),
      ),
    );
    // null: the worker exited meanwhile (its replacement reads the configuration as it starts).
    const answered = outcomes.filter((outcome): outcome is ReloadOutcome => outcome !== null);
    const problems = [...new Set(answered.flatMap((outcome) => outcome.problems))];
    if (answered.length === 0) problems.push('no worker is listening');
    const outcome: ReloadOutcome = {
      applied: problems.length === 0 && answered.every((one) => one.applied),
      changed: [...new Set(answered.flatMap((one) => one.changed))],
      problems,
      workers: answered.length,
    };
    for (const line of describeReload(outcome, trigger)) console.error(`${tag}: ${line}`);
    return outcome;
  };
  bus.handle('reload', () => reloadAll('POST /_edge/reload'));
  // The status page's figures: every listening worker's snapshot, summed (a worker that does not answer is left out).
  bus.handle('stats', async () => {
    const workers = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => !!worker && ready.has(worker.id));
    const snapshots = await Promise.all(workers.map((worker) => bus.deliver(worker, 'stats', null).catch(() => null)));
    return mergeStatsSnapshots(snapshots.filter((snapshot): snapshot is StatsSnapshot => snapshot !== null));
  });
  bus.handle('ready', (payload, worker) => {
    ready.add(worker.id);
    publish();
    // Announced once every worker of the first set listens.
    if (!announced && ready.size >= config.workers) {
      announced = true;
      config.onReady(payload as WorkerReady);
    }
    return null;
  });

  const fork = (): Worker => {
    const worker = cluster.fork({ ...config.env, EDGE_CLUSTER_WORKER: '1' });
    bus.add(worker);
    started.set(worker.id, { id: worker.id, pid: worker.process.pid!, startedAt: Date.now() });
    worker.once('exit', (code, signal) => {
      const info = started.get(worker.id);
      started.delete(worker.id);
      const wasReady = ready.delete(worker.id);
      publish();
      if (stopping) return;
      // No worker ever came up: the next would fail the same way (a port in use, a bad certificate).
      if (!announced && !wasReady) {
        console.error(`${tag}: worker ${worker.process.pid} exited (${signal ?? `code ${code}`}) before listening; stopping`);
        void stop('worker failure', code === 0 || code === null ? 1 : code);
        return;
      }
      const lived = Date.now() - (info?.startedAt ?? 0);
      if (lived >= HEALTHY_AFTER_MS) delay = FIRST_RESPAWN_MS;
      console.error(`${tag}: worker ${worker.process.pid} exited (${signal ?? `code ${code}`}); starting another in ${delay} ms`);
      setTimeout(() => {
        if (!stopping) fork();
      }, delay);
      delay = Math.min(delay * 2, MAX_RESPAWN_MS);
    });
    return worker;
  };

  const stop = async (reason: string, exitCode = 0) => {
    if (stopping) return;
    stopping = true;
    const workers = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => !!worker && !worker.isDead());
    console.error(`${tag}: ${reason}, closing ${workers.length} worker${workers.length === 1 ? '' : 's'}`);
    const exited = workers.map((worker) => new Promise((resolve) => worker.once('exit', resolve)));
    for (const worker of workers) worker.process.kill('SIGTERM');
    const force = setTimeout(() => {
      for (const worker of workers) if (!worker.isDead()) worker.process.kill('SIGKILL');
    }, DRAIN_DEADLINE_MS);
    await Promise.all(exited);
    clearTimeout(force);
    await config.onStopped?.();
    process.exit(exitCode);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGHUP', () => void reloadAll('SIGHUP'));

  for (let i = 0; i < config.workers; i++) fork();
}

/** A worker's side of the cluster, handed to `startEdgeServer` (`overrides.cluster`). */
export interface ClusterWorker {
  /** This worker's store: its memory tier over the shared LMDB (no housekeeping), telling the others of changes. */
  createStore(options: EdgeOptions, now: () => number): CacheStore;
  /**
   * Once the app exists: answer the others' notices and the primary's
   * metrics requests, join the broadcasts, then read the pushed-object
   * index again (pushes committed before joining were not told here).
   */
  attach(edge: EdgeApp, registry: Registry, stats?: () => StatsSnapshot): Promise<void>;
  /** The metrics of every worker, aggregated by the primary. */
  metrics(): Promise<string>;
  /** The status page's figures of every worker, summed by the primary (this worker's alone if the primary cannot answer). */
  stats(): Promise<StatsSnapshot>;
  /** This worker's tiers: its own memory tier and the shared disk tier. */
  tiers(): TierFill[];
  /** Extra `/_edge/health` facts: this worker and every worker. */
  health(): Record<string, unknown>;
  /** Tell the primary this worker listens. */
  ready(ready: WorkerReady): Promise<void>;
  /** The options the primary started the cluster with (what a worker's own reading may not change: `restartProblems`). */
  startOptions(): Promise<EdgeOptions>;
  /** Reload every worker's configuration through the primary (`POST /_edge/reload`); resolves once all have applied or refused. */
  reloadAll(): Promise<ReloadOutcome>;
  /** Apply the primary's reload requests to this worker (before `ready()`). */
  onReload(reload: (trigger: string) => Promise<ReloadOutcome>): void;
  /** State kept by the primary for every worker (after `createStore`): fill leases, rate-limit counters, upload nonces. */
  shared(options: EdgeOptions): Pick<EdgeAppDeps, 'fills' | 'rateCounters' | 'uploadNonces'>;
}

/** In a worker (`cluster.isWorker`): join the primary's bus. */
export function joinCluster(): ClusterWorker {
  const bus = new WorkerBus();
  let workers: WorkerInfo[] = [];
  bus.onNotice('workers', (list) => {
    workers = list as WorkerInfo[];
  });
  let tiers: CacheStore | undefined;
  let disk: LmdbCacheStore | undefined;
  let store: ClusterCacheStore | undefined;
  let localStats: (() => StatsSnapshot) | undefined;
  let fills: ClusterFillCoordinator | undefined;
  return {
    createStore(options, now) {
      disk = new LmdbCacheStore({ path: options.dataDir, maxBytes: options.diskSize, clock: now, evictPushed: options.evictPushed, housekeeping: false, sharedReaders: true });
      tiers = createTieredStore(options, now, disk);
      return (store = new ClusterCacheStore(tiers, (notice: ForgetNotice) => bus.broadcast('forget', notice)));
    },
    async attach(edge, registry, stats) {
      localStats = stats;
      if (stats) bus.handle('stats', () => stats());
      if (!tiers || !disk || !store) throw new TypeError('joinCluster: attach() before createStore()');
      const forget = createForgetHandler({ store: tiers as TieredCacheStore, disk, pushedPaths: edge.pull.pushedPaths });
      bus.handle('forget', (payload) => forget(payload as ForgetNotice));
      // A purge made here is recorded in every other worker's purge log (and
      // their commits that did not see it have landed, this worker's own too:
      // a commit's publishing transaction follows its chunk writes, so it could
      // otherwise come after the purge's deletion) before it changes the
      // store; then this process reads LMDB afresh, those commits included.
      const purgeHere = createPurgeHandler({ pull: () => edge.pull, store });
      bus.handle('purge-begin', (payload) => purgeHere(payload as PurgeNotice));
      const sharedDisk = disk;
      const ownStore = store;
      edge.pull.purges.sharing = async (scope, soft) => {
        await Promise.all([bus.broadcast('purge-begin', { scope, soft } satisfies PurgeNotice), ownStore.landed()]);
        sharedDisk.refresh();
      };
      // Constructing one installs prom-client's worker-side listener; it then answers with this registry.
      new AggregatorRegistry();
      AggregatorRegistry.setRegistries([registry]);
      registerCollapseGauge(registry, () => edge.pull.flightStats().waiters + (fills?.waiting ?? 0));
      await bus.request('join');
      await edge.pull.loadPushedIndex();
    },
    metrics: () => bus.request<string>('metrics'),
    stats: () =>
      bus.request<StatsSnapshot>('stats').catch((error: unknown) => {
        if (!localStats) throw error;
        return localStats();
      }),
    tiers: () => (tiers ? tierFills(tiers) : []),
    health: () => {
      const now = Date.now();
      return {
        pid: process.pid,
        workers: workers.map((info) => ({ pid: info.pid, uptime: Math.round((now - info.startedAt) / 1000) })),
      };
    },
    ready: (info) => bus.request('ready', info).then(() => undefined),
    startOptions: () => bus.request<EdgeOptions>('options'),
    reloadAll: () => bus.request<ReloadOutcome>('reload'),
    onReload: (reload) => bus.handle('reload', (trigger) => reload(String(trigger))),
    shared: (options) => ({
      // Another worker's fill is read from LMDB: its commit must be visible to this process's next read.
      fills: (fills = new ClusterFillCoordinator({
        bus,
        stallMs: options.collapseTimeout,
        beforeFollow: async (flightKey) => {
          disk?.refresh();
          // A flight key is the cache key, then NUL and a variant for a revalidation.
          await (tiers as TieredCacheStore | undefined)?.forgetAbove?.(flightKey.split('\u0000')[0]!);
        },
      })),
      rateCounters: new ClusterRateCounters(bus, { maxEntries: options.rateLimitClients }),
      uploadNonces: new ClusterUploadNonces(bus),
    }),
  };
}
