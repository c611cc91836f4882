/**
 * Writing an `Answer` (`edge/core/responder.ts`) to a Node `ServerResponse`
 * directly: one `writeHead` with a flat header list, then the bytes, or a
 * stream written with backpressure. Content answers (fresh hits above all)
 * then cost no Web Request, Response or Headers object.
 */
import type { ServerResponse } from 'node:http';
import type { Answer } from '../core/responder.js';

/** Write `answer`; `done` is called once with the body bytes sent, when the answer is over. */
export function writeAnswer(res: ServerResponse, answer: Answer, done: (bytes: number) => void): void {
  const flat: string[] = [];
  const { headers } = answer;
  for (const name in headers) flat.push(name, headers[name]!);
  if (answer.setCookies) for (const cookie of answer.setCookies) flat.push('set-cookie', cookie);
  res.writeHead(answer.status, flat);
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

async function pipe(res: ServerResponse, body: ReadableStream<Uint8Array>): Promise<number> {
  const reader = body.getReader();
  const closed = new Promise<void>((resolve) => res.once('close', resolve));
  let bytes = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (res.destroyed) {
        await reader.cancel();
        return bytes;
      }
      bytes += value.byteLength;
      if (!res.write(value)) await Promise.race([new Promise((resolve) => res.once('drain', resolve)), closed]);
    }
    res.end();
  } catch {
    // The body failed half-way: the client must see a broken response, never a short one that looks whole.
    res.destroy();
    await reader.cancel().catch(() => {});
  }
  return bytes;
}
