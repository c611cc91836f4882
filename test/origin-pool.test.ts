/**
 * Origin pools (issue 5): real `node:http` members on ephemeral ports
 * behind an `OriginPool`: retries, active health checks, passive ejection,
 * round robin and least outstanding, backup groups, route rules and sticky
 * sessions; then the same through a real edge node. Health checks run on
 * real time with a short interval; waits are bounded polls, never timing
 * assertions.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveEdgeOptions } from '../edge/core/options.js';
import type { OriginClient } from '../edge/core/origin/types.js';
import { originsConfigSchema } from '../edge/core/routes.js';
import { OriginPool, createOriginClient, type OriginPoolStatus } from '../edge/node/origin-pool.js';
import { S3OriginClient } from '../edge/node/s3-origin.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { UndiciOriginClient } from '../edge/node/undici-origin.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

/** A member origin that answers with its name, can fail on cue, hold requests open, and restart on its port. */
interface Member {
  name: string;
  url: string;
  port: number;
  /** Paths received, in order (health checks included). */
  hits: string[];
  count(path?: string): number;
  /** Status answered for a path (default 200). */
  statusFor: Map<string, number>;
  /** Requests for `/hold` wait until `release()`. */
  release(): void;
  stop(): Promise<void>;
  /** Listen again on the same port. */
  restart(): Promise<void>;
}

const members: Member[] = [];
const pools: OriginClient[] = [];

async function startMember(name: string): Promise<Member> {
  let server: Server;
  const sockets = new Set<Socket>();
  const held: ServerResponse[] = [];
  const member: Member = {
    name,
    url: '',
    port: 0,
    hits: [],
    statusFor: new Map(),
    count: (path) => (path === undefined ? member.hits.length : member.hits.filter((p) => p === path).length),
    release() {
      for (const res of held.splice(0)) res.end(name);
    },
    async stop() {
      member.release();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
    },
    async restart() {
      await listen(member.port);
    },
  };
  async function listen(port: number): Promise<void> {
    server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0]!;
      member.hits.push(path);
      req.resume();
      res.setHeader('x-member', name);
      res.setHeader('content-type', 'text/plain');
      if (req.headers.cookie) res.setHeader('x-saw-cookie', req.headers.cookie);
      res.statusCode = member.statusFor.get(path) ?? 200;
      if (path === '/hold') held.push(res);
      else res.end(name);
    });
    server.on('connection', (socket) => {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    member.port = (server.address() as AddressInfo).port;
    member.url = `http://127.0.0.1:${member.port}`;
  }
  await listen(0);
  members.push(member);
  return member;
}

function pool(config: unknown, start = true): OriginPool {
  const p = new OriginPool({ config: originsConfigSchema.parse(config), connectTimeout: 2000 });
  pools.push(p);
  if (start) p.start();
  return p;
}

async function get(client: OriginClient, path: string, init: { method?: string; headers?: Record<string, string> } = {}) {
  const res = await client.fetch({ method: init.method ?? 'GET', pathAndQuery: path, headers: new Headers(init.headers ?? {}) });
  return { status: res.status, member: res.headers.get('x-member'), body: await res.text(), setCookie: res.headers.get('set-cookie'), headers: res.headers };
}

/** Poll until `predicate` holds (real time, bounded); fails with `what` otherwise. */
async function waitFor(what: string, predicate: () => boolean, timeoutMs = 8000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function memberStatus(status: OriginPoolStatus, url: string) {
  for (const group of status.groups) for (const m of group.members) if (m.url === url) return m;
  throw new Error(`no member ${url} in status`);
}

afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => p.close?.()));
  await Promise.all(members.splice(0).map((m) => m.stop().catch(() => undefined)));
});

