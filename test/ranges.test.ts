/**
 * Issue 14, ranges of objects the node does not store: a Range request for
 * an object over --max-object-size gets its slice (206), not the whole body,
 * and the origin is read no further than the slice; once the key is known
 * uncacheable, Range goes to the origin and its 206/416 passes unchanged.
 * Real origin (it honours Range itself and counts the bytes it sends) and
 * edge; no sleeps: the test waits for the origin's own answer to end.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const SIZE = 100 * 1024 * 1024;
const CHUNK = 64 * 1024;
const ETAG = '"big-1"';

/** 100 MB where every 4-byte word holds its own index: a slice at the wrong offset cannot match. */
let big: Buffer;
beforeAll(() => {
  big = Buffer.alloc(SIZE);
  const words = new Uint32Array(big.buffer, big.byteOffset, SIZE / 4);
  for (let i = 0; i < words.length; i++) words[i] = i;
});

let t: TestEdge | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

interface Served {
  range: string | undefined;
  ifRange: string | undefined;
  status: number;
  /** Body bytes handed to the socket. */
  bytes: number;
  /** Settles when the origin's answer ended, completely or cut off by the edge. */
  ended: Promise<void>;
}

/**
 * An origin for `body` that honours a single `bytes=a-b`, `a-` or `-n` range
 * (and a strong If-Range against its ETag), streams with backpressure and
 * records what each request asked for and how many bytes it sent.
 */
function rangeOrigin(body: Buffer, headers: Record<string, string>) {
  const served: Served[] = [];
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    let start = 0;
    let end = body.length - 1;
    let status = 200;
    const ifRange = typeof req.headers['if-range'] === 'string' ? req.headers['if-range'] : undefined;
    const match = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '');
    if (match && (match[1] || match[2]) && (ifRange === undefined || ifRange === headers.etag)) {
      if (match[1]) {
        start = Number(match[1]);
        end = match[2] ? Math.min(Number(match[2]), body.length - 1) : body.length - 1;
      } else {
        start = Math.max(0, body.length - Number(match[2]));
      }
      status = start >= body.length ? 416 : 206;
    }
    let finish!: () => void;
    const entry: Served = { range: req.headers.range, ifRange, status, bytes: 0, ended: new Promise<void>((resolve) => (finish = resolve)) };
    served.push(entry);
    res.statusCode = status;
    for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
    res.setHeader('accept-ranges', 'bytes');
    if (status === 416) {
      res.setHeader('content-range', `bytes */${body.length}`);
      res.setHeader('content-length', '0');
      res.end(finish);
      return;
    }
    if (status === 206) res.setHeader('content-range', `bytes ${start}-${end}/${body.length}`);
    res.setHeader('content-length', String(end - start + 1));
    async function* chunks() {
      for (let at = start; at <= end; at += CHUNK) {
        const chunk = body.subarray(at, Math.min(end + 1, at + CHUNK));
        entry.bytes += chunk.length;
        yield chunk;
      }
    }
    // Small buffers, so the count stays close to what actually left.
    return pipeline(Readable.from(chunks(), { highWaterMark: 1 }), res)
      .catch(() => {
        // The edge hung up: that is the point of some of these tests.
      })
      .finally(finish);
  };
  return { served, handler };
}

