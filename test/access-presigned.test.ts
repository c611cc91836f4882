/**
 * Presigned uploads (issue 16), end to end: a real node hands out an
 * upload URL (`POST /_edge/push-urls`, admin token) and accepts one PUT to
 * it without the token. Expiry is tested by moving the injected clock.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createTestClock } from './helpers/clock.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const TOKEN = 'p'.repeat(32);
const AUTH = { authorization: `Bearer ${TOKEN}` };

let t: TestEdge;
afterEach(async () => {
  await t?.close();
});

async function uploadUrl(body: Record<string, unknown>): Promise<{ url: string; expires: number }> {
  const res = await t.get('/_edge/push-urls', { method: 'POST', body: JSON.stringify(body), headers: { ...AUTH, 'content-type': 'application/json' } });
  expect(res.status).toBe(200);
  return res.json() as Promise<{ url: string; expires: number }>;
}

async function put(url: string, body: string, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await t.get(url, { method: 'PUT', body, headers });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

async function served(path: string): Promise<{ status: number; body: string; type: string | null }> {
  const res = await t.get(path);
  return { status: res.status, type: res.headers.get('content-type'), body: await res.text() };
}

describe('presigned uploads', () => {
  it('a PUT to the URL without a token stores the object (with the URL\'s tags) and it is served', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const { url, expires } = await uploadUrl({ path: '/uploads/a.bin', expiresIn: '10m', tags: ['uploads'] });
    expect(url).toMatch(/^\/_edge\/push\/uploads\/a\.bin\?upload=[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    expect(expires).toBe(Math.floor(t.clock.now() / 1000) + 600);

    const res = await put(url, 'hello upload', { 'content-type': 'application/octet-stream', 'cache-tag': 'ignored' });
    expect(res.status).toBe(201);
    expect(res.json.path).toBe('/uploads/a.bin');
    expect(await served('/uploads/a.bin')).toMatchObject({ status: 200, body: 'hello upload' });

    const listed = await t.get('/_edge/objects?pushed=true', { headers: AUTH });
    const objects = ((await listed.json()) as { objects: { path: string; tags: string[] }[] }).objects;
    expect(objects.find((o) => o.path === '/uploads/a.bin')?.tags).toEqual(['uploads']);
  });

  it('used once: the same URL again is 403', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const { url } = await uploadUrl({ path: '/once.txt', expiresIn: 60 });
    expect((await put(url, 'first')).status).toBe(201);
    const again = await put(url, 'second');
    expect(again.status).toBe(403);
    expect(again.json).toMatchObject({ error: 'EDGE_FORBIDDEN', reason: 'used' });
    expect((await served('/once.txt')).body).toBe('first');
  });

  it('after its expiry (clock moved) the URL is 403', async () => {
    const clock = createTestClock();
    t = await startTestEdge({ adminToken: TOKEN }, { clock });
    const { url } = await uploadUrl({ path: '/late.txt', expiresIn: '10m' });
    clock.advance(10 * 60 * 1000);
    const res = await put(url, 'too late');
    expect(res.status).toBe(403);
    expect(res.json).toMatchObject({ error: 'EDGE_FORBIDDEN', reason: 'expired' });
    expect((await served('/late.txt')).status).not.toBe(200);
  });

  it('over maxSize: 413 and the previous version is still served', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const first = await uploadUrl({ path: '/big.bin', expiresIn: '5m', maxSize: '1KB' });
    expect((await put(first.url, 'v1')).status).toBe(201);
    const second = await uploadUrl({ path: '/big.bin', expiresIn: '5m', maxSize: '1KB' });
    const res = await put(second.url, 'x'.repeat(2048));
    expect(res.status).toBe(413);
    expect(res.json.error).toBe('EDGE_PAYLOAD_TOO_LARGE');
    expect(await served('/big.bin')).toMatchObject({ status: 200, body: 'v1' });
  });

  it('a tampered token is 403', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const { url } = await uploadUrl({ path: '/t.txt', expiresIn: '5m', maxSize: 10 });
    const [base, token] = url.split('?upload=') as [string, string];
    const [payload, sig] = token.split('.') as [string, string];
    // Raise maxSize in the payload, keep the signature.
    const grant = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>;
    const forged = Buffer.from(JSON.stringify({ ...grant, m: 1e9 })).toString('base64url');
    const res = await put(`${base}?upload=${forged}.${sig}`, 'x'.repeat(100));
    expect(res.status).toBe(403);
    expect(res.json).toMatchObject({ error: 'EDGE_FORBIDDEN', reason: 'bad-signature' });
    // A flipped signature character too.
    const flipped = sig.slice(0, -2) + (sig.at(-2) === 'A' ? 'B' : 'A') + sig.at(-1);
    expect((await put(`${base}?upload=${payload}.${flipped}`, 'x')).status).toBe(403);
    expect((await served('/t.txt')).status).not.toBe(200);
  });

  it('the token on another path is 403', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const { url } = await uploadUrl({ path: '/mine.txt', expiresIn: '5m' });
    const token = url.split('?upload=')[1]!;
    const res = await put(`/_edge/push/theirs.txt?upload=${token}`, 'x');
    expect(res.status).toBe(403);
    expect(res.json).toMatchObject({ error: 'EDGE_FORBIDDEN', reason: 'wrong-path' });
    // Refused before it was claimed: the URL still works on its own path.
    expect((await put(url, 'ok')).status).toBe(201);
  });

  it('contentType: another type is 415 (nothing stored, the URL still usable); none takes the URL\'s type', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const { url } = await uploadUrl({ path: '/v.mp4', expiresIn: '5m', contentType: 'video/mp4' });
    const wrong = await put(url, 'not video', { 'content-type': 'text/plain' });
    expect(wrong.status).toBe(415);
    expect((await served('/v.mp4')).status).not.toBe(200);
    expect((await put(url, 'video bytes', { 'content-type': 'video/mp4; codecs="avc1"' })).status).toBe(201);
    const second = await uploadUrl({ path: '/w.mp4', expiresIn: '5m', contentType: 'video/mp4' });
    const res = await t.get(second.url, { method: 'PUT', body: new Uint8Array([1, 2, 3]) });
    expect(res.status).toBe(201);
    await res.text();
    expect((await served('/w.mp4')).type).toBe('video/mp4');
  });

  it('the endpoint needs the admin token, and is off without one', async () => {
    t = await startTestEdge({ adminToken: TOKEN });
    const res = await t.get('/_edge/push-urls', { method: 'POST', body: JSON.stringify({ path: '/a', expiresIn: 60 }) });
    expect(res.status).toBe(401);
    await res.text();
    const bad = await t.get('/_edge/push-urls', { method: 'POST', body: JSON.stringify({ path: '/a/../b', expiresIn: 60 }), headers: AUTH });
    expect(bad.status).toBe(400);
    await bad.text();
    const noUpload = await put('/_edge/push/a.txt', 'x');
    expect(noUpload.status).toBe(401);
    await t.close();

    t = await startTestEdge({});
    const off = await t.get('/_edge/push-urls', { method: 'POST', body: '{}', headers: AUTH });
    expect(off.status).toBe(404);
    expect(((await off.json()) as { error: string }).error).toBe('EDGE_ADMIN_DISABLED');
  });
});
