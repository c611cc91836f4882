/**
 * Processes the bench starts: bench/child.ts servers, nginx and Varnish.
 * Each runs detached in its own process group, so stopping it (SIGTERM to
 * the group, SIGKILL after 5 s) also stops its workers; every group still
 * alive is killed when the bench exits, on Ctrl-C as well. Everything on
 * disk lives under one temporary directory removed at the end.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { onPath } from './load.js';

const live = new Set<ChildProcess>();
/** Scratch space for this run: edge data, nginx and Varnish directories, wrk scripts. */
export const scratch = mkdtempSync(join(tmpdir(), 'edge-bench-'));

export interface Started {
  url: string;
  child: ChildProcess;
}

function spawnGroup(command: string, args: string[], stdio: ('ignore' | 'pipe' | 'inherit' | number)[], env?: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn(command, args, { stdio, detached: true, env: env ?? process.env });
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
}

const exited = (child: ChildProcess) => child.exitCode !== null || child.signalCode !== null;

/** SIGTERM to the child's process group, SIGKILL if it is still there after 5 s. */
export function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (exited(child) || child.pid === undefined) return resolve();
    const timer = setTimeout(() => signalGroup(child, 'SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(timer);
      // Workers of a group leader that exited first (nginx, Varnish) go too.
      signalGroup(child, 'SIGKILL');
      resolve();
    });
    signalGroup(child, 'SIGTERM');
  });
}

function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-child.pid!, signal);
  } catch {
    // already gone
  }
}

export async function stopAll(): Promise<void> {
  await Promise.all([...live].map(stop));
  rmSync(scratch, { recursive: true, force: true });
}

process.once('exit', () => {
  for (const child of live) signalGroup(child, 'SIGKILL');
  rmSync(scratch, { recursive: true, force: true });
});
let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  // `on`, not `once`: Ctrl-C may arrive twice (from the terminal and relayed by tsx), and the
  // default action would exit before the cleanup.
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\nbench: ${signal}, stopping servers\n`);
    void stopAll().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  });
}

let devNull: number | undefined;

/** Start `bench/child.ts` with args; resolve with the URL it prints. */
export async function startChild(args: string[]): Promise<Started> {
  // stdin stays open: the child exits when it closes (this process died without stopping it).
  // stdout (an edge's access log) goes to /dev/null; the child reports its URL on fd 3.
  devNull ??= openSync('/dev/null', 'w');
  const child = spawnGroup(process.execPath, ['--import', 'tsx', new URL('./child.ts', import.meta.url).pathname, ...args], ['pipe', devNull, 'inherit', 'pipe'], {
    ...process.env,
    BENCH_SCRATCH: scratch,
    BENCH_READY_FD: '3',
  });
  const lines = createInterface({ input: child.stdio[3] as NodeJS.ReadableStream });
  const url = await new Promise<string>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`bench child ${args.join(' ')} exited with ${code}`)));
    lines.once('line', (line) => resolve((JSON.parse(line) as { url: string }).url));
  });
  return { url, child };
}

let cliRuns = 0;

/**
 * The CLIs the bench can start: `npx edge` and `npx origin-shield` (the same
 * node with shield defaults), compiled, as `npm start` runs them (see
 * `built()` in child.ts).
 */
const CLI_ENTRY = { edge: '../dist/edge/node/cli.js', 'origin-shield': '../dist/origin-shield/cli.js' } as const;

/**
 * Start the CLI (`dist/edge/node/cli.js`, or `dist/origin-shield/cli.js`; so
 * `--workers N` forks a real cluster) on a free loopback port with its data
 * under the scratch directory; resolve once it prints that it listens. The
 * access log is on, as shipped, and goes to /dev/null; the workers share the
 * primary's process group.
 */
export async function startEdgeCli(args: string[], command: keyof typeof CLI_ENTRY = 'edge'): Promise<Started> {
  devNull ??= openSync('/dev/null', 'w');
  const dataDir = join(scratch, `cli-${++cliRuns}`);
  const cli = new URL(CLI_ENTRY[command], import.meta.url).pathname;
  const child = spawnGroup(process.execPath, [cli, '--port', '0', '--host', '127.0.0.1', '--data-dir', dataDir, ...args], ['ignore', devNull, 'pipe']);
  let output = '';
  const lines = createInterface({ input: child.stderr! });
  const url = await new Promise<string>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`${command} ${args.join(' ')} exited with ${code}: ${output.slice(-600)}`)));
    lines.on('line', (line) => {
      output = `${output}${line}\n`.slice(-4000);
      const listening = /listening on (http:\/\/\S+)/.exec(line);
      if (listening) resolve(listening[1]!);
    });
  });
  return { url, child };
}

/** A port free right now on 127.0.0.1 (for servers that cannot report the one they bound). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Wait until `url` answers over HTTP, or the process exits, or 15 s pass. */
async function waitUntilServing(url: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (exited(child)) throw new Error(`exited with ${child.exitCode ?? child.signalCode}: ${output().trim().slice(-600)}`);
    try {
      await (await fetch(url, { signal: AbortSignal.timeout(1000) })).arrayBuffer();
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`not serving ${url} after 15 s: ${output().trim().slice(-600)}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

