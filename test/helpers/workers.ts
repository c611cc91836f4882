/**
 * The Worker under test: the bundle `wrangler deploy --dry-run` builds from
 * the committed `wrangler.toml` (so the tests run exactly what would be
 * uploaded), run by Miniflare 3 on the `workerd` binary from npm, with an
 * in-memory Cache API and R2 bucket. Nothing reaches Cloudflare: the
 * dry run only bundles, and Miniflare runs locally.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Miniflare, type MiniflareOptions } from 'miniflare';
import { Response as MiniflareResponse } from 'miniflare';
import { IMAGES_BINDING_SCRIPT, imagesService, type ImagesServiceLog } from './images-binding.js';

const run = promisify(execFile);
const ROOT = resolve(import.meta.dirname, '../..');

export interface WorkerBundle {
  /** The bundled module, `<dir>/index.js`. */
  script: string;
  dir: string;
  /** From `wrangler.toml`, so Miniflare runs the deployed runtime semantics. */
  compatibilityDate: string;
  /** wrangler's output, for failure messages. */
  log: string;
  dispose(): Promise<void>;
}

/** Runs `wrangler deploy --dry-run --outdir <tmp>` on the repository's `wrangler.toml`. */
export async function buildWorkerBundle(): Promise<WorkerBundle> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-worker-bundle-'));
  const { stdout, stderr } = await run(process.execPath, [join(ROOT, 'node_modules/wrangler/bin/wrangler.js'), 'deploy', '--dry-run', '--outdir', dir], {
    cwd: ROOT,
    env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CI: 'true', NO_COLOR: '1', FORCE_COLOR: '0' },
    timeout: 120_000,
  });
  const toml = await readFile(join(ROOT, 'wrangler.toml'), 'utf8');
  const compatibilityDate = /^compatibility_date\s*=\s*"([^"]+)"/m.exec(toml)?.[1];
  if (!compatibilityDate) throw new Error('wrangler.toml has no compatibility_date');
  return {
    script: join(dir, 'index.js'),
    dir,
    compatibilityDate,
    log: stdout + stderr,
    dispose: () => rm(dir, { recursive: true, force: true }),
  };
}

export interface TestWorkerOptions {
  /** Variables and secrets, as `[vars]` / `wrangler secret put` would give them. */
  vars: Record<string, string | number | boolean>;
  /** Bind an R2 bucket as PUSH_BUCKET. @default true */
  r2?: boolean;
  /**
   * Miniflare's Cache API; false makes every put and match a no-op, as the
   * Cache API is on `*.workers.dev` and in the dashboard preview. @default true
   */
  cache?: boolean;
  /** Directory to keep R2 in, so two Workers (isolates) can share a bucket. @default in memory */
  r2Persist?: string;
  /** Bind IMAGES to workerd's Images binding over a local sharp service (`helpers/images-binding.ts`); transforms are logged here. */
  images?: ImagesServiceLog;
  /**
   * Bind IMAGES to workerd's Images binding over a service that fails, as
   * plain `wrangler dev` does without `--experimental-images-local-mode`
   * (its remote fetcher needs a Cloudflare login): 'throw' fails the call,
   * 'auth-error' answers the API's authentication error (wrangler 3 passes
   * it on with status 200). Counted in `calls`.
   */
  failingImages?: { mode: 'throw' | 'auth-error'; calls: number };
  /**
   * Run the bundle behind {@link COUNTING_ENTRY}: every Cache API call, R2
   * call and `fetch` the Worker makes is counted per request (the real calls
   * still happen; see {@link TestWorker.subrequests}).
   */
  countSubrequests?: boolean;
}

export interface TestWorker {
  mf: Miniflare;
  /** The Worker's own HTTP socket (workerd), e.g. `http://127.0.0.1:41234`. */
  url: string;
  /**
   * A request over a real socket to workerd, as a client would send it.
   * (Miniflare's `dispatchFetch` is not used: it drops `Content-Length`.)
   */
  fetch(path: string, init?: RequestInit): Promise<Response>;
  /**
   * With `countSubrequests`: sends the request, reads the whole answer, waits
   * for its `waitUntil` work, and returns the answer with the subrequests it
   * made (one invocation's calls: what Cloudflare's limit counts).
   */
  subrequests(
    path: string,
    init?: RequestInit,
  ): Promise<{ response: Response; body: string; count: number; calls: string[]; puts: { url: string; length: string | null }[] }>;
  close(): Promise<void>;
}

/**
 * An entry module in front of the bundle: wraps `caches`, `fetch` and the
 * R2 binding in counting proxies that pass every call on to the real
 * object, and tracks one request at a time (tests send them one by one):
 * its calls until the answer is read to the end and its `waitUntil` work
 * has settled. `GET /__subrequests?id=` reports them, with each
 * `cache.put`'s URL and Content-Length. With the variable
 * `TEST_FAIL_CACHE_PUTS` (a RegExp source), puts to matching URLs reject:
 * a Cache API fault no local server can produce.
 */
