/**
 * Purges that fills in flight must see. A fill started before a purge
 * would otherwise store the old version right after the purge removed it
 * (for its whole TTL). Each fill notes the epoch it started in; a purge
 * records what it selects; at commit time a fill asks whether a later
 * purge selected it, and then is not stored (its own client still gets it),
 * or, after a soft purge, is stored already invalidated.
 *
 * Processes that share one store (cluster workers) each keep their own
 * log: `recordEverywhere` records a purge here and, through `sharing`, in
 * every other process's log before the purge touches the store, so a fill
 * in any process that started before it cannot commit the old version
 * after it (see `PurgeSharing`).
 */
import { formatCacheKey, parseCacheKey } from './cache-key.js';

/** Does a purge select this entry? (`key` as stored, tags as the response gave them.) */
export type PurgeMatcher = (key: string, tags: readonly string[]) => boolean;

/**
 * A purge as plain data, for another process to build its own matcher
 * from: an admin purge request as validated, or the keys an unsafe method
 * invalidated (each with every variant and everything derived from it).
 */
export type PurgeScope =
  | { kind: 'request'; request: { urls?: string[]; prefixes?: string[]; tags?: string[]; all?: true } }
  | { kind: 'keys'; keys: string[] };

/**
 * Records a purge in the purge logs of every other process sharing the
 * store. Resolves once each has recorded it AND every commit it had let
 * past its check before has landed: the purge's own changes to the store
 * come after every commit that did not see it, so they remove (or mark) it.
 */
export type PurgeSharing = (scope: PurgeScope, soft: boolean) => Promise<void>;

/** Purges remembered for fills in flight; older ones count as "everything". */
const MAX_REMEMBERED = 1000;

export class PurgeLog {
  #epoch = 0;
  /** Fills before this epoch are treated as purged (the log overflowed). */
  #floor = 0;
  #purges: { epoch: number; matches: PurgeMatcher; soft: boolean }[] = [];
  #fills = 0;
  /** Set by a cluster worker; absent in a process that has the store to itself. */
  sharing: PurgeSharing | undefined;
  /** Commits that passed their purge check and have not landed yet (see {@link landing}). */
  readonly #landing = new Set<Promise<unknown>>();

  /** A fill starts: remember the returned epoch, and call `end` when it settles. */
  begin(): { epoch: number; end: () => void } {
    this.#fills++;
    let ended = false;
    return {
      epoch: this.#epoch,
      end: () => {
        if (ended) return;
        ended = true;
        // Nothing in flight: nothing can ask about past purges any more.
        if (--this.#fills === 0) this.#purges = [];
      },
    };
  }

  /** Record a purge in this process (a soft purge marks fills in flight invalidated instead of dropping them). */
  record(matches: PurgeMatcher, soft = false): void {
    this.#epoch++;
    if (this.#fills === 0) return;
    this.#purges.push({ epoch: this.#epoch, matches, soft });
    if (this.#purges.length > MAX_REMEMBERED) this.#floor = this.#purges.shift()!.epoch;
  }

  /**
   * A commit that passed its purge check, started in the same synchronous
   * step as that check. A store's commit publishes its entry only after its
   * body writes are through, so a purge recorded after the check could
   * otherwise change the store first and the old version land after it:
   * `recordEverywhere` waits for these.
   */
  landing<T>(commit: Promise<T>): Promise<T> {
    this.#landing.add(commit);
    const landed = () => void this.#landing.delete(commit);
    commit.then(landed, landed);
    return commit;
  }

  /**
   * Record a purge here and in every process sharing the store; call before
   * the purge changes the store. Resolves once every commit that did not see
   * it has landed, so the purge's own changes remove (or mark) them.
   */
  async recordEverywhere(matches: PurgeMatcher, scope: PurgeScope, soft = false): Promise<void> {
    this.record(matches, soft);
    const landing = [...this.#landing];
    await Promise.all([this.sharing?.(scope, soft), Promise.allSettled(landing)]);
  }

  /** Was an entry filled since `epoch` selected by a (hard) purge made after it began? */
  purgedSince(epoch: number, key: string, tags: readonly string[]): boolean {
    if (epoch < this.#floor) return true;
    for (const purge of this.#purges) if (!purge.soft && purge.epoch > epoch && purge.matches(key, tags)) return true;
    return false;
  }

  /** Was an entry filled since `epoch` selected by a soft purge made after it began (store it invalidated)? */
  softPurgedSince(epoch: number, key: string, tags: readonly string[]): boolean {
    for (const purge of this.#purges) if (purge.soft && purge.epoch > epoch && purge.matches(key, tags)) return true;
    return false;
  }
}

/** These keys, every variant of them, and every entry derived from them (what `PullCache.invalidate` removes). */
export function keysMatcher(keys: readonly string[]): PurgeMatcher {
  const set = new Set(keys);
  return (key) => {
    if (set.has(key)) return true;
    const parsed = parseCacheKey(key);
    return !!parsed?.derived && set.has(formatCacheKey({ ...parsed, derived: undefined }));
  };
}
