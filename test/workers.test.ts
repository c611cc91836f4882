/**
 * The edge on Cloudflare Workers, run locally: the bundle that
 * `wrangler deploy --dry-run` builds from the committed `wrangler.toml`,
 * executed by Miniflare 3 on workerd with the Cache API and an R2 bucket,
 * in front of a real node:http origin. Nothing reaches Cloudflare.
 *
 * - the bundle holds no Node-only module;
 * - the shared behaviour cases (`helpers/cases.ts`) pass on the Worker and
 *   on the Node edge alike;
 * - Worker-only behaviour: configuration errors, image variants through
 *   workerd's Images binding (over a local sharp service) and without one,
 *   pushed objects seen by another isolate.
 *
 * The Workers tiers themselves run the CacheStore contract in
 * `workers-stores.test.ts`.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { optionVariable } from '../edge/workers/index.js';
import { BEHAVIOUR_CASES, runBehaviourCase, scriptOrigin, type BehaviourCase } from './helpers/cases.js';
import { startTestEdge } from './helpers/edge.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';
import { buildWorkerBundle, startTestWorker, type WorkerBundle } from './helpers/workers.js';

const ADMIN = 'worker-admin-token-0123456789';

let bundle: WorkerBundle;
beforeAll(async () => {
  bundle = await buildWorkerBundle();
}, 120_000);
afterAll(async () => {
  await bundle?.dispose();
});

/** Options (camelCase) as the Worker's variables. */
function varsOf(options: Record<string, unknown> = {}): Record<string, string | number | boolean> {
  const vars: Record<string, string | number | boolean> = {};
  for (const [name, value] of Object.entries(options)) vars[optionVariable(name)] = value as string | number | boolean;
  return vars;
}

