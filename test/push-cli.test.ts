/**
 * `edge push <dir>` against a running node: a generated folder is uploaded,
 * a second run skips everything (same SHA-256 ETag), a changed file is
 * uploaded again, and failures set the exit code.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { contentTypeFor, encodePathSegment, formatSize, runPush } from '../edge/node/push-cli.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const TOKEN = 't'.repeat(32);

let t: TestEdge;
let dir: string;
let lines: string[];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edge-push-cli-'));
  lines = [];
});
afterEach(async () => {
  // Some tests start no node: close each one once.
  const running = t;
  t = undefined as never;
  await running?.close();
  await rm(dir, { recursive: true, force: true });
});

/** Files of the generated site: relative path → content. */
async function writeSite(files: Record<string, string | Buffer>): Promise<void> {
  for (const [path, content] of Object.entries(files)) {
    await mkdir(join(dir, path, '..'), { recursive: true });
    await writeFile(join(dir, path), content);
  }
}

function push(...args: string[]): Promise<number> {
  return runPush([dir, '--to', t.edge.url, ...args], { log: (line) => lines.push(line), env: { EDGE_ADMIN_TOKEN: TOKEN } });
}

const summary = () => lines[lines.length - 1];

const site = () => ({
  'index.html': '<!doctype html><title>home</title>',
  'css/app.css': 'body { margin: 0 }',
  'js/app.js': 'console.log("app")',
  'img/logo@2x.png': randomBytes(3000),
  'fonts/Inter Var.woff2': randomBytes(5000),
  'data/café.json': '{"ok":true}',
  'deep/a/b/c/d.txt': 'deep',
  '.well-known/security.txt': 'Contact: mailto:security@example.com',
  '.git/HEAD': 'ref: refs/heads/main',
});

