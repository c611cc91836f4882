/**
 * API keys (README "Access control"): a route requiring a key answers 401
 * JSON to a missing or unknown one before any cache or origin work; the key
 * header is neither forwarded nor keyed; a key file change takes effect
 * without a restart; a key's own limit partitions by key.
 */
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

const ALICE = 'alice-key-0123456789abcdef';
const BOB = 'bob-key-0123456789abcdef00';
const CAROL = 'carol-key-0123456789abcdef';

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const step of cleanup.reverse()) await step();
  cleanup = [];
});

async function start(keys: unknown, input: Record<string, unknown> = {}): Promise<{ edge: TestEdge; origin: TestOrigin; file: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-keys-'));
  const file = join(dir, 'keys.json');
  await writeFile(file, JSON.stringify(keys));
  const origin = await startTestOrigin();
  const edge = await startTestEdge(
    {
      apiKeysFile: file,
      origins: {
        groups: [{ name: 'main', members: [origin.url] }],
        routes: [{ match: { pathPrefix: '/api/' }, access: { apiKey: true } }],
      },
      ...input,
    },
    { origin },
  );
  cleanup.push(async () => {
    await edge.close();
    await origin.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { edge, origin, file };
}

describe('API keys', () => {
  it('401 JSON for a missing or unknown key before any origin work; a valid key is served; the header is not forwarded nor keyed', async () => {
    const { edge, origin } = await start({ keys: [{ name: 'alice', key: ALICE }, { name: 'bob', key: BOB }] });
    origin.set('/api/items', { headers: { 'cache-control': 'public, max-age=600' }, body: '[1,2]' });

    const missing = await edge.get('/api/items');
    expect(missing.status).toBe(401);
    expect(missing.headers.get('content-type')).toContain('application/json');
    expect(missing.headers.get('www-authenticate')).toContain('ApiKey');
    expect((await missing.json()).error).toBe('EDGE_UNAUTHORIZED');
    expect((await edge.get('/api/items', { headers: { 'x-api-key': 'nobody-0123456789abcdef' } })).status).toBe(401);
    expect(origin.count()).toBe(0);

    const ok = await edge.get('/api/items', { headers: { 'x-api-key': ALICE } });
    expect(ok.status).toBe(200);
    expect(await ok.text()).toBe('[1,2]');
    await edge.settle();
    const other = await edge.get('/api/items', { headers: { 'x-api-key': BOB } });
    expect(other.status).toBe(200);
    expect(other.headers.get('cache-status')).toMatch(/hit/);
    expect(origin.count()).toBe(1);
    expect(origin.requests[0]!.headers['x-api-key']).toBeUndefined();

    // A stored object is still refused without a key (the fast path checks too).
    expect((await edge.get('/api/items')).status).toBe(401);
    // Paths without the requirement need none.
    origin.set('/public', { body: 'p' });
    expect((await edge.get('/public')).status).toBe(200);
  });

  it('takes a key file change without a restart, and keeps the previous keys when the file turns bad', async () => {
    const { edge, origin, file } = await start([{ name: 'alice', key: ALICE }]);
    origin.set('/api/x', { body: 'x' });
    expect((await edge.get('/api/x', { headers: { 'x-api-key': CAROL } })).status).toBe(401);

    // Written as editors do: a new file renamed over the old one.
    await writeFile(file + '.tmp', JSON.stringify([{ name: 'carol', key: CAROL }]));
    await rename(file + '.tmp', file);
    await vi.waitFor(async () => expect((await edge.get('/api/x', { headers: { 'x-api-key': CAROL } })).status).toBe(200), { timeout: 10_000, interval: 100 });
    expect((await edge.get('/api/x', { headers: { 'x-api-key': ALICE } })).status).toBe(401);

    await writeFile(file, '{ not json');
    await new Promise((resolve) => setTimeout(resolve, 1200));
    expect((await edge.get('/api/x', { headers: { 'x-api-key': CAROL } })).status).toBe(200);
  });

  it('limits per key with the key\'s own rateLimit, whatever address it comes from', async () => {
    const { edge, origin } = await start({ keys: [{ name: 'alice', key: ALICE, rateLimit: '2/1s' }, { name: 'bob', key: BOB }] }, { rateLimit: '100/1s', trustedProxies: '127.0.0.1' });
    origin.set('/api/y', { body: 'y' });
    const as = (key: string, ip: string) => edge.get('/api/y', { headers: { 'x-api-key': key, 'x-forwarded-for': ip } });
    expect((await as(ALICE, '192.0.2.1')).status).toBe(200);
    expect((await as(ALICE, '192.0.2.2')).status).toBe(200);
    const over = await as(ALICE, '192.0.2.3');
    expect(over.status).toBe(429);
    expect(over.headers.get('ratelimit-policy')).toBe('"key";q=2;w=1');
    const bob = await as(BOB, '192.0.2.1');
    expect(bob.status).toBe(200);
    expect(bob.headers.get('ratelimit-policy')).toBe('"default";q=100;w=1');
  });

  it('refuses to start with a bad key file, naming the flag', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edge-keys-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, 'keys.json'), JSON.stringify([{ name: 'short', key: 'x' }]));
    const origin = await startTestOrigin();
    cleanup.push(() => origin.close());
    await expect(startTestEdge({ apiKeysFile: join(dir, 'keys.json') }, { origin })).rejects.toThrow(/--api-keys-file.*at least 16/);
  });
});
