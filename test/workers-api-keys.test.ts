/**
 * API keys and route rules on the Worker (issues 16 and 12): routes come
 * from `ORIGINS` (the config file's `origins` JSON, one http(s) origin per
 * group), keys from the `API_KEYS` secret (the JSON of Node's
 * `--api-keys-file`), checked by the same core gate: a route with
 * `access.apiKey` answers 401 JSON to a missing or unknown key before any
 * cache or origin work, serves a known one, and never forwards the key.
 * Configurations the Worker cannot run are refused naming the variable.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';
import { buildWorkerBundle, startTestWorker, type WorkerBundle } from './helpers/workers.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

const KEY = 'partner-key-0123456789abcdef';
let bundle: WorkerBundle;
let api: TestOrigin;
let web: TestOrigin;

beforeAll(async () => {
  bundle = await buildWorkerBundle();
  api = await startTestOrigin();
  web = await startTestOrigin();
  api.set('/api/items', { headers: { 'cache-control': 'max-age=60', 'content-type': 'application/json' }, body: '{"items":[]}' });
  web.set('/index.html', { headers: { 'cache-control': 'max-age=60' }, body: 'home' });
}, 180_000);
afterAll(async () => {
  await api?.close();
  await web?.close();
  await bundle?.dispose();
});

const origins = () =>
  JSON.stringify({
    groups: [
      { name: 'web', members: [web.url] },
      { name: 'api', members: [api.url] },
    ],
    routes: [{ match: { pathPrefix: '/api/' }, group: 'api', access: { apiKey: true } }],
  });
const keys = JSON.stringify({ keys: [{ name: 'partner-a', key: KEY }] });

describe('API keys on the Worker', () => {
  it('refuses a missing or unknown key with 401 before the origin, serves a known one from its route, never forwards it', async () => {
    const worker = await startTestWorker(bundle, { vars: { ORIGINS: origins(), API_KEYS: keys, LOG_LEVEL: 'silent' } });
    try {
      for (const headers of [{}, { 'x-api-key': 'not-a-key-0123456789abcdef' }] as Record<string, string>[]) {
        const refused = await worker.fetch('/api/items', { headers });
        expect(refused.status).toBe(401);
        expect(await refused.json()).toMatchObject({ error: 'EDGE_UNAUTHORIZED' });
      }
      expect(api.count('/api/items')).toBe(0);

      const served = await worker.fetch('/api/items', { headers: { 'x-api-key': KEY } });
      expect(served.status).toBe(200);
      expect(await served.text()).toBe('{"items":[]}');
      expect(api.count('/api/items')).toBe(1);
      expect(api.requests.at(-1)!.headers['x-api-key']).toBeUndefined();
      // Cached: a second client with the key is a hit; without it, still refused.
      expect((await worker.fetch('/api/items', { headers: { 'x-api-key': KEY } })).headers.get('cache-status')).toMatch(/^edge; hit/);
      expect((await worker.fetch('/api/items')).status).toBe(401);
      expect(api.count('/api/items')).toBe(1);
      // Paths no route claims go to the default group, without a key; a key sent there is not forwarded either.
      expect(await (await worker.fetch('/index.html', { headers: { 'x-api-key': KEY } })).text()).toBe('home');
      expect(web.count('/index.html')).toBe(1);
      expect(web.requests.at(-1)!.headers['x-api-key']).toBeUndefined();
      expect(api.count('/index.html')).toBe(0);
    } finally {
      await worker.close();
    }
  });

  it('keeps the key header out of origin requests with API_KEYS and no route requiring keys (as with a key file on Node)', async () => {
    const worker = await startTestWorker(bundle, { vars: { ORIGIN: web.url, API_KEYS: keys, LOG_LEVEL: 'silent' } });
    try {
      web.set('/plain.txt', { headers: { 'cache-control': 'no-store' }, body: 'plain' });
      expect(await (await worker.fetch('/plain.txt', { headers: { 'x-api-key': KEY } })).text()).toBe('plain');
      expect(web.requests.at(-1)!.url).toBe('/plain.txt');
      expect(web.requests.at(-1)!.headers['x-api-key']).toBeUndefined();
    } finally {
      await worker.close();
    }
  });

  const bad: [string, Record<string, string>, string, RegExp][] = [
    ['a route needing keys without API_KEYS', { ORIGINS: 'origins' }, 'API_KEYS', /access\.apiKey.*API_KEYS secret/],
    ['API_KEYS that is not the key file format', { ORIGINS: 'origins', API_KEYS: '{"keys":[{"name":"a","key":"short"}]}' }, 'API_KEYS', /at least 16 characters/],
    ['API_KEYS_FILE', { ORIGIN: 'web', API_KEYS_FILE: '/etc/keys.json' }, 'API_KEYS_FILE', /reads no files.*API_KEYS/],
    ['a group with two members', { ORIGINS: 'pool' }, 'ORIGINS', /2 members: on Workers a group is one http\(s\):\/\/ origin/],
  ];
  it.each(bad)('refuses %s at start-up with a 500 naming the variable', async (_what, vars, variable, message) => {
    const resolved: Record<string, string> = { LOG_LEVEL: 'silent' };
    for (const [name, value] of Object.entries(vars)) {
      if (value === 'origins') resolved[name] = origins();
      else if (value === 'web') resolved[name] = web.url;
      else if (value === 'pool') resolved[name] = JSON.stringify({ groups: [{ name: 'p', members: [web.url, api.url] }] });
      else resolved[name] = value;
    }
    const worker = await startTestWorker(bundle, { vars: resolved });
    try {
      const response = await worker.fetch('/index.html');
      expect(response.status).toBe(500);
      const body = (await response.json()) as { variables: string[]; message: string };
      expect(body.variables).toEqual([variable]);
      expect(body.message).toMatch(message);
      expect(web.count('/index.html')).toBe(1);
    } finally {
      await worker.close();
    }
  });
});
