/**
 * The access log as an operator tails it: the real `edge` command, its
 * stdout, one JSON line per request, and a quiet node still shows each
 * request without waiting for a batch to fill.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, expect, it } from 'vitest';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

let child: ChildProcess | undefined;
let origin: TestOrigin | undefined;
let dir: string | undefined;
afterEach(async () => {
  child?.kill('SIGKILL');
  await origin?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
  child = origin = dir = undefined;
});

it('writes one JSON line per request, flushed on a quiet node without more traffic', async () => {
  origin = await startTestOrigin();
  origin.set('/logged.txt', { headers: { 'cache-control': 'max-age=60' }, body: 'hello log' });
  dir = await mkdtemp(join(tmpdir(), 'edge-log-'));
  child = spawn(process.execPath, ['--import', 'tsx', 'edge/node/cli.ts', '--origin', origin.url, '--port', '0', '--host', '127.0.0.1', '--data-dir', dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stderr = createInterface({ input: child.stderr! });
  const url = await new Promise<string>((resolve, reject) => {
    stderr.on('line', (line) => {
      const match = /listening on (http:\/\/\S+)/.exec(line);
      if (match) resolve(match[1]!);
    });
    child!.once('exit', (code) => reject(new Error(`edge exited with ${code}`)));
  });
  const lines = createInterface({ input: child.stdout! });
  const first = new Promise<string>((resolve) => lines.once('line', resolve));
  const res = await fetch(`${url}/logged.txt`, { headers: { 'user-agent': 'log-test/1', referer: 'https://example.org/page' } });
  expect(await res.text()).toBe('hello log');
  // One request, then nothing: the line must still arrive (the batch is flushed every second).
  const record = JSON.parse(await first) as Record<string, unknown>;
  expect(record).toMatchObject({
    level: 30,
    msg: 'request',
    node: 'edge',
    method: 'GET',
    path: '/logged.txt',
    status: 200,
    outcome: 'miss',
    bytes: 9,
    userAgent: 'log-test/1',
    referer: 'https://example.org/page',
    requestId: res.headers.get('x-request-id'),
    cacheStatus: res.headers.get('cache-status'),
  });
  expect(typeof record.time).toBe('number');
  expect(typeof record.durationMs).toBe('number');
});
