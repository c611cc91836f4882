/**
 * The cache store of a cluster worker: this worker's tiers (its own memory
 * tier over the LMDB environment every worker shares), plus telling the
 * other workers whenever this one changes or removes an entry, so their
 * memory tiers drop their copy and read LMDB again.
 *
 * - A delete or a metadata change (purge, soft purge, DELETE of a push,
 *   invalidation by an unsafe method, Vary bounds) resolves only once
 *   every other worker has forgotten the key: a purge is answered after
 *   no worker can serve the old version from memory.
 * - A committed push likewise waits for every worker to have the key in
 *   its pushed-object index (each re-reads LMDB for it); a pull fill tells
 *   the others without waiting (their copy, if any, was an equally valid
 *   answer from the origin).
 *
 * - Before a purge changes anything, it is recorded in every worker's
 *   purge log (`createPurgeHandler`, the `purge-begin` broadcast), and
 *   each worker's commits that passed their purge check have landed
 *   (`landed`): no fill in any worker commits the old version after the
 *   purge's deletion.
 *
 * The pushed-object index is kept per worker and changed here on a
 * peer's notice, from what LMDB holds for the key.
 */
import { sharedPurgeMatcher } from '../core/admin.js';
import { parseCacheKey } from '../core/cache-key.js';
import type { PullCache } from '../core/pull.js';
import type { PurgeScope } from '../core/purge-log.js';
import type { CacheEntry, CacheEntryMeta, CacheListFilter, CacheStore, CacheStoreStats, CacheWriter, CommitOptions } from '../core/store/types.js';

/** What a worker tells the others: forget this key (one variant, or all of them). */
export interface ForgetNotice {
  key: string;
  variant?: string;
}

/** What a worker tells the others before a purge (or an invalidation) changes the store. */
export interface PurgeNotice {
  scope: PurgeScope;
  soft: boolean;
}

/** The store a worker wraps: a tiered store (`forgetAbove`) or the disk tier alone. */
type WrappedStore = CacheStore & {
  forgetAbove?(key: string, variant?: string): Promise<number>;
  settled?(): Promise<void>;
  touch?(key: string, variant?: string): void;
};

export class ClusterCacheStore implements CacheStore {
  readonly name: string;
  /** Commits under way (each began after its fill checked the purge log). */
  readonly #committing = new Set<Promise<unknown>>();
  readonly getSync?: (key: string) => CacheEntry[];
  readonly pushedBytes?: () => number;

  constructor(
    private readonly inner: WrappedStore,
    /** Deliver a notice to every other worker; resolves once each has handled it. */
    private readonly tell: (notice: ForgetNotice) => Promise<void>,
  ) {
    this.name = inner.name;
    if (inner.getSync) this.getSync = (key) => inner.getSync!(key);
    if (inner.pushedBytes) this.pushedBytes = () => inner.pushedBytes!();
  }

  get(key: string): Promise<CacheEntry[]> {
    return this.inner.get(key);
  }

  createWriter(key: string, variant: string, expectedSize?: number): CacheWriter {
    const writer = this.inner.createWriter(key, variant, expectedSize);
    return {
      write: (chunk) => writer.write(chunk),
      abort: () => writer.abort(),
      commit: async (meta: CacheEntryMeta, options?: CommitOptions) => {
        // Called in the same synchronous step as the fill's purge-log check: see `landed`.
        const committing = writer.commit(meta, options);
        this.#committing.add(committing);
        let stored: boolean;
        try {
          stored = await committing;
        } finally {
          this.#committing.delete(committing);
        }
        if (stored) {
          const told = this.tell({ key, variant });
          // A push is answered once every worker serves it; a fill does not wait.
          if (meta.pushed) await told;
          else told.catch(() => {});
        }
        return stored;
      },
    };
  }

  async updateMeta(meta: CacheEntryMeta): Promise<boolean> {
    const updated = await this.inner.updateMeta(meta);
    if (updated) await this.tell({ key: meta.key, variant: meta.variant });
    return updated;
  }

  async delete(key: string, variant?: string): Promise<number> {
    const removed = await this.inner.delete(key, variant);
    // Told even when nothing was on disk here: another worker's memory may outlive the disk's copy.
    await this.tell(variant === undefined ? { key } : { key, variant });
    return removed;
  }

  /**
   * Resolves once every commit under way now has landed (or failed). A
   * purge recorded in this worker's log before calling this is seen by
   * every later fill's check, and every commit that passed its check
   * earlier is in LMDB when this resolves: the purging worker's deletion,
   * a later write transaction (LMDB serialises them across processes),
   * then finds and removes it.
   */
  async landed(): Promise<void> {
    await Promise.allSettled([...this.#committing]);
  }

  list(filter?: CacheListFilter): AsyncIterable<CacheEntryMeta> {
    return this.inner.list(filter);
  }

  stats(): CacheStoreStats {
    return this.inner.stats();
  }

  touch(key: string, variant?: string): void {
    this.inner.touch?.(key, variant);
  }

  async settled(): Promise<void> {
    await this.inner.settled?.();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * Apply another worker's notice here: drop the key from the memory tier,
 * then set the pushed-object index from what LMDB now holds for it.
 */
export function createForgetHandler(deps: {
  store: WrappedStore;
  /** The disk tier, read for the key's pushed status (after `refresh`). */
  disk: { getSync(key: string): CacheEntry[]; refresh(): void };
  pushedPaths: Set<string>;
}): (notice: ForgetNotice) => Promise<number> {
  return async ({ key, variant }) => {
    // What the other process committed must be visible to this one's next reads.
    deps.disk.refresh();
    const dropped = (await deps.store.forgetAbove?.(key, variant)) ?? 0;
    const parsed = parseCacheKey(key);
    if (parsed?.kind === 'pushed' && !parsed.derived) {
      const pushed = deps.disk.getSync(key).some((entry) => entry.meta.pushed);
      if (pushed) deps.pushedPaths.add(parsed.path);
      else deps.pushedPaths.delete(parsed.path);
    }
    return dropped;
  };
}

/**
 * Apply another worker's purge notice here, before that worker changes the
 * store: record it in this worker's purge log (fills here that started
 * before it are then not stored, or stored invalidated), then wait until
 * every commit that passed its check before has landed in LMDB, so the
 * purge's deletion comes after all of them.
 */
export function createPurgeHandler(deps: {
  /** The pull path in use (a reload replaces it; its purge log carries over). */
  pull: () => PullCache;
  store: ClusterCacheStore;
}): (notice: PurgeNotice) => Promise<void> {
  return async ({ scope, soft }) => {
    const pull = deps.pull();
    pull.purges.record(sharedPurgeMatcher(scope, pull), soft);
    await deps.store.landed();
  };
}
