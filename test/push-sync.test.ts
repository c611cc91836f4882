/**
 * `edge push` as a deploy tool (issue 15) against a running node: the plan
 * (`--dry-run`), `--delete` for files gone from the folder, metadata
 * changes re-applied to unchanged files, content types from mime-db, and
 * the progress line on a terminal.
 */
import { mkdir, mkdtemp, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { contentTypeFor, formatDuration, runPush, type PushIo } from '../edge/node/push-cli.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const TOKEN = 's'.repeat(32);
const auth = { authorization: `Bearer ${TOKEN}` };

let t: TestEdge;
let dir: string;
let lines: string[];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edge-push-sync-'));
  lines = [];
});
afterEach(async () => {
  const running = t;
  t = undefined as never;
  await running?.close();
  await rm(dir, { recursive: true, force: true });
});

async function writeSite(files: Record<string, string>): Promise<void> {
  for (const [path, content] of Object.entries(files)) {
    await mkdir(join(dir, path, '..'), { recursive: true });
    await writeFile(join(dir, path), content);
  }
}

function push(args: string[], io: PushIo = {}): Promise<number> {
  lines = [];
  return runPush([dir, '--to', t.edge.url, ...args], { log: (line) => lines.push(line), env: { EDGE_ADMIN_TOKEN: TOKEN }, ...io });
}

const summary = () => lines[lines.length - 1];

async function pushedPaths(): Promise<string[]> {
  const res = await t.get('/_edge/objects?pushed=true', { headers: auth });
  const { objects } = (await res.json()) as { objects: { path: string }[] };
  return [...new Set(objects.map((o) => o.path))].sort();
}

