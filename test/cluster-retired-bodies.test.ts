/**
 * Issue 10 with `--workers N`: a reader that started gets the whole version
 * it started with, even when another process replaces or deletes the body
 * under it. Bodies unlinked in a directory shared by several processes are
 * retired (kept, counted) and reclaimed once no process has said within the
 * grace period that it still streams them.
 *
 * First two stores on one directory in this process (each counts only its
 * own readers, as two workers do) with an injected clock; then the CLI
 * with `--workers 2`: a large object read slowly through one worker while
 * the other replaces it by push.
 */
import { request } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LmdbCacheStore, RETIRED_GRACE_MS } from '../edge/node/lmdb-store.js';
import type { CacheEntryMeta } from '../edge/core/store/types.js';
import { answeredBy, CLUSTER_AUTH, send, startCluster, stopCluster, throughAnotherWorker, type ClusterNode } from './helpers/cluster-node.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

const KEY = 'https://example.test/big';
const CHUNK = 1024;

function bytes(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return out;
}

function metaFor(size: number, now: number): CacheEntryMeta {
  return { key: KEY, variant: '', status: 200, headers: {}, policy: {} as CacheEntryMeta['policy'], size, tags: [], storedAt: now, expiresAt: now + 3_600_000 };
}

async function put(store: LmdbCacheStore, body: Uint8Array, now: number): Promise<void> {
  const writer = store.createWriter(KEY, '', body.byteLength);
  writer.write(body);
  expect(await writer.commit(metaFor(body.byteLength, now))).toBe(true);
}

async function readRest(reader: ReadableStreamDefaultReader<Uint8Array>, first: Uint8Array): Promise<Uint8Array> {
  const parts = [first];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
  }
  return Buffer.concat(parts);
}

