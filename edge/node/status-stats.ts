/**
 * The figures behind the status page (`GET /_edge/stats`): a ring buffer of
 * per-interval request counts and bytes for the last hour, top URLs, recent
 * purges, and at snapshot time the store's tiers, the image queue, the
 * collapsed fetches in flight and the origins' health (read from the
 * objects that already keep them).
 *
 * Fed by the same per-request record as the metrics (`observe`, called from
 * `onRequest`): per request a few increments in fixed typed arrays and one
 * Map lookup per top-URL table, no allocation for a URL already counted.
 * Requests under `/_edge/` are left out, so the page's own polling is not
 * traffic. In cluster mode every worker keeps its own; the primary sums
 * them (`mergeStatsSnapshots`).
 */
import type { PurgeEvent } from '../core/admin.js';
import type { RequestRecord } from '../core/app.js';
import type { CacheStore } from '../core/store/types.js';
import { TopCounter, type TopEntry } from './top-counter.js';

export type { PurgeEvent } from '../core/admin.js';

/** One point per this many ms. @default 5000 */
export const STATS_INTERVAL_MS = 5000;
/** Points kept: one hour at the default interval. @default 720 */
export const STATS_POINTS = 720;
/** Top URLs listed per table. */
export const TOP_URLS = 10;
/** Purges remembered. */
export const RECENT_PURGES = 20;

/** Columns of the series, in the order of the ring's arrays. */
export const SERIES_COLUMNS = ['requests', 'hits', 'revalidated', 'misses', 'passes', 'errors', 'bytesServed', 'originBytes'] as const;
export type SeriesColumn = (typeof SERIES_COLUMNS)[number];

const REQUESTS = 0;
const HITS = 1;
const REVALIDATED = 2;
const MISSES = 3;
const PASSES = 4;
const ERRORS = 5;
const BYTES_SERVED = 6;
const ORIGIN_BYTES = 7;

export interface TierFill {
  name: string;
  entries: number;
  bytes: number;
  maxBytes: number;
}

export interface OriginHealth {
  kind: 'member' | 'shield';
  /** The pool group (members), or null. */
  group: string | null;
  url: string;
  healthy: boolean;
  /** Eligible for new requests (healthy and not ejected). */
  available: boolean;
  inFlight: number | null;
  requests: number;
  failures: number;
  lastError: string | null;
}

export interface StatsSnapshot {
  name: string;
  /** When the snapshot was taken, ms since epoch. */
  at: number;
  /** The earliest start of the processes counted, ms since epoch. */
  startedAt: number;
  intervalMs: number;
  /** `start` is the time of the first point; each column holds `points` numbers, oldest first, the last one the interval under way. */
  series: { start: number; points: number } & Record<SeriesColumn, number[]>;
  /** Since start: the same columns summed. */
  totals: Record<SeriesColumn, number>;
  tiers: TierFill[];
  /** Collapsed origin fetches under way and the requests waiting on them. */
  inFlight: { flights: number; waiters: number };
  images: { running: number; queued: number; maxQueue: number; concurrency: number } | null;
  origins: OriginHealth[];
  top: { requests: TopEntry[]; misses: TopEntry[] };
  purges: PurgeEvent[];
  workers: { pid: number; startedAt: number; requests: number }[];
}

/** What a snapshot reads besides the recorder's own counts. */
export interface StatsSources {
  name: string;
  tiers: () => TierFill[];
  inFlight: () => { flights: number; waiters: number };
  images?: () => { running: number; queued: number; maxQueue: number; concurrency: number } | null;
  originStatus?: () => unknown;
}

export class StatsRecorder {
  readonly #now: () => number;
  readonly #intervalMs: number;
  readonly #points: number;
  readonly #columns: Float64Array[];
  readonly #totals = new Float64Array(SERIES_COLUMNS.length);
  /** The interval number (time / intervalMs) of the newest point. */
  #interval: number;
  readonly #topRequests = new TopCounter();
  readonly #topMisses = new TopCounter();
  readonly #purges: PurgeEvent[] = [];
  readonly startedAt: number;

  constructor(options: { now: () => number; intervalMs?: number; points?: number }) {
    this.#now = options.now;
    this.#intervalMs = options.intervalMs ?? STATS_INTERVAL_MS;
    this.#points = options.points ?? STATS_POINTS;
    this.#columns = SERIES_COLUMNS.map(() => new Float64Array(this.#points));
    this.startedAt = this.#now();
    this.#interval = Math.floor(this.startedAt / this.#intervalMs);
  }

