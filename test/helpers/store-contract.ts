/**
 * The CacheStore contract (after undici's cache-store-test-utils and
 * unstorage's testDriver): one function, `runCacheStoreContract`, that every
 * tier must pass on real data: memory, LMDB and tiered in
 * `test/store-contract.test.ts`, the Workers Cache API and R2 tiers (on
 * workerd) in `test/workers.test.ts`. The helpers are shared with the
 * tier-specific tests.
 */
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { CacheEntry, CacheEntryMeta, CacheStore, CacheWriter } from '../../edge/core/store/types.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const T0 = 1_700_000_000_000;
export const HOUR = 3_600_000;

export interface StoreFactoryOptions {
  maxBytes: number;
  clock: () => number;
}

/** Opens a fresh, empty store; called once per test. */
export type StoreFactory = (options: StoreFactoryOptions) => CacheStore | Promise<CacheStore>;

export interface ContractTraits {
  /** Pushed entries survive byte pressure (disk-backed stores); a pure memory tier evicts them like any other. */
  keepsPushed: boolean;
  /**
   * The store evicts within its own byte budget (memory, LMDB). The Workers
   * tiers have none to enforce: the Cache API evicts on Cloudflare's terms
   * and R2 keeps everything, so the eviction case does not apply to them.
   * @default true
   */
  evictsWithinBudget?: boolean;
}

// ---------------------------------------------------------------------------
// Helpers

export function makeMeta(key: string, variant = '', overrides: Partial<CacheEntryMeta> = {}): CacheEntryMeta {
  return {
    key,
    variant,
    status: 200,
    headers: { 'content-type': 'application/octet-stream', etag: `"${key}|${variant}"` },
    policy: { v: 1, t: T0, sh: true, ch: 0.1, imm: 0, st: 200, resh: { 'cache-control': 'max-age=60' } },
    size: 0,
    tags: [],
    storedAt: T0,
    expiresAt: T0 + HOUR,
    ...overrides,
  };
}

/** Writes `body` in slices of `sliceSize`, as a response body would arrive. */
export function feed(writer: CacheWriter, body: Uint8Array, sliceSize = 7 * KiB): void {
  for (let offset = 0; offset < body.byteLength; offset += sliceSize) {
    writer.write(body.slice(offset, offset + sliceSize));
  }
}

export async function put(
  store: CacheStore,
  meta: CacheEntryMeta,
  body: Uint8Array,
  sliceSize?: number,
): Promise<boolean> {
  const writer = store.createWriter(meta.key, meta.variant, body.byteLength);
  feed(writer, body, sliceSize);
  return writer.commit({ ...meta, size: body.byteLength });
}

export async function readAll(stream: ReadableStream<Uint8Array>): Promise<Buffer> {
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}

/** The rest of a stream already being read. */
export async function readRest(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}

export async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of iterable) items.push(item);
  return items;
}

