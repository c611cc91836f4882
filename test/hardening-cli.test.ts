/**
 * Hardening of the command line, on real `npx edge` processes:
 *
 * - `--data-dir` whose last segment has a dot is a directory, existing or not;
 *   an unusable one fails at once with one line naming --data-dir (it hung,
 *   or failed with "Is a directory");
 * - a config file with `origins` and no `--origin` uses those origins, not
 *   the embedded demo origin.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

const CLI = ['--import', 'tsx', 'edge/node/cli.ts'];

/** A run that must end by itself: the timeout only turns a hang into a failure. */
function runCli(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [...CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 20_000 });
}

let dirs: string[] = [];
let origins: TestOrigin[] = [];
const children = new Set<ReturnType<typeof spawn>>();

afterEach(async () => {
  await Promise.all(
    [...children].map((child) => {
      child.kill('SIGTERM');
      return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(null) : child.once('exit', resolve)));
    }),
  );
  children.clear();
  await Promise.all(origins.map((origin) => origin.close()));
  origins = [];
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  dirs = [];
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-hardening-'));
  dirs.push(dir);
  return dir;
}

/** Start the CLI and wait for its "listening on" line; resolves with the URL and everything it wrote to stderr. */
async function startCli(args: string[], port = 0): Promise<{ url: string; stderr: () => string }> {
  const child = spawn(process.execPath, [...CLI, '--port', String(port), '--host', '127.0.0.1', '--log-level', 'silent', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.add(child);
  let text = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', (chunk) => {
      text += chunk;
      const match = /listening on (http:\/\/\S+)/.exec(text);
      if (match) resolve(match[1]!);
    });
    child.once('exit', (code) => reject(new Error(`edge exited ${code}: ${text}`)));
  });
  return { url, stderr: () => text };
}

describe('--data-dir', () => {
  const request = async (url: string) => {
    const res = await fetch(`${url}/a.txt`);
    return { status: res.status, body: await res.text(), cacheStatus: res.headers.get('cache-status') };
  };

  it('a last segment with a dot is a directory when it does not exist yet, and is reopened as one', async () => {
    const parent = await tempDir();
    const dataDir = join(parent, 'edge.example.com');
    const origin = await startTestOrigin();
    origins.push(origin);
    origin.set('/a.txt', { headers: { 'cache-control': 'max-age=3600' }, body: 'cached' });

    const first = await startCli(['--origin', origin.url, '--data-dir', dataDir]);
    expect(await request(first.url)).toMatchObject({ status: 200, body: 'cached' });
    expect((await stat(dataDir)).isDirectory()).toBe(true);
    expect((await readdir(dataDir)).sort()).toEqual(['data.mdb', 'lock.mdb']);
    expect((await readdir(parent)).sort()).toEqual(['edge.example.com']);
    for (const child of children) child.kill('SIGTERM');
    await Promise.all([...children].map((child) => new Promise((resolve) => child.once('exit', resolve))));
    children.clear();

    // The existing directory opens (it failed with "Is a directory") and still holds the entry
    // (same port: the Host header, and so the cache key, stays the same).
    const second = await startCli(['--origin', origin.url, '--data-dir', dataDir], Number(new URL(first.url).port));
    const again = await request(second.url);
    expect(again).toMatchObject({ status: 200, body: 'cached' });
    expect(again.cacheStatus).toMatch(/hit/);
    expect(origin.count('/a.txt')).toBe(1);
  });

  it('an existing directory named like a file (cache.d) opens as a directory', async () => {
    const dataDir = join(await tempDir(), 'cache.d');
    await mkdir(dataDir);
    const origin = await startTestOrigin();
    origins.push(origin);
    origin.set('/a.txt', { headers: { 'cache-control': 'max-age=3600' }, body: 'cached' });
    const { url } = await startCli(['--origin', origin.url, '--data-dir', dataDir]);
    expect(await request(url)).toMatchObject({ status: 200, body: 'cached' });
    expect((await readdir(dataDir)).sort()).toEqual(['data.mdb', 'lock.mdb']);
  });

  it('a file in place of the directory: one line naming --data-dir, exit 2', async () => {
    const file = join(await tempDir(), 'not-a-dir');
    await writeFile(file, 'x');
    const { status, stderr } = runCli(['--origin', 'http://127.0.0.1:9', '--data-dir', file]);
    expect(status).toBe(2);
    expect(stderr.trim().split('\n')).toEqual([`edge: --data-dir (EDGE_DATA_DIR): got ${JSON.stringify(file)}: it is a file, not a directory`]);
  });

  it('a path under a file: one line naming --data-dir, exit 2', async () => {
    const file = join(await tempDir(), 'plain-file');
    await writeFile(file, 'x');
    const { status, stderr } = runCli(['--origin', 'http://127.0.0.1:9', '--data-dir', join(file, 'cache')]);
    expect(status).toBe(2);
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/^edge: --data-dir \(EDGE_DATA_DIR\): got ".*plain-file\/cache": a parent of it is a file, not a directory/);
  });

  it.runIf(process.platform === 'linux')('a directory that cannot be created (under /proc) fails at once instead of hanging', () => {
    const { status, stderr, error } = runCli(['--origin', 'http://127.0.0.1:9', '--data-dir', '/proc/edge-hardening/cache']);
    expect(error).toBeUndefined(); // not killed by the timeout
    expect(status).toBe(2);
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/^edge: --data-dir \(EDGE_DATA_DIR\): got "\/proc\/edge-hardening\/cache": cannot create \/proc\/edge-hardening \(ENOENT\)/);
  });
});

describe('origins from a config file', () => {
  it('are used without --origin: no embedded demo origin', async () => {
    const dir = await tempDir();
    const a = await startTestOrigin();
    const b = await startTestOrigin();
    origins.push(a, b);
    a.set('/site.txt', { headers: { 'cache-control': 'max-age=60' }, body: 'from the web group' });
    b.set('/api/x', { headers: { 'cache-control': 'max-age=60' }, body: 'from the api group' });
    const config = join(dir, 'edge.config.json');
    await writeFile(
      config,
      JSON.stringify({
        origins: {
          groups: [
            { name: 'web', members: [a.url] },
            { name: 'api', members: [b.url] },
          ],
          routes: [{ match: { pathPrefix: '/api/' }, group: 'api' }],
        },
      }),
    );
    const { url, stderr } = await startCli(['--config', config, '--data-dir', join(dir, 'data')]);
    expect(stderr()).not.toMatch(/demo/);
    expect(stderr()).toMatch(/in front of origin groups web \(1 member\), api \(1 member\) from the config file/);

    const site = await fetch(`${url}/site.txt`);
    expect(await site.text()).toBe('from the web group');
    const api = await fetch(`${url}/api/x`);
    expect(await api.text()).toBe('from the api group');
    expect(a.count('/site.txt')).toBe(1);
    expect(b.count('/api/x')).toBe(1);
    // The demo origin's objects are not there.
    expect((await fetch(`${url}/data/products.json`)).status).toBe(404);
  });
});
