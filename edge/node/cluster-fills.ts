/**
 * Request collapsing across cluster workers (issue 11): the origin sees
 * one request per object however many workers miss it at once.
 *
 * The primary is the coordinator, rather than a fill lock in LMDB, because
 * it already knows what a lock in a file cannot: the moment a worker dies
 * (node:cluster's `exit`, even after SIGKILL, with no stale lock to expire),
 * and it can wake the waiters when a fill lands (a lock in LMDB would have
 * them poll the environment). The cost is one IPC round trip per miss that
 * leads its worker's in-process flight; hits and in-process followers send
 * nothing.
 *
 * - `acquire(key)`: the first worker gets `lead`; a worker asking while
 *   the lease is held is answered only when the holder lands (`follow` with
 *   the outcome: stored, uncacheable, failed or a shared error answer).
 * - The holder dies: its lease passes to the longest waiting worker (`lead`,
 *   a new fill: the dead worker's partial body was never committed).
 * - The holder stalls past `--collapse-timeout`: as in one process, one
 *   waiter takes the lease over and the others wait once more; a waiter
 *   that has already waited twice is told to go `alone`.
 * - A fill stored less than a second ago still answers `acquire` for its key
 *   (`follow`, stored): a worker whose lookup missed just before the fill
 *   landed (or whose own followers timed out just after) reads the entry
 *   instead of fetching it again.
 */
import cluster, { type Worker } from 'node:cluster';
import type { FillCoordinator, FillLease, FlightOutcome } from '../core/collapse.js';
import { EdgeError, isEdgeError } from '../core/errors.js';
import { Gauge, type Registry } from 'prom-client';
import type { PrimaryBus, WorkerBus } from './cluster-bus.js';

/** A flight outcome as it crosses the IPC channel (JSON: errors and bytes flattened). */
export type WireOutcome =
  | { kind: 'stored' }
  | { kind: 'uncacheable'; purged?: true }
  | { kind: 'failed'; code: string; message: string; headers: Record<string, string>; details: Record<string, unknown> }
  | { kind: 'shared'; status: number; headers: Record<string, string>; body: string; upstreamStatus: string | null };

/** What the primary answers to `fill-acquire`. */
export type WireLease = { role: 'lead' } | { role: 'follow'; outcome: WireOutcome; since: number } | { role: 'alone' };

/**
 * A fill stored this recently still answers `acquire` for its key with its
 * outcome: a worker that missed just before the fill landed (its lookup and
 * its request crossed the landing) reads the entry instead of fetching again.
 * Short, so that a key asked again later is looked at afresh. @default 1000
 */
export const RECENT_FILL_MS = 1000;
/** Recent fills remembered at most (oldest dropped first). */
const MAX_RECENT_FILLS = 10_000;

export function toWire(outcome: FlightOutcome): WireOutcome {
  switch (outcome.kind) {
    case 'stored':
      return { kind: outcome.kind };
    case 'uncacheable':
      return outcome.purged ? { kind: 'uncacheable', purged: true } : { kind: 'uncacheable' };
    case 'failed': {
      const { error } = outcome;
      // Only the node's own errors mean something to the followers; anything else was this worker's problem.
      if (!isEdgeError(error)) return { kind: 'uncacheable' };
      return { kind: 'failed', code: error.code, message: error.message, headers: error.headers, details: error.details };
    }
    case 'shared': {
      const { answer } = outcome;
      return { kind: 'shared', status: answer.status, headers: answer.headers, body: Buffer.from(answer.body).toString('base64'), upstreamStatus: answer.upstreamStatus };
    }
  }
}

export function fromWire(outcome: WireOutcome): FlightOutcome {
  switch (outcome.kind) {
    case 'stored':
      return { kind: outcome.kind };
    case 'uncacheable':
      return outcome.purged ? { kind: 'uncacheable', purged: true } : { kind: 'uncacheable' };
    case 'failed':
      return {
        kind: 'failed',
        error: new EdgeError(outcome.code as EdgeError['code'], outcome.message, { headers: outcome.headers, details: outcome.details }),
      };
    case 'shared':
      return {
        kind: 'shared',
        answer: { status: outcome.status, headers: outcome.headers, body: new Uint8Array(Buffer.from(outcome.body, 'base64')), upstreamStatus: outcome.upstreamStatus },
      };
  }
}

