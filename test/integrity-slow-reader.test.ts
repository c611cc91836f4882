/**
 * Readers get whole versions: a client reading a large disk-tier object
 * slowly receives every byte of the version it started with, even when the
 * object is purged, replaced by a push or refetched from the origin while
 * it reads. Before, the node removed the old body's chunks at once and the
 * slow client got a body cut short (Content-Length 24 MiB, a few MiB sent).
 *
 * The client is a plain node:http request whose response is paused after
 * its first megabyte, so the node stops reading the body from LMDB once the
 * socket buffers are full; each case checks that the node had indeed not
 * read the body to its end when the object changed.
 */
import { createHash } from 'node:crypto';
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { setDated } from './helpers/origin.js';
import { MiB, patterned } from './helpers/store-contract.js';

const TOKEN = 't'.repeat(32);
const AUTH = { authorization: `Bearer ${TOKEN}` };
/** Larger than loopback socket buffers can absorb, so the node must still be reading from the store. */
const SIZE = 24 * MiB;
/** What the client reads before it pauses. */
const FIRST = 1 * MiB;
const CACHEABLE = { 'content-type': 'application/octet-stream', 'cache-control': 'public, max-age=60' };

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

let t: TestEdge;
/** Slow responses still open, destroyed after each case so a failed one cannot hold the node's close. */
const open = new Set<IncomingMessage>();
afterEach(async () => {
  for (const response of open) response.destroy();
  open.clear();
  await t?.close();
});

interface SlowRead {
  response: IncomingMessage;
  /** Body bytes the node has handed to the socket so far (read from the store, give or take one chunk). */
  sentByNode(): number;
  /** Resumes reading; resolves to the whole body, rejects if the connection ends before Content-Length. */
  finish(): Promise<Buffer>;
}

/**
 * GET `path`, read the first {@link FIRST} bytes, then pause. The node's
 * side of the exchange is picked up from its server's `request` event,
 * to see how much of the body it has sent.
 */
async function startSlowRead(path: string): Promise<SlowRead> {
  let nodeSide: ServerResponse | undefined;
  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    if (req.url === path && req.headers['x-slow-reader'] === '1') nodeSide = res;
  };
  t.edge.server.on('request', onRequest);
  const chunks: Buffer[] = [];
  let received = 0;
  let failure: Error | undefined;
  let ended = false;
  let settle: (() => void) | undefined;

  const response = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: t.edge.port, path, headers: { 'x-slow-reader': '1' }, agent: false }, resolve);
    req.on('error', reject);
    req.end();
  });
  t.edge.server.off('request', onRequest);
  open.add(response);
  response.on('error', (error) => {
    failure = error;
    settle?.();
  });
  response.on('close', () => settle?.());
  response.on('end', () => {
    ended = true;
    settle?.();
  });
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      received += chunk.byteLength;
      if (received < FIRST) return;
      response.pause();
      response.off('data', onData);
      resolve();
    };
    response.on('data', onData);
    response.once('error', reject);
  });
  return {
    response,
    sentByNode: () => {
      if (!nodeSide?.socket) throw new Error('the node side of the slow read was not seen');
      return nodeSide.socket.bytesWritten;
    },
    finish: () =>
      new Promise<Buffer>((resolve, reject) => {
        settle = () => {
          open.delete(response);
          if (ended) resolve(Buffer.concat(chunks));
          else reject(failure ?? new Error(`the connection closed after ${received} of ${response.headers['content-length']} bytes`));
        };
        response.on('data', (chunk: Buffer) => {
          chunks.push(chunk);
          received += chunk.byteLength;
        });
        response.resume();
      }),
  };
}

/** The slow client got all of `expected`, as its headers announced. */
async function expectWhole(slow: SlowRead, expected: Uint8Array): Promise<void> {
  const body = await slow.finish();
  expect(Number(slow.response.headers['content-length'])).toBe(expected.byteLength);
  expect(body.byteLength).toBe(expected.byteLength);
  expect(sha256(body)).toBe(sha256(expected));
}

