/**
 * Pushes on the Worker (issue 12): bodies stream into R2 (no whole-body
 * buffer in the isolate), ETags are the content's SHA-256 as on Node, so the
 * real `edge push` CLI skips unchanged files against the Worker too; and
 * the pushed-path lookup (one R2 head per path per isolate, answers kept for
 * PUSH_INDEX_REFRESH) without listing the bucket.
 *
 * workerd runs through Miniflare 3 with R2 kept on disk; the CLI is
 * `runPush`, the same function `npx edge push` runs, against the Worker's
 * own socket.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { join } from 'node:path';
import { request as undiciRequest } from 'undici';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { runPush } from '../edge/node/push-cli.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';
import { buildWorkerBundle, startTestWorker, type TestWorker, type WorkerBundle } from './helpers/workers.js';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 120_000 });

const ADMIN = 'worker-admin-token-0123456789';
const MiB = 1024 * 1024;

let bundle: WorkerBundle;
let origin: TestOrigin;
const temps: string[] = [];

beforeAll(async () => {
  bundle = await buildWorkerBundle();
  origin = await startTestOrigin();
}, 180_000);
afterAll(async () => {
  await origin?.close();
  await bundle?.dispose();
  await Promise.all(temps.map((dir) => rm(dir, { recursive: true, force: true })));
});

async function tempDir(name: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), name));
  temps.push(dir);
  return dir;
}

function startWorker(r2Persist: string, vars: Record<string, string> = {}, countSubrequests = false): Promise<TestWorker> {
  return startTestWorker(bundle, {
    vars: { ORIGIN: origin.url, LOG_LEVEL: 'silent', ADMIN_TOKEN: ADMIN, MAX_UPLOAD_SIZE: '200MB', ...vars },
    r2Persist,
    countSubrequests,
  });
}

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

async function pushFolder(dir: string, worker: TestWorker, lines: string[]): Promise<number> {
  lines.length = 0;
  return runPush([dir, '--to', worker.url, '--prefix', '/site'], { log: (line) => lines.push(line), env: { EDGE_ADMIN_TOKEN: ADMIN } });
}

/** The workerd process Miniflare started for this worker: the only child of ours that appeared while it started. */
function workerdPids(): Set<number> {
  const pids = new Set<number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // pid (comm) state ppid ...
      const match = /^\d+ \((.*)\) \S+ (\d+)/.exec(stat);
      if (match && match[1] === 'workerd' && Number(match[2]) === process.pid) pids.add(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

/** Bytes in the files under a directory (Miniflare's R2 on disk). */
async function diskUsage(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    total += await stat(join(entry.parentPath, entry.name)).then((s) => s.size, () => 0);
  }
  return total;
}

/** Peak resident memory of a process so far (VmHWM), bytes. */
function peakRss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmHWM:\s+(\d+) kB/m.exec(status)![1]) * 1024;
}

