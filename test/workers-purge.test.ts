/**
 * Purges on the Worker: this location (purge markers in the Cache API),
 * pushed objects (R2) and every location (Cloudflare's zone purge API, here
 * a real node:http stand-in at CLOUDFLARE_API_BASE), and the platform's
 * subrequest limit (50 per request on the Free plan; Cache API, R2 and fetch
 * calls count), measured by counting proxies around the real Miniflare
 * Cache API, R2 binding and fetch (`COUNTING_ENTRY`).
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';
import { buildWorkerBundle, startTestWorker, type TestWorker, type WorkerBundle } from './helpers/workers.js';

vi.setConfig({ testTimeout: 600_000, hookTimeout: 120_000 });

const ADMIN = 'worker-admin-token-0123456789';
const CF_TOKEN = 'cf-api-token-for-tests';
const ZONE = '023e105f4ecef8ad9ca31a8372d0c353';
const LIMIT = 50;

let bundle: WorkerBundle;
let origin: TestOrigin;
let zoneApi: TestOrigin;
let purgeIds = 0;

beforeAll(async () => {
  bundle = await buildWorkerBundle();
  // Every /bulk/<tag>/<i> path: cacheable, tagged <tag>; /reval/*: stored, revalidated on every use.
  origin = await startTestOrigin((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const bulk = /^\/bulk\/([^/]+)\//.exec(path);
    if (req.url?.startsWith('/reval/')) {
      if (req.headers['if-none-match'] === '"r1"') {
        res.writeHead(304, { etag: '"r1"', 'cache-control': 'no-cache' }).end();
        return;
      }
      res.writeHead(200, { etag: '"r1"', 'cache-control': 'no-cache', 'content-type': 'text/plain', 'content-length': '5' }).end('reval');
      return;
    }
    const body = `body of ${path}`;
    res.writeHead(200, { 'cache-control': 'max-age=600', 'content-type': 'text/plain', 'content-length': String(Buffer.byteLength(body)), ...(bulk ? { 'cache-tag': bulk[1] } : {}) }).end(body);
  });
  // Cloudflare's POST /zones/{zone_id}/purge_cache, as the API answers a success.
  zoneApi = await startTestOrigin((_req: IncomingMessage, res: ServerResponse) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ success: true, errors: [], messages: [], result: { id: `purge-${++purgeIds}` } }));
  });
}, 180_000);
afterAll(async () => {
  await origin?.close();
  await zoneApi?.close();
  await bundle?.dispose();
});

function startWorker(extra: Record<string, string> = {}): Promise<TestWorker> {
  return startTestWorker(bundle, {
    vars: {
      ORIGIN: origin.url,
      LOG_LEVEL: 'silent',
      ADMIN_TOKEN: ADMIN,
      CLOUDFLARE_ZONE_ID: ZONE,
      CLOUDFLARE_API_TOKEN: CF_TOKEN,
      CLOUDFLARE_API_BASE: zoneApi.url,
      ...extra,
    },
    countSubrequests: true,
  });
}

const purgeInit = (body: unknown): RequestInit => ({
  method: 'POST',
  headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
  body: JSON.stringify(body),
});

const tagOf = (kind: 'path' | 'url', text: string) => `edge-${kind}:${createHash('sha256').update(text).digest('hex').slice(0, 32)}`;

/** Fill `paths` through the Worker, a few at a time. */
async function fill(worker: TestWorker, paths: string[]): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < paths.length) {
        const path = paths[next++]!;
        const response = await worker.fetch(path);
        await response.arrayBuffer();
        expect(response.status, path).toBe(200);
      }
    }),
  );
}

async function cacheStatus(worker: TestWorker, path: string): Promise<string> {
  const response = await worker.fetch(path);
  await response.arrayBuffer();
  return response.headers.get('cache-status') ?? '';
}

