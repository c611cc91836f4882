/**
 * Every admin call on the Worker stays within the Free plan's 50
 * subrequests per invocation (Cache API, R2 and fetch calls, `waitUntil`
 * work included) whatever the number of entries: listing (pushed, pulled,
 * both; every page of it), push (small, streamed with a known length,
 * chunked), delete, tag purge and purge of everything, with 1, 100 and
 * 1,000 pushed objects and as many pulled entries. Counted by the proxies
 * of `COUNTING_ENTRY` around the real Miniflare Cache API, R2 and fetch.
 * (Hits, misses, revalidations and URL/prefix purges: `workers-purge.test.ts`.)
 */
import { randomBytes } from 'node:crypto';
import sharp from 'sharp';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';
import { buildWorkerBundle, startTestWorker, type TestWorker, type WorkerBundle } from './helpers/workers.js';

vi.setConfig({ testTimeout: 900_000, hookTimeout: 120_000 });

const ADMIN = 'worker-admin-token-0123456789';
const LIMIT = 50;
const auth = { authorization: `Bearer ${ADMIN}` };

let bundle: WorkerBundle;
let origin: TestOrigin;
let zoneApi: TestOrigin;

beforeAll(async () => {
  bundle = await buildWorkerBundle();
  origin = await startTestOrigin((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const body = `body of ${path}`;
    res.writeHead(200, { 'cache-control': 'max-age=600', 'content-type': 'text/plain', 'content-length': String(Buffer.byteLength(body)), 'cache-tag': 'pulled' }).end(body);
  });
  zoneApi = await startTestOrigin((_req: IncomingMessage, res: ServerResponse) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ success: true, errors: [], messages: [], result: { id: 'purge-1' } }));
  });
}, 180_000);
afterAll(async () => {
  await origin?.close();
  await zoneApi?.close();
  await bundle?.dispose();
});

/** Runs `work` over `items`, 8 at a time. */
async function eachConcurrently<T>(items: T[], work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < items.length) await work(items[next++]!);
    }),
  );
}

interface Listed {
  path: string;
  pushed: boolean;
}

