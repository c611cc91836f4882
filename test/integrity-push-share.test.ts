/**
 * Pushed objects get their own share of the disk (--push-disk-share of
 * --disk-size, default half). Before, pushes beyond --disk-size were all
 * accepted, and since pushed objects are not evicted, every pulled object
 * was evicted as soon as it was stored: pull caching silently stopped.
 * Now a push that does not fit is refused with 507 and stores nothing (the
 * previous version is still served), and pulled objects keep the rest.
 * The count of pushed bytes follows replacement, deletion, purge and
 * restart. With --evict-pushed no share applies: pushed objects give way
 * under pressure like pulled ones.
 */
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { KiB, patterned } from './helpers/store-contract.js';

const TOKEN = 's'.repeat(32);
const AUTH = { authorization: `Bearer ${TOKEN}` };
const CACHEABLE = { 'content-type': 'application/octet-stream', 'cache-control': 'public, max-age=3600' };

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

let t: TestEdge;
/** The node started by the current case, if any (the option case starts none). */
let running: TestEdge | undefined;
async function start(input: Record<string, unknown>): Promise<void> {
  t = running = await startTestEdge({ adminToken: TOKEN, diskSize: '1MiB', ...input });
}
afterEach(async () => {
  await running?.close();
  running = undefined;
});

function push(path: string, body: Uint8Array, headers: Record<string, string> = {}): Promise<Response> {
  return t.get(`/_edge/push${path}`, { method: 'PUT', body: body as BodyInit, headers: { ...AUTH, 'content-type': 'application/octet-stream', ...headers } });
}

/** A push without Content-Length (chunked): the size is known only once the body is read. */
function pushChunked(path: string, body: Uint8Array): Promise<Response> {
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let offset = 0; offset < body.byteLength; offset += 16 * KiB) controller.enqueue(body.subarray(offset, offset + 16 * KiB));
      controller.close();
    },
  });
  return t.get(`/_edge/push${path}`, { method: 'PUT', body: stream, headers: AUTH, duplex: 'half' } as RequestInit);
}

async function expectRefused(res: Response): Promise<string> {
  expect(res.status).toBe(507);
  const body = await res.json();
  expect(Object.keys(body).sort()).toEqual(['error', 'message']);
  expect(body.error).toBe('EDGE_INSUFFICIENT_STORAGE');
  expect(body.message).toMatch(/--push-disk-share/);
  return body.message;
}

async function expectStatus(res: Response, status: number): Promise<void> {
  expect(res.status).toBe(status);
  await res.arrayBuffer();
}

/** GET `path`: its Cache-Status and the digest of its body. */
async function served(path: string): Promise<{ status: number; cacheStatus: string | null; sha: string }> {
  const res = await t.get(path);
  return { status: res.status, cacheStatus: res.headers.get('cache-status'), sha: sha256(new Uint8Array(await res.arrayBuffer())) };
}

const tiers = [
  ['the disk tier alone', { memorySize: 0 }],
  ['memory over disk', {}],
] as const;

