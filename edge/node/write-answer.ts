/**
 * Writing an `Answer` (`edge/core/responder.ts`) to a Node response
 * directly: one `writeHead`, then the bytes, or a stream written with
 * backpressure. Content answers (fresh hits above all) then cost no Web
 * Request, Response or Headers object.
 *
 * HTTP/1.1 (`ServerResponse`) gets a flat header list. HTTP/2
 * (`Http2ServerResponse`, node:http2's compatibility API) gets a header
 * object without connection-specific fields, which HTTP/2 forbids
 * (RFC 9113 8.2.2; node:http2 throws on them). A client that goes away (a
 * closed socket, or an HTTP/2 RST_STREAM, which leaves the connection
 * open) ends the write the same way: the body stream is cancelled, and a
 * cache fill behind it carries on without this reader.
 */
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { Http2ServerResponse } from 'node:http2';
import type { Answer } from '../core/responder.js';

/** What the node writes to: an HTTP/1.x response, or an HTTP/2 stream's. */
export type NodeResponse = ServerResponse | Http2ServerResponse;

/** Fields HTTP/2 responses may not carry (RFC 9113 8.2.2). */
const CONNECTION_FIELDS = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);

/** Write `answer`; `done` is called once with the body bytes sent, when the answer is over. */
export function writeAnswer(res: NodeResponse, answer: Answer, done: (bytes: number) => void): void {
  const { headers } = answer;
  if (res instanceof Http2ServerResponse) {
    const fields: OutgoingHttpHeaders = {};
    for (const name in headers) if (!CONNECTION_FIELDS.has(name)) fields[name] = headers[name]!;
    if (answer.setCookies) fields['set-cookie'] = answer.setCookies;
    res.writeHead(answer.status, fields);
  } else {
    const flat: string[] = [];
    for (const name in headers) flat.push(name, headers[name]!);
    if (answer.setCookies) for (const cookie of answer.setCookies) flat.push('set-cookie', cookie);
    res.writeHead(answer.status, flat);
  }
  const body = answer.body;
  if (body === null || res.req.method === 'HEAD') {
    res.end();
    if (body instanceof ReadableStream) void body.cancel().catch(() => {});
    done(0);
    return;
  }
  if (body instanceof Uint8Array) {
    res.end(body);
    done(body.byteLength);
    return;
  }
  void pipe(res, body).then(done);
}

/**
 * The client is gone. An HTTP/2 response has no `destroyed` of its own:
 * its stream has (an RST_STREAM destroys the stream, not the session).
 */
function isGone(res: NodeResponse): boolean {
  return res instanceof Http2ServerResponse ? res.stream.destroyed : res.destroyed;
}

async function pipe(res: NodeResponse, body: ReadableStream<Uint8Array>): Promise<number> {
  const reader = body.getReader();
  // 'close' may have come before this write began (an HTTP/2 stream reset while the origin was asked).
  const closed = new Promise<void>((resolve) => (isGone(res) ? resolve() : res.once('close', resolve)));
  let bytes = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (isGone(res)) {
        await reader.cancel();
        return bytes;
      }
      bytes += value.byteLength;
      // Both write(chunk) alike; their overload lists differ in the types.
      if (!(res as ServerResponse).write(value)) await Promise.race([new Promise((resolve) => res.once('drain', resolve)), closed]);
    }
    res.end();
  } catch {
    // The body failed half-way: the client must see a broken response, never a short one that looks whole.
    res.destroy();
    await reader.cancel().catch(() => {});
  }
  return bytes;
}
