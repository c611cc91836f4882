/**
 * Hardening of durations: every duration option takes ms, s, m, h and d,
 * and a bare number is seconds, as nginx reads it (`--stale-grace 1h` was
 * refused, `--origin-timeout 3` meant 3 ms). A bad value stops the node
 * with one line naming the flag and the units; so does a bad
 * `--image-widths` (`10..5:1`). Checked on the options schema and on real
 * `npx edge` processes.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { edgeOptionsSchema, parseDuration, resolveEdgeOptions } from '../edge/core/options.js';
import { originsConfigSchema } from '../edge/core/routes.js';
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

describe('durations', () => {
  /** Options whose description says they take a duration, held in ms or in seconds. */
  const durationOptions = Object.entries(edgeOptionsSchema.shape)
    .filter(([, schema]) => /a duration/.test(schema.description ?? ''))
    .map(([name]) => name);
  const msOptions = ['transformTimeout', 'connectTimeout', 'originTimeout', 'bodyTimeout', 'collapseTimeout', 'peerTimeout', 'peerRetry'];
  const secondOptions = ['pushTtl', 'staleGrace', 'heuristicMaxAge', 'defaultTtl'];

  it('every duration option says so in its description (the README table and --help come from it)', () => {
    expect(durationOptions.sort()).toEqual([...msOptions, ...secondOptions].sort());
  });

  it.each(msOptions)('%s (held in ms) takes ms, s, m, h, d, and a bare number is seconds', (name) => {
    const value = (input: unknown) => resolveEdgeOptions({ [name]: input })[name as 'connectTimeout'];
    expect(value('5')).toBe(5000);
    expect(value(5)).toBe(5000);
    expect(value('1.5')).toBe(1500);
    expect(value('250ms')).toBe(250);
    expect(value('5s')).toBe(5000);
    expect(value('2m')).toBe(120_000);
    expect(value('1h')).toBe(3_600_000);
    expect(value('1d')).toBe(86_400_000);
  });

  it.each(secondOptions)('%s (held in seconds) takes s, m, h, d, and a bare number is seconds', (name) => {
    const value = (input: unknown) => resolveEdgeOptions({ [name]: input })[name as 'staleGrace'];
    expect(value('90')).toBe(90);
    expect(value(90)).toBe(90);
    expect(value('2000ms')).toBe(2);
    expect(value('30s')).toBe(30);
    expect(value('5m')).toBe(300);
    expect(value('1h')).toBe(3600);
    expect(value('2d')).toBe(172_800);
  });

  it('parseDuration reads a bare number as seconds and answers milliseconds', () => {
    expect(parseDuration('5')).toBe(5000);
    expect(parseDuration(5)).toBe(5000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('1D')).toBe(86_400_000);
    expect(parseDuration('5x')).toBeUndefined();
    expect(parseDuration('-1s')).toBeUndefined();
    expect(parseDuration(-1)).toBeUndefined();
    expect(parseDuration('constructor')).toBeUndefined();
  });

  it('origin pool durations (health checks, ejection) and route TTLs read the same way', () => {
    const config = originsConfigSchema.parse({
      groups: [{ name: 'web', members: ['http://127.0.0.1:9'], healthCheck: { interval: '5', timeout: 2 }, ejectFor: '1m' }],
      routes: [{ match: { pathPrefix: '/a/' }, cache: { ttl: '1h', grace: '1d', staleIfError: 30 } }],
    });
    expect(config.groups[0]!.healthCheck).toMatchObject({ interval: 5000, timeout: 2000 });
    expect(config.groups[0]!.ejectFor).toBe(60_000);
    expect(config.routes[0]!.cache).toMatchObject({ ttl: 3600, grace: 86_400, staleIfError: 30 });
  });

  it('--stale-grace 1h and --heuristic-max-age 1d start the node', async () => {
    const dir = await tempDir();
    const origin = await startTestOrigin();
    origins.push(origin);
    const { url } = await startCli(['--origin', origin.url, '--data-dir', dir, '--stale-grace', '1h', '--heuristic-max-age', '1d', '--push-ttl', '7d']);
    expect((await fetch(`${url}/_edge/health`)).status).toBe(200);
  });

  it('a bare --origin-timeout 3 is three seconds, not 3 ms: an origin answering after 1.5 s is answered', async () => {
    // undici checks header timeouts about twice a second: 3 ms fires well before 1.5 s, 3 s well after.
    const dir = await tempDir();
    const origin = await startTestOrigin();
    origins.push(origin);
    origin.set('/slow', { delayMs: 1500, headers: { 'cache-control': 'max-age=60' }, body: 'in time' });
    const { url } = await startCli(['--origin', origin.url, '--data-dir', dir, '--origin-timeout', '3', '--connect-timeout', '3']);
    const res = await fetch(`${url}/slow`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('in time');
  });

  it.each([
    ['--connect-timeout', '5x', /--connect-timeout \(EDGE_CONNECT_TIMEOUT\): got "5x": expected a duration such as 5s \(ms, s, m, h or d; a bare number is seconds\)/],
    ['--stale-grace', 'soon', /--stale-grace \(EDGE_STALE_GRACE\): got "soon": expected a duration in whole seconds such as 1h \(s, m, h or d; a bare number is seconds\)/],
    ['--stale-grace', '1500ms', /--stale-grace \(EDGE_STALE_GRACE\): got "1500ms": expected a duration in whole seconds/],
    ['--origin-timeout', '30d', /--origin-timeout \(EDGE_ORIGIN_TIMEOUT\): got "30d": expected a duration of at most 24d/],
    ['--image-widths', '10..5:1', /--image-widths \(EDGE_IMAGE_WIDTHS\): got "10\.\.5:1": widths: '10\.\.5:1' needs 1 <= from <= to and step >= 1/],
    ['--image-widths', '0..100:0', /--image-widths \(EDGE_IMAGE_WIDTHS\): got "0\.\.100:0"/],
  ])('%s %s stops the node with one line naming the flag', (flag, value, expected) => {
    const { status, stderr } = runCli([flag, value, '--origin', 'http://127.0.0.1:9']);
    expect(status).toBe(2);
    expect(stderr).toMatch(expected);
  });
});

describe('unit names that are Object.prototype members', () => {
  it('are refused in sizes and durations (a plain-object lookup read "1constructor" as NaN bytes)', () => {
    expect(() => resolveEdgeOptions({ memorySize: '1constructor' })).toThrow(/--memory-size \(EDGE_MEMORY_SIZE\): got "1constructor": expected a size/);
    expect(() => resolveEdgeOptions({ connectTimeout: '1constructor' })).toThrow(/--connect-timeout \(EDGE_CONNECT_TIMEOUT\): got "1constructor": expected a duration/);
  });
});
