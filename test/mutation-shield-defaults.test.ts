/**
 * The origin-shield defaults (`origin-shield/defaults.ts`) as a shield
 * shows them, end to end: no image transforms (edges transform, the shield
 * keeps originals), CDN fields handed on, and edges trusted as proxies.
 * Removing `images: false` by hand passed every other test; the other two
 * defaults are also pinned in shield.test.ts, here each is checked alone.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { SHIELD_DEFAULTS } from '../origin-shield/defaults.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function startOrigin(): Promise<TestOrigin> {
  const origin = await startTestOrigin();
  cleanups.push(() => origin.close());
  return origin;
}

async function startShield(origin: TestOrigin): Promise<EdgeServer> {
  const dataDir = await mkdtemp(join(tmpdir(), 'edge-shield-defaults-'));
  cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
  const options = resolveEdgeOptions({ ...SHIELD_DEFAULTS, origin: origin.url, host: '127.0.0.1', port: 0, logLevel: 'silent', dataDir });
  const shield = await startEdgeServer(options, { logger: false });
  cleanups.push(() => shield.close());
  return shield;
}

describe('origin-shield defaults', () => {
  it('transforms no images: image parameters reach the origin and the original bytes come back', async () => {
    const origin = await startOrigin();
    const photo = await sharp({ create: { width: 120, height: 90, channels: 3, background: 'navy' } }).jpeg().toBuffer();
    origin.set('/photo.jpg', { headers: { 'content-type': 'image/jpeg', 'cache-control': 'public, max-age=300' }, body: photo });
    const shield = await startShield(origin);

    const res = await fetch(`${shield.url}/photo.jpg?width=40&format=webp`, { headers: { accept: 'image/avif,image/webp,*/*' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('image/jpeg');
    expect(Buffer.from(await res.arrayBuffer()).equals(photo)).toBe(true);
    expect(res.headers.get('cache-status')).not.toMatch(/transformed|image-transform/);
    expect(origin.requests.map((r) => r.url)).toEqual(['/photo.jpg?width=40&format=webp']);
  });

  it('keeps CDN-Cache-Control and tags on its answers, for the edges behind it', async () => {
    const origin = await startOrigin();
    origin.set('/t.css', { headers: { 'cache-control': 'max-age=5', 'cdn-cache-control': 'max-age=600', 'cache-tag': 'release-1' }, body: 't' });
    const shield = await startShield(origin);
    const res = await fetch(`${shield.url}/t.css`);
    expect(res.headers.get('cdn-cache-control')).toBe('max-age=600');
    expect(res.headers.get('cache-tag')).toBe('release-1');
  });

  it('trusts the edges on this machine: their X-Forwarded-For reaches the origin', async () => {
    const origin = await startOrigin();
    origin.set('/xff.txt', { headers: { 'cache-control': 'public, max-age=300' }, body: 'x' });
    const shield = await startShield(origin);
    await fetch(`${shield.url}/xff.txt`, { headers: { 'x-forwarded-for': '203.0.113.7' } });
    expect(origin.requests[0]!.headers['x-forwarded-for']).toMatch(/^203\.0\.113\.7, 127\.0\.0\.1$/);
  });
});
