import { request } from 'node:http';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createTestClock } from './helpers/clock.js';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';

let origin: TestOrigin;

beforeEach(async () => {
  origin = await startTestOrigin();
});

afterEach(async () => {
  await origin.close();
});

describe('test origin', () => {
  it('serves scripted responses and records requests', async () => {
    origin.set('/a', { headers: { 'cache-control': ['max-age=60', 'public'], etag: '"1"' }, body: 'hello' });
    const res = await fetch(`${origin.url}/a?x=1`, { headers: { 'x-test': 'yes' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('max-age=60, public');
    expect(await res.text()).toBe('hello');
    expect(origin.count('/a')).toBe(1);
    expect(origin.count('/a?x=1')).toBe(1);
    expect(origin.requests[0]).toMatchObject({ method: 'GET', url: '/a?x=1', path: '/a' });
    expect(origin.requests[0]!.headers['x-test']).toBe('yes');
  });

  it('steps through a sequence and repeats the last answer', async () => {
    origin.set('/seq', [{ body: 'first' }, { status: 304, headers: { etag: '"1"' } }]);
    const texts = [];
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${origin.url}/seq`);
      texts.push(`${res.status}:${await res.text()}`);
    }
    expect(texts).toEqual(['200:first', '304:', '304:']);
  });

  it('runs route handlers with the recorded request body', async () => {
    origin.route('/echo', (req, res, recorded) => {
      res.end(`${req.method} ${recorded.body.toString()}`);
    });
    const res = await fetch(`${origin.url}/echo`, { method: 'POST', body: 'payload' });
    expect(await res.text()).toBe('POST payload');
    expect(origin.requests[0]!.body.toString()).toBe('payload');
  });

  it('answers unrouted paths with 404 unless a fallback is given', async () => {
    expect((await fetch(`${origin.url}/none`)).status).toBe(404);
    const withFallback = await startTestOrigin((_req, res) => res.end('fallback'));
    try {
      expect(await (await fetch(`${withFallback.url}/none`)).text()).toBe('fallback');
    } finally {
      await withFallback.close();
    }
  });

  it('destroy: the connection drops and fetch rejects', async () => {
    origin.set('/drop', { destroy: true });
    await expect(fetch(`${origin.url}/drop`)).rejects.toThrow();
    expect(origin.count('/drop')).toBe(1);
  });

  it('failAfterBytes: headers arrive, then reading the body fails', async () => {
    const body = 'x'.repeat(100_000);
    origin.set('/partial', { body, failAfterBytes: 1000 });
    const res = await fetch(`${origin.url}/partial`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(body.length));
    await expect(res.text()).rejects.toThrow();
  });

  it('failAfterBytes with chunked encoding also fails the body read', async () => {
    origin.set('/partial-chunked', { body: 'y'.repeat(10_000), failAfterBytes: 10, chunked: true });
    const res = await fetch(`${origin.url}/partial-chunked`);
    expect(res.headers.get('transfer-encoding')).toBe('chunked');
    await expect(res.arrayBuffer()).rejects.toThrow();
  });

  it('earlyHints: a 103 arrives before the final response', async () => {
    origin.set('/hints', { earlyHints: { link: '</a.css>; rel=preload' }, body: 'final' });
    const { informational, status, body } = await new Promise<{
      informational: { statusCode: number; link: unknown }[];
      status: number;
      body: string;
    }>((resolve, reject) => {
      const informational: { statusCode: number; link: unknown }[] = [];
      const req = request(`${origin.url}/hints`, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve({ informational, status: res.statusCode ?? 0, body: text }));
      });
      req.on('information', (info) => informational.push({ statusCode: info.statusCode, link: info.headers.link }));
      req.on('error', reject);
      req.end();
    });
    expect(informational).toEqual([{ statusCode: 103, link: '</a.css>; rel=preload' }]);
    expect(status).toBe(200);
    expect(body).toBe('final');
  });

  it('delayMs: close() does not wait for a pending delayed response', async () => {
    origin.set('/slow', { delayMs: 60_000, body: 'late' });
    const pending = fetch(`${origin.url}/slow`).then(
      () => 'resolved',
      () => 'rejected',
    );
    await new Promise<void>((resolve) => {
      const check = () => (origin.count('/slow') > 0 ? resolve() : setTimeout(check, 5));
      check();
    });
    const started = Date.now();
    await origin.close();
    expect(await pending).toBe('rejected');
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('close() also ends idle keep-alive connections', async () => {
    origin.set('/k', { body: 'k' });
    await (await fetch(`${origin.url}/k`)).text();
    const started = Date.now();
    await origin.close();
    expect(Date.now() - started).toBeLessThan(1_000);
  });
});

describe('test clock', () => {
  it('starts at 2026-01-01 and moves only when told', () => {
    const clock = createTestClock();
    expect(clock.now()).toBe(Date.UTC(2026, 0, 1));
    clock.advance(1500);
    expect(clock.now()).toBe(Date.UTC(2026, 0, 1) + 1500);
    clock.set(42);
    const { now } = clock;
    expect(now()).toBe(42);
    expect(() => clock.advance(-1)).toThrow(TypeError);
  });
});
