/**
 * Rate limits: fixed-window counters, exact within one process, kept in an
 * lru-cache with a maximum number of entries so memory stays bounded
 * whatever the number of clients (the least recently seen client's counter
 * goes first; it starts again from zero if it comes back).
 *
 * Where the counters live is a {@link RateCounters}: this process's
 * {@link RateLimiter}, or in Node's cluster mode the primary's, asked over
 * IPC (`edge/node/cluster-rate-limit.ts`), so one limit holds for the box.
 *
 * The answer carries the IETF fields (draft-ietf-httpapi-ratelimit-headers-10):
 * `RateLimit-Policy: "<policy>";q=<quota>;w=<window seconds>` and
 * `RateLimit: "<policy>";r=<remaining>;t=<seconds to reset>`, on every
 * limited request, and `Retry-After` on a 429.
 */
import { LRUCache } from 'lru-cache';

const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** A parsed `100/1s`. */
export interface RateLimit {
  /** Requests allowed per window. */
  quota: number;
  /** Window length, ms (a whole number of seconds: the fields speak seconds). */
  windowMs: number;
}

/**
 * `N/duration`: `100/1s`, `1000/1m`, `20/10s`; a bare unit means one
 * (`100/s`). Undefined when malformed.
 */
export function parseRateLimit(value: string): RateLimit | undefined {
  const match = /^\s*(\d{1,9})\s*\/\s*(\S+)\s*$/.exec(value);
  if (!match) return undefined;
  const quota = Number(match[1]);
  // Its own tiny duration reader: routes.ts imports this module (route settings), so it cannot import routes.ts.
  const window = /^(\d{0,6})(s|m|h|d)$/i.exec(match[2]!);
  const windowMs = window ? Number(window[1] || '1') * UNIT_MS[window[2]!.toLowerCase() as keyof typeof UNIT_MS] : undefined;
  if (quota < 1 || windowMs === undefined || windowMs < 1000 || windowMs % 1000 !== 0 || windowMs > 86_400_000) return undefined;
  return { quota, windowMs };
}

export const RATE_LIMIT_HINT = 'expected requests per window such as 100/1s or 1000/1m (whole seconds, at most 1d)';

interface Counter {
  windowStart: number;
  count: number;
}

/** What one request's admission looks like. */
export interface RateDecision {
  allowed: boolean;
  /** The fields for the answer (`ratelimit`, `ratelimit-policy`, and `retry-after` when refused). */
  headers: Record<string, string>;
}

/**
 * The counters the access gate asks. Synchronous when they are in this
 * process; a Promise when another process holds them (then the gate never
 * takes the synchronous fresh-hit path for limited requests).
 */
export interface RateCounters {
  /** The counters are in this process: `take` answers synchronously (the fresh-hit path may use them). */
  readonly inProcess: boolean;
  /**
   * Admit or refuse one request of `partition` under `policy`; `count:
   * false` only looks. Never rejects.
   */
  take(policy: string, limit: RateLimit, partition: string, count?: boolean): RateDecision | Promise<RateDecision>;
}

export interface RateLimiterOptions {
  /** Counters kept at most (one per policy and client). @default 100_000 */
  maxEntries?: number;
  now: () => number;
}

export class RateLimiter implements RateCounters {
  readonly inProcess = true;
  readonly #counters: LRUCache<string, Counter>;
  readonly #now: () => number;

  constructor(options: RateLimiterOptions) {
    this.#counters = new LRUCache({ max: options.maxEntries ?? 100_000 });
    this.#now = options.now;
  }

  /**
   * Admit or refuse one request of `partition` (a client IP, an API key
   * name) under `policy`. `count: false` only looks (the request is
   * counted later with {@link add}, e.g. when cache hits are free).
   */
  take(policy: string, limit: RateLimit, partition: string, count = true): RateDecision {
    const now = this.#now();
    const id = `${policy}\n${partition}`;
    const windowStart = now - (now % limit.windowMs);
    let counter = this.#counters.get(id);
    if (!counter || counter.windowStart !== windowStart) {
      counter = { windowStart, count: 0 };
      this.#counters.set(id, counter);
    }
    const allowed = counter.count < limit.quota;
    if (allowed && count) counter.count++;
    const reset = Math.max(1, Math.ceil((windowStart + limit.windowMs - now) / 1000));
    const headers: Record<string, string> = {
      'ratelimit-policy': `"${policy}";q=${limit.quota};w=${limit.windowMs / 1000}`,
      ratelimit: `"${policy}";r=${Math.max(0, limit.quota - counter.count)};t=${reset}`,
    };
    if (!allowed) headers['retry-after'] = String(reset);
    return { allowed, headers };
  }

  /** Count a request admitted with `count: false` (its window may have turned since). */
  add(policy: string, limit: RateLimit, partition: string): void {
    this.take(policy, limit, partition, true);
  }

  /** Counters held now (bounded by `maxEntries`). */
  get size(): number {
    return this.#counters.size;
  }
}
