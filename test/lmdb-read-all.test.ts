/**
 * Small disk hits skip streams: an LMDB body that fits one chunk is read
 * whole (`readAll`), larger ones only stream.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { LmdbCacheStore } from '../edge/node/lmdb-store.js';

let dir = '';
let store: LmdbCacheStore | undefined;
afterEach(async () => {
  await store?.close();
  await rm(dir, { recursive: true, force: true });
});

async function put(s: LmdbCacheStore, key: string, body: Uint8Array) {
  const writer = s.createWriter(key, '', body.byteLength);
  writer.write(body);
  const now = Date.now();
  return writer.commit({ key, variant: '', status: 200, headers: {}, policy: {}, size: body.byteLength, tags: [], storedAt: now, expiresAt: now + 60_000 });
}

it('reads a one-chunk body whole and declines larger ones', async () => {
  dir = await mkdtemp(join(tmpdir(), 'edge-readall-'));
  store = new LmdbCacheStore({ path: dir, maxBytes: 64 * 1024 * 1024, chunkSize: 1024 });
  const small = Uint8Array.from({ length: 1000 }, (_, i) => i % 251);
  const large = Uint8Array.from({ length: 5000 }, (_, i) => i % 249);
  expect(await put(store, '/small', small)).toBe(true);
  expect(await put(store, '/large', large)).toBe(true);
  const [smallEntry] = await store.get('/small');
  const [largeEntry] = await store.get('/large');
  expect(Buffer.from(smallEntry!.body.readAll!()!).equals(Buffer.from(small))).toBe(true);
  expect(largeEntry!.body.readAll!()).toBeUndefined();
  // A body replaced after the lookup is gone, never half of another version.
  expect(await put(store, '/small', Uint8Array.from({ length: 1000 }, () => 7))).toBe(true);
  expect(smallEntry!.body.readAll!()).toBeUndefined();
});
