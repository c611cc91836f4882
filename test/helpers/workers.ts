/**
 * The Worker under test: the bundle `wrangler deploy --dry-run` builds from
 * the committed `wrangler.toml` (so the tests run exactly what would be
 * uploaded), run by Miniflare 3 on the `workerd` binary from npm, with an
 * in-memory Cache API and R2 bucket. Nothing reaches Cloudflare: the
 * dry run only bundles, and Miniflare runs locally.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
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
  close(): Promise<void>;
}

export async function startTestWorker(bundle: WorkerBundle, options: TestWorkerOptions): Promise<TestWorker> {
  const worker = {
    name: 'edge',
    modules: true,
    scriptPath: bundle.script,
    // Module names are relative to this; the bundle lives outside the working directory.
    modulesRoot: bundle.dir,
    compatibilityDate: bundle.compatibilityDate,
    bindings: options.vars,
    r2Buckets: options.r2 === false ? undefined : ['PUSH_BUCKET'],
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
  return {
    mf,
    url,
    fetch: (path, init) => fetch(url + path, init),
    close: () => mf.dispose(),
  };
}