describe('admin calls on the Worker stay within 50 subrequests', () => {
  it('listing, push, delete, tag purge and purge-all with 1, 100 and 1,000 entries', async () => {
    const worker: TestWorker = await startTestWorker(bundle, {
      vars: {
        ORIGIN: origin.url,
        LOG_LEVEL: 'silent',
        ADMIN_TOKEN: ADMIN,
        MAX_UPLOAD_SIZE: '100MB',
        CLOUDFLARE_ZONE_ID: '023e105f4ecef8ad9ca31a8372d0c353',
        CLOUDFLARE_API_TOKEN: 'cf-api-token-for-tests',
        CLOUDFLARE_API_BASE: zoneApi.url,
      },
      countSubrequests: true,
    });
    const counts: Record<string, number> = {};
    const note = (what: string, count: number) => {
      counts[what] = Math.max(counts[what] ?? 0, count);
      expect(count, what).toBeLessThanOrEqual(LIMIT);
    };
    /** Every page of a listing, each counted. */
    const listAll = async (what: string, query: string): Promise<Listed[]> => {
      const objects: Listed[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const { response, body, count } = await worker.subrequests(`/_edge/objects?${query}${cursor ? `&cursor=${cursor}` : ''}`, { headers: auth });
        expect(response.status, body).toBe(200);
        note(what, count);
        const page = JSON.parse(body) as { objects: Listed[]; next: string | null };
        objects.push(...page.objects);
        cursor = page.next;
        expect(++pages, `${what}: pages`).toBeLessThan(200);
      } while (cursor);
      return objects;
    };

    try {
      let pushedCount = 0;
      let pulledCount = 0;
      for (const n of [1, 100, 1000]) {
        const pushedPaths = Array.from({ length: n - pushedCount }, (_, i) => `/pushed/${String(pushedCount + i).padStart(4, '0')}.txt`);
        await eachConcurrently(pushedPaths, async (path) => {
          const response = await worker.fetch(`/_edge/push${path}`, { method: 'PUT', headers: { ...auth, 'cache-tag': 'pushed' }, body: `pushed ${path}` });
          expect(response.status, path).toBe(201);
          await response.arrayBuffer();
        });
        const pulledPaths = Array.from({ length: n - pulledCount }, (_, i) => `/pulled/${String(pulledCount + i).padStart(4, '0')}.txt`);
        await eachConcurrently(pulledPaths, async (path) => {
          const response = await worker.fetch(path);
          expect(response.status, path).toBe(200);
          await response.arrayBuffer();
        });
        pushedCount = n;
        pulledCount = n;

        const pushed = await listAll(`list pushed (${n})`, 'pushed=true&limit=1000');
        expect(pushed.map((o) => o.path).sort(), `pushed listing of ${n}`).toEqual(Array.from({ length: n }, (_, i) => `/pushed/${String(i).padStart(4, '0')}.txt`));
        const pulled = await listAll(`list pulled (${n})`, 'pushed=false&limit=1000');
        expect(pulled.filter((o) => o.path.startsWith('/pulled/')).length, `pulled listing of ${n}`).toBe(n);
        const everything = await listAll(`list everything (${n})`, 'limit=100');
        expect(everything.length, `whole listing of ${n}`).toBe(2 * n);
        const prefixed = await listAll(`list a prefix (${n})`, 'prefix=/pushed/&limit=1000');
        expect(prefixed.length).toBe(n);

        // A push (small), its delete, and a pushed path read.
        const put = await worker.subrequests('/_edge/push/extra/one.txt', { method: 'PUT', headers: auth, body: 'one' });
        expect(put.response.status).toBe(201);
        note(`push small (${n})`, put.count);
        const removed = await worker.subrequests('/_edge/push/extra/one.txt', { method: 'DELETE', headers: auth });
        expect(removed.response.status).toBe(204);
        note(`delete (${n})`, removed.count);
      }

      // Streamed pushes: a known length (one staging put) and a chunked one (multipart, two parts).
      const big = randomBytes(20 * 1024 * 1024);
      const known = await worker.subrequests('/_edge/push/extra/known.bin', { method: 'PUT', headers: auth, body: big });
      expect(known.response.status, known.body).toBe(201);
      note('push 20 MiB, Content-Length', known.count);
      const chunks = Array.from({ length: 20 }, (_, i) => big.subarray(i * 1024 * 1024, (i + 1) * 1024 * 1024));
      const chunked = await worker.subrequests('/_edge/push/extra/chunked.bin', {
        method: 'PUT',
        headers: auth,
        body: new ReadableStream<Uint8Array>({
          pull(controller) {
            const next = chunks.shift();
            if (next) controller.enqueue(next);
            else controller.close();
          },
        }),
        duplex: 'half',
      } as RequestInit);
      expect(chunked.response.status, chunked.body).toBe(201);
      note('push 20 MiB, chunked', chunked.count);

      // Purges of the 1,000 + 1,000 entries: by tag (pushed ones in R2, pulled ones here), then everything.
      const byTag = await worker.subrequests('/_edge/purge', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ tags: ['pushed', 'pulled'] }) });
      expect(JSON.parse(byTag.body)).toMatchObject({ purged: 2000, pushed: { purged: 1000, complete: true }, global: { status: 200 } });
      note('tag purge (1000 + 1000)', byTag.count);
      expect(await (await worker.fetch('/pushed/0999.txt')).text()).toBe('body of /pushed/0999.txt');
      const all = await worker.subrequests('/_edge/purge', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ all: true }) });
      expect(JSON.parse(all.body)).toMatchObject({ pushed: { complete: true }, global: { status: 200 } });
      note('purge everything', all.count);
      console.log('subrequests per admin call (the most over every page):', counts);
    } finally {
      await worker.close();
    }
  });

  it('a re-push or delete of an image with many variants: one purge marker retires them, within the limit', async () => {
    const images = { transforms: [] as unknown[] };
    const worker = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent', ADMIN_TOKEN: ADMIN }, images, countSubrequests: true });
    const jpeg = (width: number, height: number) => sharp({ create: { width, height, channels: 3, background: { r: 10, g: 120, b: 200 } } }).jpeg().toBuffer();
    const push = (body: Buffer) => worker.subrequests('/_edge/push/img/p.jpg', { method: 'PUT', headers: { ...auth, 'content-type': 'image/jpeg' }, body: new Uint8Array(body) });
    const heightAt = async (width: number) => {
      const response = await worker.fetch(`/img/p.jpg?width=${width}&format=png`);
      expect(response.status).toBe(200);
      return { height: (await sharp(Buffer.from(await response.arrayBuffer())).metadata()).height, cacheStatus: response.headers.get('cache-status') ?? '' };
    };
    try {
      expect((await push(await jpeg(400, 300))).response.status).toBe(201);
      const widths = [40, 80, 120, 160, 200, 240];
      for (const width of widths) expect((await heightAt(width)).height).toBe((width * 3) / 4);
      for (const width of widths) expect((await heightAt(width)).cacheStatus).toMatch(/^edge; hit/);

      // Six variants, more than the three deleted one by one: the re-push retires them with a marker.
      const again = await push(await jpeg(400, 100));
      expect(again.response.status).toBe(201);
      expect(again.count).toBeLessThanOrEqual(LIMIT);
      expect(again.calls.filter((call) => call === 'cache.delete').length).toBeLessThanOrEqual(3);
      for (const width of widths) {
        const made = await heightAt(width);
        expect(made.height, `width ${width} after the re-push`).toBe(width / 4);
        expect(made.cacheStatus).not.toMatch(/^edge; hit/);
      }
      // Two variants: deleted one by one with the object.
      await heightAt(40);
      const removed = await worker.subrequests('/_edge/push/img/p.jpg', { method: 'DELETE', headers: auth });
      expect(removed.response.status).toBe(204);
      expect(removed.count).toBeLessThanOrEqual(LIMIT);
      console.log('subrequests: re-push over 6 variants', again.count, '; delete', removed.count);
    } finally {
      await worker.close();
    }
  });
});
