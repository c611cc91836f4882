/**
 * The access log as an operator tails it: the real `edge` command, its
 * stdout, one JSON line per request, and a quiet node still shows each
 * request without waiting for a batch to fill.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, expect, it } from 'vitest';
import { createAccessLog } from '../edge/node/access-log.js';
import type { RequestRecord } from '../edge/core/app.js';
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

/** The real `edge` command in front of `originUrl`, its stdout piped (the access log); resolves with its URL once it listens. */
async function startCli(originUrl: string, extra: string[] = []): Promise<string> {
  dir = await mkdtemp(join(tmpdir(), 'edge-log-'));
  const started = spawn(process.execPath, ['--import', 'tsx', 'edge/node/cli.ts', '--origin', originUrl, '--port', '0', '--host', '127.0.0.1', '--data-dir', dir, ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child = started;
  const stderr = createInterface({ input: started.stderr! });
  return new Promise<string>((resolve, reject) => {
    stderr.on('line', (line) => {
      const match = /listening on (http:\/\/\S+)/.exec(line);
      if (match) resolve(match[1]!);
    });
    started.once('exit', (code) => reject(new Error(`edge exited with ${code}`)));
  });
}

it('writes one JSON line per request, flushed on a quiet node without more traffic', async () => {
  origin = await startTestOrigin();
  origin.set('/logged.txt', { headers: { 'cache-control': 'max-age=60' }, body: 'hello log' });
  const url = await startCli(origin.url);
  const lines = createInterface({ input: child!.stdout! });
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

it('writes whole lines in order under steady traffic, through a pipe whose reader falls behind, without piling up listeners', async () => {
  // A pipe read by another process that starts late and reads slowly: the log must wait for it, never drop or split a line.
  dir = await mkdtemp(join(tmpdir(), 'edge-log-'));
  const fifo = join(dir, 'log.fifo');
  execFileSync('mkfifo', [fifo]);
  const writeFd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
  const reader = spawn(process.execPath, ['-e', `
    const { createReadStream } = require('node:fs');
    setTimeout(() => createReadStream(${JSON.stringify(fifo)}, { highWaterMark: 4096 }).pipe(process.stdout), 300);
  `], { stdio: ['ignore', 'pipe', 'inherit'] });
  child = reader;
  const received: Buffer[] = [];
  reader.stdout!.on('data', (chunk: Buffer) => received.push(chunk));
  const exited = new Promise((resolve) => reader.once('exit', resolve));

  // A flush that leaves a listener behind each time shows up as Node's MaxListenersExceededWarning.
  const warnings: Error[] = [];
  const onWarning = (warning: Error) => warnings.push(warning);
  process.on('warning', onWarning);
  const log = createAccessLog({ level: 'info', name: 'edge', fd: writeFd, flushIntervalMs: 5 });
  const record = (n: number): RequestRecord =>
    ({ method: 'GET', path: `/steady/${n}?${'q'.repeat(200)}`, status: 200, outcome: 'hit', bytes: 1024, durationMs: 0.1, at: Date.now(), requestId: `r-${n}`, answeredBy: 'hit', userAgent: 'ua "quoted" é' }) as RequestRecord;
  let written = 0;
  // Many flush ticks with lines arriving all the while, several times what the pipe holds (64 KiB).
  const until = Date.now() + 400;
  while (Date.now() < until || written * 250 < 256 * 1024) {
    for (let i = 0; i < 20; i++) log.write(record(written++));
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  log.close();
  closeSync(writeFd);
  await exited;
  process.off('warning', onWarning);
  expect(warnings.map((warning) => warning.message)).toEqual([]);

  const lines = Buffer.concat(received).toString('utf8').split('\n');
  expect(lines.pop()).toBe('');
  const parsed = lines.map((line) => JSON.parse(line) as { requestId: string; userAgent: string });
  expect(parsed.map((line) => line.requestId)).toEqual(Array.from({ length: written }, (_, n) => `r-${n}`));
  expect(parsed[0]!.userAgent).toBe('ua "quoted" é');
});

it('two cluster workers share stdout without splitting a line, and every request is logged once', async () => {
  origin = await startTestOrigin((_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=60', 'content-type': 'text/plain' });
    res.end('shared');
  });
  const url = await startCli(origin.url, ['--workers', '2']);
  const out: Buffer[] = [];
  child!.stdout!.on('data', (chunk: Buffer) => out.push(chunk));
  // Long targets make lines of about 600 bytes: a batch holds a few, and both workers write at once.
  const padding = 'p'.repeat(500);
  const total = 1200;
  let sent = 0;
  const answered: string[] = [];
  await Promise.all(
    Array.from({ length: 24 }, async () => {
      while (sent < total) {
        const n = sent++;
        const res = await fetch(`${url}/shared/${n % 40}?${padding}`);
        answered.push(res.headers.get('x-request-id')!);
        await res.arrayBuffer();
      }
    }),
  );
  const exited = new Promise((resolve) => child!.once('exit', resolve));
  child!.kill('SIGTERM');
  await exited;

  const lines = Buffer.concat(out).toString('utf8').split('\n');
  expect(lines.pop()).toBe('');
  const records = lines.map((line) => JSON.parse(line) as { requestId?: string; msg: string });
  const ids = records.filter((record) => record.msg === 'request').map((record) => record.requestId!);
  expect(ids.sort()).toEqual(answered.sort());
  expect(new Set(ids).size).toBe(total);
  // Both workers answered (a request id's prefix names its process): their lines met on one pipe.
  expect(new Set(ids.map((id) => id.slice(0, id.lastIndexOf('-')))).size).toBe(2);
}, 60_000);

it('a process that exits without closing the log still writes the lines it gathered', async () => {
  const module = new URL('../edge/node/access-log.ts', import.meta.url).pathname;
  const script = `
    const { createAccessLog } = await import(${JSON.stringify(module)});
    const log = createAccessLog({ level: 'info', name: 'edge' });
    for (let n = 0; n < 3; n++) log.write({ method: 'GET', path: '/gone/' + n, status: 200, durationMs: 0.1, at: Date.now(), requestId: 'exit-' + n, answeredBy: 'hit' });
    process.exit(0);
  `;
  const exiting = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  child = exiting;
  let out = '';
  exiting.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()));
  expect(await new Promise((resolve) => exiting.once('exit', resolve))).toBe(0);
  const ids = out.split('\n').filter(Boolean).map((line) => (JSON.parse(line) as { requestId: string }).requestId);
  expect(ids).toEqual(['exit-0', 'exit-1', 'exit-2']);
});
