/**
 * Regression: an origin connection that ended (FIN) or was reset while
 * nobody was reading its body threw `AssertionError: assert(!this.paused)`
 * from undici's socket listener, an exception nothing can catch, and the
 * whole node went down (undici 7, nodejs/undici#5360: undici pauses its
 * parser when the body is not read, and its end-of-stream handler then
 * calls `finish()` on the paused parser). The edge stops reading whenever
 * its client is slower than the origin, so any origin answering with
 * `Connection: close` could crash it.
 *
 * Tested on the origin client itself (the edge's own reads are too quick to
 * leave the parser paused on cue): a real raw-socket origin, an unread body
 * just over undici's 64 KiB buffer, then the end of the stream.
 */
import { channel, type Channel } from 'node:diagnostics_channel';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { UndiciOriginClient } from '../edge/node/undici-origin.js';
import { startRawOrigin, type RawOrigin } from './helpers/origin.js';

/** Just over undici's 64 KiB body buffer: the last bytes pause the parser with nothing left to parse. */
const SIZE = 70_000;

let raw: RawOrigin | undefined;
let client: UndiciOriginClient | undefined;
afterEach(async () => {
  await client?.close();
  await raw?.close();
  raw = client = undefined;
});

/** Resolves on the first message on `name` about a request to `origin` (undici's diagnostics channels). */
function nextOn(name: string, origin: string): Promise<void> {
  const source: Channel = channel(name);
  return new Promise((resolve) => {
    const listener = (message: unknown) => {
      if ((message as { request?: { origin?: string } }).request?.origin !== origin) return;
      source.unsubscribe(listener);
      resolve();
    };
    source.subscribe(listener);
  });
}

describe('faults: the origin ends its stream while the body is not being read', () => {
  for (const framing of ['Content-Length', 'close-delimited']) {
    it(`a ${framing} body that ended with a FIN while unread is read whole afterwards`, async () => {
      let closed!: Promise<void>;
      raw = await startRawOrigin((socket) => {
        closed = new Promise((resolve) => socket.once('close', () => resolve()));
        const length = framing === 'Content-Length' ? `Content-Length: ${SIZE}\r\n` : '';
        socket.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nConnection: close\r\n${length}\r\n`), Buffer.alloc(SIZE, 0x61)]));
      });
      client = new UndiciOriginClient({ url: raw.url });
      const res = await client.fetch({ method: 'GET', pathAndQuery: '/unread', headers: new Headers() });
      await raw.received(1);
      // The origin's socket closes once the client has answered the FIN: undici's end-of-stream handler has run.
      await closed;
      expect((await res.arrayBuffer()).byteLength).toBe(SIZE);
    });
  }

  it('a close-delimited body reset while unread fails as a broken body (502), never ends, never crashes', async () => {
    let originSide!: Socket;
    raw = await startRawOrigin((socket) => {
      originSide = socket;
      socket.write(Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n'), Buffer.alloc(SIZE, 0x61)]));
    });
    client = new UndiciOriginClient({ url: raw.url });
    const received = new Promise<void>((resolve) => {
      let bytes = 0;
      const source = channel('undici:request:bodyChunkReceived');
      const listener = (message: unknown) => {
        const { request, chunk } = message as { request: { origin: string }; chunk: Uint8Array };
        if (request.origin !== raw!.url) return;
        bytes += chunk.byteLength;
        if (bytes < SIZE) return;
        source.unsubscribe(listener);
        resolve();
      };
      source.subscribe(listener);
    });
    const failed = nextOn('undici:request:error', raw.url);

    const res = await client.fetch({ method: 'GET', pathAndQuery: '/unread-reset', headers: new Headers() });
    await received;
    // undici has every byte and its parser is paused: now the reset.
    originSide.resetAndDestroy();
    await failed;

    const error = await res.arrayBuffer().then(
      (bytes) => `${bytes.byteLength} bytes, ended as if whole`,
      (caught: unknown) => caught as { code?: string; status?: number },
    );
    expect(error).toMatchObject({ code: 'EDGE_ORIGIN_UNREACHABLE', status: 502 });
  });
});
