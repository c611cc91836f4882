/**
 * Composes cache tiers, fastest first (memory over disk), in the manner of
 * unstorage's overlay driver: reads go down the list until a hit, writes go
 * to every tier, and a hit in a lower tier is copied up in the background.
 */
import type {
  CacheEntry,
  CacheEntryMeta,
  CacheListFilter,
  CacheStore,
  CacheStoreStats,
  CacheWriter,
  CommitOptions,
} from './types.js';

/** Options for {@link TieredCacheStore}. */
export interface TieredCacheStoreOptions {
  /**
   * Tiers, fastest first. The last one is treated as authoritative: its
   * metadata wins in `list()` when a key is in several tiers.
   * @example [new MemoryCacheStore({ maxBytes: 256 * MiB }), new LmdbCacheStore({ path, maxBytes: 10 * GiB })]
   */
  tiers: CacheStore[];
  /**
   * Name used in logs and metrics.
   * @default 'tiered'
   */
  name?: string;
  /**
   * Receives failures that do not fail the caller: a background promotion,
   * or one tier's write while another tier stored the entry.
   * @default ignore
   */
  onError?: (err: unknown, tier: string) => void;
}

/** One tier's figures, from {@link TieredCacheStore.tiers}. */
export interface TierStats extends CacheStoreStats {
  /** The tier's `name`, e.g. `memory` or `disk`. */
  name: string;
}

/**
 * Optional tier capabilities, discovered at run time so the `CacheStore`
 * contract stays small. `MemoryCacheStore` has `maxEntryBytes` and
 * `settled`, `LmdbCacheStore` has `touch` and `settled`.
 */
interface TierExtras {
  /** Largest entry the tier stores; promotions of bigger bodies are skipped without reading them. */
  readonly maxEntryBytes?: number;
  /** Record a use served by an upper tier, so this tier's LRU order stays truthful. */
  touch?(key: string, variant?: string): void;
  /** Resolves when the tier's background work is done. */
  settled?(): Promise<void>;
}

interface Promotion {
  key: string;
  /** Set when the entry is written, updated or deleted meanwhile: copying the old body up would resurrect it. */
  stale: boolean;
  done: Promise<void>;
}

const SEP = '\u0000';

export class TieredCacheStore implements CacheStore {
  readonly name: string;
  readonly #tiers: ReadonlyArray<CacheStore & TierExtras>;
  readonly #onError: (err: unknown, tier: string) => void;
  /** In-flight promotions by storage key; also dedupes concurrent hits on one entry. */
  readonly #promotions = new Map<string, Promotion>();

