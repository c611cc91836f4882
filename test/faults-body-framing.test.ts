/**
 * A body is stored only when it ended as its framing says a message ends
 * (RFC 9112 6.3): the announced Content-Length reached, the last chunk
 * read, or, for a close-delimited body (no Content-Length, not chunked), a
 * clean close of the connection (FIN). Anything else (a TCP reset, a close
 * before the length or the last chunk) is a broken body: never stored, and
 * the client that was streaming it sees its connection aborted, not a short
 * body that looks whole.
 *
 * Regression: a close-delimited 4 MB response cut by a reset after 128 KB
 * was stored and served as complete: undici ends a close-delimited body at
 * an ECONNRESET exactly as at a FIN (its `onHttpSocketError` calls the
 * parser's `finish()`), and even drops bytes it had buffered.
 *
 * The origins are raw `net` servers: `node:http` cannot produce these
 * faults. Each broken answer is written in two parts with the test's go in
 * between, so the fault always lands in the body, after the client has the
 * response headers.
 */
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { startRawOrigin, type RawOrigin } from './helpers/origin.js';

const BODY_SIZE = 4 * 1024 * 1024;
const CUT_AT = 128 * 1024;

/** A body whose bytes depend on their offset, so a reordered or spliced copy cannot pass for it. */
function patterned(size: number): Buffer {
  const body = Buffer.alloc(size);
  for (let i = 0; i < size; i++) body[i] = (i * 31 + (i >>> 12)) & 0xff;
  return body;
}
const BODY = patterned(BODY_SIZE);

function write(socket: Socket, data: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => socket.write(data, (error) => (error ? reject(error) : resolve())));
}

/** A latch the test opens once the client has the response headers. */
function latch(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

type Framing = 'close-delimited' | 'chunked' | 'content-length';

function head(framing: Framing, cacheControl = 'public, max-age=60'): string {
  const lines = ['HTTP/1.1 200 OK', 'Content-Type: application/octet-stream', `Cache-Control: ${cacheControl}`];
  if (framing === 'close-delimited') lines.push('Connection: close');
  if (framing === 'chunked') lines.push('Transfer-Encoding: chunked');
  if (framing === 'content-length') lines.push(`Content-Length: ${BODY_SIZE}`);
  return lines.join('\r\n') + '\r\n\r\n';
}

function frame(framing: Framing, bytes: Buffer): Buffer {
  if (framing !== 'chunked') return bytes;
  return Buffer.concat([Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, Buffer.from('\r\n')]);
}

/** The whole body, framed, ending as the framing says (a FIN after a close-delimited body). */
async function answerWhole(socket: Socket, framing: Framing): Promise<void> {
  await write(socket, head(framing));
  for (let offset = 0; offset < BODY_SIZE; offset += 256 * 1024) await write(socket, frame(framing, BODY.subarray(offset, offset + 256 * 1024)));
  if (framing === 'chunked') await write(socket, '0\r\n\r\n');
  if (framing === 'close-delimited') socket.end();
}

/** Headers and the first half of CUT_AT bytes; after `go`, the rest up to CUT_AT, then `end`. */
async function answerBroken(socket: Socket, framing: Framing, end: 'reset' | 'fin', go: Promise<void>, cacheControl?: string): Promise<void> {
  await write(socket, head(framing, cacheControl));
  await write(socket, frame(framing, BODY.subarray(0, CUT_AT / 2)));
  await go;
  // Mid-chunk for chunked framing: announce a chunk longer than what follows.
  if (framing === 'chunked') await write(socket, Buffer.concat([Buffer.from(`${(CUT_AT).toString(16)}\r\n`), BODY.subarray(CUT_AT / 2, CUT_AT)]));
  else await write(socket, BODY.subarray(CUT_AT / 2, CUT_AT));
  if (end === 'reset') socket.resetAndDestroy();
  else socket.end();
}

let t: TestEdge | undefined;
let raw: RawOrigin | undefined;
afterEach(async () => {
  await t?.close();
  await raw?.close();
  t = raw = undefined;
});

describe('faults: a body that does not end cleanly is never stored', () => {
  const broken: [string, Framing, 'reset' | 'fin'][] = [
    ['a close-delimited body cut by a TCP reset', 'close-delimited', 'reset'],
    ['a chunked body cut by a TCP reset', 'chunked', 'reset'],
    ['a chunked body closed (FIN) before its last chunk', 'chunked', 'fin'],
    ['a Content-Length body cut by a TCP reset', 'content-length', 'reset'],
    ['a Content-Length body closed (FIN) short of its length', 'content-length', 'fin'],
  ];
  for (const [name, framing, end] of broken) {
    it(`${name}: the client's connection is aborted, nothing is stored, the next request goes to the origin`, async () => {
      const go = latch();
      raw = await startRawOrigin((socket) =>
        raw!.requests.length === 1 ? answerBroken(socket, framing, end, go.wait) : answerWhole(socket, framing),
      );
      t = await startTestEdge({ origin: raw.url });

      const first = await t.get('/cut.bin');
      expect(first.status).toBe(200);
      go.open();
      await expect(first.arrayBuffer().then((b) => `${b.byteLength} bytes, ended as if whole`)).rejects.toThrow();
      await t.settle();

      const second = await t.get('/cut.bin');
      expect(second.headers.get('cache-status')).not.toMatch(/hit/);
      expect(Buffer.from(await second.arrayBuffer()).equals(BODY)).toBe(true);
      expect(raw.requests.length).toBe(2);
    });
  }

  it('a close-delimited body cut by a reset is a broken response for the client even when it was not going to be stored', async () => {
    const go = latch();
    raw = await startRawOrigin((socket) => answerBroken(socket, 'close-delimited', 'reset', go.wait, 'no-store'));
    t = await startTestEdge({ origin: raw.url });
    const res = await t.get('/private.bin');
    expect(res.status).toBe(200);
    go.open();
    await expect(res.arrayBuffer().then((b) => `${b.byteLength} bytes, ended as if whole`)).rejects.toThrow();
  });

  // RFC 9112 6.3 (8): a close-delimited body ends when the server closes the
  // connection, and a FIN is that close. It is stored, as Varnish stores one;
  // only a reset (or any socket error) marks it cut.
  it('stores a close-delimited body that ends with a clean close (FIN) and serves it whole', async () => {
    raw = await startRawOrigin((socket) => answerWhole(socket, 'close-delimited'));
    t = await startTestEdge({ origin: raw.url });
    const first = await t.get('/whole.bin');
    expect(Buffer.from(await first.arrayBuffer()).equals(BODY)).toBe(true);
    await t.settle();
    const second = await t.get('/whole.bin');
    expect(second.headers.get('cache-status')).toMatch(/^edge; hit/);
    expect(second.headers.get('content-length')).toBe(String(BODY_SIZE));
    expect(Buffer.from(await second.arrayBuffer()).equals(BODY)).toBe(true);
    expect(raw.requests.length).toBe(1);
  });
});