function collect(child: ChildProcess): () => string {
  let text = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (text = (text + chunk).slice(-4000)));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (text = (text + chunk).slice(-4000)));
  return () => text;
}

/** A server the bench compares with, or why it is not there. */
export type Peer = (Started & { version: string }) | { skipped: string };

/**
 * nginx with proxy_cache in front of `originUrl`: one worker process, access
 * log on (combined format, 4 KB buffer, to /dev/null like the edge's), cache
 * and temp paths in the scratch directory. Freshness from the origin's
 * Cache-Control (nginx's default).
 */
export async function startNginx(originUrl: string, probePath: string): Promise<Peer> {
  const nginx = onPath('nginx');
  if (!nginx) return { skipped: 'nginx not on the PATH (apt-get install nginx)' };
  const dir = join(scratch, 'nginx');
  mkdirSync(join(dir, 'logs'), { recursive: true });
  const port = await freePort();
  const origin = new URL(originUrl);
  const runningAsRoot = process.getuid?.() === 0;
  const conf = `# written by bench/procs.ts
${runningAsRoot ? 'user root;' : ''}
worker_processes 1;
daemon off;
master_process on;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log /dev/null combined buffer=4k;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65s;
  keepalive_requests 1000000;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy_temp;
  fastcgi_temp_path ${dir}/fastcgi_temp;
  uwsgi_temp_path ${dir}/uwsgi_temp;
  scgi_temp_path ${dir}/scgi_temp;
  proxy_cache_path ${dir}/cache levels=1:2 keys_zone=bench:10m max_size=1g inactive=60m use_temp_path=off;
  upstream origin {
    server ${origin.host};
    keepalive 16;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      add_header X-Cache-Status $upstream_cache_status;
    }
  }
}
`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  const child = spawnGroup(nginx, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'logs', 'error.log')], ['ignore', 'pipe', 'pipe']);
  const output = collect(child);
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitUntilServing(`${url}${probePath}`, child, () => {
      let log = '';
      try {
        log = readFileSync(join(dir, 'logs', 'error.log'), 'utf8');
      } catch {
        // none yet
      }
      return output() + log;
    });
  } catch (error) {
    await stop(child);
    return { skipped: `nginx did not start: ${(error as Error).message}` };
  }
  const version = await versionOf(nginx, ['-v'], /nginx\/([\d.]+)/);
  return { url, child, version: `nginx ${version}` };
}

/**
 * Varnish in front of `originUrl`: malloc storage, the built-in VCL (TTL
 * from the origin's Cache-Control), no jail, working directory in the
 * scratch directory, no management port.
 */
export async function startVarnish(originUrl: string, probePath: string): Promise<Peer> {
  const varnishd = onPath('varnishd');
  if (!varnishd) return { skipped: 'varnishd not on the PATH (apt-get install varnish)' };
  const dir = join(scratch, 'varnish');
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const origin = new URL(originUrl);
  const child = spawnGroup(
    varnishd,
    ['-F', '-j', 'none', '-n', dir, '-a', `127.0.0.1:${port}`, '-b', origin.host, '-s', 'malloc,256m', '-T', 'none'],
    ['ignore', 'pipe', 'pipe'],
  );
  const output = collect(child);
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitUntilServing(`${url}${probePath}`, child, output);
  } catch (error) {
    await stop(child);
    return { skipped: `varnishd did not start: ${(error as Error).message}` };
  }
  const version = await versionOf(varnishd, ['-V'], /varnish-([\d.]+)/);
  return { url, child, version: `Varnish ${version}` };
}

async function versionOf(command: string, args: string[], pattern: RegExp): Promise<string> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (chunk: Buffer) => (text += chunk));
    child.stderr.on('data', (chunk: Buffer) => (text += chunk));
    child.once('error', () => resolve('(version unknown)'));
    child.once('close', () => resolve(pattern.exec(text)?.[1] ?? '(version unknown)'));
  });
}