describe('purge on the Worker: this location and the zone purge API', () => {
  it('purges by tag, prefix and URL here and sends each to the zone with the zone id, payload and bearer token', async () => {
    const worker = await startWorker();
    try {
      const paths = ['/bulk/team/a.css', '/bulk/team/b.css', '/p/x.js', '/p/y.js', '/u/z.txt?v=1', '/keep.txt'];
      await fill(worker, paths);
      for (const path of paths) expect(await cacheStatus(worker, path), path).toMatch(/^edge; hit/);
      const host = new URL(worker.url).host;

      const cases: [unknown, unknown, string[], string[]][] = [
        [{ tags: ['team'] }, { tags: ['team'] }, ['/bulk/team/a.css', '/bulk/team/b.css'], ['/p/x.js']],
        [{ prefixes: ['/p/'] }, { prefixes: [`${host}/p/`] }, ['/p/x.js', '/p/y.js'], ['/keep.txt']],
        [{ urls: ['/u/z.txt?v=1'] }, { tags: [tagOf('path', '/u/z.txt?v=1'), tagOf('path', '/u/z.txt')] }, ['/u/z.txt?v=1'], ['/keep.txt']],
      ];
      for (const [body, payload, purgedPaths, keptPaths] of cases) {
        zoneApi.clearRequests();
        const { response, body: text, count } = await worker.subrequests('/_edge/purge', purgeInit(body));
        expect(response.status, JSON.stringify(body)).toBe(200);
        const answer = JSON.parse(text) as { purged: number; location: string; global: { status: number; id?: string } };
        expect(answer, JSON.stringify(body)).toMatchObject({ purged: purgedPaths.length, location: 'local', global: { status: 200, id: `purge-${purgeIds}` } });
        expect(count, JSON.stringify(body)).toBeLessThanOrEqual(LIMIT);
        // The stand-in saw exactly one purge request for the zone, with the token and the payload.
        expect(zoneApi.requests.map((r) => [r.method, r.url, r.headers.authorization])).toEqual([['POST', `/zones/${ZONE}/purge_cache`, `Bearer ${CF_TOKEN}`]]);
        expect(JSON.parse(zoneApi.requests[0]!.body.toString())).toEqual(payload);
        for (const path of purgedPaths) expect(await cacheStatus(worker, path), path).toMatch(/^edge; fwd=uri-miss/);
        for (const path of keptPaths) expect(await cacheStatus(worker, path), path).toMatch(/^edge; hit/);
      }

      // Without a zone configured, the purge says so and still purges here.
      const local = await startWorker({ CLOUDFLARE_ZONE_ID: '', CLOUDFLARE_API_TOKEN: '' });
      try {
        await fill(local, ['/bulk/solo/1']);
        const answer = (await (await local.fetch('/_edge/purge', purgeInit({ tags: ['solo'] }))).json()) as Record<string, unknown>;
        expect(answer).toMatchObject({ purged: 1, location: 'local', global: { status: 'not-configured' } });
        expect(await cacheStatus(local, '/bulk/solo/1')).toMatch(/^edge; fwd=uri-miss/);
      } finally {
        await local.close();
      }
      // Bad requests are the core's answers, as on Node.
      expect((await worker.fetch('/_edge/purge', purgeInit({ tags: [] }))).status).toBe(400);
      expect((await worker.fetch('/_edge/purge', { ...purgeInit({ tags: ['x'] }), headers: { authorization: 'Bearer wrong-token-123' } })).status).toBe(401);
    } finally {
      await worker.close();
    }
  });
});

describe('subrequests per request stay within the Free plan limit', () => {
  it('hit, miss, revalidation, and purges of 1, 100 and 1,000 entries', async () => {
    const worker = await startWorker();
    const counts: Record<string, number> = {};
    try {
      const miss = await worker.subrequests('/one.txt');
      expect(miss.response.headers.get('cache-status')).toMatch(/fwd=uri-miss; stored/);
      counts.miss = miss.count;
      const hit = await worker.subrequests('/one.txt');
      expect(hit.response.headers.get('cache-status')).toMatch(/^edge; hit/);
      counts.hit = hit.count;
      await worker.subrequests('/reval/r.txt');
      const revalidated = await worker.subrequests('/reval/r.txt');
      expect(revalidated.response.headers.get('cache-status')).toMatch(/revalidated|fwd=stale/);
      counts.revalidation = revalidated.count;

      for (const n of [1, 100, 1000]) {
        const paths = Array.from({ length: n }, (_, i) => `/bulk/n${n}/${i}`);
        await fill(worker, paths);
        const byTag = await worker.subrequests('/_edge/purge', purgeInit({ tags: [`n${n}`] }));
        expect(JSON.parse(byTag.body), `tag purge of ${n}`).toMatchObject({ purged: n, global: { status: 200 } });
        counts[`purge ${n} by tag`] = byTag.count;
        expect(await cacheStatus(worker, paths[n - 1]!)).toMatch(/fwd=uri-miss/);
        await fill(worker, paths);
        const byPrefix = await worker.subrequests('/_edge/purge', purgeInit({ prefixes: [`/bulk/n${n}/`] }));
        expect(JSON.parse(byPrefix.body), `prefix purge of ${n}`).toMatchObject({ purged: n, global: { status: 200 } });
        counts[`purge ${n} by prefix`] = byPrefix.count;
        expect(await cacheStatus(worker, paths[0]!)).toMatch(/fwd=uri-miss/);
        const byUrl = await worker.subrequests('/_edge/purge', purgeInit({ urls: paths }));
        expect(JSON.parse(byUrl.body), `URL purge of ${n}`).toMatchObject({ purged: n, global: { status: 200 } });
        counts[`purge ${n} by URL`] = byUrl.count;
      }
      const everything = await worker.subrequests('/_edge/purge', purgeInit({ all: true }));
      counts['purge everything'] = everything.count;
      expect(JSON.parse(everything.body)).toMatchObject({ global: { status: 200 } });
      console.log('subrequests per request:', counts);
      for (const [what, count] of Object.entries(counts)) expect(count, what).toBeLessThanOrEqual(LIMIT);
    } finally {
      await worker.close();
    }
  });
});
