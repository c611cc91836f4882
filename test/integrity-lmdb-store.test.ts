/**
 * The disk tier's side of "readers get whole versions" and of the push
 * budget, on real LMDB environments in a temp dir: a replaced or deleted
 * body stays readable exactly as long as a stream reads it and is removed
 * after its last reader (end or cancel), or swept at the next open when the
 * node stops first; pushed bytes are counted right across replacement,
 * deletion, eviction and restart.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'lmdb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LmdbCacheStore } from '../edge/node/lmdb-store.js';
import { bodyOf, expectBytes, feed, makeMeta, patterned, put, readRest, T0 } from './helpers/store-contract.js';

let dir = '';
let seq = 0;
const nextPath = () => join(dir, `db-${seq++}`);
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edge-integrity-lmdb-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Chunks on disk, read with a raw handle once the store is closed (the chunks database is internal). */
async function countChunks(path: string): Promise<number> {
  const root = open({ path, maxDbs: 8 });
  try {
    return [...root.openDB('chunks', { encoding: 'binary' }).getKeys()].length;
  } finally {
    await root.close();
  }
}

/** Resolves to the error a stream fails with, or throws if it ends normally. */
async function failureOf(stream: ReadableStream<Uint8Array>): Promise<unknown> {
  try {
    await readRest(stream.getReader());
  } catch (err) {
    return err;
  }
  throw new Error('the stream ended normally');
}

describe('LmdbCacheStore keeps a body while it is read', () => {
  it('removes a replaced body after its last reader ends, not before', async () => {
    const path = nextPath();
    const store = new LmdbCacheStore({ path, maxBytes: 1024 * 1024, chunkSize: 1000 });
    const v1 = patterned(5000, 1);
    const v2 = patterned(2000, 2);
    await put(store, makeMeta('/a'), v1);
    const [old] = await store.get('/a');
    const reader = old.body.stream().getReader();
    const first = await reader.read();

    await put(store, makeMeta('/a'), v2);
    await store.settled();
    expectBytes(await bodyOf((await store.get('/a'))[0]), v2);
    // Still held: another stream of the old version reads it whole too.
    expectBytes(await bodyOf(old), v1);

    expectBytes(Buffer.concat([first.value!, await readRest(reader)]), v1);
    await store.settled();
    // The last reader is done: the old chunks are gone, a stale handle can no longer read them.
    expect(await failureOf(old.body.stream())).toMatchObject({ code: 'EDGE_INTERNAL' });
    await store.close();
    expect(await countChunks(path)).toBe(2);
  });

  it('lets go of a body when its reader cancels, and of one deleted or evicted under readers', async () => {
    const path = nextPath();
    const store = new LmdbCacheStore({ path, maxBytes: 20_000, chunkSize: 1000, clock: () => T0 });
    await put(store, makeMeta('/cancelled'), patterned(5000, 1));
    await put(store, makeMeta('/deleted'), patterned(4000, 2));
    const [cancelled] = await store.get('/cancelled');
    const [deleted] = await store.get('/deleted');
    const cancelling = cancelled.body.stream().getReader();
    await cancelling.read();
    const reading = deleted.body.stream(500, 3999).getReader();
    const first = await reading.read();

    expect(await store.delete('/cancelled')).toBe(1);
    expect(await store.delete('/deleted')).toBe(1);
    await cancelling.cancel();
    expectBytes(Buffer.concat([first.value!, await readRest(reading)]), patterned(4000, 2).subarray(500));

    // Evicted while read: /e0 is the least recently used when /e2 lands over budget.
    await put(store, makeMeta('/e0'), patterned(9000, 3));
    const [e0] = await store.get('/e0');
    const evicted = e0.body.stream().getReader();
    const e0First = await evicted.read();
    await put(store, makeMeta('/e1'), patterned(9000, 4));
    await put(store, makeMeta('/e2'), patterned(9000, 5));
    await store.settled();
    expect(await store.get('/e0')).toEqual([]);
    expectBytes(Buffer.concat([e0First.value!, await readRest(evicted)]), patterned(9000, 3));

    await store.settled();
    await store.close();
    expect(await countChunks(path)).toBe(18);
  });

  it('leaves a body still read when the store closes to the next open’s sweep', async () => {
    const path = nextPath();
    let store = new LmdbCacheStore({ path, maxBytes: 1024 * 1024, chunkSize: 1000 });
    await put(store, makeMeta('/held'), patterned(5000, 1));
    await put(store, makeMeta('/kept'), patterned(3000, 2));
    const [held] = await store.get('/held');
    const reader = held.body.stream().getReader();
    await reader.read();
    expect(await store.delete('/held')).toBe(1);
    await store.close();
    // The reader outlived its store: it fails cleanly, and the held chunks are orphans on disk.
    await expect(readRest(reader)).rejects.toMatchObject({ code: 'EDGE_INTERNAL' });
    expect(await countChunks(path)).toBe(8);

    store = new LmdbCacheStore({ path, maxBytes: 1024 * 1024, chunkSize: 1000 });
    await store.settled();
    expectBytes(await bodyOf((await store.get('/kept'))[0]), patterned(3000, 2));
    await store.close();
    expect(await countChunks(path)).toBe(3);
  });
});

