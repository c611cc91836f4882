/**
 * `edge` as an installed command (issue 15): `--version` and `--help` from
 * the sources, then `npm pack` and a global install of the tarball into a
 * temporary prefix, run from outside the repository.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const pkg = JSON.parse(await readFile('package.json', 'utf8')) as { version: string; files?: string[] };

function run(command: string, args: string[], options: { cwd?: string; timeout?: number } = {}) {
  return spawnSync(command, args, { encoding: 'utf8', cwd: options.cwd, timeout: options.timeout ?? 60_000, env: { ...process.env, npm_config_update_notifier: 'false' } });
}

const fromSource = (...args: string[]) => run(process.execPath, ['--import', 'tsx', 'edge/node/cli.ts', ...args]);

describe('edge --version and --help', () => {
  it('prints the version from package.json', () => {
    for (const flag of ['--version', '-v']) {
      const { status, stdout } = fromSource(flag);
      expect(status).toBe(0);
      expect(stdout.trim()).toBe(pkg.version);
    }
  });

  it('lists the commands: the node itself, edge push and edge sign', () => {
    const { status, stdout } = fromSource('--help');
    expect(status).toBe(0);
    expect(stdout).toMatch(/^Usage: npx edge --origin <url>/);
    expect(stdout).toContain('npx edge push <dir> --to <url> [--delete] [--dry-run]');
    expect(stdout).toContain('npx edge sign <url>');
    expect(stdout).toContain('npx edge --version');
  });
});

describe('npm pack, then npm install -g of the tarball', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  });

  it('ships dist/ (with the demo origin fixtures) and installs a working edge command', { timeout: 600_000 }, async () => {
    expect(pkg.files).toEqual(expect.arrayContaining(['dist/']));
    const work = await mkdtemp(join(tmpdir(), 'edge-install-'));
    dirs.push(work);

    // prepare (npm run build) runs first, so the tarball holds what the sources say.
    const packed = run('npm', ['pack', '--json', '--pack-destination', work], { timeout: 400_000 });
    expect(packed.status, packed.stderr).toBe(0);
    const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
    const paths = info!.files.map((f) => f.path);
    for (const path of ['package.json', 'dist/edge/node/cli.js', 'dist/edge/node/push-cli.js', 'dist/fixtures/demo-objects.js', 'dist/origin-shield/cli.js']) {
      expect(paths, path).toContain(path);
    }
    expect(paths.some((p) => p.startsWith('test/') || p.startsWith('edge/') || p.startsWith('bench/'))).toBe(false);

    const prefix = join(work, 'prefix');
    const install = (mode: '--offline' | '--prefer-offline') =>
      run('npm', ['install', '-g', '--prefix', prefix, mode, '--no-audit', '--no-fund', '--omit=dev', join(work, info!.filename)], { cwd: work, timeout: 400_000 });
    // Offline from the npm cache when it holds every package document; a
    // cache filled from the lockfile holds the tarballs only, so then the
    // registry is asked for what is missing.
    let installed = install('--offline');
    if (installed.status !== 0 && /ENOTCACHED/.test(installed.stderr)) installed = install('--prefer-offline');
    expect(installed.status, installed.stderr).toBe(0);

    const edge = join(prefix, 'bin', 'edge');
    const version = run(edge, ['--version'], { cwd: work });
    expect(version.status, version.stderr).toBe(0);
    expect(version.stdout.trim()).toBe(pkg.version);
    const help = run(edge, ['--help'], { cwd: work });
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toContain('--origin');
    expect(help.stdout).toContain('npx edge push <dir>');
    const pushHelp = run(edge, ['push', '--help'], { cwd: work });
    expect(pushHelp.status).toBe(0);
    expect(pushHelp.stderr).toContain('--dry-run');

    // The status page's files come from the installed package (its own files in dist/, uPlot from node_modules).
    const node = spawn(edge, ['--origin', 'http://127.0.0.1:9', '--port', '0', '--host', '127.0.0.1', '--workers', '1', '--data-dir', join(work, 'data'), '--admin-token', 'i'.repeat(32)], {
      cwd: work,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const exited = new Promise((resolve) => node.once('exit', resolve));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        const lines: string[] = [];
        createInterface({ input: node.stderr! }).on('line', (line) => {
          lines.push(line);
          const match = /listening on (http:\/\/\S+)/.exec(line);
          if (match) resolve(match[1]!);
        });
        void exited.then((code) => reject(new Error(`edge exited with ${code}: ${lines.join('\n')}`)));
      });
      const page = await fetch(`${url}/_edge/`);
      expect(page.status).toBe(200);
      expect(await page.text()).toContain('/_edge/assets/status.js');
      for (const file of ['status.js', 'status.css', 'uplot.js', 'uplot.css']) {
        const asset = await fetch(`${url}/_edge/assets/${file}`);
        expect(asset.status, file).toBe(200);
        expect((await asset.text()).length, file).toBeGreaterThan(100);
      }
    } finally {
      node.kill('SIGTERM');
      await exited;
    }
  });
});