/** The change came while the node still had most of the body to read: the case tests what it says. */
function expectNodeStillReading(slow: SlowRead): void {
  expect(slow.sentByNode(), 'the node had already sent the whole body; the pause did not hold it back').toBeLessThan(SIZE - 2 * MiB);
}

async function pull(path: string): Promise<Response> {
  const res = await t.get(path);
  await res.arrayBuffer();
  return res;
}

function push(path: string, body: Uint8Array): Promise<Response> {
  return t.get(`/_edge/push${path}`, { method: 'PUT', body: body as BodyInit, headers: { ...AUTH, 'content-type': 'application/octet-stream' } });
}

/** Stores `v1` at `path` through the origin and checks the next GET is a disk hit. */
async function pulledIntoCache(path: string, v1: Uint8Array): Promise<void> {
  setDated(t.origin, t.clock.now, path, { headers: CACHEABLE, body: v1 });
  expect((await pull(path)).status).toBe(200);
  await t.settle();
  expect((await pull(path)).headers.get('cache-status')).toMatch(/^edge; hit/);
}

const tiers = [
  ['the disk tier alone', { memorySize: 0 }],
  ['memory over disk', {}],
] as const;

for (const [tierName, tierOptions] of tiers) {
  describe(`a slow reader of a ${SIZE / MiB} MiB object gets the version it started with (${tierName})`, () => {
    const v1 = patterned(SIZE, 1);
    const v2 = patterned(SIZE - 12_345, 2);

    it('when the object is purged', async () => {
      t = await startTestEdge({ adminToken: TOKEN, ...tierOptions });
      await pulledIntoCache('/big.bin', v1);
      const slow = await startSlowRead('/big.bin');

      const purge = await t.get('/_edge/purge', { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ urls: ['/big.bin'] }) });
      expect(await purge.json()).toEqual({ purged: 1 });
      expectNodeStillReading(slow);
      setDated(t.origin, t.clock.now, '/big.bin', { headers: CACHEABLE, body: v2 });
      const after = await t.get('/big.bin');
      expect(after.headers.get('cache-status')).toMatch(/fwd=uri-miss/);
      expect(sha256(new Uint8Array(await after.arrayBuffer()))).toBe(sha256(v2));

      await expectWhole(slow, v1);
    });

    it('when a push replaces it, and when it is unpushed', async () => {
      t = await startTestEdge({ adminToken: TOKEN, ...tierOptions });
      expect((await push('/pushed.bin', v1)).status).toBe(201);
      const first = await startSlowRead('/pushed.bin');
      expect(first.response.headers['cache-status']).toMatch(/detail=pushed/);

      expect((await push('/pushed.bin', v2)).status).toBe(201);
      expectNodeStillReading(first);
      const second = await startSlowRead('/pushed.bin');
      expect(Number(second.response.headers['content-length'])).toBe(v2.byteLength);

      expect((await t.get('/_edge/push/pushed.bin', { method: 'DELETE', headers: AUTH })).status).toBe(204);
      expectNodeStillReading(second);
      expect((await pull('/pushed.bin')).status).toBe(404);

      await expectWhole(first, v1);
      await expectWhole(second, v2);
    });

    it('when a stale object is refetched from the origin', async () => {
      t = await startTestEdge({ adminToken: TOKEN, ...tierOptions });
      await pulledIntoCache('/refetched.bin', v1);
      const slow = await startSlowRead('/refetched.bin');

      t.clock.advance(61_000);
      setDated(t.origin, t.clock.now, '/refetched.bin', { headers: CACHEABLE, body: v2 });
      const refetched = await t.get('/refetched.bin');
      expect(refetched.headers.get('cache-status')).toMatch(/fwd=stale/);
      expect(sha256(new Uint8Array(await refetched.arrayBuffer()))).toBe(sha256(v2));
      await t.settle();
      const hit = await t.get('/refetched.bin');
      expect(hit.headers.get('cache-status')).toMatch(/^edge; hit/);
      expect(Number(hit.headers.get('content-length'))).toBe(v2.byteLength);
      await hit.arrayBuffer();
      expectNodeStillReading(slow);

      await expectWhole(slow, v1);
      expect(t.origin.count('/refetched.bin')).toBe(2);
    });
  });
}