describe('edge push against the Worker', () => {
  it('uploads a folder, then skips every unchanged file (SHA-256 ETags, as on Node), then uploads only the changed one', async () => {
    const dir = await tempDir('edge-worker-push-site-');
    const files: Record<string, Buffer> = {
      'index.html': Buffer.from('<!doctype html><title>home</title>'),
      'css/app.css': Buffer.from('body { margin: 0 }'),
      'img/photo.bin': randomBytes(3 * MiB), // over the 1 MiB inline size: streamed through a staging object
      'data/a.json': Buffer.from('{"ok":true}'),
    };
    for (const [path, content] of Object.entries(files)) {
      await mkdir(join(dir, path, '..'), { recursive: true });
      await writeFile(join(dir, path), content);
    }
    const worker = await startWorker(await tempDir('edge-worker-push-r2-'));
    const lines: string[] = [];
    try {
      expect(await pushFolder(dir, worker, lines)).toBe(0);
      expect(lines.at(-1)).toMatch(/uploaded 4, updated 0, deleted 0, skipped 0, failed 0/);

      // The listing the CLI compares with: each ETag is "<sha256 hex>" of the bytes, and the bytes are served.
      const listing = (await (await worker.fetch('/_edge/objects?pushed=true&prefix=/site/&limit=1000', { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as {
        objects: { path: string; etag: string; size: number }[];
      };
      expect(Object.fromEntries(listing.objects.map((o) => [o.path, [o.etag, o.size]]))).toEqual(
        Object.fromEntries(Object.entries(files).map(([path, content]) => [`/site/${path}`, [`"${sha256(content)}"`, content.byteLength]])),
      );
      for (const [path, content] of Object.entries(files)) {
        const response = await worker.fetch(`/site/${path}`);
        expect(response.headers.get('etag'), path).toBe(`"${sha256(content)}"`);
        expect(sha256(Buffer.from(await response.arrayBuffer())), path).toBe(sha256(content));
      }

      expect(await pushFolder(dir, worker, lines)).toBe(0);
      expect(lines.at(-1)).toMatch(/uploaded 0, updated 0, deleted 0, skipped 4, failed 0/);

      await writeFile(join(dir, 'css/app.css'), 'body { margin: 1px }');
      expect(await pushFolder(dir, worker, lines)).toBe(0);
      expect(lines.at(-1)).toMatch(/uploaded 1, updated 0, deleted 0, skipped 3, failed 0/);
      expect(await (await worker.fetch('/site/css/app.css')).text()).toBe('body { margin: 1px }');
    } finally {
      await worker.close();
    }
  });

  it('stores a push of unknown length (chunked) through a multipart upload, whole and with its SHA-256 ETag', async () => {
    const worker = await startWorker(await tempDir('edge-worker-push-r2-'));
    try {
      // Without Content-Length: 20 MiB is a 16 MiB part and a shorter last one; 32 MiB ends on a part boundary.
      for (const [name, size] of [['chunked.bin', 20 * MiB], ['boundary.bin', 32 * MiB]] as const) {
        const body = randomBytes(size);
        const chunks = Array.from({ length: size / (256 * 1024) }, (_, i) => body.subarray(i * 256 * 1024, (i + 1) * 256 * 1024));
        const stream = new ReadableStream<Uint8Array>({
          pull(controller) {
            const next = chunks.shift();
            if (next) controller.enqueue(next);
            else controller.close();
          },
        });
        const response = await worker.fetch(`/_edge/push/${name}`, {
          method: 'PUT',
          headers: { authorization: `Bearer ${ADMIN}` },
          body: stream,
          duplex: 'half',
        } as RequestInit);
        expect(response.status, await response.clone().text()).toBe(201);
        expect(((await response.json()) as { etag: string }).etag).toBe(`"${sha256(body)}"`);
        const served = await worker.fetch(`/${name}`);
        expect(served.headers.get('etag')).toBe(`"${sha256(body)}"`);
        expect(sha256(Buffer.from(await served.arrayBuffer()))).toBe(sha256(body));
        // A range is read from R2, not from the upload.
        const ranged = await worker.fetch(`/${name}`, { headers: { range: `bytes=${17 * MiB}-${17 * MiB + 99}` } });
        expect(ranged.status).toBe(206);
        expect(Buffer.compare(Buffer.from(await ranged.arrayBuffer()), body.subarray(17 * MiB, 17 * MiB + 100))).toBe(0);
      }
    } finally {
      await worker.close();
    }
  });

  /**
   * What this proves, for a 100 MB push through the real CLI:
   * - the body reaches R2 while the upload is still going: with the client
   *   paused after 60 MB (a raw PUT whose body waits), R2's files on disk
   *   (Miniflare keeps R2 in `r2Persist`) already hold most of those bytes,
   *   so the Worker is not collecting them to store at the end;
   * - workerd's peak resident memory (VmHWM; the Worker and Miniflare's R2
   *   run in that one process) rises by less than 1.5 times the body over
   *   both pushes (the raw one and the CLI's). Miniflare's own R2 takes about
   *   half the body on its way to disk (measured: a bare
   *   `put(key, request.body)` of 100 MB raised it by 48 MiB), so a Worker
   *   that held the body once more (the old one buffered it to commit, then
   *   concatenated it: twice) would pass 1.5 times; streaming measured
   *   about 0.9. A bound on copies, not a measure of the isolate's own heap:
   *   Miniflare does not enforce the 128 MB isolate limit.
   */
  it('streams a 100 MB push into R2 without holding the body', async () => {
    const dir = await tempDir('edge-worker-push-big-');
    const size = 100 * 1000 * 1000;
    const file = join(dir, 'video.bin');
    const handle = await open(file, 'w');
    const hash = createHash('sha256');
    for (let written = 0; written < size; written += 4 * MiB) {
      const chunk = randomBytes(Math.min(4 * MiB, size - written));
      hash.update(chunk);
      await handle.write(chunk);
    }
    await handle.close();
    const digest = hash.digest('hex');

    const r2 = await tempDir('edge-worker-push-r2-');
    const before = workerdPids();
    const worker = await startWorker(r2);
    try {
      const started = [...workerdPids()].filter((pid) => !before.has(pid));
      expect(started).toHaveLength(1);
      const pid = started[0]!;
      // Warm the isolate (configuration, first push) so its own start-up is not counted.
      const warm = await worker.fetch('/_edge/push/warm.bin', { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` }, body: randomBytes(2 * MiB) });
      expect(warm.status).toBe(201);
      const peakBefore = peakRss(pid);

      // A raw PUT of 100 MB with Content-Length whose body stops after 60 MB until released.
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      const sent = { bytes: 0 };
      const body = Readable.from(async function* () {
        for (let offset = 0; offset < size; offset += MiB) {
          if (offset === 60 * MiB) await released;
          const chunk = Buffer.alloc(Math.min(MiB, size - offset), offset / MiB);
          sent.bytes += chunk.byteLength;
          yield chunk;
        }
      }());
      const upload = undiciRequest(`${worker.url}/_edge/push/paused.bin`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${ADMIN}`, 'content-length': String(size) },
        body,
      });
      // Wait (bounded) until R2's files hold 50 MB while the client holds back the rest.
      const deadline = Date.now() + 60_000;
      let onDisk = 0;
      while (Date.now() < deadline && onDisk < 50 * MiB) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        onDisk = await diskUsage(r2);
      }
      // Half the body is in R2's files and the client has not sent more than 60 MB of it.
      expect(onDisk).toBeGreaterThanOrEqual(50 * MiB);
      expect(sent.bytes).toBeLessThanOrEqual(60 * MiB);
      release();
      const answer = await upload;
      expect(answer.statusCode, await answer.body.text()).toBe(201);

      const lines: string[] = [];
      expect(await pushFolder(dir, worker, lines)).toBe(0);
      expect(lines.at(-1)).toMatch(/uploaded 1, updated 0, deleted 0, skipped 0, failed 0/);
      const growth = peakRss(pid) - peakBefore;
      console.log(`workerd peak RSS: ${(peakBefore / MiB).toFixed(0)} MiB before, +${(growth / MiB).toFixed(1)} MiB over two ${size / 1e6} MB pushes`);
      expect(growth).toBeLessThan(1.5 * size);

      const head = await worker.fetch('/site/video.bin', { method: 'HEAD' });
      expect(head.headers.get('etag')).toBe(`"${digest}"`);
      expect(head.headers.get('content-length')).toBe(String(size));
      // And the second run skips it.
      expect(await pushFolder(dir, worker, lines)).toBe(0);
      expect(lines.at(-1)).toMatch(/uploaded 0, updated 0, deleted 0, skipped 1, failed 0/);
    } finally {
      await worker.close();
    }
  });
});

describe('pushed paths on the Worker without listing the bucket', () => {
  it('asks R2 once per path per isolate: a pull hit makes no R2 call, and no request lists the bucket', async () => {
    origin.set('/pulled.txt', { headers: { 'cache-control': 'max-age=600' }, body: 'pulled' });
    const worker = await startWorker(await tempDir('edge-worker-lookup-r2-'), { PUSH_INDEX_REFRESH: '600' }, true);
    try {
      const r2Calls = (calls: string[]) => calls.filter((call) => call.startsWith('r2.'));
      const miss = await worker.subrequests('/pulled.txt');
      expect(miss.response.headers.get('cache-status')).toMatch(/fwd=uri-miss; stored/);
      expect(r2Calls(miss.calls)).toEqual(['r2.head']);
      for (let i = 0; i < 3; i++) {
        const hit = await worker.subrequests('/pulled.txt');
        expect(hit.response.headers.get('cache-status')).toMatch(/^edge; hit/);
        expect(r2Calls(hit.calls)).toEqual([]);
      }
      // A pushed path: found by the same head, then one R2 read per request (the object itself).
      const put = await worker.subrequests('/_edge/push/p.txt', { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` }, body: 'pushed' });
      expect(put.response.status).toBe(201);
      expect(r2Calls(put.calls).filter((call) => call === 'r2.list')).toEqual([]);
      const served = await worker.subrequests('/p.txt');
      expect(served.body).toBe('pushed');
      expect(r2Calls(served.calls)).toEqual(['r2.get']);
    } finally {
      await worker.close();
    }
  });

  it('a push reaches other isolates within their answer time (at once for those that had not asked); a delete at once', async () => {
    origin.set('/shared.txt', { headers: { 'cache-control': 'no-store' }, body: 'origin copy' });
    const r2 = await tempDir('edge-worker-lookup-r2-');
    const keeps = await startWorker(r2, { PUSH_INDEX_REFRESH: '600' });
    const pusher = await startWorker(r2, { PUSH_INDEX_REFRESH: '600' });
    const asksAlways = await startWorker(r2, { PUSH_INDEX_REFRESH: '0' });
    const text = async (worker: TestWorker, path: string) => (await worker.fetch(path)).text();
    try {
      expect(await text(keeps, '/shared.txt')).toBe('origin copy');
      expect(await text(asksAlways, '/shared.txt')).toBe('origin copy');
      const pushed = await pusher.fetch('/_edge/push/shared.txt', { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` }, body: 'pushed copy' });
      expect(pushed.status).toBe(201);
      expect(await text(pusher, '/shared.txt')).toBe('pushed copy');
      // Within PUSH_INDEX_REFRESH, an isolate that was told "not pushed" keeps that answer: the documented staleness.
      expect(await text(keeps, '/shared.txt')).toBe('origin copy');
      // PUSH_INDEX_REFRESH=0 asks every time; a new isolate asks on its first request.
      expect(await text(asksAlways, '/shared.txt')).toBe('pushed copy');
      const fresh = await startWorker(r2, { PUSH_INDEX_REFRESH: '600' });
      try {
        const response = await fresh.fetch('/shared.txt');
        expect(await response.text()).toBe('pushed copy');
        expect(response.headers.get('cache-status')).toMatch(/detail=pushed$/);
        // A delete through another isolate: an isolate that believes the path pushed reads R2, finds nothing, pulls.
        expect((await pusher.fetch('/_edge/push/shared.txt', { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN}` } })).status).toBe(204);
        expect(await text(fresh, '/shared.txt')).toBe('origin copy');
      } finally {
        await fresh.close();
      }
    } finally {
      await Promise.all([keeps.close(), pusher.close(), asksAlways.close()]);
    }
  });
});
