/**
 * Issue 10, availability and integrity in the pull path: collapsing that
 * protects the origin from errors and uncacheable answers too, purges that
 * reach fills in flight, HEAD passed as HEAD, a bounded number of variants,
 * one Host, and a Cache-Status that says `stored` only when it is so.
 * Real origin and edge; the origin is gated on events, never on sleeps.
 */
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const TOKEN = 'collapse-admin-token';

let t: TestEdge | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

/** A latch the origin awaits: `open()` lets every waiting handler go on. */
function latch() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

/** Resolve once `check()` holds, polling on the event loop (no fixed sleeps). */
async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setTimeout(resolve, 5));
}

const cacheStatus = (res: Response) => res.headers.get('cache-status') ?? '';

/** POST /_edge/purge with the admin token; it must be accepted. */
async function purge(body: Record<string, unknown>): Promise<void> {
  const res = await t!.get('/_edge/purge', {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(res.status, await res.text()).toBe(200);
}

describe('collapsing protects the origin from what it cannot store', () => {
  it('one origin request for 40 concurrent requests whose answer is a shareable 503; every client gets its bytes', async () => {
    t = await startTestEdge();
    const gate = latch();
    t.origin.route('/down', async (_req, res) => {
      await gate.opened;
      res.statusCode = 503;
      res.setHeader('retry-after', '5');
      res.end('origin is down');
    });
    const answers = Array.from({ length: 40 }, () => t!.get('/down'));
    await until(() => t!.edge.edge.pull.flightStats().waiters === 39);
    gate.open();
    const all = await Promise.all(answers);
    expect(t.origin.count('/down')).toBe(1);
    for (const res of all) {
      expect(res.status).toBe(503);
      expect(await res.text()).toBe('origin is down');
      expect(res.headers.get('retry-after')).toBe('5');
    }
    expect(all.filter((res) => /collapsed/.test(cacheStatus(res)))).toHaveLength(39);
  });

  it('a private 500 is not shared: each follower asks the origin itself', async () => {
    t = await startTestEdge();
    const gate = latch();
    t.origin.route('/private-error', async (_req, res) => {
      await gate.opened;
      res.statusCode = 500;
      res.setHeader('cache-control', 'private');
      res.end('yours only');
    });
    const answers = Array.from({ length: 5 }, () => t!.get('/private-error'));
    await until(() => t!.edge.edge.pull.flightStats().waiters === 4);
    gate.open();
    await Promise.all(answers);
    expect(t.origin.count('/private-error')).toBe(5);
  });

  for (const [name, headers] of [
    ['no-store', { 'cache-control': 'no-store' }],
    ['private', { 'cache-control': 'private' }],
    ['max-age=0 without a validator', { 'cache-control': 'max-age=0' }],
  ] as const) {
    it(`remembers an uncacheable answer (${name}): later requests go to the origin side by side, not in a queue`, async () => {
      t = await startTestEdge();
      t.origin.set('/uncacheable', { headers, body: 'dynamic' });
      expect((await t.get('/uncacheable')).status).toBe(200);
      // The next ten all reach a gated origin at once: nobody waits on a flight.
      const gate = latch();
      t.origin.route('/uncacheable', async (_req, res) => {
        await gate.opened;
        for (const [field, value] of Object.entries(headers)) res.setHeader(field, value);
        res.end('dynamic');
      });
      const answers = Array.from({ length: 10 }, () => t!.get('/uncacheable'));
      await until(() => t!.origin.count('/uncacheable') === 11);
      expect(t.edge.edge.pull.flightStats().waiters).toBe(0);
      gate.open();
      for (const res of await Promise.all(answers)) expect(cacheStatus(res)).not.toMatch(/collapsed/);
    });
  }

  it('followers of a slow origin that time out do not all go upstream: one takes over, the rest wait for it', async () => {
    // The bound only has to outlast the moment between the takeover and the gate opening: at 100 ms a
    // loaded machine let the waiters' second timeout pass first (then they rightly go alone).
    t = await startTestEdge({ collapseTimeout: '1s' });
    const gate = latch();
    t.origin.route('/slow', async (_req, res) => {
      await gate.opened;
      res.setHeader('cache-control', 'max-age=60');
      res.end('finally');
    });
    const answers = Array.from({ length: 20 }, () => t!.get('/slow'));
    // The first leader, then exactly one more after the followers' timeout; the other 18 wait on that one.
    await until(() => t!.origin.count('/slow') === 2 && t!.edge.edge.pull.flightStats().waiters === 18);
    gate.open();
    for (const res of await Promise.all(answers)) expect(await res.text()).toBe('finally');
    expect(t.origin.count('/slow')).toBeLessThanOrEqual(3);
  });
});

describe('what is stored, and what Cache-Status says about it', () => {
  it('a 204 with a Content-Length is stored (it has no body to measure) and says so', async () => {
    t = await startTestEdge();
    t.origin.set('/empty', { status: 204, headers: { 'cache-control': 'max-age=60', 'content-length': '5' } });
    const first = await t.get('/empty');
    expect(first.status).toBe(204);
    expect(cacheStatus(first)).toMatch(/stored/);
    await t.settle();
    expect(cacheStatus(await t.get('/empty'))).toMatch(/hit/);
  });

  it('a chunked body is not promised as stored (it may outgrow --max-object-size) but is stored when it fits', async () => {
    t = await startTestEdge({ maxObjectSize: '1KB' });
    // Written in two parts, so Node frames them chunked (no Content-Length).
    const chunked = (body: string) => (_req: unknown, res: import('node:http').ServerResponse) => {
      res.setHeader('cache-control', 'max-age=60');
      res.write(body.slice(0, 2));
      res.end(body.slice(2));
    };
    t.origin.route('/chunked-small', chunked('small'));
    t.origin.route('/chunked-big', chunked('x'.repeat(5000)));
    for (const path of ['/chunked-small', '/chunked-big']) {
      const first = await t.get(path);
      await first.text();
      expect(cacheStatus(first), path).toMatch(/fwd=uri-miss/);
      expect(cacheStatus(first), path).not.toMatch(/stored/);
    }
    await t.settle();
    expect(cacheStatus(await t.get('/chunked-small'))).toMatch(/hit/);
    expect(cacheStatus(await t.get('/chunked-big'))).toMatch(/fwd=uri-miss/);
  });

  it('HEAD of an object too large to store: the fill stops at once, and the next HEAD is sent upstream as HEAD', async () => {
    t = await startTestEdge({ maxObjectSize: '1MB' });
    t.origin.set('/huge.bin', { headers: { 'cache-control': 'max-age=60' }, body: new Uint8Array(8 * 1024 * 1024) });
    const first = await t.get('/huge.bin', { method: 'HEAD' });
    expect(first.status).toBe(200);
    expect(first.headers.get('content-length')).toBe(String(8 * 1024 * 1024));
    expect(cacheStatus(first)).not.toMatch(/stored/);
    await t.settle();
    const second = await t.get('/huge.bin', { method: 'HEAD' });
    expect(second.headers.get('content-length')).toBe(String(8 * 1024 * 1024));
    expect(t.origin.requests.map((r) => r.method)).toEqual(['GET', 'HEAD']);
  });

  it('keeps at most --max-variants variants per URL, evicting the oldest', async () => {
    t = await startTestEdge({ maxVariants: 4, adminToken: TOKEN });
    t.origin.route('/lang', (req, res) => {
      res.setHeader('cache-control', 'max-age=60');
      res.setHeader('vary', 'Accept-Language');
      res.end(`lang ${req.headers['accept-language']}`);
    });
    for (let i = 0; i < 12; i++) {
      await (await t.get('/lang', { headers: { 'accept-language': `x-${i}` } })).text();
      await t.settle();
    }
    const listing = (await (await t.get('/_edge/objects?prefix=/lang', { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { objects: unknown[] };
    expect(listing.objects).toHaveLength(4);
    expect(cacheStatus(await t.get('/lang', { headers: { 'accept-language': 'x-11' } }))).toMatch(/hit/);
    expect(cacheStatus(await t.get('/lang', { headers: { 'accept-language': 'x-0' } }))).toMatch(/fwd=vary-miss/);
  });

  it('Accept-Encoding strings that negotiate the same codings share one variant', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    t.origin.route('/enc', (req, res) => {
      res.setHeader('cache-control', 'max-age=60');
      res.setHeader('vary', 'Accept-Encoding');
      res.end(`ae ${req.headers['accept-encoding'] ?? 'identity'}`);
    });
    const spellings = ['gzip, deflate, br', 'br, gzip', 'gzip;q=0.9, br;q=1, zstd', 'deflate, gzip, br, x-junk-1', 'br,gzip,x-junk-2'];
    for (const value of spellings) {
      await (await t.get('/enc', { headers: { 'accept-encoding': value } })).text();
      await t.settle();
    }
    expect(t.origin.count('/enc')).toBe(1);
    expect(t.origin.requests[0]!.headers['accept-encoding']).toBe('br');
  });
});

describe('purges reach fills in flight', () => {
  it('a purge while the old version is still arriving: that version answers its client but is not stored', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const gate = latch();
    let version = 1;
    t.origin.route('/moving.css', async (_req, res) => {
      const mine = version;
      res.setHeader('cache-control', 'max-age=600');
      res.setHeader('content-length', '10');
      res.write(`v${mine}-`);
      if (mine === 1) await gate.opened;
      res.end(`${'0'.repeat(7)}`);
    });
    const pending = t.get('/moving.css');
    await until(() => t!.origin.count('/moving.css') === 1);
    version = 2;
    await purge({ urls: ['/moving.css'] });
    gate.open();
    expect(await (await pending).text()).toBe('v1-0000000');
    await t.settle();
    const after = await t.get('/moving.css');
    expect(await after.text()).toBe('v2-0000000');
    expect(cacheStatus(after)).toMatch(/fwd=uri-miss/);
  });

  it('a purge while the origin has not answered yet: the answer, asked for before the purge, is not stored', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const gate = latch();
    let version = 1;
    t.origin.route('/late.css', async (_req, res) => {
      const mine = version;
      if (mine === 1) await gate.opened;
      res.setHeader('cache-control', 'max-age=600');
      res.end(`v${mine}`);
    });
    const pending = t.get('/late.css');
    await until(() => t!.origin.count('/late.css') === 1);
    version = 2;
    await purge({ urls: ['/late.css'] });
    gate.open();
    expect(await (await pending).text()).toBe('v1');
    await t.settle();
    const after = await t.get('/late.css');
    expect(await after.text()).toBe('v2');
    expect(cacheStatus(after)).toMatch(/fwd=uri-miss/);
  });

  it('a soft purge while a revalidation is under way is kept: its 304 does not make the entry fresh again', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const gate = latch();
    t.origin.route('/checked.json', async (req, res) => {
      res.setHeader('date', new Date(t!.clock.now()).toUTCString());
      res.setHeader('cache-control', 'max-age=10');
      res.setHeader('etag', '"c1"');
      if (req.headers['if-none-match'] === '"c1"') {
        if (t!.origin.count('/checked.json') === 2) await gate.opened;
        res.statusCode = 304;
        res.end();
        return;
      }
      res.end('{"v":1}');
    });
    await (await t.get('/checked.json')).text();
    await t.settle();
    t.clock.advance(20_000);
    const revalidating = t.get('/checked.json');
    await until(() => t!.origin.count('/checked.json') === 2);
    await purge({ urls: ['/checked.json'], soft: true });
    gate.open();
    const answer = await revalidating;
    expect(await answer.text()).toBe('{"v":1}');
    expect(cacheStatus(answer)).toMatch(/fwd-status=304/);
    await t.settle();
    // Soft-purged after the revalidation was sent: the next request asks the origin again.
    const next = await t.get('/checked.json');
    expect(await next.text()).toBe('{"v":1}');
    expect(cacheStatus(next)).not.toMatch(/^edge; hit/);
    expect(t.origin.count('/checked.json')).toBe(3);
  });

  it('a hard purge while a revalidation is under way is kept: its 304 stores nothing', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const gate = latch();
    t.origin.route('/gone.json', async (req, res) => {
      res.setHeader('date', new Date(t!.clock.now()).toUTCString());
      res.setHeader('cache-control', 'max-age=10');
      res.setHeader('etag', '"g1"');
      if (req.headers['if-none-match'] === '"g1"') {
        await gate.opened;
        res.statusCode = 304;
        res.end();
        return;
      }
      res.end('{"v":1}');
    });
    await (await t.get('/gone.json')).text();
    await t.settle();
    t.clock.advance(20_000);
    const revalidating = t.get('/gone.json');
    await until(() => t!.origin.count('/gone.json') === 2);
    await purge({ urls: ['/gone.json'] });
    gate.open();
    expect(await (await revalidating).text()).toBe('{"v":1}');
    await t.settle();
    const next = await t.get('/gone.json');
    expect(cacheStatus(next)).toMatch(/fwd=uri-miss/);
    expect(t.origin.requests.at(-1)!.headers['if-none-match']).toBeUndefined();
  });

  it('the waiters of a fill turned away by a purge collapse again: one origin request for the new version, and the key stays cacheable', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const gate = latch();
    let version = 1;
    t.origin.route('/popular.js', async (_req, res) => {
      const mine = version;
      res.setHeader('cache-control', 'max-age=600');
      res.setHeader('content-length', '10');
      res.write(`v${mine}-`);
      if (mine === 1) await gate.opened;
      res.end('0'.repeat(7));
    });
    const leader = t.get('/popular.js');
    await until(() => t!.origin.count('/popular.js') === 1);
    const waiters = Array.from({ length: 8 }, () => t!.get('/popular.js'));
    await until(() => t!.edge.edge.pull.flightStats().waiters === 8);
    version = 2;
    await purge({ urls: ['/popular.js'] });
    gate.open();
    expect(await (await leader).text()).toBe('v1-0000000');
    for (const answer of await Promise.all(waiters)) expect(await answer.text()).toBe('v2-0000000');
    // The first fill and one for all eight waiters; not one each, and not remembered as uncacheable.
    expect(t.origin.count('/popular.js')).toBe(2);
    await t.settle();
    const later = await Promise.all(Array.from({ length: 4 }, () => t!.get('/popular.js')));
    for (const answer of later) expect(cacheStatus(answer)).toMatch(/^edge; hit/);
    expect(t.origin.count('/popular.js')).toBe(2);
  });
});