describe('retries and health checks', () => {
  it('answers every request while one member is down, reports it down, and takes it back once it recovers', async () => {
    const a = await startMember('a');
    const b = await startMember('b');
    await b.stop();
    const p = pool({
      groups: [{ name: 'web', members: [a.url, b.url], healthCheck: { path: '/health', interval: '100ms', timeout: '1s', healthyThreshold: 2, unhealthyThreshold: 2 }, ejectAfterFailures: 100 }],
    });

    // Before the health checks notice, requests that hit the stopped member are retried on the other one.
    const early = await Promise.all(Array.from({ length: 6 }, () => get(p, '/page')));
    expect(early.map((r) => [r.status, r.member])).toEqual(Array(6).fill([200, 'a']));

    await waitFor('b marked unhealthy', () => !memberStatus(p.status(), b.url).healthy);
    const down = memberStatus(p.status(), b.url);
    expect(down).toMatchObject({ healthy: false, available: false, inFlight: 0 });
    expect(down.recentErrors.at(-1)!.message).toMatch(/^health check \/health: The origin http:\/\/127\.0\.0\.1:\d+ could not be reached\.$/);
    expect(down.recentErrors.some((e) => /could not be reached/.test(e.message))).toBe(true);
    expect(memberStatus(p.status(), a.url)).toMatchObject({ healthy: true, available: true });

    const whileDown = [];
    for (let i = 0; i < 6; i++) whileDown.push(await get(p, '/page'));
    expect(whileDown.every((r) => r.status === 200 && r.member === 'a')).toBe(true);

    await b.restart();
    await waitFor('b healthy again', () => memberStatus(p.status(), b.url).healthy);
    expect(p.status().groups[0]!.available).toBe(2);
    const after = [];
    for (let i = 0; i < 4; i++) after.push((await get(p, '/page')).member);
    expect(after.sort()).toEqual(['a', 'a', 'b', 'b']);
    expect(b.count('/page')).toBe(2);
  });

  it('does not retry a request with a body, and answers 502 when no member can be reached', async () => {
    const a = await startMember('a');
    await a.stop();
    const p = pool({ groups: [{ name: 'web', members: [a.url] }] });
    await expect(get(p, '/x')).rejects.toMatchObject({ code: 'EDGE_ORIGIN_UNREACHABLE', status: 502 });

    const b = await startMember('b');
    const c = await startMember('c');
    await c.stop();
    const q = pool({ groups: [{ name: 'web', members: [c.url, b.url] }] });
    // Round robin starts at c: a POST with a body is not sent twice.
    await expect(q.fetch({ method: 'POST', pathAndQuery: '/form', headers: new Headers(), body: new Blob(['x=1']).stream() })).rejects.toMatchObject({ code: 'EDGE_ORIGIN_UNREACHABLE' });
    expect(b.count('/form')).toBe(0);
  });

  it('ejects a member after N consecutive 5xx and sends its traffic elsewhere', async () => {
    const a = await startMember('a');
    const b = await startMember('b');
    b.statusFor.set('/page', 503);
    const p = pool({ groups: [{ name: 'web', members: [a.url, b.url], ejectAfterFailures: 2, ejectFor: '1m' }] });

    const first = [];
    for (let i = 0; i < 4; i++) first.push(await get(p, '/page'));
    expect(first.map((r) => `${r.member}:${r.status}`)).toEqual(['a:200', 'b:503', 'a:200', 'b:503']);
    const ejected = memberStatus(p.status(), b.url);
    expect(ejected.available).toBe(false);
    expect(ejected.healthy).toBe(true);
    expect(Date.parse(ejected.ejectedUntil!)).toBeGreaterThan(Date.now());
    expect(ejected.failures).toBe(2);
    expect(ejected.recentErrors.map((e) => e.message)).toEqual(['answered 503', 'answered 503', 'ejected for 60000 ms after 2 consecutive failures']);

    const later = [];
    for (let i = 0; i < 5; i++) later.push(await get(p, '/page'));
    expect(later.every((r) => r.member === 'a' && r.status === 200)).toBe(true);
    expect(b.count('/page')).toBe(2);
  });

  it('a success resets the consecutive failure count', async () => {
    const a = await startMember('a');
    a.statusFor.set('/bad', 500);
    const p = pool({ groups: [{ name: 'web', members: [a.url], ejectAfterFailures: 2 }] });
    for (const path of ['/bad', '/ok', '/bad', '/ok', '/bad']) await get(p, path);
    expect(memberStatus(p.status(), a.url)).toMatchObject({ available: true, ejectedUntil: null, failures: 3, requests: 5 });
  });
});

