/**
 * One contract for every cache tier (after undici's cache-store-test-utils
 * and unstorage's testDriver): each tier must pass the same cases on real
 * data. Tier-specific behaviour (persistence, large bodies, promotion) is
 * tested after the contract runs. The contract itself lives in
 * `helpers/store-contract.ts`, shared with the Workers tiers.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryCacheStore } from '../edge/core/store/memory.js';
import { TieredCacheStore } from '../edge/core/store/tiered.js';
import { LmdbCacheStore } from '../edge/node/lmdb-store.js';
import {
  bodyOf,
  byVariant,
  collect,
  expectBytes,
  feed,
  ids,
  KiB,
  makeMeta,
  MiB,
  patterned,
  put,
  readAll,
  runCacheStoreContract,
  sha256,
  T0,
  type StoreFactory,
} from './helpers/store-contract.js';

// ---------------------------------------------------------------------------
// Tiers under test

let lmdbSuiteDir = '';
let lmdbSeq = 0;
const nextLmdbPath = () => join(lmdbSuiteDir, `db-${lmdbSeq++}`);

beforeAll(async () => {
  lmdbSuiteDir = await mkdtemp(join(tmpdir(), 'edge-store-contract-'));
});
afterAll(async () => {
  await rm(lmdbSuiteDir, { recursive: true, force: true });
});

// Entries in the budget case are a fifth of the budget; the default
// (maxBytes / 8) is covered on its own below.
const memoryFactory: StoreFactory = ({ maxBytes, clock }) =>
  new MemoryCacheStore({ maxBytes, maxEntryBytes: Math.floor(maxBytes / 2), clock });
const lmdbFactory: StoreFactory = ({ maxBytes, clock }) =>
  new LmdbCacheStore({ path: nextLmdbPath(), maxBytes, clock });

runCacheStoreContract('memory', memoryFactory, { keepsPushed: false });
runCacheStoreContract('lmdb', lmdbFactory, { keepsPushed: true });
runCacheStoreContract(
  'tiered (memory over lmdb)',
  async (options) => new TieredCacheStore({ tiers: [await memoryFactory(options), await lmdbFactory(options)] }),
  { keepsPushed: true },
);

// ---------------------------------------------------------------------------
// Tier-specific behaviour

describe('MemoryCacheStore', () => {
  it('declines entries over maxEntryBytes (default maxBytes / 8) without buffering them', async () => {
    const store = new MemoryCacheStore({ maxBytes: 80_000 });
    expect(store.maxEntryBytes).toBe(10_000);
    expect(await put(store, makeMeta('/small'), patterned(5_000))).toBe(true);
    expect(await put(store, makeMeta('/large'), patterned(12_000))).toBe(false);
    expect(await store.get('/large')).toEqual([]);
    expect(store.stats().entries).toBe(1);
    expect(new MemoryCacheStore({ maxBytes: 1024 * MiB }).maxEntryBytes).toBe(8 * MiB);
  });

  it('validates its options', () => {
    expect(() => new MemoryCacheStore({ maxBytes: 0 })).toThrow(/maxBytes/);
    expect(() => new MemoryCacheStore({ maxBytes: 100, maxEntryBytes: 200 })).toThrow(/maxEntryBytes/);
  });
});

describe('LmdbCacheStore', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edge-lmdb-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('survives close and reopen', async () => {
    const path = join(dir, 'reopen');
    const first = new LmdbCacheStore({ path, maxBytes: 64 * MiB });
    const bodies = new Map([
      ['', patterned(300_000, 1)],
      ['br', patterned(1234, 2)],
    ]);
    for (const [variant, body] of bodies) {
      await put(first, makeMeta('/persist', variant, { tags: ['keep'], pushed: variant === '' }), body);
    }
    await put(first, makeMeta('/other'), patterned(10));
    const before = first.stats();
    await first.close();

    const second = new LmdbCacheStore({ path, maxBytes: 64 * MiB });
    try {
      expect(second.stats()).toEqual(before);
      const entries = await second.get('/persist');
      expect(entries).toHaveLength(2);
      for (const [variant, body] of bodies) {
        const entry = byVariant(entries, variant);
        expect(entry.meta).toEqual(makeMeta('/persist', variant, { tags: ['keep'], pushed: variant === '', size: body.byteLength }));
        expectBytes(await bodyOf(entry), body);
      }
      expect(ids(await collect(second.list({ tag: 'keep' })))).toEqual(['/persist|', '/persist|br']);
      expect(ids(await collect(second.list({ pushed: true })))).toEqual(['/persist|']);
    } finally {
      await second.close();
    }
  });

  it('streams a 5 MB body written in many small chunks back identical', async () => {
    const store = new LmdbCacheStore({ path: join(dir, 'large'), maxBytes: 64 * MiB });
    try {
      const body = randomBytes(5 * MiB + 123);
      const writer = store.createWriter('/large.bin', '');
      // Uneven slices so chunk boundaries never line up with write boundaries.
      for (let offset = 0, i = 0; offset < body.byteLength; i++) {
        const slice = 1000 + ((i * 7919) % 9000);
        writer.write(body.subarray(offset, offset + slice));
        offset += slice;
      }
      expect(await writer.commit(makeMeta('/large.bin', '', { size: body.byteLength }))).toBe(true);

      const [entry] = await store.get('/large.bin');
      expect(entry.body.bytes).toBeUndefined();
      expect(entry.body.size).toBe(body.byteLength);
      expect(sha256(await readAll(entry.body.stream()))).toBe(sha256(body));
      const start = 3 * 256 * KiB - 17;
      const end = 4 * MiB + 5;
      expect(sha256(await readAll(entry.body.stream(start, end)))).toBe(sha256(body.subarray(start, end + 1)));
      expect(store.stats()).toEqual({ entries: 1, bytes: body.byteLength, maxBytes: 64 * MiB });
    } finally {
      await store.close();
    }
  });

  it('evicts pushed entries only when evictPushed is set', async () => {
    const store = new LmdbCacheStore({
      path: join(dir, 'evict-pushed'),
      maxBytes: 100_000,
      evictPushed: true,
      clock: () => T0,
    });
    try {
      await put(store, makeMeta('/pushed', '', { pushed: true }), patterned(60_000));
      await put(store, makeMeta('/pulled'), patterned(60_000));
      await store.settled();
      expect(await store.get('/pushed')).toEqual([]);
      expect(await store.get('/pulled')).toHaveLength(1);
      expect(store.stats().bytes).toBe(60_000);
    } finally {
      await store.close();
    }
  });

  it('leaves no orphan chunks after abort, replacement, delete or a crash mid-write', async () => {
    const path = join(dir, 'orphans');
    // The chunks database is internal; a raw handle on the closed store is the honest way to look.
    const countChunks = async () => {
      const { open } = await import('lmdb');
      const root = open({ path, maxDbs: 8 });
      try {
        return [...root.openDB('chunks', { encoding: 'binary' }).getKeys()].length;
      } finally {
        await root.close();
      }
    };
    const options = { path, maxBytes: 64 * MiB, chunkSize: 1000 };

    let store = new LmdbCacheStore(options);
    const aborted = store.createWriter('/gone', '');
    feed(aborted, patterned(50_000));
    await aborted.abort();
    await put(store, makeMeta('/kept'), patterned(2500)); // 3 chunks
    await put(store, makeMeta('/replaced'), patterned(5000)); // 5 chunks, then replaced by 2
    await put(store, makeMeta('/replaced'), patterned(1500));
    await put(store, makeMeta('/deleted'), patterned(4000));
    expect(await store.delete('/deleted')).toBe(1);
    await store.close();
    expect(await countChunks()).toBe(5);

    // A writer that never commits, as after a crash: its chunks are swept at the next open.
    store = new LmdbCacheStore(options);
    const interrupted = store.createWriter('/crash', '');
    feed(interrupted, patterned(20_000));
    await store.close();
    expect(await countChunks()).toBeGreaterThan(5);
    store = new LmdbCacheStore(options);
    await store.settled();
    expect(await store.get('/crash')).toEqual([]);
    expectBytes(await bodyOf((await store.get('/kept'))[0]), patterned(2500));
    await store.close();
    expect(await countChunks()).toBe(5);
  });
});

describe('TieredCacheStore', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edge-tiered-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const build = (name: string, memoryOptions: { maxEntryBytes?: number } = {}) => {
    const memory = new MemoryCacheStore({ maxBytes: 8 * MiB, ...memoryOptions });
    const disk = new LmdbCacheStore({ path: join(dir, name), maxBytes: 64 * MiB });
    return { memory, disk, tiered: new TieredCacheStore({ tiers: [memory, disk] }) };
  };

  it('promotes a disk hit to memory in the background', async () => {
    const { memory, disk, tiered } = build('promote');
    try {
      const body = patterned(400_000);
      const meta = makeMeta('/hot', '', { tags: ['t'] });
      await put(disk, meta, body);
      expect(await memory.get('/hot')).toEqual([]);

      const [fromDisk] = await tiered.get('/hot');
      expect(fromDisk.body.bytes).toBeUndefined();
      expectBytes(await bodyOf(fromDisk), body);
      await tiered.settled();

      const [promoted] = await memory.get('/hot');
      expect(promoted.meta).toEqual({ ...meta, size: body.byteLength });
      expectBytes(promoted.body.bytes!, body);
      const [fromMemory] = await tiered.get('/hot');
      expect(fromMemory.body.bytes).toBeDefined();
      expect(tiered.tiers().map((tier) => [tier.name, tier.entries])).toEqual([
        ['memory', 1],
        ['disk', 1],
      ]);
    } finally {
      await tiered.close();
    }
  });

  it('does not promote bodies larger than the memory tier accepts', async () => {
    const { memory, disk, tiered } = build('no-promote', { maxEntryBytes: 100_000 });
    try {
      await put(disk, makeMeta('/huge'), patterned(200_000));
      expect(await tiered.get('/huge')).toHaveLength(1);
      await tiered.settled();
      expect(await memory.get('/huge')).toEqual([]);
    } finally {
      await tiered.close();
    }
  });

  it('fills variants missing from memory from disk', async () => {
    const { memory, tiered } = build('variants');
    try {
      await put(tiered, makeMeta('/v', 'br'), patterned(100, 1));
      await put(tiered, makeMeta('/v', 'gzip'), patterned(100, 2));
      await memory.delete('/v', 'gzip');
      const entries = await tiered.get('/v');
      expect(entries.map((entry) => entry.meta.variant).sort()).toEqual(['br', 'gzip']);
      expectBytes(await bodyOf(byVariant(entries, 'gzip')), patterned(100, 2));
    } finally {
      await tiered.close();
    }
  });

  it('drops the stale copy from a tier that declines the new version', async () => {
    const { memory, tiered } = build('stale', { maxEntryBytes: 100_000 });
    try {
      await put(tiered, makeMeta('/doc', '', { headers: { etag: '"v1"' } }), patterned(1000));
      expect(await memory.get('/doc')).toHaveLength(1);
      expect(await put(tiered, makeMeta('/doc', '', { headers: { etag: '"v2"' } }), patterned(200_000))).toBe(true);
      expect(await memory.get('/doc')).toEqual([]);
      const [entry] = await tiered.get('/doc');
      expect(entry.meta.headers.etag).toBe('"v2"');
      expectBytes(await bodyOf(entry), patterned(200_000));
    } finally {
      await tiered.close();
    }
  });
});