describe('edge push', () => {
  it('uploads a folder, then skips everything, then uploads only what changed', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const files = site();
    await writeSite(files);

    expect(await push('--prefix', '/assets', '--concurrency', '3')).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 8, updated 0, deleted 0, skipped 0, failed 0 \(/);
    const progress = lines.slice(0, -1);
    expect(progress).toHaveLength(8);
    expect(progress.map((l) => /^\[(\d+)\/8\]/.exec(l)?.[1])).toEqual(['1', '2', '3', '4', '5', '6', '7', '8']);
    expect(progress.filter((l) => /^\[\d\/8\] uploaded assets\/fonts\/Inter%20Var\.woff2 \(4\.9 KB\)$/.test(l))).toHaveLength(1);
    expect(progress.some((l) => l.includes('.git'))).toBe(false);

    // Served as a browser asks for them, with the type from the extension and the hash as ETag.
    for (const [path, url, type] of [
      ['index.html', '/assets/index.html', 'text/html; charset=utf-8'],
      ['css/app.css', '/assets/css/app.css', 'text/css; charset=utf-8'],
      ['img/logo@2x.png', '/assets/img/logo@2x.png', 'image/png'],
      ['fonts/Inter Var.woff2', '/assets/fonts/Inter%20Var.woff2', 'font/woff2'],
      ['data/café.json', '/assets/data/caf%C3%A9.json', 'application/json; charset=utf-8'],
      ['.well-known/security.txt', '/assets/.well-known/security.txt', 'text/plain; charset=utf-8'],
    ] as const) {
      const res = await t.get(url);
      const body = Buffer.from(await res.arrayBuffer());
      expect(res.status, url).toBe(200);
      expect(body.equals(Buffer.from(files[path]))).toBe(true);
      expect(res.headers.get('content-type')).toBe(type);
      expect(res.headers.get('etag')).toBe(`"${createHash('sha256').update(files[path]).digest('hex')}"`);
      expect(res.headers.get('cache-status')).toMatch(/detail=pushed/);
    }
    expect(t.origin.requests).toEqual([]);

    lines = [];
    expect(await push('--prefix', '/assets')).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 0, updated 0, deleted 0, skipped 8, failed 0 /);
    expect(lines.slice(0, -1).every((l) => / skipped .* \(unchanged\)$/.test(l))).toBe(true);

    await writeFile(join(dir, 'css/app.css'), 'body { margin: 1px }');
    lines = [];
    expect(await push('--prefix', '/assets')).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 1, updated 0, deleted 0, skipped 7, failed 0 /);
    expect(lines.filter((l) => l.endsWith('] uploaded assets/css/app.css (20 B)'))).toHaveLength(1);
    expect(await (await t.get('/assets/css/app.css')).text()).toBe('body { margin: 1px }');

    // Another prefix is another set of objects: nothing there yet.
    lines = [];
    expect(await push('--prefix', 'v2/')).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 8, updated 0, deleted 0, skipped 0, failed 0 /);
    expect(await (await t.get('/v2/deep/a/b/c/d.txt')).text()).toBe('deep');
    expect(t.origin.requests).toEqual([]);
  });

  it('re-uploads a file whose pushed copy was purged or deleted', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    await writeSite({ 'a.css': 'a', 'b.css': 'b' });
    expect(await push()).toBe(0);
    const del = await t.get('/_edge/push/a.css', { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}` } });
    expect(del.status).toBe(204);
    lines = [];
    expect(await push()).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 1, updated 0, deleted 0, skipped 1, failed 0 /);
  });

  it('stores --cache-control and --tag with every object', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    await writeSite({ 'a.css': 'a', 'b/c.js': 'c' });
    expect(await push('--cache-control', 'public, max-age=60', '--tag', 'release-9', '--tag', 'site')).toBe(0);
    const res = await t.get('/b/c.js');
    expect(res.headers.get('cache-control')).toBe('public, max-age=60');
    await res.text();
    const purge = await t.get('/_edge/purge', {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ tags: ['release-9'] }),
    });
    expect(await purge.json()).toEqual({ purged: 2 });
  });

  it('reports each failed file and exits 1', async () => {
    t = await startTestEdge({ adminToken: TOKEN, maxUploadSize: 1024 });
    await writeSite({ 'small.txt': 'ok', 'big.bin': randomBytes(4096), 'bad\\name.txt': 'backslash' });
    expect(await push()).toBe(1);
    expect(summary()).toMatch(/^edge push: uploaded 1, updated 0, deleted 0, skipped 0, failed 2 /);
    expect(lines.find((l) => l.includes('failed big.bin'))).toMatch(/413 EDGE_PAYLOAD_TOO_LARGE/);
    expect(lines.find((l) => l.includes('failed bad%5Cname.txt'))).toMatch(/400 EDGE_BAD_KEY: .*backslash/);
    expect(await (await t.get('/small.txt')).text()).toBe('ok');
  });

  it('exits 1 with a clear message when the token is wrong, uploading nothing', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    await writeSite({ 'a.css': 'a' });
    const code = await runPush([dir, '--to', t.edge.url, '--token', 'w'.repeat(32)], { log: (line) => lines.push(line), env: {} });
    expect(code).toBe(1);
    expect(lines.join('\n')).toMatch(/401 EDGE_UNAUTHORIZED/);
    const listed = await t.get('/_edge/objects', { headers: { authorization: `Bearer ${TOKEN}` } });
    expect((await listed.json()).objects).toEqual([]);
  });

  it('exits 2 for bad arguments, naming the problem', async () => {
    const run = async (...argv: string[]) => {
      lines = [];
      const code = await runPush(argv, { log: (line) => lines.push(line), env: {} });
      return [code, lines[0]] as const;
    };
    expect(await run()).toEqual([2, 'edge push: give the folder to upload']);
    expect(await run(dir)).toEqual([2, 'edge push: --to <edge-url> is required']);
    expect(await run(dir, '--to', 'http://127.0.0.1:1')).toEqual([2, 'edge push: --token <token> (or EDGE_ADMIN_TOKEN) is required']);
    expect((await run(dir, '--to', 'ftp://x', '--token', 'x'))[1]).toMatch(/not an http\(s\) URL/);
    expect((await run(dir, '--to', 'http://x', '--token', 'x', '--concurrency', '0'))[1]).toMatch(/--concurrency/);
    expect((await run(dir, '--to', 'http://x', '--token', 'x', '--prefix', '/a/../b'))[1]).toMatch(/--prefix/);
    expect((await run(join(dir, 'missing'), '--to', 'http://x', '--token', 'x'))[1]).toMatch(/cannot read/);
    expect((await run('--bogus'))[0]).toBe(2);
    expect(await run('--help')).toEqual([0, expect.stringMatching(/^Usage: npx edge push/)]);
  });
});

describe('edge push helpers', () => {
  it('encodes names as browsers request them', () => {
    expect(encodePathSegment('Inter Var.woff2')).toBe('Inter%20Var.woff2');
    expect(encodePathSegment('logo@2x.png')).toBe('logo@2x.png');
    expect(encodePathSegment('café.json')).toBe('caf%C3%A9.json');
    expect(encodePathSegment('100%.txt')).toBe('100%25.txt');
    expect(encodePathSegment('what?.txt')).toBe('what%3F.txt');
    expect(encodePathSegment('#1.txt')).toBe('%231.txt');
    expect(encodePathSegment('a+b,c;d=e.txt')).toBe('a+b,c;d=e.txt');
  });

  it('guesses content types from the extension and formats sizes', () => {
    expect(contentTypeFor('a/B.SVG')).toBe('image/svg+xml');
    expect(contentTypeFor('x.unknown')).toBe('application/octet-stream');
    expect(contentTypeFor('Makefile')).toBe('application/octet-stream');
    expect(formatSize(20)).toBe('20 B');
    expect(formatSize(3174)).toBe('3.1 KB');
    expect(formatSize(5 * 1024 * 1024)).toBe('5.0 MB');
  });
});
