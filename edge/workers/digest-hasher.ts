/**
 * SHA-256 of a pushed body while it streams, on workerd: `crypto.DigestStream`
 * (a Workers API, native, no body buffer), behind the core's `ContentHasher`.
 * The ETag the push API gives is then `"<sha256 hex>"`, exactly as on Node,
 * so `edge push` finds unchanged files on Workers too.
 */
import type { ContentHasher } from '../core/admin.js';

/** The part of workerd's `crypto.DigestStream` used here. */
interface DigestStreamLike extends WritableStream<ArrayBufferView> {
  readonly digest: Promise<ArrayBuffer>;
}
type DigestStreamConstructor = new (algorithm: string) => DigestStreamLike;

/** `createHasher` for the core app, or undefined where the runtime has no `crypto.DigestStream`. */
export function digestStreamHasher(): (() => ContentHasher) | undefined {
  const DigestStream = (crypto as unknown as { DigestStream?: DigestStreamConstructor }).DigestStream;
  if (typeof DigestStream !== 'function') return undefined;
  return () => {
    const stream = new DigestStream('SHA-256');
    const writer = stream.getWriter();
    let failure: unknown;
    return {
      update(chunk) {
        // Not copied: workerd's streams do not detach what they are given, and the push API does not reuse its chunks.
        writer.write(chunk).catch((error: unknown) => (failure ??= error));
      },
      async digest() {
        await writer.close();
        if (failure !== undefined) throw failure;
        const bytes = new Uint8Array(await stream.digest);
        let hex = '';
        for (const byte of bytes) hex += byte.toString(16).padStart(2, '0');
        return hex;
      },
    };
  };
}
