/**
 * Regression: an origin status outside 100-599 (`HTTP/1.1 600 X`, `HTTP/1.1
 * 99 X`) was answered `500 EDGE_INTERNAL`: undici parses any three digits,
 * and `new Response()` then throws a RangeError the node did not expect.
 * It is the origin's fault, not the node's: `502 EDGE_ORIGIN_BAD_RESPONSE`,
 * with no origin address in the answer, and nothing stored.
 *
 * The origin is a raw `net` server: `node:http` refuses to send such statuses.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { startRawOrigin, type RawOrigin } from './helpers/origin.js';

let t: TestEdge | undefined;
let raw: RawOrigin | undefined;
afterEach(async () => {
  await t?.close();
  await raw?.close();
  t = raw = undefined;
});

describe('faults: a status outside 100-599', () => {
  const lines = ['HTTP/1.1 600 X', 'HTTP/1.1 99 X', 'HTTP/1.1 099 X', 'HTTP/1.1 999 Whatever', 'HTTP/1.1 1000 X', 'HTTP/1.1 2x0 X', 'HTTP/1.1 101 Switching Protocols'];
  for (const statusLine of lines) {
    it(`answers "${statusLine}" with 502 EDGE_ORIGIN_BAD_RESPONSE, naming no address, and stores nothing`, async () => {
      raw = await startRawOrigin((socket) => {
        socket.end(`${statusLine}\r\nCache-Control: public, max-age=60\r\nContent-Length: 2\r\n\r\nok`);
      });
      t = await startTestEdge({ origin: raw.url });

      for (const attempt of [1, 2]) {
        const res = await t.get('/status');
        expect(res.status).toBe(502);
        expect(res.headers.get('content-type')).toMatch(/^application\/json/);
        const text = await res.text();
        expect(JSON.parse(text).error).toBe('EDGE_ORIGIN_BAD_RESPONSE');
        expect(text).not.toContain('127.0.0.1');
        expect(text).not.toContain(String(new URL(raw.url).port));
        expect(raw.requests.length).toBe(attempt);
      }
    });
  }

  it('passes a POST answered with status 600 as 502 too', async () => {
    raw = await startRawOrigin((socket) => socket.end('HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n'));
    t = await startTestEdge({ origin: raw.url });
    const res = await t.get('/form', { method: 'POST', body: 'a=1' });
    expect(res.status).toBe(502);
    expect((await res.json()).error).toBe('EDGE_ORIGIN_BAD_RESPONSE');
  });
});
