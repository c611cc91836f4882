/**
 * Rate limits shared by the workers of a cluster (issue 16): the primary
 * holds the counters (one `RateLimiter`, `--rate-limit-clients` of them)
 * and each worker asks it once per limited request, over IPC.
 *
 * Chosen over leasing batches of tokens to workers because it stays exact:
 * a limit of 5/1s admits 5 requests per window for the whole machine,
 * wherever node:cluster sends the connections, and a worker holding unused
 * tokens can never starve another. The cost is one IPC round trip per
 * limited request, and limited requests never take the synchronous
 * fresh-hit path (README "Cluster mode" has the measured figure).
 *
 * Takes made in the same turn of a worker's event loop travel together:
 * one message to the primary and one back for all of them (under load, a
 * worker parses several requests per turn), decided in arrival order.
 *
 * If the primary does not answer (it is gone, and the worker exits with
 * it), the worker's own counters decide.
 */
import { RateLimiter, type RateCounters, type RateDecision, type RateLimit } from '../core/access/rate-limit.js';
import type { PrimaryBus, WorkerBus } from './cluster-bus.js';

interface TakeRequest {
  policy: string;
  limit: RateLimit;
  partition: string;
  count: boolean;
}

/** The primary's side: answer `rate-take` (a batch of takes, in order) from its counters. */
export function serveRateCounters(bus: PrimaryBus, options: { maxEntries: number; now?: () => number }): RateLimiter {
  const counters = new RateLimiter({ maxEntries: options.maxEntries, now: options.now ?? Date.now });
  bus.handle('rate-take', (payload) => (payload as TakeRequest[]).map(({ policy, limit, partition, count }) => counters.take(policy, limit, partition, count)));
  return counters;
}

interface Queued {
  request: TakeRequest;
  resolve(decision: RateDecision): void;
}

/** A worker's side: the primary's counters. */
export class ClusterRateCounters implements RateCounters {
  readonly inProcess = false;
  readonly #bus: WorkerBus;
  readonly #fallback: RateLimiter;

  constructor(bus: WorkerBus, options: { maxEntries: number; now?: () => number }) {
    this.#bus = bus;
    this.#fallback = new RateLimiter({ maxEntries: options.maxEntries, now: options.now ?? Date.now });
  }

  #queue: Queued[] = [];

  take(policy: string, limit: RateLimit, partition: string, count = true): Promise<RateDecision> {
    return new Promise((resolve) => {
      // The first take of this turn sends the batch once the turn's I/O callbacks have run.
      if (this.#queue.length === 0) setImmediate(() => void this.#send());
      this.#queue.push({ request: { policy, limit, partition, count }, resolve });
    });
  }

  async #send(): Promise<void> {
    const batch = this.#queue;
    this.#queue = [];
    let decisions: RateDecision[];
    try {
      decisions = await this.#bus.request<RateDecision[]>('rate-take', batch.map((queued) => queued.request));
    } catch {
      decisions = batch.map(({ request }) => this.#fallback.take(request.policy, request.limit, request.partition, request.count));
    }
    batch.forEach((queued, i) => queued.resolve(decisions[i]!));
  }
}
