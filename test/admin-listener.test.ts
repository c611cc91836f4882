/**
 * `--admin-listen` (issue 15): a second plain HTTP listener answers
 * everything under `/_edge/` (with the admin token); the public port then
 * answers content and `GET /_edge/health` only, and every other `/_edge/`
 * path there is the same 404 as an endpoint that does not exist.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestOrigin } from './helpers/origin.js';
import { Agent, fetch as undiciFetch } from 'undici';
import { resolveEdgeOptions, EdgeOptionsError } from '../edge/core/options.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const TOKEN = 'a'.repeat(32);
const AUTH = { authorization: `Bearer ${TOKEN}` };

let t: TestEdge;
let client: Agent | undefined;
afterEach(async () => {
  await client?.close();
  client = undefined;
  const running = t;
  t = undefined as never;
  await running?.close();
});

async function start(input: Record<string, unknown> = {}): Promise<TestEdge> {
  t = await startTestEdge({ adminToken: TOKEN, adminListen: '127.0.0.1:0', ...input });
  client = new Agent();
  return t;
}

/** A request on the admin listener. */
const admin = (path: string, init: RequestInit = {}) =>
  undiciFetch(t.edge.adminUrl! + path, { ...(init as object), dispatcher: client! }) as unknown as Promise<Response>;

describe('--admin-listen', () => {
  it('serves push, purge, metrics, origins and health on the admin address, with the token', async () => {
    await start();
    expect(t.edge.adminUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(t.edge.admin!.port).not.toBe(t.edge.port);

    const pushed = await admin('/_edge/push/assets/app.css', { method: 'PUT', headers: { ...AUTH, 'content-type': 'text/css' }, body: 'body{}' });
    expect(pushed.status).toBe(201);
    await pushed.text();
    // The pushed object is content: the public port serves it.
    const served = await t.get('/assets/app.css');
    expect(served.status).toBe(200);
    expect(await served.text()).toBe('body{}');

    const anonymous = await admin('/_edge/purge', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"all":true}' });
    expect(anonymous.status).toBe(401);
    await anonymous.text();

    t.origin.set('/page', { headers: { 'cache-control': 'max-age=600' }, body: 'v1' });
    expect(await (await t.get('/page')).text()).toBe('v1');
    expect(await (await t.get('/page')).text()).toBe('v1');
    expect(t.origin.count('/page')).toBe(1);
    const purged = await admin('/_edge/purge', { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ urls: ['/page'] }) });
    expect(purged.status).toBe(200);
    await purged.text();
    t.origin.set('/page', { headers: { 'cache-control': 'max-age=600' }, body: 'v2' });
    expect(await (await t.get('/page')).text()).toBe('v2');
    expect(t.origin.count('/page')).toBe(2);

    const metrics = await admin('/_edge/metrics', { headers: AUTH });
    expect(metrics.status).toBe(200);
    expect(await metrics.text()).toMatch(/edge_requests_total/);
    const noTokenMetrics = await admin('/_edge/metrics');
    expect(noTokenMetrics.status).toBe(401);
    await noTokenMetrics.text();

    const origins = await admin('/_edge/origins', { headers: AUTH });
    expect(origins.status).toBe(200);
    expect(await origins.text()).toContain(new URL(t.origin.url).host);

    const objects = await admin('/_edge/objects', { headers: AUTH });
    expect(objects.status).toBe(200);
    await objects.text();

    const health = await admin('/_edge/health');
    expect(health.status).toBe(200);
    expect((await health.json()).status).toBe('ok');
  });

  it('answers no content on the admin address', async () => {
    await start();
    t.origin.set('/page', { body: 'content' });
    const res = await admin('/page');
    expect(res.status).toBe(404);
    expect((await res.json()).error).toBe('EDGE_NOT_FOUND');
    expect(t.origin.count('/page')).toBe(0);
  });

  it('on the public port: content and health work, every other /_edge/ path is the unknown-endpoint 404', async () => {
    await start();
    t.origin.set('/page', { headers: { 'cache-control': 'max-age=600' }, body: 'content' });
    expect(await (await t.get('/page')).text()).toBe('content');
    expect(await (await t.get('/page')).text()).toBe('content');
    expect(t.origin.count('/page')).toBe(1);

    const health = await t.get('/_edge/health');
    expect(health.status).toBe(200);
    const text = await health.text();
    expect(JSON.parse(text)).toMatchObject({ status: 'ok', store: expect.any(Object) });
    expect(text).not.toContain(new URL(t.origin.url).host);
    expect(text).not.toContain(String(t.edge.admin!.port));

    const unknown = await t.get('/_edge/no-such-endpoint');
    expect(unknown.status).toBe(404);
    const unknownBody = (await unknown.json()) as { error: string; message: string };
    expect(unknownBody.error).toBe('EDGE_NOT_FOUND');

    const refused: Array<[string, RequestInit]> = [
      ['/_edge/metrics', { headers: AUTH }],
      ['/_edge/metrics', {}],
      ['/_edge/origins', { headers: AUTH }],
      ['/_edge/objects', { headers: AUTH }],
      ['/_edge/purge', { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: '{"all":true}' }],
      ['/_edge/push/assets/x.css', { method: 'PUT', headers: AUTH, body: 'x' }],
      ['/_edge/push/assets/x.css', { method: 'DELETE', headers: AUTH }],
      // Other spellings of the same paths.
      ['/_edge/./metrics', { headers: AUTH }],
      ['/x/../_edge/origins', { headers: AUTH }],
      ['/%5Fedge/metrics', { headers: AUTH }],
      ['/_edge/%6Detrics', { headers: AUTH }],
      ['//_edge/metrics', { headers: AUTH }],
      ['/_EDGE/metrics', { headers: AUTH }],
      ['/_edge/metrics?x=1', { headers: AUTH }],
    ];
    for (const [path, init] of refused) {
      const res = await t.get(path, init);
      expect(res.status, `${init.method ?? 'GET'} ${path}`).toBe(404);
      expect(res.headers.get('www-authenticate'), path).toBeNull();
      const body = (await res.json()) as { error: string; message: string };
      // The same answer as an unknown endpoint: nothing says an admin listener exists.
      expect(body.error, path).toBe('EDGE_NOT_FOUND');
      expect(body.message, path).toBe(unknownBody.message);
    }
    // Nothing was pushed or purged through the public port.
    expect((await t.get('/assets/x.css')).status).not.toBe(200);
    expect(await (await t.get('/page')).text()).toBe('content');
    expect(t.origin.count('/page')).toBe(1);
  });

  it('accepts a presigned upload on the public port (its only /_edge/ route there), never the admin push', async () => {
    await start();
    const grant = await admin('/_edge/push-urls', {
      method: 'POST',
      headers: { ...AUTH, 'content-type': 'application/json' },
      body: JSON.stringify({ path: '/uploads/u.txt', expiresIn: '10m' }),
    });
    expect(grant.status).toBe(200);
    const { url } = (await grant.json()) as { url: string };
    // The token holder's own push stays off the public port...
    const adminPush = await t.get('/_edge/push/uploads/x.txt', { method: 'PUT', headers: AUTH, body: 'x' });
    expect(adminPush.status).toBe(404);
    await adminPush.text();
    // ...and so does a presigned URL carrying an Authorization header.
    const withAuth = await t.get(url, { method: 'PUT', headers: AUTH, body: 'x' });
    expect(withAuth.status).toBe(404);
    await withAuth.text();
    const upload = await t.get(url, { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'uploaded' });
    expect(upload.status).toBe(201);
    await upload.text();
    expect(await (await t.get('/uploads/u.txt')).text()).toBe('uploaded');
  });

  it('with a pool of origins, public health names none of them', async () => {
    const first = await startTestEdge();
    const pool = `${first.origin.url},http://127.0.0.1:9`;
    await first.close();
    await start({ origin: pool });
    const text = await (await t.get('/_edge/health')).text();
    expect(text).not.toContain(new URL(t.origin.url).host);
    expect(text).not.toContain('127.0.0.1:9');
    expect(await (await admin('/_edge/origins', { headers: AUTH })).text()).toContain('127.0.0.1:9');
  });

  it('without it, /_edge/ stays on the public port', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    expect(t.edge.adminUrl).toBeUndefined();
    expect((await t.get('/_edge/metrics', { headers: AUTH })).status).toBe(200);
  });

  it('is validated: host:port, and another port than --port', () => {
    expect(resolveEdgeOptions({ origin: 'http://o.test', adminListen: '[::1]:9090' }).adminListen).toBe('[::1]:9090');
    for (const bad of ['9090', '127.0.0.1', '127.0.0.1:99999', 'http://127.0.0.1:9090', '::1:9090']) {
      expect(() => resolveEdgeOptions({ origin: 'http://o.test', adminListen: bad }), bad).toThrow(/--admin-listen \(EDGE_ADMIN_LISTEN\).*host:port/);
    }
    expect(() => resolveEdgeOptions({ origin: 'http://o.test', port: 9090, adminListen: '127.0.0.1:9090' })).toThrow(EdgeOptionsError);
  });
});

