/**
 * The Workers store: pushed objects in R2, everything else in the Cache
 * API, behind one `CacheStore`. Routing is by key, the only thing every
 * call carries: pushed objects live under `pushedKey(path)`, `<path> push:`
 * (`edge/core/cache-key.ts`), which no pulled or derived key ends with
 * (pulled keys end with a host, image variants with `#img:...`).
 */
import { matchesFilter } from '../core/store/memory.js';
import type { CacheEntry, CacheEntryMeta, CacheListFilter, CacheStore, CacheStoreStats, CacheWriter } from '../core/store/types.js';

const PUSHED_SUFFIX = ' push:';

/** Options for {@link RoutedCacheStore}. */
export interface RoutedCacheStoreOptions {
  /** Tier for keys made by `pushedKey()` (R2 on Workers). */
  pushed: CacheStore;
  /** Tier for every other key (the Cache API on Workers). */
  pulled: CacheStore;
  /** @default 'workers' */
  name?: string;
  /**
   * Derived-entry lookups (`list({ sourceKey })`, made only to delete what
   * they find) return at most this many entries from a pulled tier that
   * can retire them with one purge marker (`CfCacheStore.findOrRetireDerived`);
   * past it the tier retires them all and the lookup yields nothing. Keeps a
   * push or delete of an object with many image variants within the
   * subrequest limit. Unset: a plain listing.
   */
  retireDerivedOver?: number;
}

/** A pulled tier that can retire derived entries with a purge marker. */
interface RetiringTier extends CacheStore {
  findOrRetireDerived(sourceKey: string, max: number): Promise<CacheEntryMeta[]>;
}

export class RoutedCacheStore implements CacheStore {
  readonly name: string;
  readonly #pushed: CacheStore;
  readonly #pulled: CacheStore;
  readonly #retireDerivedOver: number | undefined;

  constructor(options: RoutedCacheStoreOptions) {
    this.#pushed = options.pushed;
    this.#pulled = options.pulled;
    this.name = options.name ?? 'workers';
    this.#retireDerivedOver = options.retireDerivedOver;
  }

  /** True for keys made by `pushedKey()`. */
  static isPushedKey(key: string): boolean {
    return key.endsWith(PUSHED_SUFFIX);
  }

  #tierFor(key: string): CacheStore {
    return RoutedCacheStore.isPushedKey(key) ? this.#pushed : this.#pulled;
  }

  get(key: string): Promise<CacheEntry[]> {
    return this.#tierFor(key).get(key);
  }

  createWriter(key: string, variant: string, expectedSize?: number): CacheWriter {
    return this.#tierFor(key).createWriter(key, variant, expectedSize);
  }

  updateMeta(meta: CacheEntryMeta): Promise<boolean> {
    return this.#tierFor(meta.key).updateMeta(meta);
  }

  delete(key: string, variant?: string): Promise<number> {
    return this.#tierFor(key).delete(key, variant);
  }

  /**
   * Pushed objects first, then pulled ones. Derived entries (image
   * variants, found by `sourceKey`) are never pushed keys, so those
   * lookups skip R2: purges and pushes run them often.
   */
  async *list(filter: CacheListFilter = {}): AsyncIterable<CacheEntryMeta> {
    if (filter.sourceKey === undefined) yield* this.#pushed.list(filter);
    const retiring = this.#pulled as Partial<RetiringTier>;
    if (filter.sourceKey !== undefined && this.#retireDerivedOver !== undefined && typeof retiring.findOrRetireDerived === 'function') {
      for (const meta of await retiring.findOrRetireDerived(filter.sourceKey, this.#retireDerivedOver)) if (matchesFilter(meta, filter)) yield meta;
      return;
    }
    yield* this.#pulled.list(filter);
  }

  stats(): CacheStoreStats {
    const pushed = this.#pushed.stats();
    const pulled = this.#pulled.stats();
    return { entries: pushed.entries + pulled.entries, bytes: pushed.bytes + pulled.bytes, maxBytes: pushed.maxBytes + pulled.maxBytes };
  }

  /** Each tier's figures, like `TieredCacheStore.tiers()`. */
  tiers(): Array<CacheStoreStats & { name: string }> {
    return [
      { name: this.#pushed.name, ...this.#pushed.stats() },
      { name: this.#pulled.name, ...this.#pulled.stats() },
    ];
  }

  async settled(): Promise<void> {
    await Promise.all([this.#pushed, this.#pulled].map((tier) => (tier as CacheStore & { settled?: () => Promise<void> }).settled?.()));
  }

  async close(): Promise<void> {
    await Promise.all([this.#pushed.close(), this.#pulled.close()]);
  }
}