export function ids(metas: CacheEntryMeta[]): string[] {
  return metas.map((meta) => `${meta.key}|${meta.variant}`).sort();
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Length and digest: vitest's deep equality walks large buffers byte by byte, which takes seconds. */
export function fingerprint(bytes: Uint8Array): string {
  return `${bytes.byteLength} bytes, sha256 ${sha256(bytes)}`;
}

export function expectBytes(actual: Uint8Array, expected: Uint8Array, label?: string): void {
  expect(fingerprint(actual), label).toBe(fingerprint(expected));
}

/** Bytes whose value encodes their position, so a shifted or spliced range is visible. */
export function patterned(size: number, seed = 0): Buffer {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return bytes;
}

export async function bodyOf(entry: CacheEntry): Promise<Buffer> {
  return readAll(entry.body.stream());
}

export function byVariant(entries: CacheEntry[], variant: string): CacheEntry {
  const entry = entries.find((candidate) => candidate.meta.variant === variant);
  if (!entry) throw new Error(`variant ${JSON.stringify(variant)} missing`);
  return entry;
}

/** Waits for background eviction / promotion, where the store has any. */
export async function settle(store: CacheStore): Promise<void> {
  await (store as CacheStore & { settled?: () => Promise<void> }).settled?.();
}

// ---------------------------------------------------------------------------
// The contract

export function runCacheStoreContract(name: string, factory: StoreFactory, traits: ContractTraits): void {
  describe(`CacheStore contract: ${name}`, () => {
    let now = T0;
    const opened: CacheStore[] = [];
    const open = async (maxBytes = 64 * MiB): Promise<CacheStore> => {
      now = T0;
      const store = await factory({ maxBytes, clock: () => now });
      opened.push(store);
      return store;
    };
    afterEach(async () => {
      await Promise.all(opened.splice(0).map((store) => store.close()));
    });

    it('round-trips metadata and bytes', async () => {
      const store = await open();
      const body = patterned(10_000);
      const meta = makeMeta('/a.bin', '', {
        tags: ['t1', 'product-7'],
        sourceKey: '/src.bin',
        invalidated: false,
        headers: { 'content-type': 'image/png', 'cache-control': 'max-age=60', vary: 'accept' },
      });
      expect(await put(store, meta, body)).toBe(true);

      const entries = await store.get('/a.bin');
      expect(entries).toHaveLength(1);
      expect(entries[0].meta).toEqual({ ...meta, size: body.byteLength });
      expect(entries[0].body.size).toBe(body.byteLength);
      expectBytes(await bodyOf(entries[0]), body);
      if (entries[0].body.bytes) expectBytes(entries[0].body.bytes, body);
      expect(await store.get('/a.bi')).toEqual([]);
      expect(await store.get('/a.bin/')).toEqual([]);
      expect(store.stats().entries).toBe(1);
    });

    it('handles realistic long keys (64+ bytes): get, delete, tag and source listings', async () => {
      const store = await open();
      const key = `/static/js/main.3f2a1b9c8d7e6f5a4b3c2d1e0f.chunk.js?v=${'x'.repeat(40)} https://www.example.com`;
      const derived = `${key}#img:w=400;h=;fit=inside;q=56;f=avif;pos=centre;e=0`;
      expect(await put(store, makeMeta(key, '', { tags: ['release-42'] }), patterned(100))).toBe(true);
      expect(await put(store, makeMeta(key, 'accept-encoding:br', { tags: ['release-42'] }), patterned(100))).toBe(true);
      expect(await put(store, makeMeta(derived, '', { sourceKey: key }), patterned(50))).toBe(true);
      expect((await store.get(key)).map((e) => e.meta.variant).sort()).toEqual(['', 'accept-encoding:br']);
      const tagged: string[] = [];
      for await (const meta of store.list({ tag: 'release-42' })) tagged.push(meta.key);
      expect(tagged).toEqual([key, key]);
      const fromSource: string[] = [];
      for await (const meta of store.list({ sourceKey: key })) fromSource.push(meta.key);
      expect(fromSource).toEqual([derived]);
      expect(await store.delete(key)).toBe(2);
      expect(await store.get(key)).toEqual([]);
      expect(await store.delete(derived)).toBe(1);
      expect(store.stats().entries).toBe(0);
    });

    it('stores an empty body', async () => {
      const store = await open();
      expect(await put(store, makeMeta('/empty'), new Uint8Array(0))).toBe(true);
      const [entry] = await store.get('/empty');
      expect(entry.meta.size).toBe(0);
      expect(entry.body.size).toBe(0);
      expect((await bodyOf(entry)).byteLength).toBe(0);
    });

    it('keeps variants of one key apart', async () => {
      const store = await open();
      const variants = ['', 'accept-encoding=br', 'accept-encoding=gzip'];
      for (const [i, variant] of variants.entries()) {
        expect(await put(store, makeMeta('/v', variant, { status: 200 + i }), patterned(1000 + i, i))).toBe(true);
      }
      const entries = await store.get('/v');
      expect(entries.map((entry) => entry.meta.variant).sort()).toEqual([...variants].sort());
      for (const [i, variant] of variants.entries()) {
        const entry = byVariant(entries, variant);
        expect(entry.meta.status).toBe(200 + i);
        expectBytes(await bodyOf(entry), patterned(1000 + i, i));
      }
    });

    it('streams byte ranges, including across chunk boundaries', async () => {
      const store = await open();
      const body = patterned(600_000);
      await put(store, makeMeta('/range'), body, 10_007);
      const [entry] = await store.get('/range');
      const ranges: Array<[number, number | undefined]> = [
        [0, 0],
        [0, 99],
        [262_143, 262_144],
        [262_144, 524_288],
        [100, 599_999],
        [599_999, 599_999],
        [500_000, undefined],
        [10, 10_000_000],
      ];
      for (const [start, end] of ranges) {
        const expected = body.subarray(start, end === undefined ? undefined : end + 1);
        expectBytes(await readAll(entry.body.stream(start, end)), expected, `range ${start}-${end}`);
      }
      expectBytes(await readAll(entry.body.stream()), body);
      expect(() => entry.body.stream(700_000, 700_010)).toThrow(RangeError);
    });

    it('keeps the previous version when a writer aborts', async () => {
      const store = await open();
      const v1 = patterned(5000, 1);
      await put(store, makeMeta('/abort', '', { headers: { etag: '"v1"' } }), v1);

      const writer = store.createWriter('/abort', '');
      feed(writer, patterned(8000, 2));
      await writer.abort();

      const entries = await store.get('/abort');
      expect(entries).toHaveLength(1);
      expect(entries[0].meta.headers.etag).toBe('"v1"');
      expectBytes(await bodyOf(entries[0]), v1);
      expect(store.stats().entries).toBe(1);
    });

    it('hides a writer’s data until commit', async () => {
      const store = await open();
      const writer = store.createWriter('/pending', '');
      feed(writer, patterned(300_000));
      expect(await store.get('/pending')).toEqual([]);
      expect(await collect(store.list())).toEqual([]);
      expect(await writer.commit(makeMeta('/pending', '', { size: 300_000 }))).toBe(true);
      const [entry] = await store.get('/pending');
      expectBytes(await bodyOf(entry), patterned(300_000));
    });

    it('replaces an entry atomically; a reader that started on the old version gets it whole', async () => {
      const store = await open();
      const v1 = patterned(600_000, 1);
      const v2 = patterned(400_000, 2);
      await put(store, makeMeta('/swap', '', { headers: { etag: '"v1"' } }), v1);

      const [old] = await store.get('/swap');
      const oldReader = old.body.stream().getReader();
      const first = await oldReader.read();
      expect(first.done).toBe(false);

      const writer = store.createWriter('/swap', '');
      feed(writer, v2);
      // The old version stays whole until the new one is committed.
      const [stillOld] = await store.get('/swap');
      expect(stillOld.meta.headers.etag).toBe('"v1"');
      expect(await writer.commit(makeMeta('/swap', '', { headers: { etag: '"v2"' } }))).toBe(true);

      const entries = await store.get('/swap');
      expect(entries).toHaveLength(1);
      expect(entries[0].meta.headers.etag).toBe('"v2"');
      expect(entries[0].meta.size).toBe(v2.byteLength);
      expectBytes(await bodyOf(entries[0]), v2);

      await settle(store);
      expectBytes(Buffer.concat([first.value as Uint8Array, await readRest(oldReader)]), v1);
    });

    it('a started stream yields its whole version through a delete, a replace and a range read', async () => {
      const store = await open();
      const v1 = patterned(700_000, 1);
      await put(store, makeMeta('/kept'), v1);
      await put(store, makeMeta('/deleted'), v1);
      const [kept] = await store.get('/kept');
      const [deleted] = await store.get('/deleted');
      const readers = (
        [
          [kept.body.stream(), v1],
          [kept.body.stream(300_000, 650_000), v1.subarray(300_000, 650_001)],
          [deleted.body.stream(), v1],
          [deleted.body.stream(10, 699_999), v1.subarray(10)],
        ] as const
      ).map(([stream, expected]) => ({ reader: stream.getReader(), expected }));
      const firsts = await Promise.all(readers.map(({ reader }) => reader.read()));
      for (const first of firsts) expect(first.done).toBe(false);

      const v2 = patterned(400_000, 2);
      expect(await put(store, makeMeta('/kept', '', { headers: { etag: '"v2"' } }), v2)).toBe(true);
      expect(await store.delete('/deleted')).toBe(1);
      await settle(store);
      expect(await store.get('/deleted')).toEqual([]);
      const [replaced] = await store.get('/kept');
      expectBytes(await bodyOf(replaced), v2);

      for (const [i, { reader, expected }] of readers.entries()) {
        expectBytes(Buffer.concat([firsts[i].value as Uint8Array, await readRest(reader)]), expected, `reader ${i}`);
      }
    });

    it.skipIf(traits.evictsWithinBudget === false)('a started stream yields its whole version through its eviction', async () => {
      const store = await open(1_500_000);
      const bodies = [1, 2, 3].map((seed) => patterned(600_000, seed));
      await put(store, makeMeta('/e0'), bodies[0]);
      await settle(store);
      const [entry] = await store.get('/e0');
      const reader = entry.body.stream().getReader();
      const first = await reader.read();
      expect(first.done).toBe(false);
      // Least recently used once the others are written: evicted.
      await put(store, makeMeta('/e1'), bodies[1]);
      await settle(store);
      await put(store, makeMeta('/e2'), bodies[2]);
      await settle(store);
      expect(await store.get('/e0')).toEqual([]);
      expect(await store.get('/e2')).toHaveLength(1);
      expectBytes(Buffer.concat([first.value as Uint8Array, await readRest(reader)]), bodies[0]);
    });

    it('counts pushed bytes (tiers that report them) and refuses a push over maxPushedBytes, keeping the previous version', async (ctx) => {
      const store = await open();
      // Tiers that do not hold pushed entries against a budget (memory: a copy; Workers: no budget) keep no count.
      if (!store.pushedBytes) return ctx.skip();
      const pushedBytes = () => store.pushedBytes!();
      const push = (key: string, size: number, seed: number, maxPushedBytes?: number) => {
        const writer = store.createWriter(key, '', size);
        feed(writer, patterned(size, seed));
        return writer.commit(makeMeta(key, '', { pushed: true, size, headers: { etag: `"${seed}"` } }), { maxPushedBytes });
      };
      const counts = () => ({ bytes: store.stats().bytes, entries: store.stats().entries, pushedBytes: pushedBytes() });
      const refused = { code: 'EDGE_INSUFFICIENT_STORAGE' };

      expect(await push('/p1', 10_000, 1)).toBe(true);
      expect(await put(store, makeMeta('/pulled'), patterned(5000))).toBe(true);
      expect(counts()).toEqual({ bytes: 15_000, entries: 2, pushedBytes: 10_000 });
      // A replacement counts once: its size minus the previous version's.
      expect(await push('/p1', 12_000, 2, 15_000)).toBe(true);
      expect(counts()).toEqual({ bytes: 17_000, entries: 2, pushedBytes: 12_000 });
      await expect(push('/p2', 8000, 3, 15_000)).rejects.toMatchObject(refused);
      expect(await store.get('/p2')).toEqual([]);
      expect(counts()).toEqual({ bytes: 17_000, entries: 2, pushedBytes: 12_000 });
      expect(await push('/p1', 15_000, 4, 15_000)).toBe(true);
      await expect(push('/p1', 15_001, 5, 15_000)).rejects.toMatchObject(refused);
      const [p1] = await store.get('/p1');
      expect(p1.meta.headers.etag).toBe('"4"');
      expectBytes(await bodyOf(p1), patterned(15_000, 4));
      // A pulled entry is never refused by the push budget.
      expect(await store.createWriter('/pulled2', '').commit(makeMeta('/pulled2'), { maxPushedBytes: 0 })).toBe(true);

      expect(await store.updateMeta({ ...p1.meta, invalidated: true })).toBe(true);
      expect(counts()).toEqual({ bytes: 20_000, entries: 3, pushedBytes: 15_000 });
      expect(await push('/p2', 8000, 6)).toBe(true);
      expect(counts().pushedBytes).toBe(23_000);
      // Over budget (as after lowering it): a replacement that does not grow the total still goes through.
      expect(await push('/p2', 7000, 7, 15_000)).toBe(true);
      expect(await store.delete('/p1')).toBe(1);
      await settle(store);
      expect(counts()).toEqual({ bytes: 12_000, entries: 3, pushedBytes: 7000 });
      expect(await push('/p3', 8000, 8, 15_000)).toBe(true);
      expect(counts().pushedBytes).toBe(15_000);
    });

    it('lets the last of two concurrent writers win whole', async () => {
      const store = await open();
      const a = store.createWriter('/race', '');
      const b = store.createWriter('/race', '');
      for (let i = 0; i < 40; i++) {
        a.write(patterned(10_000, 3).subarray(i * 250, (i + 1) * 250));
        b.write(patterned(20_000, 4).subarray(i * 500, (i + 1) * 500));
      }
      expect(await a.commit(makeMeta('/race', '', { headers: { etag: '"a"' } }))).toBe(true);
      expect(await b.commit(makeMeta('/race', '', { headers: { etag: '"b"' } }))).toBe(true);
      const entries = await store.get('/race');
      expect(entries).toHaveLength(1);
      expect(entries[0].meta.headers.etag).toBe('"b"');
      expectBytes(await bodyOf(entries[0]), patterned(20_000, 4));
      expect(store.stats().entries).toBe(1);
    });

    it('deletes one variant or all of them, and only that key', async () => {
      const store = await open();
      for (const variant of ['', 'br', 'gzip']) await put(store, makeMeta('/a', variant), patterned(100));
      await put(store, makeMeta('/ab'), patterned(100));
      await put(store, makeMeta('/a/b'), patterned(100));

      expect(await store.delete('/a', 'br')).toBe(1);
      expect((await store.get('/a')).map((entry) => entry.meta.variant).sort()).toEqual(['', 'gzip']);
      expect(await store.delete('/a', 'br')).toBe(0);
      expect(await store.delete('/a')).toBe(2);
      expect(await store.get('/a')).toEqual([]);
      expect(await store.delete('/a')).toBe(0);
      expect(await store.get('/ab')).toHaveLength(1);
      expect(await store.get('/a/b')).toHaveLength(1);
      expect(ids(await collect(store.list()))).toEqual(['/a/b|', '/ab|']);
    });

    it('lists by prefix, tag, sourceKey and pushed', async () => {
      const store = await open();
      await put(store, makeMeta('/img/src.jpg', '', { tags: ['img', 'p1'] }), patterned(100));
      await put(store, makeMeta('/img/src.jpg?w=100', 'accept=webp', { tags: ['img'], sourceKey: '/img/src.jpg' }), patterned(50));
      await put(store, makeMeta('/img/src.jpg?w=200', '', { tags: ['img'], sourceKey: '/img/src.jpg' }), patterned(60));
      await put(store, makeMeta('/docs/a.pdf', '', { tags: ['p1'], pushed: true }), patterned(70));
      await put(store, makeMeta('/imgx', '', { pushed: false }), patterned(10));

      expect(ids(await collect(store.list()))).toEqual([
        '/docs/a.pdf|',
        '/img/src.jpg?w=100|accept=webp',
        '/img/src.jpg?w=200|',
        '/img/src.jpg|',
        '/imgx|',
      ]);
      expect(ids(await collect(store.list({ prefix: '/img/' })))).toEqual([
        '/img/src.jpg?w=100|accept=webp',
        '/img/src.jpg?w=200|',
        '/img/src.jpg|',
      ]);
      expect(ids(await collect(store.list({ prefix: '/img' })))).toHaveLength(4);
      expect(ids(await collect(store.list({ tag: 'p1' })))).toEqual(['/docs/a.pdf|', '/img/src.jpg|']);
      expect(ids(await collect(store.list({ tag: 'nope' })))).toEqual([]);
      expect(ids(await collect(store.list({ sourceKey: '/img/src.jpg' })))).toEqual([
        '/img/src.jpg?w=100|accept=webp',
        '/img/src.jpg?w=200|',
      ]);
      expect(ids(await collect(store.list({ pushed: true })))).toEqual(['/docs/a.pdf|']);
      expect(ids(await collect(store.list({ pushed: false })))).toHaveLength(4);
      expect(ids(await collect(store.list({ prefix: '/img/', tag: 'p1' })))).toEqual(['/img/src.jpg|']);

      const listed = (await collect(store.list({ tag: 'p1' }))).find((meta) => meta.key === '/docs/a.pdf');
      expect(listed).toEqual(makeMeta('/docs/a.pdf', '', { tags: ['p1'], pushed: true, size: 70 }));
    });

    it('supports purging while listing', async () => {
      const store = await open();
      for (let i = 0; i < 300; i++) {
        await put(store, makeMeta(`/p/${String(i).padStart(3, '0')}`, '', { tags: i % 3 === 0 ? ['purge'] : [] }), patterned(10, i));
      }
      const all = ids(await collect(store.list()));
      expect(new Set(all).size).toBe(300);
      expect(all).toHaveLength(300);
      let purged = 0;
      for await (const meta of store.list({ tag: 'purge' })) purged += await store.delete(meta.key);
      expect(purged).toBe(100);
      let removed = 0;
      const visited: string[] = [];
      for await (const meta of store.list({ prefix: '/p/' })) {
        visited.push(meta.key);
        if (Number(meta.key.slice(3)) % 2 === 0) removed += await store.delete(meta.key, meta.variant);
      }
      expect(removed).toBe(100);
      expect(visited).toHaveLength(200);
      expect(new Set(visited).size).toBe(200);
      expect(await collect(store.list({ tag: 'purge' }))).toEqual([]);
      expect(await collect(store.list())).toHaveLength(100);
      expect(store.stats().entries).toBe(100);
    });

    it('updateMeta replaces metadata and keeps the body', async () => {
      const store = await open();
      const body = patterned(300_000);
      await put(store, makeMeta('/u', 'br', { tags: ['old'] }), body);
      const updated = makeMeta('/u', 'br', {
        tags: ['new'],
        headers: { etag: '"v2"', 'content-type': 'text/plain' },
        storedAt: T0 + 5000,
        expiresAt: T0 + 2 * HOUR,
        invalidated: true,
        size: body.byteLength,
      });
      expect(await store.updateMeta(updated)).toBe(true);
      const [entry] = await store.get('/u');
      expect(entry.meta).toEqual(updated);
      expectBytes(await bodyOf(entry), body);
      expect(ids(await collect(store.list({ tag: 'new' })))).toEqual(['/u|br']);
      expect(await collect(store.list({ tag: 'old' }))).toEqual([]);
      expect(await store.updateMeta(makeMeta('/u', 'gzip'))).toBe(false);
      expect(await store.updateMeta(makeMeta('/missing'))).toBe(false);
      expect(await store.get('/missing')).toEqual([]);
    });

    it.skipIf(traits.evictsWithinBudget === false)('evicts expired entries first, then the least recently used, within the byte budget', async () => {
      const maxBytes = 100_000;
      const store = await open(maxBytes);
      const long = T0 + HOUR;
      const write = async (key: string, size: number, overrides: Partial<CacheEntryMeta> = {}) => {
        expect(await put(store, makeMeta(key, '', { expiresAt: long, ...overrides }), patterned(size))).toBe(true);
        await settle(store);
      };
      const has = async (key: string) => (await store.get(key)).length === 1;

      await write('/A', 20_000, { pushed: true });
      await write('/B', 20_000, { expiresAt: T0 + 10 });
      await write('/C', 20_000);
      await write('/D', 20_000);
      expect(store.stats().bytes).toBeLessThanOrEqual(maxBytes);
      now = T0 + 1000;
      // /B becomes the most recently used, yet it is expired: it goes first.
      expect(await has('/B')).toBe(true);

      await write('/E', 30_000);
      expect(await has('/B')).toBe(false);
      for (const key of ['/A', '/C', '/D', '/E']) expect(await has(key), key).toBe(true);

      // Least recently used is now /A (pushed), then /C.
      await write('/F', 40_000);
      expect(await has('/C')).toBe(false);
      expect(await has('/E')).toBe(true);
      expect(await has('/F')).toBe(true);
      expect(await has('/A')).toBe(traits.keepsPushed);
      await settle(store);
      expect(ids(await collect(store.list({ pushed: true })))).toEqual(traits.keepsPushed ? ['/A|'] : []);
    });

    it('declines an entry larger than the whole budget and keeps the old one', async () => {
      const maxBytes = 100_000;
      const store = await open(maxBytes);
      await put(store, makeMeta('/big'), patterned(1000));

      const writer = store.createWriter('/big', '');
      feed(writer, patterned(maxBytes + 1));
      expect(await writer.commit(makeMeta('/big', '', { size: maxBytes + 1 }))).toBe(false);
      const entries = await store.get('/big');
      expect(entries).toHaveLength(1);
      expectBytes(await bodyOf(entries[0]), patterned(1000));

      const announced = store.createWriter('/big2', '', maxBytes + 1);
      feed(announced, patterned(maxBytes + 1));
      expect(await announced.commit(makeMeta('/big2', '', { size: maxBytes + 1 }))).toBe(false);
      expect(await store.get('/big2')).toEqual([]);
      await settle(store);
      expect(store.stats().bytes).toBeLessThanOrEqual(maxBytes);
    });

    it('rejects a commit whose metadata names another entry', async () => {
      const store = await open();
      const writer = store.createWriter('/x', 'br');
      writer.write(patterned(10));
      await expect(writer.commit(makeMeta('/y', 'br'))).rejects.toThrow(TypeError);
      expect(await store.get('/x')).toEqual([]);
      expect(await store.get('/y')).toEqual([]);
    });
  });
}