interface Waiter {
  worker: Worker;
  /** Already waited through one stall (a second one sends it alone). */
  rejoined: boolean;
  answer(lease: WireLease): void;
}

interface Lease {
  holder: Worker;
  /** When the fill began (ms): what it stores is newer. */
  since: number;
  waiters: Waiter[];
  timer: NodeJS.Timeout;
}

/** The primary's side: one lease per flight key being filled anywhere in the cluster. */
export class FillLeaseTable {
  readonly #leases = new Map<string, Lease>();
  /** Keys whose fill was stored lately: when it landed and when it began. */
  readonly #recent = new Map<string, { landedAt: number; since: number }>();
  /** The flight keys in `#recent` by cache key (a flight key is the cache key, then NUL and a variant for a revalidation). */
  readonly #recentByKey = new Map<string, Set<string>>();
  readonly #stallMs: number;
  readonly #now: () => number;

  constructor(options: { stallMs: number; now?: () => number }) {
    this.#stallMs = options.stallMs;
    this.#now = options.now ?? Date.now;
  }

  /** Answer `fill-acquire` and `fill-land` on this bus, and hand over the leases of workers that exit. */
  serve(bus: PrimaryBus): void {
    cluster.on('exit', (worker) => this.forget(worker));
    bus.handle('fill-acquire', (payload, from) => this.acquire((payload as { key: string }).key, from));
    bus.handle('fill-land', (payload, from) => {
      const { key, outcome } = payload as { key: string; outcome: WireOutcome };
      this.land(key, from, outcome);
      return null;
    });
    // A key deleted or changed (purge, DELETE, invalidation) no longer holds what its recent fill stored:
    // workers that miss it now fetch it again under one lease, not each alone after reading nothing.
    bus.observe('forget', (payload) => this.forgetRecent((payload as { key: string }).key));
  }

