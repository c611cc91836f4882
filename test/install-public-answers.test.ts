/**
 * What a node installed on a public port tells strangers (issue 15):
 * `GET /_edge/health` gives status, name and store figures and never names
 * origins or pool members; `/_edge/origins` and, with an admin token set,
 * `/_edge/metrics` answer only the token holder.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const TOKEN = 'h'.repeat(32);
const SECOND_MEMBER = 'http://127.0.0.1:9';

let t: TestEdge;
afterEach(async () => {
  const running = t;
  t = undefined as never;
  await running?.close();
});

describe('public answers do not name origins', () => {
  it('/_edge/health shows status, name and store figures only', async () => {
    t = await startTestEdge({ adminToken: TOKEN, name: 'edge-public' });
    const res = await t.get('/_edge/health');
    expect(res.status).toBe(200);
    const text = await res.text();
    const health = JSON.parse(text) as Record<string, unknown>;
    expect(health).toMatchObject({ status: 'ok', name: 'edge-public', store: expect.any(Object) });
    expect(health).not.toHaveProperty('origin');
    expect(text).not.toContain(new URL(t.origin.url).host);
  });

  it('names no member of an origin pool either; the token holder sees them at /_edge/origins', async () => {
    const first = await startTestEdge({ adminToken: TOKEN });
    const pool = `${first.origin.url},${SECOND_MEMBER}`;
    await first.close();
    t = await startTestEdge({ adminToken: TOKEN, origin: pool });
    const text = await (await t.get('/_edge/health')).text();
    expect(text).not.toContain(new URL(t.origin.url).host);
    expect(text).not.toContain('127.0.0.1:9');

    const anonymous = await t.get('/_edge/origins');
    expect(anonymous.status).toBe(401);
    expect(await anonymous.text()).not.toContain('127.0.0.1:9');
    const admin = await t.get('/_edge/origins', { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(admin.status).toBe(200);
    expect(await admin.text()).toContain('127.0.0.1:9');
  });

  it('/_edge/metrics needs the admin token when one is set', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const anonymous = await t.get('/_edge/metrics');
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect((await anonymous.json()).error).toBe('EDGE_UNAUTHORIZED');
    const wrong = await t.get('/_edge/metrics', { headers: { authorization: `Bearer ${'x'.repeat(32)}` } });
    expect(wrong.status).toBe(401);
    await wrong.text();
    const admin = await t.get('/_edge/metrics', { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(admin.status).toBe(200);
    expect(await admin.text()).toMatch(/edge_requests_total/);
  });

  it('/_edge/metrics stays open on a node without an admin token (a private scrape port)', async () => {
    t = await startTestEdge();
    expect((await t.get('/_edge/metrics')).status).toBe(200);
    expect((await t.get('/_edge/origins')).status).not.toBe(200);
  });
});