describe('edge push as a deploy tool', () => {
  it('--dry-run prints the plan (upload, update, delete, skip) and changes nothing', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    await writeSite({ 'keep.css': 'keep', 'change.js': 'v1', 'gone.txt': 'gone' });
    expect(await push(['--prefix', '/site', '--tag', 'r1'])).toBe(0);

    await writeFile(join(dir, 'change.js'), 'v2');
    await unlink(join(dir, 'gone.txt'));
    await writeFile(join(dir, 'new.html'), '<p>new</p>');
    expect(await push(['--prefix', '/site', '--tag', 'r1', '--delete', '--dry-run'])).toBe(0);
    expect(lines.slice(0, -1).sort()).toEqual([
      'would delete site/gone.txt (not in the folder)',
      'would skip site/keep.css (unchanged)',
      'would upload site/change.js (2 B, changed)',
      'would upload site/new.html (10 B, new)',
    ]);
    expect(summary()).toMatch(/^edge push: dry run, nothing changed: would upload 2, update 0, delete 1, skip 1 \(12 B to /);

    // Nothing changed on the node.
    expect(await pushedPaths()).toEqual(['/site/change.js', '/site/gone.txt', '/site/keep.css']);
    expect(await (await t.get('/site/change.js')).text()).toBe('v1');

    // A tag change shows as an update.
    expect(await push(['--prefix', '/site', '--tag', 'r2', '--dry-run'])).toBe(0);
    expect(lines).toContain('would update site/keep.css (tags changed; re-uploads 4 B)');
    expect(t.origin.requests).toEqual([]);
  });

  it('--delete removes pushed objects under the prefix that left the folder, and nothing else', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    await writeSite({ 'a.css': 'a', 'old/b.js': 'b', 'old/c.js': 'c' });
    expect(await push(['--prefix', '/app'])).toBe(0);
    expect(await push(['--prefix', '/other'])).toBe(0);

    await rm(join(dir, 'old'), { recursive: true });
    // Without --delete, removed files stay.
    expect(await push(['--prefix', '/app'])).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 0, updated 0, deleted 0, skipped 1, failed 0 /);
    expect(await pushedPaths()).toHaveLength(6);

    expect(await push(['--prefix', '/app', '--delete'])).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 0, updated 0, deleted 2, skipped 1, failed 0 /);
    expect(lines.some((l) => / deleted app\/old\/c\.js$/.test(l))).toBe(true);
    expect(await pushedPaths()).toEqual(['/app/a.css', '/other/a.css', '/other/old/b.js', '/other/old/c.js']);

    // Idempotent.
    expect(await push(['--prefix', '/app', '--delete'])).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 0, updated 0, deleted 0, skipped 1, failed 0 /);
  });

  it('does not delete when an upload failed, so a half-done deploy keeps the old files', async () => {
    t = await startTestEdge({ adminToken: TOKEN, maxUploadSize: 64 });
    await writeSite({ 'a.css': 'a', 'old.js': 'old' });
    expect(await push([])).toBe(0);
    await unlink(join(dir, 'old.js'));
    await writeFile(join(dir, 'big.js'), 'x'.repeat(200));
    expect(await push(['--delete'])).toBe(1);
    expect(lines.join('\n')).toMatch(/1 deletion not done because an upload failed/);
    expect(summary()).toMatch(/^edge push: uploaded 0, updated 0, deleted 0, skipped 1, failed 1 /);
    expect(await pushedPaths()).toEqual(['/a.css', '/old.js']);
  });

  it('re-applies changed tags, Cache-Control and content type to unchanged files', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    await writeSite({ 'a.css': 'a', 'feed.rss': '<rss/>' });
    expect(await push(['--tag', 'r1', '--cache-control', 'public, max-age=60'])).toBe(0);

    expect(await push(['--tag', 'r2', '--cache-control', 'public, max-age=60'])).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 0, updated 2, deleted 0, skipped 0, failed 0 /);
    expect(lines.some((l) => l.endsWith('] updated a.css (tags changed; re-uploaded 1 B)'))).toBe(true);
    const purge = await t.get('/_edge/purge', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ tags: ['r2'] }) });
    expect(await purge.json()).toEqual({ purged: 2 });

    // Purged copies are uploaded again; then a Cache-Control change is an update.
    expect(await push(['--tag', 'r2', '--cache-control', 'public, max-age=60'])).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 2, updated 0, /);
    expect(await push(['--tag', 'r2', '--cache-control', 'public, max-age=300'])).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 0, updated 2, /);
    expect(lines.some((l) => l.endsWith('updated feed.rss (cache-control changed; re-uploaded 6 B)'))).toBe(true);
    const res = await t.get('/feed.rss');
    expect(res.headers.get('cache-control')).toBe('public, max-age=300');
    expect(res.headers.get('content-type')).toBe('application/rss+xml');
    await res.text();

    // An object pushed by hand with another type is corrected.
    const put = await t.get('/_edge/push/a.css', { method: 'PUT', headers: { ...auth, 'content-type': 'text/plain', 'cache-tag': 'r2', 'cache-control': 'public, max-age=300' }, body: 'a' });
    expect(put.status).toBe(201);
    expect(await push(['--tag', 'r2', '--cache-control', 'public, max-age=300'])).toBe(0);
    expect(lines.some((l) => l.endsWith('] updated a.css (content-type changed; re-uploaded 1 B)'))).toBe(true);
    expect((await t.get('/a.css')).headers.get('content-type')).toBe('text/css; charset=utf-8');
    expect(await push(['--tag', 'r2', '--cache-control', 'public, max-age=300'])).toBe(0);
    expect(summary()).toMatch(/^edge push: uploaded 0, updated 0, deleted 0, skipped 2, failed 0 /);
    expect(t.origin.requests).toEqual([]);
  });

  it('on a terminal, shows one progress line with bytes and ETA instead of a line per file', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    await writeSite({ 'a.txt': 'a'.repeat(2000), 'b.txt': 'b'.repeat(2000) });
    let written = '';
    expect(await push([], { tty: true, write: (text) => (written += text) })).toBe(0);
    expect(lines).toHaveLength(1);
    expect(summary()).toMatch(/^edge push: uploaded 2, /);
    expect(written).toMatch(/\r\x1b\[K\[2\/2\] 3\.9 KB of 3\.9 KB, .*\/s, ETA /);
    expect(written.endsWith('\r\x1b[K')).toBe(true);
  });
});

describe('edge push content types', () => {
  it('come from mime-db: streaming, modern images, feeds, data', () => {
    expect(contentTypeFor('live/index.m3u8')).toBe('application/vnd.apple.mpegurl');
    expect(contentTypeFor('live/seg-001.ts')).toBe('video/mp2t');
    expect(contentTypeFor('dash/manifest.mpd')).toBe('application/dash+xml');
    expect(contentTypeFor('dash/chunk-1.m4s')).toBe('video/iso.segment');
    expect(contentTypeFor('img/a.jxl')).toBe('image/jxl');
    expect(contentTypeFor('img/a.HEIC')).toBe('image/heic');
    expect(contentTypeFor('feed.rss')).toBe('application/rss+xml');
    expect(contentTypeFor('feed.atom')).toBe('application/atom+xml');
    expect(contentTypeFor('ld.jsonld')).toBe('application/ld+json');
    expect(contentTypeFor('config.yaml')).toBe('text/yaml; charset=utf-8');
    expect(contentTypeFor('README')).toBe('application/octet-stream');
    expect(contentTypeFor('.bashrc')).toBe('application/octet-stream');
  });

  it('formats an ETA', () => {
    expect(formatDuration(4.4)).toBe('4s');
    expect(formatDuration(75)).toBe('1m15s');
    expect(formatDuration(3 * 3600 + 120)).toBe('3h02m');
    expect(formatDuration(Infinity)).toBe('?');
  });
});
