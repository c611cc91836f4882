/**
 * Request collapsing ("single flight"): the first request for a key does
 * the work, concurrent ones wait for its outcome instead of going to the
 * origin too. The same idea as lru-cache's `fetch()` dedupe, but the
 * leader's outcome here is "the cache now holds it" (followers re-read the
 * cache) rather than a value, because bodies stream and are not shared.
 */

export type FlightOutcome =
  /**
   * The leader stored a response: followers read it from the cache.
   * `since`: set when the leader followed another process's fill (a cluster
   * worker's, through the primary's lease): when that fill began. Its entry
   * may be stamped (`storedAt`) before a follower here joined, whose lookup
   * ran before the commit could be read; an entry stored since then answers them.
   */
  | { kind: 'stored'; since?: number }
  /**
   * The response could not be shared (not storable): followers go upstream
   * themselves. `purged`: it was storable, but a purge arrived while it was
   * on its way: the key is not uncacheable, and followers collapse again.
   */
  | { kind: 'uncacheable'; purged?: true }
  /** Upstream failed: followers get the same error (or serve stale). */
  | { kind: 'failed'; error: unknown }
  /**
   * The origin's answer was an error that may be shared but not stored (a
   * 5xx without private/no-store): followers get the same bytes instead of
   * each asking a failing origin again.
   */
  | { kind: 'shared'; answer: SharedAnswer };

/** A small, complete origin answer handed to every follower of a flight. */
export interface SharedAnswer {
  status: number;
  /** Client-facing headers without Cache-Status. */
  headers: Record<string, string>;
  body: Uint8Array;
  /** Cache-Status members of caches upstream, if any. */
  upstreamStatus: string | null;
}

export interface Flight {
  /** Resolves once the leader knows the outcome. Never rejects. */
  readonly done: Promise<FlightOutcome>;
  /** How many requests are waiting on it. */
  waiters: number;
}

export class FlightTable {
  private readonly flights = new Map<string, Flight & { resolve(outcome: FlightOutcome): void }>();

  /** Join the flight for `key` if one is under way. */
  join(key: string): Flight | undefined {
    const flight = this.flights.get(key);
    if (flight) flight.waiters++;
    return flight;
  }

  /**
   * Lead a new flight; call the returned `land` exactly once with the
   * outcome. Landing twice is harmless (the first outcome wins).
   */
  lead(key: string): (outcome: FlightOutcome) => void {
    let resolve!: (outcome: FlightOutcome) => void;
    const done = new Promise<FlightOutcome>((r) => (resolve = r));
    const flight = { done, waiters: 0, resolve };
    this.flights.set(key, flight);
    let landed = false;
    return (outcome) => {
      if (landed) return;
      landed = true;
      if (this.flights.get(key) === flight) this.flights.delete(key);
      resolve(outcome);
    };
  }

  /**
   * After a follower of `stale` gave up waiting: the first one to ask leads
   * a new flight in its place (returns its `land`); the others get
   * undefined and join that one, so followers that time out together do
   * not all go to the origin at once.
   */
  takeOver(key: string, stale: Flight): ((outcome: FlightOutcome) => void) | undefined {
    if (this.flights.get(key) !== stale) return undefined;
    return this.lead(key);
  }

  stats(): { flights: number; waiters: number } {
    let waiters = 0;
    for (const flight of this.flights.values()) waiters += flight.waiters;
    return { flights: this.flights.size, waiters };
  }

  get size(): number {
    return this.flights.size;
  }
}

/** Wait for a flight, but no longer than `timeoutMs` (then the follower proceeds alone). */
export async function waitForFlight(flight: Flight, timeoutMs: number): Promise<FlightOutcome | 'timeout'> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  try {
    return await Promise.race([flight.done, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Request collapsing beyond this process: before a process's flight leader
 * goes to the origin, it asks for the key's fill lease. With one process
 * (`--workers 1`, Workers) there is nobody to ask: {@link SOLE_PROCESS_FILLS}
 * grants every lease at once, synchronously, with no message sent. Node's
 * cluster workers ask the primary (`edge/node/cluster-fills.ts`).
 *
 * Hits never get here: only a miss (or a revalidation) that leads its
 * in-process flight asks.
 */
export interface FillCoordinator {
  /**
   * Ask for the fill lease of `key` (a flight key). Synchronous when no
   * other process can hold it; a Promise when one must be asked. Never
   * rejects: when the coordinator cannot be reached, the caller goes alone.
   */
  acquire(key: string): FillLease | Promise<FillLease>;
}

export type FillLease =
  /** Fetch from the origin; call `land` exactly once with the outcome (others wait on it). */
  | { role: 'lead'; land(outcome: FlightOutcome): void }
  /**
   * Another process filled (or failed): act on its outcome as an in-process
   * follower would. `since` (ms): when that fill began, so an entry it
   * stored counts as new even for a request that asked after it landed.
   */
  | { role: 'follow'; outcome: FlightOutcome; since?: number }
  /** Waited past the bound twice (or the coordinator is gone): fetch alone, nobody waits on it. */
  | { role: 'alone' };

const SOLE_LEASE: FillLease = { role: 'lead', land: () => {} };

/** One process: every lease is granted at once (no IPC, no allocation). */
export const SOLE_PROCESS_FILLS: FillCoordinator = {
  acquire: () => SOLE_LEASE,
};
