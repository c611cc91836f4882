/**
 * Configuration reload (issues 15 and 16): the CLI as a real process with
 * a `--config` file, real origins, SIGHUP and `POST /_edge/reload`. The
 * file is rewritten between steps; nothing sleeps: every step waits on a
 * log line, an answer or a socket event.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Agent, createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect as http2Connect, type ClientHttp2Session } from 'node:http2';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startTestEdge } from './helpers/edge.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';
import { createTestCa, issueCertificate } from './helpers/tls.js';

const TOKEN = 'reload-admin-token-0123456789';
const AUTH = { authorization: `Bearer ${TOKEN}` };

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  /** The request went out on a kept-alive connection. */
  reused: boolean;
}

/** One request; `agent` keeps its connection open between requests, without one each has its own. */
function send(url: string, options: { method?: string; headers?: Record<string, string>; agent?: Agent } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? 'GET', agent: options.agent ?? false, headers: { ...(options.agent ? {} : { connection: 'close' }), ...options.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString(), reused: req.reusedSocket }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

const json = (answer: Answer) => JSON.parse(answer.body) as Record<string, unknown>;
/** Which process answered: the X-Request-Id prefix is one per process. */
const processOf = (answer: Answer) => String(answer.headers['x-request-id']).split('-')[0];

interface AccessRecord {
  requestId: string;
  outcome?: string;
  tier?: string;
}

interface Node {
  child: ChildProcess;
  url: string;
  dir: string;
  /** Resolves with the first stderr line matching that has not been consumed by an earlier wait. */
  waitFor(pattern: RegExp): Promise<RegExpExecArray>;
  /** Resolves with the access log record of a request (the log is flushed every second). */
  record(requestId: string): Promise<AccessRecord>;
  /** Has the access log a record of this request yet? */
  logged(requestId: string): boolean;
  exited: Promise<number | null>;
}

async function startNode(config: string, extra: string[] = []): Promise<Node> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-reload-'));
  const child = spawn(process.execPath, ['--import', 'tsx', 'edge/node/cli.ts', '--config', config, '--data-dir', join(dir, 'data'), ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const waiters: Array<{ pattern: RegExp; resolve: (match: RegExpExecArray) => void }> = [];
  createInterface({ input: child.stderr! }).on('line', (line) => {
    if (process.env.DEBUG_RELOAD) console.error(line);
    const waiter = waiters.find((w) => w.pattern.test(line));
    if (waiter) {
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve(waiter.pattern.exec(line)!);
    } else {
      lines.push(line);
    }
  });
  const records = new Map<string, AccessRecord>();
  const recordWaiters = new Map<string, (record: AccessRecord) => void>();
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const record = JSON.parse(line) as AccessRecord & { msg?: string };
    if (record.msg !== 'request') return;
    records.set(record.requestId, record);
    recordWaiters.get(record.requestId)?.(record);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const waitFor = (pattern: RegExp) =>
    new Promise<RegExpExecArray>((resolve, reject) => {
      const seen = lines.findIndex((line) => pattern.test(line));
      if (seen !== -1) return resolve(pattern.exec(lines.splice(seen, 1)[0]!)!);
      waiters.push({ pattern, resolve });
      void exited.then((code) => reject(new Error(`edge exited with ${code ?? child.signalCode}: ${lines.join('\n')}`)));
    });
  const record = (requestId: string) =>
    new Promise<AccessRecord>((resolve) => {
      const seen = records.get(requestId);
      if (seen) return resolve(seen);
      recordWaiters.set(requestId, resolve);
    });
  const [, url] = await waitFor(/listening on (http:\/\/\S+)/);
  return { child, url: url!, dir, waitFor, record, logged: (requestId) => records.has(requestId), exited };
}

async function stopNode(node: Node | undefined): Promise<void> {
  if (!node) return;
  if (node.child.exitCode === null && node.child.signalCode === null) node.child.kill('SIGTERM');
  await node.exited;
  await rm(node.dir, { recursive: true, force: true });
}

/**
 * Origin A: a plain node:http server whose idle connections stay open for
 * ten minutes, so a connection from the edge closes only when the edge
 * closes its client (the old pool after a reload), never by a timeout.
 */
interface LongLivedOrigin {
  url: string;
  server: Server;
  count(path: string): number;
  /** Hold `/moved/slow` until `release()`; resolves with its connection once it arrived. */
  holdSlow(): { arrived: Promise<Socket>; release(): void };
  close(): Promise<void>;
}

async function startLongLivedOrigin(): Promise<LongLivedOrigin> {
  const counts = new Map<string, number>();
  let slow: { arrived: (socket: Socket) => void; released: Promise<void> } | undefined;
  const server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    const path = req.url ?? '/';
    counts.set(path, (counts.get(path) ?? 0) + 1);
    if (path === '/kept') {
      res.writeHead(200, { 'cache-control': 'max-age=600', 'content-type': 'text/plain' }).end('kept from A');
      return;
    }
    if (path === '/moved/slow' && slow) {
      const held = slow;
      slow = undefined;
      held.arrived(req.socket);
      await held.released;
    }
    res.writeHead(200, { 'cache-control': 'no-store', 'content-type': 'text/plain' }).end(`A ${path}`);
  });
  server.keepAliveTimeout = 600_000;
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    server,
    count: (path) => counts.get(path) ?? 0,
    holdSlow() {
      let arrived!: (socket: Socket) => void;
      let release!: () => void;
      const arrival = new Promise<Socket>((resolve) => (arrived = resolve));
      slow = { arrived, released: new Promise<void>((resolve) => (release = resolve)) };
      return { arrived: arrival, release };
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** The config file: groups a (origin A) and b (origin B), `/moved/` routed to `movedTo`, and the rest given. */
function config(a: string, b: string, movedTo: 'a' | 'b', extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    port: 0,
    host: '127.0.0.1',
    workers: 1,
    adminToken: TOKEN,
    logLevel: 'info',
    origins: { groups: [{ name: 'a', members: [a] }, { name: 'b', members: [b] }], routes: [{ match: { pathPrefix: '/moved/' }, group: movedTo }] },
    ...extra,
  });
}

