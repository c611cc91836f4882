/**
 * Purges that fills in flight must see. A fill started before a purge
 * would otherwise store the old version right after the purge removed it
 * (for its whole TTL). Each fill notes the epoch it started in; a purge
 * records what it selects; at commit time a fill asks whether a later
 * purge selected it, and then is not stored (its own client still gets it).
 */

/** Does a purge select this entry? (`key` as stored, tags as the response gave them.) */
export type PurgeMatcher = (key: string, tags: readonly string[]) => boolean;

/** Purges remembered for fills in flight; older ones count as "everything". */
const MAX_REMEMBERED = 1000;

export class PurgeLog {
  #epoch = 0;
  /** Fills before this epoch are treated as purged (the log overflowed). */
  #floor = 0;
  #purges: { epoch: number; matches: PurgeMatcher }[] = [];
  #fills = 0;

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

  record(matches: PurgeMatcher): void {
    this.#epoch++;
    if (this.#fills === 0) return;
    this.#purges.push({ epoch: this.#epoch, matches });
    if (this.#purges.length > MAX_REMEMBERED) this.#floor = this.#purges.shift()!.epoch;
  }

  /** Was an entry filled since `epoch` selected by a purge made after it began? */
  purgedSince(epoch: number, key: string, tags: readonly string[]): boolean {
    if (epoch < this.#floor) return true;
    for (const purge of this.#purges) if (purge.epoch > epoch && purge.matches(key, tags)) return true;
    return false;
  }
}