  /** Forget the recent fills of `key` (every flight key of it: the key, and the key NUL a variant). */
  forgetRecent(key: string): void {
    for (const flightKey of this.#recentByKey.get(key) ?? []) this.#recent.delete(flightKey);
    this.#recentByKey.delete(key);
  }

  acquire(key: string, from: Worker): WireLease | Promise<WireLease> {
    const lease = this.#leases.get(key);
    if (!lease) {
      const recent = this.#recent.get(key);
      if (recent && this.#now() - recent.landedAt < RECENT_FILL_MS) return { role: 'follow', outcome: { kind: 'stored' }, since: recent.since };
      if (recent) this.#dropRecent(key);
      this.#leases.set(key, { holder: from, since: this.#now(), waiters: [], timer: this.#stallTimer(key) });
      return { role: 'lead' };
    }
    return new Promise<WireLease>((answer) => lease.waiters.push({ worker: from, rejoined: false, answer }));
  }

  /** The holder's outcome goes to every waiter; a land from a worker that no longer holds the lease (it stalled and was replaced) is ignored. */
  land(key: string, from: Worker, outcome: WireOutcome): void {
    const lease = this.#leases.get(key);
    if (!lease || lease.holder !== from) return;
    this.#leases.delete(key);
    clearTimeout(lease.timer);
    if (outcome.kind === 'stored') this.#remember(key, lease.since);
    for (const waiter of lease.waiters) waiter.answer({ role: 'follow', outcome, since: lease.since });
  }

  #remember(key: string, since: number): void {
    const now = this.#now();
    this.#recent.delete(key);
    this.#recent.set(key, { landedAt: now, since });
    const cacheKey = key.split('\u0000')[0]!;
    const flights = this.#recentByKey.get(cacheKey) ?? new Set<string>();
    this.#recentByKey.set(cacheKey, flights.add(key));
    // Insertion order is landing order: drop what has lapsed, and the oldest past the bound.
    for (const [old, { landedAt }] of this.#recent) {
      if (now - landedAt < RECENT_FILL_MS && this.#recent.size <= MAX_RECENT_FILLS) break;
      this.#dropRecent(old);
    }
  }

  #dropRecent(flightKey: string): void {
    this.#recent.delete(flightKey);
    const cacheKey = flightKey.split('\u0000')[0]!;
    const flights = this.#recentByKey.get(cacheKey);
    flights?.delete(flightKey);
    if (flights?.size === 0) this.#recentByKey.delete(cacheKey);
  }

  /** A worker exited: the leases it held pass to a waiter (a new fill), its own waits are dropped. */
  forget(worker: Worker): void {
    for (const [key, lease] of this.#leases) {
      lease.waiters = lease.waiters.filter((waiter) => waiter.worker !== worker);
      if (lease.holder === worker) this.#handOver(key, lease, false);
    }
  }

  /** Leases held and workers waiting on them (status, tests). */
  stats(): { leases: number; waiters: number } {
    let waiters = 0;
    for (const lease of this.#leases.values()) waiters += lease.waiters.length;
    return { leases: this.#leases.size, waiters };
  }

  #stallTimer(key: string): NodeJS.Timeout {
    const timer = setTimeout(() => {
      const lease = this.#leases.get(key);
      if (lease && lease.timer === timer) this.#handOver(key, lease, true);
    }, this.#stallMs);
    timer.unref();
    return timer;
  }

  /** Give the lease to the longest waiting worker; after a stall, those who already waited twice go alone. */
  #handOver(key: string, lease: Lease, stalled: boolean): void {
    clearTimeout(lease.timer);
    const live = lease.waiters.filter((waiter) => !waiter.worker.isDead());
    const next = live.shift();
    if (!next) {
      this.#leases.delete(key);
      return;
    }
    lease.holder = next.worker;
    lease.since = this.#now();
    lease.waiters = [];
    for (const waiter of live) {
      if (stalled && waiter.rejoined) waiter.answer({ role: 'alone' });
      else {
        if (stalled) waiter.rejoined = true;
        lease.waiters.push(waiter);
      }
    }
    lease.timer = this.#stallTimer(key);
    next.answer({ role: 'lead' });
  }
}

/** A worker's side: asks the primary for leases and tells it how fills land. */
export class ClusterFillCoordinator implements FillCoordinator {
  readonly #bus: WorkerBus;
  readonly #waitMs: number;
  readonly #beforeFollow: (key: string) => Promise<void>;
  #waiting = 0;

  constructor(options: {
    bus: WorkerBus;
    /** `--collapse-timeout`: the primary's stall bound. */
    stallMs: number;
    /**
     * Before acting on another worker's `stored` for a flight key: make its
     * commit visible to this process's reads (LMDB's read transaction) and
     * drop this worker's memory copy of the key (the stale entry a
     * revalidation replaced; a fill tells the other workers without waiting).
     */
    beforeFollow: (key: string) => Promise<void>;
  }) {
    this.#bus = options.bus;
    // Two stalls and a margin: the primary answers every waiter by then unless it is stuck itself.
    this.#waitMs = options.stallMs * 2 + 5000;
    this.#beforeFollow = options.beforeFollow;
  }

  /** This worker's requests waiting on another worker's fill (or on the primary's answer). */
  get waiting(): number {
    return this.#waiting;
  }

  async acquire(key: string): Promise<FillLease> {
    let lease: WireLease;
    this.#waiting++;
    try {
      lease = await this.#bus.request<WireLease>('fill-acquire', { key }, this.#waitMs);
    } catch {
      // No primary to ask (it is gone, and this worker with it): fetch alone.
      return { role: 'alone' };
    } finally {
      this.#waiting--;
    }
    if (lease.role === 'alone') return lease;
    if (lease.role === 'follow') {
      if (lease.outcome.kind === 'stored') await this.#beforeFollow(key);
      return { role: 'follow', outcome: fromWire(lease.outcome), since: lease.since };
    }
    let landed = false;
    return {
      role: 'lead',
      land: (outcome) => {
        if (landed) return;
        landed = true;
        this.#bus.request('fill-land', { key, outcome: toWire(outcome) }).catch(() => {});
      },
    };
  }
}

/**
 * `edge_collapsed_waiting`: requests of this worker waiting on another
 * request's origin fetch, in this worker or in another one (summed over
 * the workers by the primary's aggregation).
 */
export function registerCollapseGauge(registry: Registry, waiting: () => number): void {
  new Gauge({
    name: 'edge_collapsed_waiting',
    help: 'Requests waiting on another request\'s origin fetch (in this worker or another worker of the cluster).',
    registers: [registry],
    collect() {
      this.set(waiting());
    },
  });
}