describe('a range of an object too large to store (issue 14)', () => {
  const headers = { 'cache-control': 'public, max-age=60', etag: ETAG, 'content-type': 'application/octet-stream' };
  const at = 80 * 1024 * 1024;
  const range = `bytes=${at}-${at + 999}`;

  it('the first request gets only its slice (206), and the origin is not read to the end', async () => {
    t = await startTestEdge();
    const origin = rangeOrigin(big, headers);
    t.origin.route('/big.bin', origin.handler);

    const res = await t.get('/big.bin', { headers: { range } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes ${at}-${at + 999}/${SIZE}`);
    expect(res.headers.get('content-length')).toBe('1000');
    expect(res.headers.get('cache-status')).not.toMatch(/stored/);
    const got = Buffer.from(await res.arrayBuffer());
    expect(got.equals(big.subarray(at, at + 1000))).toBe(true);

    // The whole object was asked for (it might have been storable), then cut off after the slice.
    await origin.served[0]!.ended;
    expect(origin.served[0]!.range).toBeUndefined();
    expect(origin.served[0]!.bytes).toBeGreaterThanOrEqual(at + 1000);
    expect(origin.served[0]!.bytes).toBeLessThan(SIZE);
    await t.settle();
    const stored: string[] = [];
    for await (const meta of t.edge.store.list()) stored.push(meta.key);
    expect(stored).toEqual([]);
  }, 120_000);

  it('then the key is known uncacheable: Range and If-Range go to the origin, which sends only the slice', async () => {
    t = await startTestEdge();
    const origin = rangeOrigin(big, headers);
    t.origin.route('/big.bin', origin.handler);
    await (await t.get('/big.bin', { headers: { range: 'bytes=0-9' } })).arrayBuffer();

    const res = await t.get('/big.bin', { headers: { range } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes ${at}-${at + 999}/${SIZE}`);
    expect(res.headers.get('content-length')).toBe('1000');
    expect(Buffer.from(await res.arrayBuffer()).equals(big.subarray(at, at + 1000))).toBe(true);
    await origin.served[1]!.ended;
    expect(origin.served[1]).toMatchObject({ range, status: 206, bytes: 1000 });

    const conditional = await t.get('/big.bin', { headers: { range: 'bytes=-16', 'if-range': ETAG } });
    expect(conditional.status).toBe(206);
    expect(Buffer.from(await conditional.arrayBuffer()).equals(big.subarray(SIZE - 16))).toBe(true);
    await origin.served[2]!.ended;
    expect(origin.served[2]).toMatchObject({ range: 'bytes=-16', ifRange: ETAG, status: 206, bytes: 16 });

    const unsatisfiable = await t.get('/big.bin', { headers: { range: `bytes=${SIZE}-` } });
    expect(unsatisfiable.status).toBe(416);
    expect(unsatisfiable.headers.get('content-range')).toBe(`bytes */${SIZE}`);
    await unsatisfiable.arrayBuffer();
    await origin.served[3]!.ended;
    expect(origin.served[3]).toMatchObject({ range: `bytes=${SIZE}-`, status: 416, bytes: 0 });
    expect(t.edge.edge.pull.flightStats().waiters).toBe(0);
  }, 120_000);
});

describe('the hit-for-miss memory and ranges', () => {
  it('forwarded ranges do not renew it: once it lapses, one whole fetch checks the object again', async () => {
    t = await startTestEdge({ maxObjectSize: '1MB' });
    const four = big.subarray(0, 4 * 1024 * 1024);
    const origin = rangeOrigin(four, { 'cache-control': 'max-age=60', etag: ETAG });
    t.origin.route('/four.bin', origin.handler);
    const slice = async (range: string, start: number, end: number) => {
      const res = await t!.get('/four.bin', { headers: { range } });
      expect(res.status).toBe(206);
      expect(res.headers.get('content-range')).toBe(`bytes ${start}-${end}/${four.length}`);
      expect(Buffer.from(await res.arrayBuffer()).equals(four.subarray(start, end + 1))).toBe(true);
    };

    await slice('bytes=100-199', 100, 199);
    await slice('bytes=2000000-2000099', 2_000_000, 2_000_099);
    t.clock.advance(9_000);
    await slice('bytes=300-399', 300, 399);
    t.clock.advance(1_001);
    await slice('bytes=400-499', 400, 499);
    await slice('bytes=500-599', 500, 599);
    await Promise.all(origin.served.map((served) => served.ended));
    expect(origin.served.map((served) => served.range)).toEqual([undefined, 'bytes=2000000-2000099', 'bytes=300-399', undefined, 'bytes=500-599']);
    expect(origin.served[1]!.bytes).toBe(100);
  });
});

describe('a range of a storable object that misses', () => {
  it('still fills the cache from a whole, unranged origin request', async () => {
    t = await startTestEdge();
    const small = big.subarray(0, 1024 * 1024);
    const origin = rangeOrigin(small, { 'cache-control': 'max-age=60', etag: ETAG });
    t.origin.route('/small.bin', origin.handler);

    const res = await t.get('/small.bin', { headers: { range: 'bytes=1000-1999' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes 1000-1999/${small.length}`);
    expect(Buffer.from(await res.arrayBuffer()).equals(small.subarray(1000, 2000))).toBe(true);
    await t.settle();
    expect(origin.served).toHaveLength(1);
    expect(origin.served[0]).toMatchObject({ range: undefined, status: 200, bytes: small.length });

    const hit = await t.get('/small.bin', { headers: { range: 'bytes=-10' } });
    expect(hit.status).toBe(206);
    expect(hit.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(Buffer.from(await hit.arrayBuffer()).equals(small.subarray(small.length - 10))).toBe(true);
    expect(origin.served).toHaveLength(1);
  });
});