describe('load balancing', () => {
  it('round robin spreads requests evenly', async () => {
    const ms = await Promise.all(['a', 'b', 'c'].map(startMember));
    const p = pool({ groups: [{ name: 'web', members: ms.map((m) => m.url) }] });
    for (let i = 0; i < 9; i++) await get(p, '/rr');
    expect(ms.map((m) => m.count('/rr'))).toEqual([3, 3, 3]);
    expect(p.status().groups[0]!.members.map((m) => m.requests)).toEqual([3, 3, 3]);
  });

  it('least outstanding sends new requests to the idle member while the other is busy', async () => {
    const a = await startMember('a');
    const b = await startMember('b');
    const p = pool({ groups: [{ name: 'web', members: [a.url, b.url], balance: 'least-outstanding' }] });
    const slow = get(p, '/hold');
    await waitFor('the held request to arrive', () => a.count('/hold') + b.count('/hold') === 1);
    const busy = a.count('/hold') === 1 ? a : b;
    const idle = busy === a ? b : a;
    expect(memberStatus(p.status(), busy.url).inFlight).toBe(1);

    for (let i = 0; i < 5; i++) expect((await get(p, '/quick')).member).toBe(idle.name);
    expect(busy.count('/quick')).toBe(0);

    busy.release();
    expect((await slow).body).toBe(busy.name);
    expect(memberStatus(p.status(), busy.url).inFlight).toBe(0);
    // Both idle again: ties rotate.
    const names = [];
    for (let i = 0; i < 4; i++) names.push((await get(p, '/quick')).member);
    expect(new Set(names).size).toBe(2);
  });

  it('counts a request in flight until its body is read or cancelled', async () => {
    const a = await startMember('a');
    const p = pool({ groups: [{ name: 'web', members: [a.url] }] });
    const res = await p.fetch({ method: 'GET', pathAndQuery: '/x', headers: new Headers() });
    expect(memberStatus(p.status(), a.url).inFlight).toBe(1);
    await res.body!.cancel();
    expect(memberStatus(p.status(), a.url).inFlight).toBe(0);
  });
});

describe('backup group', () => {
  it('serves from the backup while the primary has no healthy member, and only then', async () => {
    const primary = await startMember('primary');
    const backup = await startMember('backup');
    const p = pool({
      groups: [
        { name: 'main', members: [primary.url], backup: 'standby', healthCheck: { path: '/health', interval: '100ms', unhealthyThreshold: 1, healthyThreshold: 1 } },
        { name: 'standby', members: [backup.url] },
      ],
    });
    expect((await get(p, '/a')).member).toBe('primary');
    expect(backup.count()).toBe(0);

    await primary.stop();
    // Even before the health check notices, the failed connect is retried on the backup.
    expect(await get(p, '/b')).toMatchObject({ status: 200, member: 'backup' });
    await waitFor('primary marked unhealthy', () => !memberStatus(p.status(), primary.url).healthy);
    const before = primary.count();
    for (let i = 0; i < 3; i++) expect((await get(p, '/c')).member).toBe('backup');
    expect(primary.count()).toBe(before);
    expect(p.status().groups.map((g) => [g.name, g.available])).toEqual([
      ['main', 0],
      ['standby', 1],
    ]);

    await primary.restart();
    await waitFor('primary healthy again', () => memberStatus(p.status(), primary.url).healthy);
    expect((await get(p, '/d')).member).toBe('primary');
  });
});