describe('configuration reload, one process', () => {
  let a: LongLivedOrigin;
  let b: TestOrigin;
  let dir: string;
  let file: string;
  let node: Node | undefined;

  beforeAll(async () => {
    a = await startLongLivedOrigin();
    b = await startTestOrigin((req, res) => {
      res.writeHead(200, { 'cache-control': 'no-store', 'content-type': 'text/plain' }).end(`B ${req.url}`);
    });
    dir = await mkdtemp(join(tmpdir(), 'edge-reload-config-'));
    file = join(dir, 'edge.json');
  });

  afterEach(async () => {
    await stopNode(node);
    node = undefined;
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('SIGHUP applies a new route rule, origin and deny rule; the memory-tier hit and an open keep-alive connection stay', async () => {
    await writeFile(file, config(a.url, b.url, 'a'));
    node = await startNode(file);
    const client = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      expect((await send(`${node.url}/kept`, { agent: client })).body).toBe('kept from A');
      const hit = await send(`${node.url}/kept`, { agent: client });
      expect(await node.record(String(hit.headers['x-request-id']))).toMatchObject({ outcome: 'hit', tier: 'memory' });
      expect((await send(`${node.url}/moved/x`, { agent: client })).body).toBe('A /moved/x');
      expect((await send(`${node.url}/secret/file`, { agent: client })).status).toBe(200);

      await writeFile(file, config(a.url, b.url, 'b', { deny: [{ path: '/secret/*' }] }));
      node.child.kill('SIGHUP');
      const [, changed] = await node.waitFor(/configuration reloaded \(SIGHUP\): changed (.*)/);
      expect(changed!.split(', ').sort()).toEqual(['deny', 'origins']);

      // New behaviour: the route now sends /moved/ to B, and the deny rule answers 403 before any cache or origin work.
      const moved = await send(`${node.url}/moved/x`, { agent: client });
      expect(moved.body).toBe('B /moved/x');
      expect(moved.reused).toBe(true);
      const denied = await send(`${node.url}/secret/file`, { agent: client });
      expect(denied.status).toBe(403);
      expect(json(denied)).toMatchObject({ error: 'EDGE_FORBIDDEN' });
      // The cache was kept: still a memory-tier hit, the origin not asked again.
      const kept = await send(`${node.url}/kept`, { agent: client });
      expect(kept.body).toBe('kept from A');
      expect(kept.reused).toBe(true);
      expect(await node.record(String(kept.headers['x-request-id']))).toMatchObject({ outcome: 'hit', tier: 'memory' });
      expect(a.count('/kept')).toBe(1);

      // A deny rule removed by a reload stops applying.
      await writeFile(file, config(a.url, b.url, 'b'));
      node.child.kill('SIGHUP');
      await node.waitFor(/configuration reloaded \(SIGHUP\): changed deny$/);
      const allowed = await send(`${node.url}/secret/file`, { agent: client });
      expect(allowed.status).toBe(200);
      expect(allowed.reused).toBe(true);
    } finally {
      client.destroy();
    }
  }, 60_000);

  it('refuses an invalid file with the start-up line and keeps running the previous configuration', async () => {
    await writeFile(file, config(a.url, b.url, 'a', { deny: [{ path: '/secret/*' }] }));
    node = await startNode(file);
    expect((await send(`${node.url}/secret/file`)).status).toBe(403);

    // A bad value: the schema's own line, as at start-up.
    await writeFile(file, config(a.url, b.url, 'b', { deny: 'not json' }));
    node.child.kill('SIGHUP');
    const [line] = await node.waitFor(/^edge: --deny \(EDGE_DENY\): got "not json": .*$/);
    expect(line).toBe('edge: --deny (EDGE_DENY): got "not json": expected a JSON array of rules, e.g. [{"path":"*.php"},{"cidr":"203.0.113.0/24"}]');
    await node.waitFor(/configuration NOT reloaded \(SIGHUP\); still running the previous one/);
    expect((await send(`${node.url}/secret/file`)).status).toBe(403);
    expect((await send(`${node.url}/moved/x`)).body).toBe('A /moved/x');

    // A file that is not JSON at all.
    await writeFile(file, '{ "deny": ');
    node.child.kill('SIGHUP');
    await node.waitFor(/^edge: --config \(EDGE_CONFIG\): cannot read .*edge\.json: /);
    await node.waitFor(/configuration NOT reloaded \(SIGHUP\)/);
    expect((await send(`${node.url}/secret/file`)).status).toBe(403);
    expect(node.child.exitCode).toBeNull();
  }, 60_000);

  it('refuses the whole reload when an option that takes a restart changed, naming it', async () => {
    await writeFile(file, config(a.url, b.url, 'a'));
    node = await startNode(file);
    const port = Number(new URL(node.url).port);
    // The port, and a deny rule that must not be applied either.
    await writeFile(file, config(a.url, b.url, 'b', { port: port + 1, deny: [{ path: '/secret/*' }] }));
    node.child.kill('SIGHUP');
    const [line] = await node.waitFor(/^edge: --port \(EDGE_PORT\): .*$/);
    expect(line).toBe('edge: --port (EDGE_PORT): got ' + (port + 1) + ', running with 0: the listening socket is opened at start-up; restart the node to change it');
    await node.waitFor(/configuration NOT reloaded \(SIGHUP\)/);
    expect((await send(`${node.url}/secret/file`)).status).toBe(200);
    expect((await send(`${node.url}/moved/x`)).body).toBe('A /moved/x');

    // The admin token is another, and its value is never printed.
    await writeFile(file, config(a.url, b.url, 'a', { adminToken: 'another-admin-token-0123456789' }));
    const refused = await send(`${node.url}/_edge/reload`, { method: 'POST', headers: AUTH });
    expect(refused.status).toBe(400);
    expect(json(refused)).toMatchObject({
      error: 'EDGE_BAD_CONFIG',
      problems: ['--admin-token (EDGE_ADMIN_TOKEN): got (hidden), running with (hidden): the admin API and fleet purges are set up with it at start-up; restart the node to change it'],
    });
    expect(refused.body).not.toContain('another-admin-token');
  }, 60_000);

  it('POST /_edge/reload needs the admin token, answers once applied, and 400 with the one-line problems when refused', async () => {
    await writeFile(file, config(a.url, b.url, 'a'));
    node = await startNode(file);
    await writeFile(file, config(a.url, b.url, 'a', { deny: [{ path: '/secret/*' }] }));

    const anonymous = await send(`${node.url}/_edge/reload`, { method: 'POST' });
    expect(anonymous.status).toBe(401);
    expect(json(anonymous)).toMatchObject({ error: 'EDGE_UNAUTHORIZED' });
    const wrong = await send(`${node.url}/_edge/reload`, { method: 'POST', headers: { authorization: 'Bearer not-the-admin-token' } });
    expect(wrong.status).toBe(401);
    // Nothing was reloaded by them.
    expect((await send(`${node.url}/secret/file`)).status).toBe(200);
    expect((await send(`${node.url}/_edge/reload`, { headers: AUTH })).status).toBe(405);

    const reloaded = await send(`${node.url}/_edge/reload`, { method: 'POST', headers: AUTH });
    expect(reloaded.status).toBe(200);
    expect(json(reloaded)).toEqual({ status: 'reloaded', changed: ['deny'] });
    expect((await send(`${node.url}/secret/file`)).status).toBe(403);
    await node.waitFor(/configuration reloaded \(POST \/_edge\/reload\): changed deny$/);

    await writeFile(file, config(a.url, b.url, 'a', { deny: [{ cidr: 'not-a-range' }] }));
    const refused = await send(`${node.url}/_edge/reload`, { method: 'POST', headers: AUTH });
    expect(refused.status).toBe(400);
    const body = json(refused);
    expect(body.error).toBe('EDGE_BAD_CONFIG');
    expect(body.problems).toEqual(['--deny (EDGE_DENY): got [{"cidr":"not-a-range"}]: rule 0.cidr: expected CIDR ranges such as 203.0.113.0/24 or 2001:db8::/32']);
    expect(body.message).toBe(`The configuration was not reloaded: ${(body.problems as string[]).join('; ')}`);
    expect((await send(`${node.url}/secret/file`)).status).toBe(403);
  }, 60_000);

  it('applies a new log level to the access log, and keeps rate-limit counters across a reload', async () => {
    // A day-long window: the count cannot roll over between these few requests (short of midnight UTC).
    await writeFile(file, config(a.url, b.url, 'a', { rateLimit: '3/1d' }));
    node = await startNode(file);
    const first = await send(`${node.url}/moved/x`);
    expect(String(first.headers.ratelimit)).toMatch(/^"default";r=2;/);
    await node.record(String(first.headers['x-request-id']));

    await writeFile(file, config(a.url, b.url, 'a', { rateLimit: '3/1d', logLevel: 'warn' }));
    node.child.kill('SIGHUP');
    await node.waitFor(/configuration reloaded \(SIGHUP\): changed logLevel$/);
    const quiet = await send(`${node.url}/moved/x`);
    // Counted on from before the reload: the second of three.
    expect(String(quiet.headers.ratelimit)).toMatch(/^"default";r=1;/);

    await writeFile(file, config(a.url, b.url, 'a', { rateLimit: '3/1d' }));
    node.child.kill('SIGHUP');
    await node.waitFor(/configuration reloaded \(SIGHUP\): changed logLevel$/);
    const loud = await send(`${node.url}/moved/x`);
    expect(String(loud.headers.ratelimit)).toMatch(/^"default";r=0;/);
    // The log is written in order: once the later request's line is there, the quiet one's would be too.
    await node.record(String(loud.headers['x-request-id']));
    expect(node.logged(String(quiet.headers['x-request-id']))).toBe(false);
    expect((await send(`${node.url}/moved/x`)).status).toBe(429);
  }, 60_000);

  it('lets a request in flight finish on the old origin client, then closes that client', async () => {
    await writeFile(file, config(a.url, b.url, 'a'));
    node = await startNode(file);
    const slow = a.holdSlow();
    const inFlight = send(`${node.url}/moved/slow`);
    const connection = await slow.arrived;
    const closed = new Promise<void>((resolve) => connection.once('close', resolve));

    await writeFile(file, config(a.url, b.url, 'b'));
    const reloaded = await send(`${node.url}/_edge/reload`, { method: 'POST', headers: AUTH });
    expect(json(reloaded)).toEqual({ status: 'reloaded', changed: ['origins'] });
    // New requests take the new route while the old one is still waiting on A (another path: this one's would join its flight).
    expect((await send(`${node.url}/moved/other`)).body).toBe('B /moved/other');
    expect(connection.destroyed).toBe(false);

    slow.release();
    const answer = await inFlight;
    expect(answer.status).toBe(200);
    expect(answer.body).toBe('A /moved/slow');
    // The old pool is closed once its request is done: A keeps idle connections for ten minutes, so only the edge can close this one.
    await closed;
  }, 60_000);
});

describe('configuration reload, --workers 2', () => {
  let origin: TestOrigin;
  let dir: string;
  let file: string;
  let node: Node | undefined;

  beforeAll(async () => {
    origin = await startTestOrigin((req, res) => {
      res.writeHead(200, { 'cache-control': 'no-store', 'content-type': 'text/plain' }).end(`origin ${req.url}`);
    });
    dir = await mkdtemp(join(tmpdir(), 'edge-reload-cluster-'));
    file = join(dir, 'edge.json');
    await writeFile(file, JSON.stringify({ origin: origin.url, port: 0, host: '127.0.0.1', workers: 2, adminToken: TOKEN, logLevel: 'warn' }));
    node = await startNode(file);
  }, 60_000);

  afterAll(async () => {
    await stopNode(node);
    await origin?.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Requests on separate connections until both workers have answered; every answer is checked. */
  async function fromBothWorkers(path: string, check: (answer: Answer) => void): Promise<void> {
    const seen = new Set<string>();
    for (let i = 0; i < 200 && seen.size < 2; i++) {
      const answer = await send(`${node!.url}${path}`);
      check(answer);
      seen.add(processOf(answer));
    }
    expect(seen.size).toBe(2);
  }

  it('POST /_edge/reload received by one worker reloads both, and answers once both have applied', async () => {
    await fromBothWorkers('/secret/a', (answer) => expect(answer.status).toBe(200));
    await writeFile(file, JSON.stringify({ origin: origin.url, port: 0, host: '127.0.0.1', workers: 2, adminToken: TOKEN, logLevel: 'warn', deny: [{ path: '/secret/*' }] }));
    const reloaded = await send(`${node!.url}/_edge/reload`, { method: 'POST', headers: AUTH });
    expect(reloaded.status).toBe(200);
    expect(json(reloaded)).toEqual({ status: 'reloaded', changed: ['deny'], workers: 2 });
    await node!.waitFor(/configuration reloaded \(POST \/_edge\/reload\) by 2 workers: changed deny$/);
    await fromBothWorkers('/secret/a', (answer) => expect(answer.status).toBe(403));
    await fromBothWorkers('/open', (answer) => expect(answer.body).toBe('origin /open'));
  }, 60_000);

  it('SIGHUP to the primary reloads every worker; a refused reload leaves both on the previous configuration', async () => {
    await writeFile(file, JSON.stringify({ origin: origin.url, port: 0, host: '127.0.0.1', workers: 2, adminToken: TOKEN, logLevel: 'warn', deny: [{ path: '/other/*' }] }));
    node!.child.kill('SIGHUP');
    await node!.waitFor(/configuration reloaded \(SIGHUP\) by 2 workers: changed deny$/);
    await fromBothWorkers('/secret/a', (answer) => expect(answer.status).toBe(200));
    await fromBothWorkers('/other/a', (answer) => expect(answer.status).toBe(403));

    await writeFile(file, JSON.stringify({ origin: origin.url, port: 0, host: '127.0.0.1', workers: 3, adminToken: TOKEN, logLevel: 'warn' }));
    const refused = await send(`${node!.url}/_edge/reload`, { method: 'POST', headers: AUTH });
    expect(refused.status).toBe(400);
    expect(json(refused).problems).toEqual(['--workers (EDGE_WORKERS): got 3, running with 2: the worker processes are forked at start-up; restart the node to change it']);
    await fromBothWorkers('/other/a', (answer) => expect(answer.status).toBe(403));
  }, 60_000);
  it('a replacement worker does not start from a file that changes what takes a restart', async () => {
    const base = { origin: origin.url, port: 0, host: '127.0.0.1', workers: 2, adminToken: TOKEN, logLevel: 'warn' };
    await writeFile(file, JSON.stringify({ ...base, memorySize: '1MB' }));
    const refused = await send(`${node!.url}/_edge/reload`, { method: 'POST', headers: AUTH });
    expect(refused.status).toBe(400);

    const { workers } = json(await send(`${node!.url}/_edge/health`)) as { workers: { pid: number }[] };
    const victim = workers[0]!.pid;
    process.kill(victim, 'SIGKILL');
    const [line] = await node!.waitFor(/^edge: --memory-size \(EDGE_MEMORY_SIZE\): .*$/);
    expect(line).toBe('edge: --memory-size (EDGE_MEMORY_SIZE): got 1048576, running with 268435456: the cache is kept across a reload; restart the node to change it');
    await node!.waitFor(/^edge: worker \d+ not started: the config file differs from what the cluster started with$/);
    // The other worker goes on serving.
    expect((await send(`${node!.url}/open`)).body).toBe('origin /open');

    // Once the file is fixed, the next replacement starts.
    await writeFile(file, JSON.stringify(base));
    let now = workers;
    while (now.length < 2 || now.some((w) => w.pid === victim)) now = (json(await send(`${node!.url}/_edge/health`)) as { workers: { pid: number }[] }).workers;
    await fromBothWorkers('/open', (answer) => expect(answer.body).toBe('origin /open'));
  }, 60_000);
});

describe('configuration reload, in process', () => {
  it('applies image options to the next request', async () => {
    const t = await startTestEdge();
    try {
      const jpeg = await sharp({ create: { width: 400, height: 300, channels: 3, background: 'grey' } }).jpeg().toBuffer();
      t.origin.set('/photo.jpg', { headers: { 'content-type': 'image/jpeg', 'cache-control': 'max-age=600' }, body: jpeg });
      expect((await t.get('/photo.jpg?width=123')).status).toBe(200);
      // A hit too, so the fresh-hit writer has met these parameters (it remembers them per configuration).
      const hit = await t.get('/photo.jpg?width=123');
      expect(hit.headers.get('cache-status')).toMatch(/; hit/);

      const outcome = await t.edge.reload('test', { ...t.options, imageWidths: '100,200' });
      expect(outcome).toEqual({ applied: true, changed: ['imageWidths'], problems: [] });
      const refused = await t.get('/photo.jpg?width=123');
      expect(refused.status).toBe(400);
      expect(await refused.json()).toMatchObject({ error: 'EDGE_BAD_PARAMETER' });
      expect((await t.get('/photo.jpg?width=200')).status).toBe(200);
      // The source was fetched once: the cache outlived the reload.
      expect(t.origin.count('/photo.jpg')).toBe(1);
    } finally {
      await t.close();
    }
  });

  it('a refused reload that would have turned images off leaves the transformer in use working', async () => {
    const t = await startTestEdge();
    try {
      const jpeg = await sharp({ create: { width: 400, height: 300, channels: 3, background: 'grey' } }).jpeg().toBuffer();
      t.origin.set('/photo.jpg', { headers: { 'content-type': 'image/jpeg', 'cache-control': 'max-age=600' }, body: jpeg });
      // Valid for the schema, refused when the access gate is built: a route wants API keys and there is no key file.
      const next = resolveEdgeOptions({
        port: 0,
        host: '127.0.0.1',
        dataDir: t.dataDir,
        logLevel: 'silent',
        images: false,
        origins: { groups: [{ name: 'a', members: [t.origin.url] }], routes: [{ match: { pathPrefix: '/keys/' }, access: { apiKey: true } }] },
      });
      const outcome = await t.edge.reload('test', next);
      expect(outcome.applied).toBe(false);
      expect(outcome.problems).toEqual([expect.stringContaining('access.apiKey')]);
      const image = await t.get('/photo.jpg?width=100&format=webp');
      expect(image.status).toBe(200);
      expect(image.headers.get('content-type')).toBe('image/webp');
    } finally {
      await t.close();
    }
  });

  it('keeps request collapsing: a request after the reload joins the origin fetch a request before it started', async () => {
    const t = await startTestEdge();
    let release!: () => void;
    try {
      let arrived!: () => void;
      const arrival = new Promise<void>((resolve) => (arrived = resolve));
      const released = new Promise<void>((resolve) => (release = resolve));
      t.origin.route('/hot', async (_req, res) => {
        arrived();
        await released;
        res.writeHead(200, { 'cache-control': 'max-age=600' }).end('hot');
      });
      const before = t.get('/hot');
      await arrival;
      const next = resolveEdgeOptions({ origin: t.origin.url, port: 0, host: '127.0.0.1', dataDir: t.dataDir, logLevel: 'silent', deny: [{ path: '/nothing' }] });
      expect(await t.edge.reload('test', next)).toEqual({ applied: true, changed: ['deny'], problems: [] });
      const after = t.get('/hot');
      // The second request waits behind the first one's flight (the table the new configuration uses too).
      while (t.edge.edge.pull.flightStats().waiters < 1) await new Promise((resolve) => setImmediate(resolve));
      release();
      expect(await (await before).text()).toBe('hot');
      expect(await (await after).text()).toBe('hot');
      expect(t.origin.count('/hot')).toBe(1);
    } finally {
      release();
      await t.close();
    }
  });

  it('takes a new --peers list and new --shield URLs into fleet purges', async () => {
    const t = await startTestEdge({ adminToken: TOKEN, peers: 'http://127.0.0.1:9' });
    try {
      const peers = async () => ((await (await t.get('/_edge/origins', { headers: AUTH })).json()) as { peers: { url: string; role: string }[] }).peers.map(({ url, role }) => `${role} ${url}`);
      expect(await peers()).toEqual(['edge http://127.0.0.1:9']);
      const next = resolveEdgeOptions({
        origin: t.origin.url,
        port: 0,
        host: '127.0.0.1',
        dataDir: t.dataDir,
        logLevel: 'silent',
        adminToken: TOKEN,
        peers: 'http://127.0.0.1:10,shield=http://127.0.0.1:12',
        shield: 'http://127.0.0.1:11',
      });
      const outcome = await t.edge.reload('test', next);
      expect(outcome.applied).toBe(true);
      expect(outcome.changed.sort()).toEqual(['peers', 'shield']);
      expect((await peers()).sort()).toEqual(['edge http://127.0.0.1:10', 'shield http://127.0.0.1:11', 'shield http://127.0.0.1:12']);
      // From a list to a file takes a restart.
      const file = await t.edge.reload('test', { ...next, peers: '@/etc/edge/peers' });
      expect(file.problems).toHaveLength(1);
      expect(file.problems[0]).toMatch(/^--peers \(EDGE_PEERS\): got "@\/etc\/edge\/peers", running with "http:\/\/127\.0\.0\.1:10,shield=http:\/\/127\.0\.0\.1:12": /);
    } finally {
      await t.close();
    }
  });

  it('keeps an HTTP/2 session open across a reload, the next stream on it under the new rules', async () => {
    const certs = await mkdtemp(join(tmpdir(), 'edge-reload-tls-'));
    const ca = createTestCa(certs);
    const leaf = issueCertificate(certs, ca, { name: 'leaf', serial: '0A' });
    const t = await startTestEdge({ tlsCert: leaf.certPath, tlsKey: leaf.keyPath });
    let session: ClientHttp2Session | undefined;
    try {
      t.origin.set('/secret/a', { headers: { 'cache-control': 'no-store' }, body: 'secret' });
      session = http2Connect(`https://localhost:${t.edge.port}`, { ca: ca.pem });
      const stream = (path: string) =>
        new Promise<number>((resolve, reject) => {
          const req = session!.request({ ':path': path });
          req.on('response', (headers) => resolve(Number(headers[':status'])));
          req.on('error', reject);
          req.resume();
          req.end();
        });
      let closed = false;
      session.once('close', () => (closed = true));
      expect(await stream('/secret/a')).toBe(200);
      const next = resolveEdgeOptions({ origin: t.origin.url, port: 0, host: '127.0.0.1', dataDir: t.dataDir, logLevel: 'silent', tlsCert: leaf.certPath, tlsKey: leaf.keyPath, deny: [{ path: '/secret/*' }] });
      expect((await t.edge.reload('test', next)).changed).toEqual(['deny']);
      expect(await stream('/secret/a')).toBe(403);
      expect(closed).toBe(false);
    } finally {
      session?.close();
      await t.close();
      await rm(certs, { recursive: true, force: true });
    }
  });

  it('refuses a reload that changes a restart-only option, naming every one, and applies nothing', async () => {
    const t = await startTestEdge();
    try {
      const next = resolveEdgeOptions({ origin: t.origin.url, port: 0, host: '::1', dataDir: t.dataDir + '-other', logLevel: 'silent', deny: '[{"path":"/x"}]' });
      const outcome = await t.edge.reload('test', next);
      expect(outcome.applied).toBe(false);
      expect(outcome.problems.map((line) => line.split(' ')[0])).toEqual(['--host', '--data-dir']);
      t.origin.set('/x', { body: 'x' });
      expect((await t.get('/x')).status).toBe(200);
    } finally {
      await t.close();
    }
  });

  it('answers POST /_edge/reload with 404 when the admin API is off, or when the node cannot read its configuration again', async () => {
    const off = await startTestEdge();
    const on = await startTestEdge({ adminToken: TOKEN });
    try {
      const disabled = await off.get('/_edge/reload', { method: 'POST' });
      expect(disabled.status).toBe(404);
      expect(await disabled.json()).toMatchObject({ error: 'EDGE_ADMIN_DISABLED' });
      const unsupported = await on.get('/_edge/reload', { method: 'POST', headers: AUTH });
      expect(unsupported.status).toBe(404);
      expect(await unsupported.json()).toMatchObject({ error: 'EDGE_NOT_FOUND' });
    } finally {
      await off.close();
      await on.close();
    }
  });
});