describe('request framing', () => {
  function rawRequest(port: number, head: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => socket.write(head));
      let data = '';
      socket.on('data', (chunk) => (data += chunk.toString()));
      socket.on('end', () => resolve(data));
      socket.on('error', reject);
      socket.setTimeout(5000, () => socket.destroy(new Error('no answer')));
    });
  }

  it('two Host headers, or a list in one, are 400 JSON and never reach the origin', async () => {
    t = await startTestEdge();
    t.origin.set('/h', { headers: { 'cache-control': 'max-age=60' }, body: 'h' });
    const port = t.edge.port;
    for (const hosts of ['Host: a.example\r\nHost: b.example\r\n', 'Host: a.example, b.example\r\n']) {
      const answer = await rawRequest(port, `GET /h HTTP/1.1\r\n${hosts}Connection: close\r\n\r\n`);
      expect(answer).toMatch(/^HTTP\/1\.1 400/);
      expect(answer).toContain('"error":"EDGE_BAD_REQUEST"');
    }
    expect(t.origin.count('/h')).toBe(0);
    // One Host is fine.
    const ok = await new Promise<number>((resolve, reject) => {
      httpRequest({ host: '127.0.0.1', port, path: '/h', headers: { host: 'a.example' } }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      }).on('error', reject).end();
    });
    expect(ok).toBe(200);
  });
});
