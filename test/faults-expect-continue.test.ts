/**
 * Regression: `curl --data-binary @2MB.bin` through the edge failed with
 * `502 EDGE_ORIGIN_UNREACHABLE`: curl sends `Expect: 100-continue` for
 * large bodies, the edge forwarded it, and undici refuses the header
 * (`NotSupportedError: expect header not supported`). The node answers
 * `100 Continue` to its client itself (Node's server does, with no
 * `checkContinue` listener) and sends the origin the whole body without
 * the field.
 *
 * The client here is `node:http`, which, like curl, holds the body back
 * until the `100 Continue` arrives.
 */
import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const SIZE = 2 * 1024 * 1024;

interface Reply {
  status: number;
  sawContinue: boolean;
  body: string;
}

/** POST `body` with `Expect: 100-continue`, sending it only once the edge said `100 Continue`. */
function postAfterContinue(url: string, body: Buffer): Promise<Reply> {
  return new Promise((resolve, reject) => {
    let sawContinue = false;
    const req = request(url, {
      method: 'POST',
      headers: { expect: '100-continue', 'content-type': 'application/octet-stream', 'content-length': body.length },
    });
    req.on('continue', () => {
      sawContinue = true;
      req.end(body);
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, sawContinue, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    // Headers only: the body waits for `100 Continue`.
    req.flushHeaders();
  });
}

let t: TestEdge | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

describe('faults: Expect: 100-continue on a forwarded POST', () => {
  // `/upload` is written by the node's content path; `/Upload` (an upper-case
  // target) goes through the Hono router: both must pass the body on.
  for (const path of ['/upload', '/Upload']) {
    it(`a 2 MB POST to ${path} waits for 100 Continue, then reaches the origin whole and without Expect`, async () => {
      t = await startTestEdge();
      t.origin.route(path, (_req, res, recorded) => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ bytes: recorded.body.length, expect: recorded.headers.expect ?? null }));
      });
      const body = Buffer.alloc(SIZE, 0x5a);

      const reply = await postAfterContinue(t.edge.url + path, body);

      expect(reply.sawContinue).toBe(true);
      expect(reply.status).toBe(200);
      expect(JSON.parse(reply.body)).toEqual({ bytes: SIZE, expect: null });
      expect(t.origin.count(path)).toBe(1);
      expect(t.origin.requests[0]!.body.equals(body)).toBe(true);
    });
  }
});
