/**
 * The most frequent keys of a stream in bounded memory, for the status
 * page's top URLs (by requests, by misses).
 *
 * A capped map in the manner of Space-Saving (Metwally, Agrawal, El Abbadi,
 * 2005): at most `2 x capacity` keys are counted; when the map is full, the
 * less counted half is dropped in one pass, and a key seen after that starts
 * from the highest count dropped (its `error`), so a count is an upper bound
 * and `count - error` a lower bound. Keys counted often stay above the
 * cut; keys seen rarely come and go.
 *
 * Why not a count-min sketch: it estimates the count of a key one names,
 * but cannot list the top keys without a second structure of candidates;
 * the capped map lists them directly, its memory bounded by the cap.
 *
 * Cost: counting a key already in the map is one Map lookup and an
 * increment (no allocation); a new key allocates its entry, and the pass
 * that drops half the map (a sort of `2 x capacity` counts) runs once per
 * `capacity` new keys.
 */

/** One counted key, as reported. */
export interface TopEntry {
  key: string;
  /** Upper bound of the key's count. */
  count: number;
  /** How much `count` may overstate (0: exact). */
  error: number;
}

interface Counted {
  count: number;
  error: number;
}

/** Keys longer than this are counted by their first this-many characters (bounds memory per entry). */
export const MAX_TOP_KEY_LENGTH = 256;

export class TopCounter {
  readonly #counts = new Map<string, Counted>();
  readonly #capacity: number;
  /** Counts of the map's entries, reused by every prune. */
  readonly #scratch: Float64Array;
  /** The highest count dropped so far: where a newly seen key starts. */
  #floor = 0;

  /** @param capacity keys kept after a prune (the map holds up to twice as many). @default 1024 */
  constructor(capacity = 1024) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new TypeError(`TopCounter: capacity must be a whole number >= 1, got ${capacity}`);
    this.#capacity = capacity;
    this.#scratch = new Float64Array(capacity * 2);
  }

  /** Keys counted now (at most twice the capacity). */
  get size(): number {
    return this.#counts.size;
  }

  add(key: string): void {
    const counted = this.#counts.get(key);
    if (counted !== undefined) {
      counted.count++;
      return;
    }
    if (key.length > MAX_TOP_KEY_LENGTH) {
      this.add(key.slice(0, MAX_TOP_KEY_LENGTH));
      return;
    }
    if (this.#counts.size >= this.#capacity * 2) this.#prune();
    this.#counts.set(key, { count: this.#floor + 1, error: this.#floor });
  }

  /** The `n` most counted keys, most counted first. */
  top(n: number): TopEntry[] {
    return [...this.#counts]
      .map(([key, { count, error }]) => ({ key, count, error }))
      .sort((a, b) => b.count - a.count || (a.key < b.key ? -1 : 1))
      .slice(0, n);
  }

  /** Keep the `capacity` most counted keys (ties at the cut dropped too). */
  #prune(): void {
    let i = 0;
    for (const counted of this.#counts.values()) this.#scratch[i++] = counted.count;
    const sorted = this.#scratch.subarray(0, i).sort();
    // The smallest count that survives: the capacity-th largest.
    const keepFrom = sorted[i - this.#capacity]!;
    // Entries equal to the cut value survive only if there is room; dropping them all keeps the bound simple.
    const cut = sorted[i - this.#capacity - 1] === keepFrom ? keepFrom + 1 : keepFrom;
    for (const [key, counted] of this.#counts) {
      if (counted.count < cut) {
        if (counted.count > this.#floor) this.#floor = counted.count;
        this.#counts.delete(key);
      }
    }
  }
}
