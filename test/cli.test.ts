/**
 * The command line as a user meets it: `npx edge --help`, a bad option,
 * and `npm start` with no origin (the embedded demo origin), then a
 * MISS followed by a HIT.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

const CLI = ['--import', 'tsx', 'edge/node/cli.ts'];

function runCli(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [...CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 20_000 });
}

let dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  dirs = [];
});

describe('npx edge', () => {
  it('installs its commands as executables (npm install builds dist/ in prepare)', async () => {
    const { readFile, access } = await import('node:fs/promises');
    const { constants } = await import('node:fs');
    const pkg = JSON.parse(await readFile('package.json', 'utf8')) as { bin: Record<string, string> };
    expect(Object.keys(pkg.bin).sort()).toEqual(['edge', 'origin-shield']);
    for (const target of Object.values(pkg.bin)) await access(target, constants.X_OK);
  });

  it('--help documents every option with its flag and environment variable', () => {
    const { status, stdout } = runCli(['--help']);
    expect(status).toBe(0);
    for (const expected of ['--origin', 'EDGE_ORIGIN', '--memory-size', 'EDGE_MEMORY_SIZE', '--disk-size', '--max-object-size', '--admin-token', 'EDGE_ADMIN_TOKEN', '--data-dir', '--config']) {
      expect(stdout).toContain(expected);
    }
  });

  it('stops with one line naming the option, the value and what is allowed', () => {
    const { status, stderr } = runCli(['--memory-size', 'lots', '--origin', 'http://127.0.0.1:9']);
    expect(status).toBe(2);
    expect(stderr).toMatch(/--memory-size \(EDGE_MEMORY_SIZE\): got "lots": expected a size such as 256MB/);
  });

  it('reads options from the environment and names the variable in errors', () => {
    const { status, stderr } = runCli([], { EDGE_PORT: 'eighty', EDGE_ORIGIN: 'ftp://x' });
    expect(status).toBe(2);
    expect(stderr).toMatch(/--port \(EDGE_PORT\): got "eighty": expected a whole number from 0 to 65535/);
    expect(stderr).toMatch(/--origin \(EDGE_ORIGIN\): got "ftp:\/\/x": expected an http:\/\/, https:\/\/ or s3:\/\/bucket URL/);
  });

  it('rejects unknown keys in a --config file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edge-cli-'));
    dirs.push(dir);
    const config = join(dir, 'edge.config.json');
    await writeFile(config, JSON.stringify({ origin: 'http://127.0.0.1:9', memorySise: '1GB' }));
    const { status, stderr } = runCli(['--config', config]);
    expect(status).toBe(2);
    expect(stderr).toMatch(/unknown option\(s\) "memorySise"/);
  });

  it('starts on the embedded demo origin without --origin: MISS, then HIT', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edge-cli-'));
    dirs.push(dir);
    const child = spawn(process.execPath, [...CLI, '--port', '0', '--host', '127.0.0.1', '--data-dir', dir, '--log-level', 'silent'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let text = '';
        child.stderr!.on('data', (chunk) => {
          text += chunk;
          const match = /listening on (http:\/\/\S+)/.exec(text);
          if (match) resolve(match[1]!);
        });
        child.once('exit', (code) => reject(new Error(`edge exited ${code}: ${text}`)));
      });
      const first = await fetch(`${url}/data/products.json`);
      expect(first.status).toBe(200);
      expect(first.headers.get('cache-status')).toMatch(/fwd=uri-miss; stored/);
      const body = await first.text();
      const second = await fetch(`${url}/data/products.json`);
      expect(second.headers.get('cache-status')).toMatch(/^edge; hit/);
      expect(await second.text()).toBe(body);
      const health = await fetch(`${url}/_edge/health`);
      expect(health.status).toBe(200);
    } finally {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
  });
});