for (const [tierName, tierOptions] of tiers) {
  describe(`the push share of a 1 MiB disk (${tierName})`, () => {
    it('refuses pushes beyond it with 507, keeping the previous version, and pulled objects are still cached and served as hits', async () => {
      await start(tierOptions);
      const a1 = patterned(200 * KiB, 1);
      await expectStatus(await push('/a.bin', a1), 201);
      await expectStatus(await push('/b.bin', patterned(200 * KiB, 2)), 201);

      // 600 KiB pushed would not fit the 512 KiB share: refused at commit, after the body was read.
      const message = await expectRefused(await push('/c.bin', patterned(200 * KiB, 3)));
      expect(message).toMatch(/524288 bytes/);
      await expectRefused(await pushChunked('/c.bin', patterned(200 * KiB, 3)));
      // Larger than the whole share: refused from its Content-Length, before the body is read.
      await expectRefused(await push('/huge.bin', patterned(600 * KiB, 4)));
      // A replacement counts only what it adds: 350 KiB in place of 200 would make 550.
      await expectRefused(await push('/a.bin', patterned(350 * KiB, 5)));
      expect(await served('/a.bin')).toMatchObject({ status: 200, sha: sha256(a1) });
      expect((await served('/c.bin')).cacheStatus ?? '').not.toMatch(/pushed/);
      expect((await served('/huge.bin')).cacheStatus ?? '').not.toMatch(/pushed/);
      // 300 KiB in place of 200 makes 500: it fits.
      const a2 = patterned(300 * KiB, 6);
      await expectStatus(await push('/a.bin', a2), 201);

      // Pull traffic of twice the disk: every object is stored and its next request is a hit.
      for (let i = 0; i < 20; i++) {
        const body = patterned(100 * KiB, 100 + i);
        t.origin.set(`/pull/${i}.bin`, { headers: CACHEABLE, body });
        const miss = await served(`/pull/${i}.bin`);
        expect(miss).toMatchObject({ status: 200, sha: sha256(body) });
        expect(miss.cacheStatus).toMatch(/stored/);
        await t.settle();
        const hit = await served(`/pull/${i}.bin`);
        expect(hit.cacheStatus, `/pull/${i}.bin`).toMatch(/^edge; hit/);
        expect(hit.sha).toBe(sha256(body));
        expect(t.origin.count(`/pull/${i}.bin`)).toBe(1);
      }
      await t.settle();
      // Eviction runs in the background of the store.
      await (t.edge.store as unknown as { settled(): Promise<void> }).settled();
      expect(t.edge.store.stats().bytes).toBeLessThanOrEqual(1024 * KiB);
      expect(await served('/a.bin')).toMatchObject({ status: 200, sha: sha256(a2) });
      expect((await served('/b.bin')).cacheStatus).toMatch(/detail=pushed/);
      expect(t.origin.count('/a.bin') + t.origin.count('/b.bin')).toBe(0);
    });

    it('keeps pull caching working when pushes try to take more than the whole disk', async () => {
      await start(tierOptions);
      const statuses: number[] = [];
      for (let i = 0; i < 8; i++) {
        const res = await push(`/p${i}.bin`, patterned(200 * KiB, i));
        statuses.push(res.status);
        await res.arrayBuffer();
      }
      for (let i = 0; i < 10; i++) {
        const body = patterned(100 * KiB, 100 + i);
        t.origin.set(`/pull/${i}.bin`, { headers: CACHEABLE, body });
        expect((await served(`/pull/${i}.bin`)).sha).toBe(sha256(body));
        await t.settle();
        expect((await served(`/pull/${i}.bin`)).cacheStatus, `/pull/${i}.bin`).toMatch(/^edge; hit/);
      }
      expect(statuses).toEqual([201, 201, 507, 507, 507, 507, 507, 507]);
    });

    it('lets exactly as many concurrent pushes in as fit', async () => {
      await start(tierOptions);
      const answers = await Promise.all([1, 2, 3, 4].map((i) => push(`/c${i}.bin`, patterned(200 * KiB, i))));
      expect(answers.map((res) => res.status).sort()).toEqual([201, 201, 507, 507]);
      for (const res of answers) await res.arrayBuffer();
      const listed = await (await t.get('/_edge/objects?pushed=true', { headers: AUTH })).json();
      expect(listed.objects).toHaveLength(2);
    });
  });
}

describe('the push share follows deletes, purges and restarts', () => {
  it('frees room on DELETE and purge, and counts what is on disk after a restart', async () => {
    await start({ pushDiskShare: 0.25, memorySize: 0 });
    await expectStatus(await push('/a.bin', patterned(200 * KiB, 1)), 201);
    expect(await expectRefused(await push('/b.bin', patterned(100 * KiB, 2)))).toMatch(/--push-disk-share 0\.25 of --disk-size: 262144 bytes/);
    await expectStatus(await t.get('/_edge/push/a.bin', { method: 'DELETE', headers: AUTH }), 204);
    await expectStatus(await push('/b.bin', patterned(100 * KiB, 2), { 'cache-tag': 'b' }), 201);
    await expectStatus(await push('/c.bin', patterned(100 * KiB, 3)), 201);
    await expectRefused(await push('/d.bin', patterned(100 * KiB, 4)));

    await t.restart();
    await expectRefused(await push('/d.bin', patterned(100 * KiB, 4)));
    const purge = await t.get('/_edge/purge', { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ tags: ['b'] }) });
    expect(await purge.json()).toEqual({ purged: 1 });
    await expectStatus(await push('/d.bin', patterned(100 * KiB, 4)), 201);
    expect(await served('/d.bin')).toMatchObject({ status: 200, sha: sha256(patterned(100 * KiB, 4)) });
  });

  it('does not apply with --evict-pushed: pushed objects give way under pressure instead', async () => {
    await start({ evictPushed: true, memorySize: 0 });
    for (let i = 0; i < 3; i++) await expectStatus(await push(`/e${i}.bin`, patterned(200 * KiB, i)), 201);
  });

  it('validates --push-disk-share as a fraction from 0 to 1', () => {
    expect(resolveEdgeOptions({}).pushDiskShare).toBe(0.5);
    expect(resolveEdgeOptions({ pushDiskShare: '0.25' }).pushDiskShare).toBe(0.25);
    expect(resolveEdgeOptions({ pushDiskShare: 1 }).pushDiskShare).toBe(1);
    for (const bad of ['2', '-0.1', 'half']) {
      expect(() => resolveEdgeOptions({ pushDiskShare: bad })).toThrow(
        `--push-disk-share (EDGE_PUSH_DISK_SHARE): got "${bad}": expected a fraction from 0 to 1, e.g. 0.5`,
      );
    }
  });
});
