/**
 * `Cache-Status: stored` on the Worker only when the Cache API took the
 * entry (issue 12). The core says `stored` when the headers go out; the
 * Worker confirms it for bodies up to 1 MiB (read whole, then the commit's
 * outcome), and once an isolate finds the Cache API keeping nothing (as on
 * `*.workers.dev`: here Miniflare with its cache off, which makes every put
 * and match a no-op) it never says `stored` again. A put that rejects (a
 * fault injected by the counting entry, `TEST_FAIL_CACHE_PUTS`) is not
 * `stored` either, and a known length reaches `cache.put` as Content-Length.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';
import { buildWorkerBundle, startTestWorker, type WorkerBundle } from './helpers/workers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

let bundle: WorkerBundle;
let origin: TestOrigin;

beforeAll(async () => {
  bundle = await buildWorkerBundle();
  origin = await startTestOrigin();
  for (const path of ['/a.txt', '/b.txt', '/c.txt']) origin.set(path, { headers: { 'cache-control': 'max-age=600', 'content-type': 'text/plain' }, body: `body of ${path}` });
  origin.set('/big.bin', { headers: { 'cache-control': 'max-age=600' }, body: Buffer.alloc(2 * 1024 * 1024, 7) });
}, 180_000);
afterAll(async () => {
  await origin?.close();
  await bundle?.dispose();
});

async function statusOf(fetchPath: () => Promise<Response>): Promise<string> {
  const response = await fetchPath();
  expect(response.status).toBe(200);
  await response.arrayBuffer();
  return response.headers.get('cache-status') ?? '';
}

describe('Cache-Status stored on the Worker', () => {
  it('says stored, and the next request is a hit, where the Cache API keeps entries', async () => {
    const worker = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent' } });
    try {
      expect(await statusOf(() => worker.fetch('/a.txt'))).toMatch(/^edge; fwd=uri-miss; stored; ttl=\d+$/);
      expect(await statusOf(() => worker.fetch('/a.txt'))).toMatch(/^edge; hit; ttl=\d+$/);
      expect(await statusOf(() => worker.fetch('/big.bin'))).toMatch(/^edge; fwd=uri-miss; stored; ttl=\d+$/);
      expect(await statusOf(() => worker.fetch('/big.bin'))).toMatch(/^edge; hit/);
    } finally {
      await worker.close();
    }
  });

  it('never says stored where the Cache API keeps nothing, from the first answer on', async () => {
    const worker = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent' }, cache: false });
    try {
      for (const path of ['/b.txt', '/b.txt', '/c.txt', '/big.bin', '/big.bin']) {
        const status = await statusOf(() => worker.fetch(path));
        expect(status, path).toMatch(/^edge; fwd=uri-miss/);
        expect(status, path).not.toMatch(/stored/);
      }
      // Nothing was kept: every request went to the origin.
      expect(origin.count('/b.txt')).toBe(2);
      expect(origin.count('/big.bin')).toBe(3);
    } finally {
      await worker.close();
    }
  });

  it('does not say stored when cache.put rejects; bodies of known length go into cache.put with Content-Length', async () => {
    // Body documents are stored under `?edge-cache=b.<hash>.<id>` on the zone's URL (cf-cache-store.ts).
    const failing = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent', TEST_FAIL_CACHE_PUTS: '[?&]edge-cache=b\\.' }, countSubrequests: true });
    try {
      for (let i = 0; i < 2; i++) {
        const { response, puts } = await failing.subrequests('/a.txt');
        expect(response.headers.get('cache-status')).toMatch(/^edge; fwd=uri-miss; ttl=\d+$/);
        expect(puts.some((put) => /edge-cache=b\./.test(put.url))).toBe(true);
      }
    } finally {
      await failing.close();
    }
    const worker = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent' }, countSubrequests: true });
    try {
      const { response, puts } = await worker.subrequests('/big.bin');
      expect(response.headers.get('cache-status')).toMatch(/stored/);
      expect(puts.filter((put) => /edge-cache=b\./.test(put.url)).map((put) => put.length)).toEqual([String(2 * 1024 * 1024)]);
    } finally {
      await worker.close();
    }
  });
});