describe('LmdbCacheStore with sharedReaders: two processes on one directory', () => {
  let dir: string;
  let now = 1_000_000_000;
  const clock = () => now;
  const stores: LmdbCacheStore[] = [];

  async function open(): Promise<[LmdbCacheStore, LmdbCacheStore]> {
    dir = await mkdtemp(join(tmpdir(), 'edge-retired-'));
    await LmdbCacheStore.housekeep({ path: dir, maxBytes: 1024 ** 2 });
    const options = { path: dir, maxBytes: 1024 ** 2, chunkSize: CHUNK, clock, housekeeping: false, sharedReaders: true };
    const reading = new LmdbCacheStore(options);
    const writing = new LmdbCacheStore(options);
    stores.push(reading, writing);
    return [reading, writing];
  }

  afterEach(async () => {
    for (const store of stores.splice(0)) await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('a stream in one process outlives a replacement by another for as long as it reads; then the old body is reclaimed', async () => {
    const [reading, writing] = await open();
    const old = bytes(5 * CHUNK + 17, 1);
    const replacement = bytes(2 * CHUNK + 3, 2);
    await put(writing, old, now);

    reading.refresh();
    const [entry] = reading.getSync(KEY);
    const reader = entry!.body.stream().getReader();
    const first = (await reader.read()).value!;

    await put(writing, replacement, now);
    // The old body's bytes are retired, and still counted: the disk holds them.
    expect(writing.stats().bytes).toBe(old.byteLength + replacement.byteLength);
    expect(writing.retiredBytes()).toBe(old.byteLength);

    // Well past the grace period, with the reader's process running its passes: nothing is reclaimed under it.
    for (let step = 0; step < 6; step++) {
      now += RETIRED_GRACE_MS / 4;
      await reading.reclaimRetired();
      await writing.reclaimRetired();
      expect(writing.retiredBytes()).toBe(old.byteLength);
    }
    reading.refresh();
    expect(Buffer.from(await readRest(reader, first)).equals(Buffer.from(old))).toBe(true);

    // Done reading: the deadline it last set passes, and any process reclaims the body.
    now += RETIRED_GRACE_MS;
    await writing.reclaimRetired();
    expect(writing.retiredBytes()).toBe(0);
    expect(writing.stats().bytes).toBe(replacement.byteLength);
    expect(reading.stats().bytes).toBe(replacement.byteLength);
    reading.refresh();
    const [current] = reading.getSync(KEY);
    expect(Buffer.from(await readRest(current!.body.stream().getReader(), new Uint8Array(0))).equals(Buffer.from(replacement))).toBe(true);
  });

  it('a deleted body nobody reads is kept for the grace period, then reclaimed', async () => {
    const [, writing] = await open();
    const body = bytes(3 * CHUNK, 3);
    await put(writing, body, now);
    expect(await writing.delete(KEY)).toBe(1);
    expect(writing.stats()).toMatchObject({ entries: 0, bytes: body.byteLength });

    now += RETIRED_GRACE_MS - 1;
    await writing.reclaimRetired();
    expect(writing.retiredBytes()).toBe(body.byteLength);
    now += 1;
    await writing.reclaimRetired();
    expect(writing.stats()).toMatchObject({ entries: 0, bytes: 0 });
  });

  it('a process that stops passing (a crash) holds nothing: the next housekeeping, or the grace period, frees its bodies', async () => {
    const [reading, writing] = await open();
    const body = bytes(4 * CHUNK, 4);
    await put(writing, body, now);
    reading.refresh();
    const [entry] = reading.getSync(KEY);
    const reader = entry!.body.stream().getReader();
    await reader.read();
    await writing.delete(KEY);
    // The reading process never runs a pass again.
    now += RETIRED_GRACE_MS;
    await writing.reclaimRetired();
    expect(writing.stats().bytes).toBe(0);
    await reader.cancel();
  });
});

/** A GET that reads one chunk of the body, then nothing until `resume()`. */
function startSlowRead(url: string): Promise<{ worker: string; length: number; body: Promise<Buffer>; resume: () => void }> {
  let resume!: () => void;
  const resumed = new Promise<void>((resolve) => (resume = resolve));
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers: { connection: 'close' } }, (res) => {
      const chunks: Buffer[] = [];
      const body = new Promise<Buffer>((done, fail) => {
        res.on('end', () => done(Buffer.concat(chunks)));
        res.on('error', fail);
        res.on('aborted', () => fail(new Error('the transfer was cut')));
      });
      res.once('data', (chunk: Buffer) => {
        chunks.push(chunk);
        res.pause();
        resolve({ worker: answeredBy({ status: res.statusCode!, headers: res.headers, body: Buffer.alloc(0) }), length: Number(res.headers['content-length']), body, resume });
        void resumed.then(() => {
          res.on('data', (more: Buffer) => chunks.push(more));
          res.resume();
        });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

/** The disk tier's figures in `/_edge/stats` (one LMDB environment for every worker). */
async function diskStats(node: ClusterNode): Promise<{ entries: number; bytes: number }> {
  const stats = JSON.parse((await send(`${node.url}/_edge/stats`, { headers: CLUSTER_AUTH })).body.toString()) as { tiers: Array<{ name: string; entries: number; bytes: number }> };
  return stats.tiers.find((tier) => tier.name === 'disk')!;
}

describe('--workers 2: a large body replaced by one worker while another streams it', () => {
  const SIZE = 8 * 1024 ** 2;
  const oldBody = Buffer.from(bytes(SIZE, 5));
  const newBody = Buffer.from(bytes(SIZE / 2, 6));
  let origin: TestOrigin;
  let node: ClusterNode;

  beforeAll(async () => {
    origin = await startTestOrigin();
    // No memory tier: every answer is streamed from LMDB.
    node = await startCluster(origin.url, ['--memory-size', '0']);
  }, 60_000);

  afterAll(async () => {
    await stopCluster(node);
    await origin?.close();
  });

  /** The slow client, let go, gets the whole old body; then both workers answer `url` with the new one. */
  async function expectOldThenNew(slow: Awaited<ReturnType<typeof startSlowRead>>, url: string): Promise<void> {
    slow.resume();
    const received = await slow.body;
    expect(received.length).toBe(SIZE);
    expect(received.equals(oldBody)).toBe(true);
    const later = await Promise.all(Array.from({ length: 6 }, () => send(url)));
    expect(new Set(later.map(answeredBy)).size).toBe(2);
    for (const answer of later) expect(answer.body.equals(newBody)).toBe(true);
  }

  it('the slow client gets the whole old body, later requests the new one, and the disk total counts both until the old is reclaimed', async () => {
    const pushed = await send(`${node.url}/_edge/push/retired/big.bin`, { method: 'PUT', headers: CLUSTER_AUTH, body: oldBody as unknown as string });
    expect(pushed.status).toBe(201);

    const slow = await startSlowRead(`${node.url}/retired/big.bin`);
    expect(slow.length).toBe(SIZE);

    const replaced = await throughAnotherWorker(node, slow.worker, `${node.url}/_edge/push/retired/big.bin`, { method: 'PUT', headers: CLUSTER_AUTH, body: newBody });
    expect(replaced.status).toBe(201);

    await expectOldThenNew(slow, `${node.url}/retired/big.bin`);

    // The old body is retired, not gone: counted with the new one until a pass reclaims it (RETIRED_GRACE_MS after the replacement).
    expect(await diskStats(node)).toMatchObject({ entries: 1, bytes: oldBody.length + newBody.length });
  });

  it('the same when the other worker purges a pulled object under the slow client', async () => {
    origin.set('/retired/pulled.bin', { headers: { 'cache-control': 'max-age=600' }, body: oldBody });
    expect((await send(`${node.url}/retired/pulled.bin`)).body.equals(oldBody)).toBe(true);
    const before = await diskStats(node);

    const slow = await startSlowRead(`${node.url}/retired/pulled.bin`);
    expect(slow.length).toBe(SIZE);
    origin.set('/retired/pulled.bin', { headers: { 'cache-control': 'max-age=600' }, body: newBody });
    const purged = await throughAnotherWorker(node, slow.worker, `${node.url}/_edge/purge`, { method: 'POST', headers: { ...CLUSTER_AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ urls: ['/retired/pulled.bin'] }) });
    expect(purged.status).toBe(200);

    await expectOldThenNew(slow, `${node.url}/retired/pulled.bin`);
    // One refill for all of them: the purge made the primary forget that the key was filled a moment ago.
    expect(origin.count('/retired/pulled.bin')).toBe(2);
    // One entry still (the refill), the purged body retired and counted beside it.
    expect(await diskStats(node)).toMatchObject({ entries: before.entries, bytes: before.bytes + newBody.length });
  });
});