describe('Workers bundle (wrangler deploy --dry-run)', () => {
  /** Packages and module specifiers that only exist on Node. */
  const NODE_ONLY = ['lmdb', 'sharp', 'undici', 'pino', 'prom-client', '@hono/node-server', 'msgpackr', 'node-gyp-build'];

  it('builds from wrangler.toml with the bindings and no Node-only module', async () => {
    expect(bundle.log).toMatch(/PUSH_BUCKET: edge-cache-push/);
    expect(bundle.log).toMatch(/Images:[\s\S]*IMAGES/);
    expect(bundle.log).toMatch(/--dry-run: exiting now/);
    const code = await readFile(bundle.script, 'utf8');
    // Module specifiers left in the bundle (imports and requires wrangler could not inline).
    const specifiers = [...code.matchAll(/(?:\bimport\s*\(?\s*|\bfrom\s*|\brequire\s*\(\s*)["']([^"']+)["']/g)].map((m) => m[1]!);
    expect(specifiers.filter((s) => s.startsWith('node:') || NODE_ONLY.some((name) => s === name || s.startsWith(name + '/')))).toEqual([]);
    // Code bundled from those packages would show in the source map.
    const map = JSON.parse(await readFile(bundle.script + '.map', 'utf8')) as { sources: string[] };
    const fromNodeOnly = map.sources.filter((source) => NODE_ONLY.some((name) => source.includes(`node_modules/${name}/`)));
    expect(fromNodeOnly).toEqual([]);
    expect(map.sources.some((source) => source.includes('edge/node/'))).toBe(false);
    expect(map.sources.some((source) => source.endsWith('edge/workers/index.ts'))).toBe(true);
  });
});

describe.each(['workers', 'node'] as const)('shared behaviour cases on %s', (runtime) => {
  const run = async (testCase: BehaviourCase) => {
    const origin = await startTestOrigin();
    scriptOrigin(origin, testCase);
    if (runtime === 'node') {
      const edge = await startTestEdge({ ...testCase.options }, { origin });
      try {
        await runBehaviourCase(testCase, { fetch: (path, init) => edge.get(path, init), origin, settle: () => edge.settle() });
      } finally {
        await edge.close();
        await origin.close();
      }
      return;
    }
    const worker = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent', ...varsOf(testCase.options) } });
    try {
      // Background work runs under ctx.waitUntil inside workerd; cases poll the origin for it.
      await runBehaviourCase(testCase, { fetch: worker.fetch, origin, settle: async () => {} });
    } finally {
      await worker.close();
      await origin.close();
    }
  };
  for (const testCase of BEHAVIOUR_CASES) it(testCase.name, () => run(testCase));
});

describe('Worker configuration', () => {
  let origin: TestOrigin;
  beforeAll(async () => {
    origin = await startTestOrigin();
    origin.set('/a.txt', { headers: { 'cache-control': 'max-age=60' }, body: 'a' });
  });
  afterAll(async () => {
    await origin?.close();
  });

  const bad: [string, Record<string, string>, string, RegExp][] = [
    ['a malformed size', { MAX_OBJECT_SIZE: 'lots' }, 'MAX_OBJECT_SIZE', /MAX_OBJECT_SIZE: got "lots": expected a size such as 64MB/],
    ['a too-short admin token', { ADMIN_TOKEN: 'short' }, 'ADMIN_TOKEN', /ADMIN_TOKEN: got "short": must be at least 6 characters/],
    ['an unknown log level', { LOG_LEVEL: 'loud' }, 'LOG_LEVEL', /LOG_LEVEL: got "loud"/],
    ['no origin', { ORIGIN: '' }, 'ORIGIN', /ORIGIN: /],
    ['an s3:// origin', { ORIGIN: 's3://bucket' }, 'ORIGIN', /ORIGIN: .*one http\(s\):\/\/ URL/],
    ['a bad refresh interval', { PUSH_INDEX_REFRESH: 'often' }, 'PUSH_INDEX_REFRESH', /PUSH_INDEX_REFRESH: got "often"/],
    ['objects larger than the Cache API stores', { MAX_OBJECT_SIZE: '600MB' }, 'MAX_OBJECT_SIZE', /MAX_OBJECT_SIZE: got \d+ bytes: the Cache API stores at most 512MB/],
  ];

  it('answers every request with a 500 JSON error naming the variable when a value is bad', async () => {
    for (const [what, vars, variable, message] of bad) {
      const worker = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent', ...vars } });
      try {
        for (const path of ['/a.txt', '/_edge/health']) {
          const response = await worker.fetch(path);
          const body = (await response.json()) as { error: string; message: string; variables: string[] };
          expect(response.status, what).toBe(500);
          expect(response.headers.get('content-type'), what).toMatch(/^application\/json/);
          expect(body.variables, what).toEqual([variable]);
          expect(body.message, what).toMatch(message);
        }
      } finally {
        await worker.close();
      }
    }
    expect(origin.count('/a.txt')).toBe(0);
  });

  it('reads options from variables named like the Node environment without EDGE_', async () => {
    const worker = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent', NAME: 'cf-edge', MAX_OBJECT_SIZE: '1KB' } });
    try {
      const first = await worker.fetch('/a.txt');
      expect(await first.text()).toBe('a');
      expect(first.headers.get('cache-status')).toMatch(/^cf-edge; fwd=uri-miss; stored; ttl=(5\d|60)$/);
      const health = (await (await worker.fetch('/_edge/health')).json()) as Record<string, unknown>;
      expect(health).toMatchObject({ status: 'ok', name: 'cf-edge', runtime: 'workers', pushStore: 'r2', images: expect.stringMatching(/^unavailable/) });
    } finally {
      await worker.close();
    }
  });
});

describe('images on the Worker without an Images binding', () => {
  it('serves the untransformed original for image parameters', async () => {
    const origin = await startTestOrigin();
    const jpeg = Uint8Array.from([0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 0x4a, 0x46, 0x49, 0x46, 0, 1, 2, 3, 0xff, 0xd9]);
    origin.set('/photo.jpg', { headers: { 'cache-control': 'max-age=60', 'content-type': 'image/jpeg' }, body: jpeg });
    const worker = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent' } });
    try {
      const statuses: string[] = [];
      for (const query of ['?width=100&format=webp', '?width=200&format=webp', '?w=300']) {
        const response = await worker.fetch('/photo.jpg' + query);
        expect(response.status).toBe(200);
        expect(response.headers.get('content-type')).toBe('image/jpeg');
        expect(Buffer.compare(Buffer.from(await response.arrayBuffer()), Buffer.from(jpeg))).toBe(0);
        statuses.push(response.headers.get('cache-status') ?? '');
      }
      // One cached copy of the source serves every size, and each answer says why it is untransformed.
      expect(statuses[0]).toMatch(/^edge; fwd=uri-miss; stored; ttl=\d+; detail=image-transform-unavailable$/);
      expect(statuses[1]).toMatch(/^edge; hit; ttl=\d+; detail=image-transform-unavailable$/);
      expect(statuses[2]).toMatch(/^edge; hit; ttl=\d+; detail=image-transform-unavailable$/);
      expect(origin.count('/photo.jpg')).toBe(1);
      // Parameters are still checked: a bad width is a 400, as on Node.
      const bad = await worker.fetch('/photo.jpg?width=abc');
      expect(bad.status).toBe(400);
      expect((await bad.json()).error).toBe('EDGE_BAD_PARAMETER');
    } finally {
      await worker.close();
      await origin.close();
    }
  });
});

describe('images on the Worker with an Images binding', () => {
  it('transforms through the binding, caches the variant, and refuses bad parameters', async () => {
    const origin = await startTestOrigin();
    const photo = await sharp({ create: { width: 400, height: 300, channels: 3, background: { r: 200, g: 30, b: 60 } } }).jpeg().toBuffer();
    origin.set('/photo.jpg', { headers: { 'cache-control': 'max-age=60', 'content-type': 'image/jpeg', etag: '"p1"' }, body: photo });
    const images = { transforms: [] as unknown[] };
    const worker = await startTestWorker(bundle, { vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent' }, images });
    try {
      const cases = [
        ['?width=100&format=webp', 'image/webp', 100, 75, /^edge; fwd=miss; stored; ttl=(5\d|60); detail=transformed$/],
        ['?width=100&format=webp', 'image/webp', 100, 75, /^edge; hit; ttl=(5\d|60)$/],
        ['?width=80&height=80&fit=cover&format=png', 'image/png', 80, 80, /detail=transformed$/],
        ['?width=800&format=jpeg', 'image/jpeg', 400, 300, /detail=transformed$/],
      ] as const;
      for (const [query, type, width, height, cacheStatus] of cases) {
        const response = await worker.fetch('/photo.jpg' + query);
        expect(response.status, query).toBe(200);
        expect(response.headers.get('content-type'), query).toBe(type);
        expect(response.headers.get('cache-status'), query).toMatch(cacheStatus);
        const output = await sharp(Buffer.from(await response.arrayBuffer())).metadata();
        expect([output.format === 'jpeg' ? 'image/jpeg' : `image/${output.format}`, output.width, output.height], query).toEqual([type, width, height]);
      }
      // One source fetch for every variant; fits as the binding names them (no enlargement by default).
      expect(origin.count('/photo.jpg')).toBe(1);
      expect(images.transforms).toEqual([
        { imageIndex: 0, width: 100, fit: 'scale-down' },
        { imageIndex: 0, width: 80, height: 80, fit: 'crop', gravity: 'center' },
        { imageIndex: 0, width: 800, fit: 'scale-down' },
      ]);
      const bad = await worker.fetch('/photo.jpg?width=abc');
      expect(bad.status).toBe(400);
      expect(await bad.json()).toMatchObject({ error: 'EDGE_BAD_PARAMETER' });
    } finally {
      await worker.close();
      await origin.close();
    }
  });
});

describe('pushed objects across isolates', () => {
  // The lookup's answers without waiting: test/workers-push.test.ts. Here an isolate's "not pushed" answer lapsing after PUSH_INDEX_REFRESH.
  it('are served by an isolate that had been told "not pushed", once that answer lapses', async () => {
    const origin = await startTestOrigin();
    origin.set('/shared.txt', { headers: { 'cache-control': 'no-store' }, body: 'origin copy' });
    const r2Persist = await mkdtemp(join(tmpdir(), 'edge-r2-'));
    const vars = { ORIGIN: origin.url, LOG_LEVEL: 'silent', ADMIN_TOKEN: ADMIN, PUSH_INDEX_REFRESH: '0.05' };
    const a = await startTestWorker(bundle, { vars, r2Persist });
    const b = await startTestWorker(bundle, { vars, r2Persist });
    try {
      expect(await (await b.fetch('/shared.txt')).text()).toBe('origin copy');
      const pushed = await a.fetch('/_edge/push/shared.txt', { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` }, body: 'pushed copy' });
      expect(pushed.status).toBe(201);
      // b asks R2 again once its answer for the path is older than PUSH_INDEX_REFRESH (50 ms here).
      const deadline = Date.now() + 5000;
      let text = '';
      while (Date.now() < deadline) {
        text = await (await b.fetch('/shared.txt')).text();
        if (text === 'pushed copy') break;
        await new Promise((resolve) => setTimeout(resolve, 60));
      }
      expect(text).toBe('pushed copy');
      // A third isolate, started after the push, serves it from its first request.
      const c = await startTestWorker(bundle, { vars: { ...vars, PUSH_INDEX_REFRESH: '0' }, r2Persist });
      try {
        const response = await c.fetch('/shared.txt');
        expect(await response.text()).toBe('pushed copy');
        expect(response.headers.get('cache-status')).toMatch(/detail=pushed$/);
      } finally {
        await c.close();
      }
    } finally {
      await a.close();
      await b.close();
      await origin.close();
      await rm(r2Persist, { recursive: true, force: true });
    }
  });
});
