/**
 * Image parameters on the Worker when the `[images]` binding is configured
 * (as in the committed wrangler.toml) but cannot work: plain `wrangler dev`
 * sends transforms to Cloudflare and fails without a login. The README's
 * promise holds: the original is served, once cached, saying
 * `detail=image-transform-unavailable`, never a 503.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestOrigin } from './helpers/origin.js';
import { buildWorkerBundle, startTestWorker, type WorkerBundle } from './helpers/workers.js';

let bundle: WorkerBundle;
beforeAll(async () => {
  bundle = await buildWorkerBundle();
}, 120_000);
afterAll(async () => {
  await bundle?.dispose();
});

describe.each(['throw', 'auth-error'] as const)('an Images binding that fails (%s)', (mode) => {
  it('serves the original from one cached copy with detail=image-transform-unavailable', async () => {
    const origin = await startTestOrigin();
    const jpeg = Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 0x4a, 0x46, 0x49, 0x46, 0, 1, 2, 3, 0xff, 0xd9]);
    origin.set('/photo.jpg', { headers: { 'cache-control': 'max-age=60', 'content-type': 'image/jpeg' }, body: jpeg });
    const failingImages = { mode, calls: 0 };
    const worker = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent' }, failingImages });
    try {
      const statuses: string[] = [];
      for (const query of ['?width=100&format=webp', '?width=200&format=webp', '?w=300']) {
        const response = await worker.fetch('/photo.jpg' + query);
        expect(response.status, query).toBe(200);
        expect(response.headers.get('content-type'), query).toBe('image/jpeg');
        expect(Buffer.compare(Buffer.from(await response.arrayBuffer()), Buffer.from(jpeg)), query).toBe(0);
        statuses.push(response.headers.get('cache-status') ?? '');
      }
      expect(statuses[0]).toMatch(/detail=image-transform-unavailable$/);
      expect(statuses[1]).toMatch(/^edge; hit; ttl=\d+; detail=image-transform-unavailable$/);
      expect(statuses[2]).toMatch(/^edge; hit; ttl=\d+; detail=image-transform-unavailable$/);
      // The binding was tried once; later requests do not wait on it again (until the retry interval).
      expect(failingImages.calls).toBe(1);
      expect(origin.count('/photo.jpg')).toBe(1);
      const health = (await (await worker.fetch('/_edge/health')).json()) as { images: string };
      expect(health.images).toMatch(/^unavailable \(the IMAGES binding failed/);
      // Parameters are still checked.
      const bad = await worker.fetch('/photo.jpg?width=abc');
      expect(bad.status).toBe(400);
    } finally {
      await worker.close();
      await origin.close();
    }
  });
});
