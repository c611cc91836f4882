/**
 * Which paths have a pushed object, on Workers, without listing the bucket.
 *
 * The core skips the pushed lookup for paths not in `pull.pushedPaths` (so a
 * pull hit costs no R2 call). On Node that set is filled by listing the store
 * at start-up; on Workers every isolate would list the whole R2 bucket (a
 * Class A operation per 1,000 objects, and more subrequests than a request
 * may make past ~50,000 objects). Instead, the first request for a path in an
 * isolate asks R2 once (`head`, one subrequest), and the answer, pushed or
 * not, is kept in this isolate for `ttlMs`, in an LRU of `maxPaths` paths.
 * Negative answers are what keep hits cheap: a path that is not pushed is
 * asked about once per `ttlMs` per isolate, not once per request.
 *
 * Staleness, across isolates:
 * - a push is served by an isolate that had already asked about its path
 *   after at most `ttlMs` (`PUSH_INDEX_REFRESH`, 60 s by default); by the
 *   isolate that took the push, and by any isolate asking for the first
 *   time, at once;
 * - a delete or purge of a pushed object is seen at once everywhere: a path
 *   believed pushed is read from R2 on every request, and a miss there falls
 *   through to the pull path.
 */
import { LRUCache } from 'lru-cache';
import { pushedKey } from '../core/cache-key.js';

/** Options for {@link PushedPathLookup}. */
export interface PushedPathLookupOptions {
  /** Asks the push tier whether a key has an object (R2 `head`). */
  exists: (key: string) => Promise<boolean>;
  /** The core's set (`edge.pull.pushedPaths`), kept in step with the answers. */
  paths: Set<string>;
  /**
   * How long an answer is trusted, ms; 0 asks on every request.
   * @default 60000
   */
  ttlMs?: number;
  /** @default 10000 */
  maxPaths?: number;
  /** @default Date.now */
  clock?: () => number;
}

export class PushedPathLookup {
  readonly #exists: (key: string) => Promise<boolean>;
  readonly #paths: Set<string>;
  readonly #answers: LRUCache<string, boolean> | undefined;
  /** Lookups in flight, so concurrent requests for one path ask R2 once. */
  readonly #asking = new Map<string, Promise<boolean>>();

  constructor(options: PushedPathLookupOptions) {
    const ttl = options.ttlMs ?? 60_000;
    if (!Number.isFinite(ttl) || ttl < 0) throw new TypeError(`PushedPathLookup: ttlMs must be a non-negative number, got ${String(ttl)}`);
    this.#exists = options.exists;
    this.#paths = options.paths;
    const clock = options.clock ?? Date.now;
    this.#answers =
      ttl === 0
        ? undefined
        : new LRUCache<string, boolean>({
            max: options.maxPaths ?? 10_000,
            ttl,
            perf: { now: clock },
            // Past its time or pushed out of the LRU: the core must not skip or trust the path on an old answer.
            dispose: (pushed, path, reason) => {
              if (pushed && reason !== 'set') this.#paths.delete(path);
            },
          });
  }

  /**
   * Brings `paths` up to date for this path before the core looks at it:
   * from this isolate's answer while it lasts, else from R2. R2 failures
   * leave the path as it was (the pull path still answers).
   */
  async check(path: string): Promise<void> {
    const known = this.#answers?.get(path);
    if (known !== undefined) {
      if (known) this.#paths.add(path);
      // A "no" does not remove a path pushed through this isolate since (the push added it).
      return;
    }
    if (this.#paths.has(path)) {
      // Pushed through this isolate (the admin API added it): nothing to ask. A later delete
      // elsewhere is seen by the core's read of the object itself.
      this.#answers?.set(path, true);
      return;
    }
    let asking = this.#asking.get(path);
    if (!asking) {
      asking = this.#exists(pushedKey(path)).finally(() => this.#asking.delete(path));
      this.#asking.set(path, asking);
    }
    let pushed: boolean;
    try {
      pushed = await asking;
    } catch {
      return;
    }
    this.#answers?.set(path, pushed);
    if (pushed) this.#paths.add(path);
    else this.#paths.delete(path);
  }

  /** Forget every answer (after a purge of everything). */
  clear(): void {
    this.#answers?.clear();
  }
}