/** One request on its own connection (so the cluster spreads them over its workers). */
function send(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers: { connection: 'close', ...headers } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('--admin-listen with --workers 2', () => {
  it('every worker listens on the admin address too (one shared socket)', async () => {
    const origin = await startTestOrigin();
    const dir = await mkdtemp(join(tmpdir(), 'edge-admin-cluster-'));
    // A fixed free port: with port 0, node:cluster does not share a worker's second listener.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const adminPort = (probe.address() as AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', 'edge/node/cli.ts', '--workers', '2', '--origin', origin.url, '--port', '0', '--host', '127.0.0.1', '--data-dir', dir, '--admin-token', TOKEN, '--admin-listen', `127.0.0.1:${adminPort}`],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      const lines: string[] = [];
      const urls = await new Promise<{ url: string; adminUrl: string }>((resolve, reject) => {
        let url: string | undefined;
        createInterface({ input: child.stderr! }).on('line', (line) => {
          lines.push(line);
          url ??= /listening on (http:\/\/\S+) .*2 workers/.exec(line)?.[1];
          const adminUrl = /\/_edge\/ \(admin API, metrics, origins\) on (http:\/\/\S+);/.exec(line)?.[1];
          if (url && adminUrl) resolve({ url, adminUrl });
        });
        void exited.then((code) => reject(new Error(`edge exited with ${code}: ${lines.join('\n')}`)));
      });
      const processes = new Set<string>(); // health's pid: the worker that answered
      for (let i = 0; i < 8; i++) {
        const metrics = await send(`${urls.adminUrl}/_edge/metrics`, AUTH);
        expect(metrics.status).toBe(200);
        expect(metrics.body).toMatch(/edge_requests_total/);
        expect((await send(`${urls.url}/_edge/metrics`, AUTH)).status).toBe(404);
        expect((await send(`${urls.url}/_edge/health`)).status).toBe(200);
      }
      // Health alone, one connection each (round-robin): each answer names its worker.
      for (let i = 0; i < 6; i++) {
        const health = await send(`${urls.adminUrl}/_edge/health`);
        expect(health.status).toBe(200);
        processes.add(String((JSON.parse(health.body) as { pid: number }).pid));
      }
      // Both workers answered on the admin address.
      expect(processes.size).toBe(2);
    } finally {
      child.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
      await origin.close();
    }
  }, 60_000);
});