  /** The ring slot of the interval holding `at` (the current one by default), clearing the slots of intervals that passed without traffic. */
  #slot(at = this.#now()): number {
    const interval = Math.floor(at / this.#intervalMs);
    // A clock that steps back (or a record finished just before a snapshot moved on) counts into the newest point.
    if (interval > this.#interval) {
      const passed = Math.min(interval - this.#interval, this.#points);
      for (let i = 1; i <= passed; i++) {
        const slot = (this.#interval + i) % this.#points;
        for (const column of this.#columns) column[slot] = 0;
      }
      this.#interval = interval;
    }
    return this.#interval % this.#points;
  }

  #add(column: number, slot: number, value: number): void {
    this.#columns[column]![slot]! += value;
    this.#totals[column]! += value;
  }

  /** One finished request (the record metrics get). */
  observe(record: RequestRecord): void {
    const path = record.path;
    // `/_edge/...`: the node's own endpoints (the page polling) are not traffic.
    if (path.charCodeAt(1) === 95 /* _ */ && path.startsWith('/_edge')) return;
    // The record's own time: no second clock read per request.
    const slot = this.#slot(record.at);
    this.#add(REQUESTS, slot, 1);
    switch (record.outcome) {
      case 'hit':
        this.#add(HITS, slot, 1);
        break;
      case 'stale':
        // Served stale while the origin is asked in the background (a hit), or a stale copy
        // the request itself went to the origin for (originMs set: counted as a miss).
        if (record.originMs === undefined) {
          this.#add(HITS, slot, 1);
          break;
        }
        this.#add(MISSES, slot, 1);
        this.#topMisses.add(path);
        break;
      case 'revalidated':
        this.#add(REVALIDATED, slot, 1);
        break;
      case 'miss':
        this.#add(MISSES, slot, 1);
        this.#topMisses.add(path);
        break;
      case 'bypass':
        this.#add(PASSES, slot, 1);
        break;
    }
    if (record.status >= 500) this.#add(ERRORS, slot, 1);
    if (record.bytes !== undefined) this.#add(BYTES_SERVED, slot, record.bytes);
    this.#topRequests.add(path);
  }

  /** Body bytes received from upstream (origin, pool member or shield). */
  originBytes(bytes: number): void {
    this.#add(ORIGIN_BYTES, this.#slot(), bytes);
  }

  purged(event: PurgeEvent): void {
    this.#purges.unshift(event);
    if (this.#purges.length > RECENT_PURGES) this.#purges.pop();
  }

  snapshot(sources: StatsSources): StatsSnapshot {
    const newest = this.#slot();
    const at = this.#now();
    const series = { start: (this.#interval - this.#points + 1) * this.#intervalMs, points: this.#points } as StatsSnapshot['series'];
    SERIES_COLUMNS.forEach((name, c) => {
      const column = this.#columns[c]!;
      const values = new Array<number>(this.#points);
      for (let i = 0; i < this.#points; i++) values[i] = column[(newest + 1 + i) % this.#points]!;
      series[name] = values;
    });
    const totals = Object.fromEntries(SERIES_COLUMNS.map((name, c) => [name, this.#totals[c]!])) as Record<SeriesColumn, number>;
    return {
      name: sources.name,
      at,
      startedAt: this.startedAt,
      intervalMs: this.#intervalMs,
      series,
      totals,
      tiers: sources.tiers(),
      inFlight: sources.inFlight(),
      images: sources.images?.() ?? null,
      origins: originHealth(sources.originStatus?.()),
      top: { requests: this.#topRequests.top(TOP_URLS), misses: this.#topMisses.top(TOP_URLS) },
      purges: [...this.#purges],
      workers: [{ pid: process.pid, startedAt: this.startedAt, requests: totals.requests }],
    };
  }
}

/**
 * The origin clients' own status (`/_edge/origins`) as one flat list:
 * shields (`{ shields, origin }`), pool groups (`{ groups }`), or nothing
 * for a single origin (it keeps no health).
 */
export function originHealth(status: unknown): OriginHealth[] {
  const out: OriginHealth[] = [];
  if (!status || typeof status !== 'object') return out;
  const { shields, origin, groups } = status as { shields?: unknown; origin?: unknown; groups?: unknown };
  if (Array.isArray(shields)) {
    for (const s of shields as { shield: string; healthy: boolean; consecutiveFailures: number; lastError?: string | null; requests: number }[]) {
      out.push({
        kind: 'shield',
        group: null,
        url: s.shield,
        healthy: s.healthy,
        available: s.healthy,
        inFlight: null,
        requests: s.requests,
        failures: s.consecutiveFailures,
        lastError: s.lastError ?? null,
      });
    }
    out.push(...originHealth(origin));
  }
  if (Array.isArray(groups)) {
    for (const group of groups as { name: string; members: { url: string; healthy: boolean; available: boolean; inFlight: number; requests: number; failures: number; recentErrors: { message: string }[] }[] }[]) {
      for (const m of group.members) {
        out.push({
          kind: 'member',
          group: group.name,
          url: m.url,
          healthy: m.healthy,
          available: m.available,
          inFlight: m.inFlight,
          requests: m.requests,
          failures: m.failures,
          lastError: m.recentErrors.at(-1)?.message ?? null,
        });
      }
    }
  }
  return out;
}

/** Merge top lists by key (counts and errors add up). */
function mergeTop(lists: TopEntry[][]): TopEntry[] {
  const merged = new Map<string, TopEntry>();
  for (const list of lists) {
    for (const entry of list) {
      const seen = merged.get(entry.key);
      if (seen) {
        seen.count += entry.count;
        seen.error += entry.error;
      } else merged.set(entry.key, { ...entry });
    }
  }
  return [...merged.values()].sort((a, b) => b.count - a.count || (a.key < b.key ? -1 : 1)).slice(0, TOP_URLS);
}

/**
 * The cluster's figures from every worker's snapshot: series summed point by
 * point (aligned on time), memory tiers summed (each worker has its own),
 * the shared disk tier taken once, queues and flights summed, origin health
 * as the first worker sees it, top URLs summed by URL (each worker's top 10:
 * a URL just below the cut in every worker can be missed), purges merged.
 */
export function mergeStatsSnapshots(snapshots: readonly StatsSnapshot[]): StatsSnapshot {
  if (snapshots.length === 0) throw new TypeError('mergeStatsSnapshots: no snapshot to merge');
  const [first] = snapshots as [StatsSnapshot];
  if (snapshots.length === 1) return first;
  const { intervalMs } = first;
  const start = Math.max(...snapshots.map((s) => s.series.start));
  const points = first.series.points;
  const series = { start, points } as StatsSnapshot['series'];
  const totals = {} as Record<SeriesColumn, number>;
  for (const name of SERIES_COLUMNS) {
    const values = new Array<number>(points).fill(0);
    for (const snapshot of snapshots) {
      const offset = (start - snapshot.series.start) / intervalMs;
      const column = snapshot.series[name];
      for (let i = 0; i < points; i++) {
        const j = i + offset;
        // A worker whose newest point is an interval behind has nothing for the last one.
        if (j < column.length) values[i]! += column[j]!;
      }
    }
    series[name] = values;
    totals[name] = snapshots.reduce((sum, s) => sum + s.totals[name], 0);
  }
  const tiers = new Map<string, TierFill>();
  for (const snapshot of snapshots) {
    for (const tier of snapshot.tiers) {
      const seen = tiers.get(tier.name);
      if (!seen) tiers.set(tier.name, { ...tier });
      else if (tier.name === 'memory') {
        // Each worker has its own memory tier; the disk tier is one LMDB environment.
        seen.entries += tier.entries;
        seen.bytes += tier.bytes;
        seen.maxBytes += tier.maxBytes;
      }
    }
  }
  const images = snapshots.every((s) => s.images === null)
    ? null
    : snapshots.reduce(
        (sum, s) => ({
          running: sum.running + (s.images?.running ?? 0),
          queued: sum.queued + (s.images?.queued ?? 0),
          maxQueue: sum.maxQueue + (s.images?.maxQueue ?? 0),
          concurrency: sum.concurrency + (s.images?.concurrency ?? 0),
        }),
        { running: 0, queued: 0, maxQueue: 0, concurrency: 0 },
      );
  return {
    name: first.name,
    at: Math.max(...snapshots.map((s) => s.at)),
    startedAt: Math.min(...snapshots.map((s) => s.startedAt)),
    intervalMs,
    series,
    totals,
    tiers: [...tiers.values()],
    inFlight: {
      flights: snapshots.reduce((sum, s) => sum + s.inFlight.flights, 0),
      waiters: snapshots.reduce((sum, s) => sum + s.inFlight.waiters, 0),
    },
    images,
    origins: first.origins,
    top: { requests: mergeTop(snapshots.map((s) => s.top.requests)), misses: mergeTop(snapshots.map((s) => s.top.misses)) },
    purges: snapshots
      .flatMap((s) => s.purges)
      .sort((a, b) => b.at - a.at)
      .slice(0, RECENT_PURGES),
    workers: snapshots.flatMap((s) => s.workers).sort((a, b) => a.pid - b.pid),
  };
}

/** Each tier's fill (a tiered store), or the store's as one tier. */
export function tierFills(store: CacheStore): TierFill[] {
  const tiered = store as CacheStore & { tiers?: () => TierFill[] };
  return typeof tiered.tiers === 'function' ? tiered.tiers() : [{ name: store.name, ...store.stats() }];
}