describe('route rules', () => {
  it('picks the group by path prefix, host and header, in config order, else the default group', async () => {
    const [api, images, admin, canary, web] = await Promise.all(['api', 'images', 'admin', 'canary', 'web'].map(startMember));
    const p = pool({
      groups: [
        { name: 'web', members: [web!.url] },
        { name: 'api', members: [api!.url] },
        { name: 'images', members: [images!.url] },
        { name: 'admin', members: [admin!.url] },
        { name: 'canary', members: [canary!.url] },
      ],
      routes: [
        { match: { header: { name: 'X-Canary', value: '1' } }, group: 'canary' },
        { match: { pathPrefix: '/api/*' }, group: 'api' },
        { match: { pathPrefix: '/images/' }, group: 'images' },
        { match: { host: '*.admin.example.com' }, group: 'admin' },
        { match: { pathPrefix: '/cached/' }, cache: { ttl: 60 } },
      ],
    });
    const through = async (path: string, headers: Record<string, string> = {}) => (await get(p, path, { headers })).member;
    expect(await through('/api/users?id=1')).toBe('api');
    expect(await through('/images/logo.png')).toBe('images');
    expect(await through('/imagesX')).toBe('web');
    expect(await through('/', { 'x-forwarded-host': 'eu.admin.example.com' })).toBe('admin');
    expect(await through('/', { 'x-forwarded-host': 'admin.example.com.evil.test' })).toBe('web');
    expect(await through('/api/users', { 'x-canary': '1' })).toBe('canary');
    expect(await through('/cached/x')).toBe('web');
    expect(await through('/other')).toBe('web');
  });

  it('uses defaultGroup when set', async () => {
    const a = await startMember('a');
    const b = await startMember('b');
    const p = pool({ groups: [{ name: 'a', members: [a.url] }, { name: 'b', members: [b.url] }], defaultGroup: 'b' });
    expect((await get(p, '/x')).member).toBe('b');
  });
});

describe('sticky sessions', () => {
  it('pins passing requests to the member named by the cookie, and sets it when absent', async () => {
    const a = await startMember('a');
    const b = await startMember('b');
    const p = pool({
      groups: [{ name: 'app', members: [a.url, b.url], stickyCookie: 'edge_affinity' }],
      routes: [{ match: { pathPrefix: '/live/' }, cache: { bypass: true } }],
    });
    const first = await get(p, '/cart', { method: 'POST', headers: { 'x-forwarded-proto': 'https' } });
    const [, id] = /^edge_affinity=([0-9a-f]{16}); Path=\/; HttpOnly; SameSite=Lax; Secure$/.exec(first.setCookie ?? '') ?? [];
    expect(id).toBeDefined();
    const pinned = first.member;
    const cookie = `other=1; edge_affinity=${id}`;
    for (let i = 0; i < 4; i++) {
      const next = await get(p, '/cart', { method: 'POST', headers: { cookie } });
      expect(next.member).toBe(pinned);
      expect(next.setCookie).toBeNull();
    }
    // A bypassed route is passing traffic too.
    expect((await get(p, '/live/feed', { headers: { cookie } })).member).toBe(pinned);
    // Cacheable GETs are balanced whatever the cookie says.
    const gets = [];
    for (let i = 0; i < 4; i++) gets.push(await get(p, '/page', { headers: { cookie } }));
    expect(new Set(gets.map((r) => r.member))).toEqual(new Set(['a', 'b']));
    expect(gets.every((r) => r.setCookie === null)).toBe(true);
    expect(p.status().groups[0]!.members.map((m) => m.id)).toContain(id);
  });

  it('moves the session to another member when its member is down, and says so in the cookie', async () => {
    const a = await startMember('a');
    const b = await startMember('b');
    const p = pool({ groups: [{ name: 'app', members: [a.url, b.url], stickyCookie: 'sid', ejectAfterFailures: 1, ejectFor: '1m' }] });
    const ids = Object.fromEntries(p.status().groups[0]!.members.map((m) => [m.url, m.id]));
    await a.stop();
    // The pinned member refuses the connection: the request (no body) is retried on b, and the cookie follows.
    const moved = await get(p, '/cart', { method: 'DELETE', headers: { cookie: `sid=${ids[a.url]}` } });
    expect(moved).toMatchObject({ status: 200, member: 'b' });
    expect(moved.setCookie).toBe(`sid=${ids[b.url]}; Path=/; HttpOnly; SameSite=Lax`);
    // Now ejected, a is not even tried.
    const again = await get(p, '/cart', { method: 'POST', headers: { cookie: `sid=${ids[a.url]}` } });
    expect(again.member).toBe('b');
    expect(again.setCookie).toBe(`sid=${ids[b.url]}; Path=/; HttpOnly; SameSite=Lax`);
  });
});

