/**
 * Issue 10, "a purge also invalidates fills in flight", in one process, on a
 * real LMDB disk tier: a fill that passed its purge check just before a purge
 * is recorded commits after it (the store publishes an entry only once its
 * body writes are through). The purge's own deletion must come after that
 * commit, or the old version lands after the purge and is served for its
 * whole TTL. `PurgeLog.recordEverywhere` waits for commits that passed their
 * check (`PurgeLog.landing`); the purge then deletes what they stored.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keysMatcher, PurgeLog } from '../edge/core/purge-log.js';
import { LmdbCacheStore } from '../edge/node/lmdb-store.js';
import { makeMeta, patterned } from './helpers/store-contract.js';

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edge-purge-landing-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('a purge and a fill that passed its check a moment before', () => {
  it('the purge deletes after the commit has landed: nothing of the old version stays stored', async () => {
    const store = new LmdbCacheStore({ path: join(dir, 'db'), maxBytes: 64 * 1024 * 1024, chunkSize: 64 * 1024 });
    try {
      const purges = new PurgeLog();
      const fill = purges.begin();
      const body = patterned(4 * 1024 * 1024, 7);
      const writer = store.createWriter('/video.mp4', '', body.byteLength);
      writer.write(body);

      // The fill's check and its commit, in one synchronous step (as origin-fetch.ts does).
      expect(purges.purgedSince(fill.epoch, '/video.mp4', [])).toBe(false);
      const committed = purges.landing(writer.commit(makeMeta('/video.mp4', '', { size: body.byteLength })));

      // The purge, as the admin API makes it: recorded everywhere, then the store changed.
      await purges.recordEverywhere(keysMatcher(['/video.mp4']), { kind: 'keys', keys: ['/video.mp4'] });
      await store.delete('/video.mp4');

      expect(await committed).toBe(true);
      fill.end();
      await store.settled();
      expect(await store.get('/video.mp4')).toEqual([]);
    } finally {
      await store.close();
    }
  });

  it('waits for the commits in flight when it is recorded, not for later ones (their check sees the purge)', async () => {
    const purges = new PurgeLog();
    let land!: (stored: boolean) => void;
    purges.landing(new Promise<boolean>((resolve) => (land = resolve)));
    let recorded = false;
    const purge = purges.recordEverywhere(keysMatcher(['/a']), { kind: 'keys', keys: ['/a'] }).then(() => (recorded = true));
    purges.landing(new Promise<boolean>(() => {}));
    await new Promise((resolve) => setImmediate(resolve));
    expect(recorded).toBe(false);
    land(true);
    await purge;
    expect(recorded).toBe(true);
  });
});