  constructor(options: TieredCacheStoreOptions) {
    if (!Array.isArray(options.tiers) || options.tiers.length === 0) {
      throw new TypeError('TieredCacheStore: tiers must be a non-empty array of cache stores');
    }
    this.#tiers = [...options.tiers];
    this.name = options.name ?? 'tiered';
    this.#onError = options.onError ?? (() => {});
    if (this.#tiers.every((tier) => tier.getSync)) this.getSync = (key, wanted) => this.#getSync(key, wanted);
    const lowest = this.#tiers[this.#tiers.length - 1]!;
    if (lowest.pushedBytes) this.pushedBytes = () => lowest.pushedBytes!();
  }

  /** The last tier's count, when it has one: it is the tier that keeps pushed entries. */
  readonly pushedBytes?: () => number;

  /** Present when every tier reads synchronously (memory over LMDB). */
  readonly getSync?: (key: string, wanted?: (entry: CacheEntry) => boolean) => CacheEntry[];

  /** {@link get}'s walk, synchronously; promotions still run in the background. */
  #getSync(key: string, wanted?: (entry: CacheEntry) => boolean): CacheEntry[] {
    const first = this.#tiers[0]!.getSync!(key);
    // The common hit: the first tier holds the key and no Vary variants, or
    // holds the very variant the caller wants (a Vary hit need not read the
    // lower tiers for the others).
    if (first.length > 0 && first.every((entry) => entry.meta.variant === '')) {
      for (let i = 1; i < this.#tiers.length; i++) this.#tiers[i]!.touch?.(key, '');
      return first;
    }
    const hit = wanted && first.find(wanted);
    if (hit) {
      for (let i = 1; i < this.#tiers.length; i++) this.#tiers[i]!.touch?.(key, hit.meta.variant);
      return first;
    }
    const found = new Map<string, CacheEntry>();
    for (const entry of first) found.set(entry.meta.variant, entry);
    for (let i = 1; i < this.#tiers.length; i++) {
      const fresh = this.#tiers[i]!.getSync!(key).filter((entry) => !found.has(entry.meta.variant));
      for (const entry of fresh) found.set(entry.meta.variant, entry);
      for (const entry of fresh) this.#promote(entry, i);
      if (found.size > 0 && [...found.keys()].every((variant) => variant === '')) {
        for (const lower of this.#tiers.slice(i + 1)) lower.touch?.(key, '');
        break;
      }
    }
    return [...found.values()];
  }

  /**
   * Stops at the first tier with a hit, except when the hit includes `Vary`
   * variants: an upper tier may hold only some of a key's variants (they
   * are evicted one by one), so lower tiers are asked for the rest.
   * Without that, a variant evicted from memory would look like a miss.
   */
  async get(key: string): Promise<CacheEntry[]> {
    if (this.getSync) return this.getSync(key);
    // The common hit: the first tier holds the key and it has no Vary variants.
    const first = await this.#tiers[0]!.get(key);
    if (first.length > 0 && first.every((entry) => entry.meta.variant === '')) {
      for (let i = 1; i < this.#tiers.length; i++) this.#tiers[i]!.touch?.(key, '');
      return first;
    }
    const found = new Map<string, CacheEntry>();
    for (const entry of first) found.set(entry.meta.variant, entry);
    for (let i = 1; i < this.#tiers.length; i++) {
      const tier = this.#tiers[i];
      const fresh = (await tier.get(key)).filter((entry) => !found.has(entry.meta.variant));
      for (const entry of fresh) found.set(entry.meta.variant, entry);
      if (i > 0) for (const entry of fresh) this.#promote(entry, i);
      if (found.size > 0 && [...found.keys()].every((variant) => variant === '')) {
        for (const lower of this.#tiers.slice(i + 1)) lower.touch?.(key, '');
        break;
      }
    }
    return [...found.values()];
  }

  createWriter(key: string, variant: string, expectedSize?: number): CacheWriter {
    const writers = this.#tiers.map((tier) => tier.createWriter(key, variant, expectedSize));
    return new TieredWriter(this.#tiers, writers, key, variant, {
      onCommit: () => this.#invalidatePromotions(key, variant),
      onError: this.#onError,
    });
  }

  async updateMeta(meta: CacheEntryMeta): Promise<boolean> {
    this.#invalidatePromotions(meta.key, meta.variant);
    const results = await Promise.all(this.#tiers.map((tier) => tier.updateMeta(meta)));
    return results.some(Boolean);
  }

  /** Counts each variant once even when several tiers held it. */
  async delete(key: string, variant?: string): Promise<number> {
    this.#invalidatePromotions(key, variant);
    const counts = await Promise.all(this.#tiers.map((tier) => tier.delete(key, variant)));
    return Math.max(...counts);
  }

  /** Lowest tier first, so its metadata wins; upper tiers only add entries it lacks. */
  async *list(filter: CacheListFilter = {}): AsyncIterable<CacheEntryMeta> {
    const seen = new Set<string>();
    for (let i = this.#tiers.length - 1; i >= 0; i--) {
      for await (const meta of this.#tiers[i].list(filter)) {
        const storageKey = meta.key + SEP + meta.variant;
        if (seen.has(storageKey)) continue;
        seen.add(storageKey);
        yield meta;
      }
    }
  }

  /**
   * The lowest tier's figures: it holds every entry (upper tiers hold
   * copies), so its count and bytes are the cache's. Summing would count
   * each promoted entry twice; {@link TieredCacheStore.tiers} has the rest.
   */
  stats(): CacheStoreStats {
    return this.#tiers[this.#tiers.length - 1].stats();
  }

  /**
   * Drop a key (one variant, or all of them) from every tier but the last,
   * and cancel promotions of it: another process sharing the last tier
   * changed or removed it (cluster mode), so the next read goes down to the
   * last tier. Resolves with the number of upper-tier entries dropped.
   */
  async forgetAbove(key: string, variant?: string): Promise<number> {
    this.#invalidatePromotions(key, variant);
    let dropped = 0;
    for (const tier of this.#tiers.slice(0, -1)) dropped += await tier.delete(key, variant);
    return dropped;
  }

  /** Each tier's stats, in tier order. */
  tiers(): TierStats[] {
    return this.#tiers.map((tier) => ({ name: tier.name, ...tier.stats() }));
  }

  /** Resolves once promotions and every tier's background work have finished. */
  async settled(): Promise<void> {
    while (this.#promotions.size > 0) {
      await Promise.all([...this.#promotions.values()].map((promotion) => promotion.done));
    }
    await Promise.all(this.#tiers.map((tier) => tier.settled?.()));
  }

  async close(): Promise<void> {
    await this.settled();
    await Promise.all(this.#tiers.map((tier) => tier.close()));
  }

  #invalidatePromotions(key: string, variant?: string): void {
    if (variant !== undefined) {
      const promotion = this.#promotions.get(key + SEP + variant);
      if (promotion) promotion.stale = true;
      return;
    }
    for (const promotion of this.#promotions.values()) if (promotion.key === key) promotion.stale = true;
  }

  /** Copies a lower-tier hit into the tiers above it; never awaited by the reader. */
  #promote(entry: CacheEntry, from: number): void {
    const { meta, body } = entry;
    const storageKey = meta.key + SEP + meta.variant;
    if (this.#promotions.has(storageKey)) return;
    const targets = this.#tiers
      .slice(0, from)
      .filter((tier) => body.size <= (tier.maxEntryBytes ?? tier.stats().maxBytes));
    if (targets.length === 0) return;

    const promotion: Promotion = { key: meta.key, stale: false, done: Promise.resolve() };
    promotion.done = (async () => {
      const writers = targets.map((tier) => tier.createWriter(meta.key, meta.variant, body.size));
      try {
        // Read once, fan out: one pass over the disk body feeds every upper tier.
        if (body.bytes) {
          for (const writer of writers) writer.write(body.bytes);
        } else {
          const reader = body.stream().getReader();
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            if (promotion.stale) {
              await reader.cancel();
              break;
            }
            for (const writer of writers) writer.write(value);
          }
        }
        // Checked right before commit: a memory tier commits synchronously,
        // so nothing can slip in between the check and the copy landing.
        if (promotion.stale) {
          await Promise.all(writers.map((writer) => writer.abort()));
          return;
        }
        await Promise.all(writers.map((writer) => writer.commit(meta)));
      } catch (err) {
        await Promise.allSettled(writers.map((writer) => writer.abort()));
        this.#onError(err, targets.map((tier) => tier.name).join(','));
      }
    })().finally(() => {
      this.#promotions.delete(storageKey);
    });
    this.#promotions.set(storageKey, promotion);
  }
}

interface TieredWriterHooks {
  onCommit: () => void;
  onError: (err: unknown, tier: string) => void;
}

/** Fans one body out to every tier; each tier may decline it independently. */
class TieredWriter implements CacheWriter {
  readonly #failed: Array<unknown>;

  constructor(
    private readonly tiers: ReadonlyArray<CacheStore>,
    private readonly writers: CacheWriter[],
    private readonly key: string,
    private readonly variant: string,
    private readonly hooks: TieredWriterHooks,
  ) {
    this.#failed = writers.map(() => undefined);
  }

  write(chunk: Uint8Array): void {
    // One tier failing must not cost the others the entry; only when every
    // tier has failed is the caller's write itself broken.
    let failures = 0;
    for (let i = 0; i < this.writers.length; i++) {
      if (this.#failed[i] === undefined) {
        try {
          this.writers[i].write(chunk);
          continue;
        } catch (err) {
          this.#failed[i] = err;
        }
      }
      failures++;
    }
    if (failures === this.writers.length) throw this.#failed[0];
  }

  /**
   * True when at least one tier stored the entry. Tiers that declined or
   * failed lose their previous version of it, so no tier serves a body
   * older than the one just committed.
   *
   * A pushed entry under a push budget goes to the last tier first: it
   * holds pushed entries against its budget, and when it refuses one, the
   * other tiers are aborted before committing anything, so every tier
   * keeps the previous version.
   */
  async commit(meta: CacheEntryMeta, options?: CommitOptions): Promise<boolean> {
    this.hooks.onCommit();
    const commitTier = (i: number): Promise<boolean> =>
      this.#failed[i] === undefined
        ? this.writers[i].commit(meta, options)
        : this.writers[i].abort().then(() => Promise.reject(this.#failed[i]));
    const last = this.writers.length - 1;
    let lowest: Promise<boolean> | undefined;
    if (meta.pushed && options?.maxPushedBytes !== undefined) {
      const [outcome] = await Promise.allSettled([commitTier(last)]);
      if (outcome.status === 'rejected' && (outcome.reason as { code?: unknown })?.code === 'EDGE_INSUFFICIENT_STORAGE') {
        await Promise.allSettled(this.writers.slice(0, last).map((writer) => writer.abort()));
        throw outcome.reason;
      }
      lowest = outcome.status === 'fulfilled' ? Promise.resolve(outcome.value) : Promise.reject(outcome.reason);
    }
    const results = await Promise.allSettled(this.writers.map((_, i) => (i === last && lowest ? lowest : commitTier(i))));
    const stored = results.map((result) => result.status === 'fulfilled' && result.value);
    const errors = results.flatMap((result, i) => (result.status === 'rejected' ? [[result.reason, i] as const] : []));
    if (!stored.some(Boolean)) {
      if (errors.length === results.length) throw errors[0][0];
      for (const [err, i] of errors) this.hooks.onError(err, this.tiers[i].name);
      return false;
    }
    for (const [err, i] of errors) this.hooks.onError(err, this.tiers[i].name);
    await Promise.all(
      this.tiers.map(async (tier, i) => {
        if (stored[i]) return;
        try {
          await tier.delete(this.key, this.variant);
        } catch (err) {
          this.hooks.onError(err, tier.name);
        }
      }),
    );
    return true;
  }

  async abort(): Promise<void> {
    await Promise.allSettled(this.writers.map((writer) => writer.abort()));
  }
}