describe('createOriginClient', () => {
  it('builds a plain client for one URL and a pool for a list or an origins config', async () => {
    const a = await startMember('a');
    const b = await startMember('b');
    const timeouts = { connectTimeout: 1000, originTimeout: 1000, bodyTimeout: 1000, originConnections: 4 };
    const single = createOriginClient({ origin: a.url, ...timeouts });
    pools.push(single);
    expect(single).toBeInstanceOf(UndiciOriginClient);
    expect(single.status).toBeUndefined();

    const s3 = createOriginClient({ origin: 's3://media/p?region=us-east-1&endpoint=http://127.0.0.1:9', ...timeouts, env: { AWS_ACCESS_KEY_ID: 'AKID', AWS_SECRET_ACCESS_KEY: 'secret-value' } });
    pools.push(s3);
    expect(s3).toBeInstanceOf(S3OriginClient);
    expect(s3.label).not.toContain('secret-value');

    const list = createOriginClient({ origin: `${a.url}, ${b.url}`, ...timeouts });
    pools.push(list);
    expect(list).toBeInstanceOf(OriginPool);
    expect(list.label).toBe(`${a.url}, ${b.url}`);
    const names = [(await get(list, '/x')).member, (await get(list, '/x')).member];
    expect(names.sort()).toEqual(['a', 'b']);
    expect(list.status!().groups.map((g) => g.name)).toEqual(['default']);

    const configured = createOriginClient({ origins: originsConfigSchema.parse({ groups: [{ name: 'g', members: [b.url] }] }), ...timeouts });
    pools.push(configured);
    expect((await get(configured, '/y')).member).toBe('b');
    expect(() => createOriginClient({ ...timeouts })).toThrow(/set origin/);
  });

  it('never shows member credentials in the label or status', async () => {
    const a = await startMember('a');
    const withUser = a.url.replace('http://', 'http://user:hunter2@');
    const p = pool(
      {
        groups: [
          { name: 'web', members: [withUser] },
          { name: 'bucket', members: ['s3://media?region=us-east-1&endpoint=http://127.0.0.1:9'], s3: { accessKeyId: 'AKIDPOOL', secretAccessKey: 'pool-secret-xyz' } },
        ],
      },
      false,
    );
    const shown = JSON.stringify(p.status()) + p.label;
    expect(shown).not.toMatch(/hunter2|user:|AKIDPOOL|pool-secret-xyz/);
    expect(p.status().groups.map((g) => g.members[0]!.url)).toEqual([a.url, 's3://media at http://127.0.0.1:9']);
  });
});

describe('through an edge node', () => {
  let edge: EdgeServer | undefined;
  let dataDir: string | undefined;
  let agent: Agent | undefined;

  afterEach(async () => {
    await agent?.close();
    await edge?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
    edge = undefined;
    dataDir = undefined;
  });

  it('--origin a,b with b stopped: every request succeeds', async () => {
    const a = await startMember('a');
    const b = await startMember('b');
    await b.stop();
    dataDir = await mkdtemp(join(tmpdir(), 'edge-pool-test-'));
    const options = resolveEdgeOptions({ origin: `${a.url},${b.url}`, port: 0, host: '127.0.0.1', dataDir, logLevel: 'silent' });
    const origin = createOriginClient(options);
    edge = await startEdgeServer(options, { origin, logger: false });
    agent = new Agent();
    for (let i = 0; i < 6; i++) {
      const res = await undiciFetch(`${edge.url}/p${i}`, { dispatcher: agent });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('a');
    }
    expect(memberStatus((origin as OriginPool).status(), b.url).failures).toBeGreaterThan(0);
  });
});

describe('startTestEdge with a comma-separated --origin', () => {
  let t: TestEdge | undefined;
  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  it('answers every request while one member is down', async () => {
    const a = await startMember('a');
    const b = await startMember('b');
    await b.stop();
    t = await startTestEdge({ origin: `${a.url},${b.url}` });
    for (let i = 0; i < 6; i++) {
      const res = await t.get(`/q${i}`);
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('a');
    }
  });
});