describe('LmdbCacheStore counts pushed bytes', () => {
  const pushed = (key: string) => makeMeta(key, '', { pushed: true });

  it('across replacement, deletion, eviction (evictPushed) and restart', async () => {
    const path = nextPath();
    const options = { path, maxBytes: 100_000, chunkSize: 1000, evictPushed: true, clock: () => T0 };
    let store = new LmdbCacheStore(options);
    await put(store, pushed('/p1'), patterned(20_000));
    await put(store, pushed('/p2'), patterned(10_000));
    await put(store, makeMeta('/pulled'), patterned(15_000));
    await put(store, pushed('/p1'), patterned(25_000));
    expect(store.pushedBytes()).toBe(35_000);
    expect(await store.delete('/p2')).toBe(1);
    expect(store.pushedBytes()).toBe(25_000);
    // Soft purge and other metadata updates leave the count alone.
    const [p1] = await store.get('/p1');
    expect(await store.updateMeta({ ...p1.meta, invalidated: true })).toBe(true);
    expect(store.pushedBytes()).toBe(25_000);
    await store.close();

    store = new LmdbCacheStore(options);
    expect(store.pushedBytes()).toBe(25_000);
    expect(store.stats()).toMatchObject({ entries: 2, bytes: 40_000 });
    // Over budget: eviction (pushed entries included) takes /p1 first, the least recently used.
    await put(store, pushed('/p3'), patterned(30_000));
    await put(store, makeMeta('/pulled2'), patterned(40_000));
    await store.settled();
    expect(await store.get('/p1')).toEqual([]);
    expect(store.pushedBytes()).toBe(30_000);
    expect(store.stats().bytes).toBeLessThanOrEqual(100_000);
    await store.close();

    store = new LmdbCacheStore(options);
    expect(store.pushedBytes()).toBe(30_000);
    await store.close();
  });

  it('never lets concurrent pushes overshoot the budget together', async () => {
    const store = new LmdbCacheStore({ path: nextPath(), maxBytes: 1024 * 1024 });
    try {
      const writers = [1, 2, 3, 4, 5].map((seed) => {
        const writer = store.createWriter(`/c${seed}`, '', 30_000);
        feed(writer, patterned(30_000, seed));
        return writer;
      });
      const outcomes = await Promise.allSettled(
        writers.map((writer, i) => writer.commit(makeMeta(`/c${i + 1}`, '', { pushed: true, size: 30_000 }), { maxPushedBytes: 100_000 })),
      );
      expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(3);
      for (const outcome of outcomes) {
        if (outcome.status === 'rejected') expect(outcome.reason).toMatchObject({ code: 'EDGE_INSUFFICIENT_STORAGE' });
      }
      expect(store.pushedBytes()).toBe(90_000);
      await store.settled();
    } finally {
      await store.close();
    }
  });
});