export const COUNTING_ENTRY = `
import worker from './index.js';
let current = null;
let failPuts = null;
const runs = new Map();
const note = (name) => { if (current) current.calls.push(name); };
const realFetch = globalThis.fetch;
globalThis.fetch = (input, init) => { note('fetch ' + (typeof input === 'string' ? input : input.url)); return realFetch(input, init); };
const wrapCache = (cache) => ({
  match: (...args) => { note('cache.match'); return cache.match(...args); },
  put: (request, response) => {
    note('cache.put');
    const url = typeof request === 'string' ? request : request.url;
    if (current) current.puts.push({ url, length: response.headers.get('content-length') });
    // A fault only a test can make: the Cache API refusing a put (TEST_FAIL_CACHE_PUTS, a RegExp source).
    if (failPuts && failPuts.test(url)) return Promise.reject(new Error('cache.put refused (test fault)'));
    return cache.put(request, response);
  },
  delete: (...args) => { note('cache.delete'); return cache.delete(...args); },
});
const realCaches = globalThis.caches;
const countingCaches = { default: wrapCache(realCaches.default), open: async (name) => wrapCache(await realCaches.open(name)) };
Object.defineProperty(globalThis, 'caches', { value: countingCaches, configurable: true, writable: true });
const wrapBucket = (bucket) => new Proxy(bucket, { get(target, name) {
  const value = target[name];
  return typeof value === 'function' ? (...args) => { note('r2.' + String(name)); return value.apply(target, args); } : value;
} });
const envs = new WeakMap();
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    if (url.pathname === '/__subrequests') {
      const run = runs.get(url.searchParams.get('id'));
      if (!run) return Response.json(null, { status: 404 });
      await run.done;
      runs.delete(url.searchParams.get('id'));
      return Response.json({ count: run.calls.length, calls: run.calls, puts: run.puts });
    }
    let wrapped = envs.get(env);
    if (!wrapped) {
      wrapped = Object.create(null);
      for (const name of Object.keys(env)) wrapped[name] = env[name];
      if (env.PUSH_BUCKET) wrapped.PUSH_BUCKET = wrapBucket(env.PUSH_BUCKET);
      if (env.TEST_FAIL_CACHE_PUTS) failPuts = new RegExp(env.TEST_FAIL_CACHE_PUTS);
      envs.set(env, wrapped);
    }
    const id = request.headers.get('x-test-run');
    const run = { calls: [], puts: [], pending: [] };
    current = run;
    if (id) runs.set(id, run);
    const context = { waitUntil: (promise) => { run.pending.push(promise); ctx.waitUntil(promise); }, passThroughOnException: () => {} };
    let response = await worker.fetch(request, wrapped, context);
    let finished;
    const read = new Promise((resolve) => (finished = resolve));
    if (response.body) {
      const counted = new TransformStream({ flush() { finished(); } });
      response.body.pipeTo(counted.writable).catch(() => finished());
      response = new Response(counted.readable, response);
    } else finished();
    run.done = read.then(async () => { for (let i = 0; i < run.pending.length; i++) await run.pending[i].catch(() => {}); });
    return response;
  },
};
`;

export async function startTestWorker(bundle: WorkerBundle, options: TestWorkerOptions): Promise<TestWorker> {
  let scriptPath = bundle.script;
  if (options.countSubrequests) {
    scriptPath = join(bundle.dir, 'counting-entry.mjs');
    await writeFile(scriptPath, COUNTING_ENTRY);
  }
  const worker = {
    name: 'edge',
    modules: true,
    scriptPath,
    // The counting entry imports the bundle, which is an ES module too.
    ...(options.countSubrequests ? { modulesRules: [{ type: 'ESModule', include: ['**/*.js', '**/*.mjs'] }] } : {}),
    // Module names are relative to this; the bundle lives outside the working directory.
    modulesRoot: bundle.dir,
    compatibilityDate: bundle.compatibilityDate,
    bindings: options.vars,
    r2Buckets: options.r2 === false ? undefined : ['PUSH_BUCKET'],
    ...(options.cache === false ? { cache: false } : {}),
    ...(options.images || options.failingImages ? { wrappedBindings: { IMAGES: { scriptName: 'images-binding' } } } : {}),
  };
  const failing = options.failingImages;
  const failingService = async (): Promise<MiniflareResponse> => {
    failing!.calls++;
    if (failing!.mode === 'throw') throw new Error('Not logged in: getAccountId() needs `wrangler login` (test stand-in)');
    return MiniflareResponse.json({ success: false, errors: [{ code: 10000, message: 'Authentication error' }], messages: [], result: null });
  };
  const imagesWorker = {
    name: 'images-binding',
    modules: [{ type: 'ESModule' as const, path: 'index.mjs', contents: IMAGES_BINDING_SCRIPT }],
    serviceBindings: { FETCHER: failing ? failingService : imagesService(options.images) },
  };
  const mf = new Miniflare({
    workers: options.images || failing ? [worker, imagesWorker] : [worker],
    r2Persist: options.r2Persist,
    // The placeholder request.cf: Miniflare would otherwise download Cloudflare's sample once.
    cf: false,
  } as MiniflareOptions);
  const url = (await mf.ready).origin;
  let runs = 0;
  return {
    mf,
    url,
    fetch: (path, init) => fetch(url + path, init),
    async subrequests(path, init) {
      const id = String(++runs);
      const headers = new Headers(init?.headers);
      headers.set('x-test-run', id);
      const response = await fetch(url + path, { ...init, headers });
      const body = await response.text();
      const counted = (await (await fetch(`${url}/__subrequests?id=${id}`)).json()) as { count: number; calls: string[]; puts: { url: string; length: string | null }[] };
      return { response, body, ...counted };
    },
    close: () => mf.dispose(),
  };
}
