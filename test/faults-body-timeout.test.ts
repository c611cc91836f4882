/**
 * An origin body that never ends (a slowloris origin sending one byte a
 * second) is cut by --body-timeout, the longest gap allowed between body
 * bytes: the edge closes the origin connection, the client's response is
 * aborted, and nothing is stored. The test waits for the edge to cut the
 * origin (300 ms after the first byte), never longer: without the cut the
 * drip goes on until the test times out.
 *
 * Before the fix the request itself was already cut; what failed were the
 * requests collapsed behind it (500, now 504: faults-collapsed-body-reset).
 */
import type { Socket } from 'node:net';
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

/** One byte now, then one a second, until the socket closes (never by itself); resolves with the bytes sent by then. */
function drip(socket: Socket): Promise<number> {
  return new Promise((resolve) => {
    let sent = 0;
    const one = () => {
      if (socket.destroyed) return;
      socket.write('x');
      sent++;
    };
    one();
    const timer = setInterval(one, 1000);
    socket.once('close', () => {
      clearInterval(timer);
      resolve(sent);
    });
  });
}

describe('faults: a body that never ends', () => {
  const heads: [string, string][] = [
    ['close-delimited', 'Connection: close'],
    ['with a Content-Length it never reaches', 'Content-Length: 100000'],
    ['chunked', 'Transfer-Encoding: chunked'],
  ];
  for (const [name, framing] of heads) {
    it(`a slowloris body (${name}) is cut by --body-timeout and not stored`, async () => {
      let cut!: Promise<number>;
      raw = await startRawOrigin((socket) => {
        if (raw!.requests.length > 1) {
          socket.end('HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: 5\r\n\r\nwhole');
          return;
        }
        socket.write(`HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\n${framing}\r\n\r\n`);
        // Chunked: one chunk that announces far more than ever arrives.
        if (framing.startsWith('Transfer-Encoding')) socket.write('186a0\r\n');
        cut = drip(socket);
      });
      t = await startTestEdge({ origin: raw.url, bodyTimeout: '300ms' });

      const res = await t.get('/drip');
      expect(res.status).toBe(200);
      await expect(res.text().then((text) => `${text.length} bytes, ended as if whole`)).rejects.toThrow();
      // The drip never stops by itself: the origin's socket closes only because the edge cut it.
      expect(await cut).toBeGreaterThanOrEqual(1);
      await t.settle();

      const next = await t.get('/drip');
      expect(next.headers.get('cache-status')).not.toMatch(/hit/);
      expect(await next.text()).toBe('whole');
      expect(raw.requests.length).toBe(2);
    });
  }
});
