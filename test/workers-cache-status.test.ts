/**
 * `Cache-Status: stored` on the Worker only when the Cache API took the
 * entry (issue 12). The core says `stored` when the headers go out; the
 * Worker confirms it for bodies up to 1 MiB (read whole, then the commit's
 * outcome), and once an isolate finds the Cache API keeping nothing (as on
 * `*.workers.dev`: here Miniflare with its cache off, which makes every put
 * and match a no-op) it never says `stored` again.
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
});
