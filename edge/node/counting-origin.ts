/**
 * An origin client that counts the body bytes it receives, for the status
 * page's offload figure (bytes served against bytes fetched upstream).
 * Only what comes from upstream pays for it (a pass-through stream per
 * response with a body); cache hits never reach an origin client.
 */
import type { OriginClient, OriginRequest } from '../core/origin/types.js';

export function countingOrigin(inner: OriginClient, onBytes: (bytes: number) => void): OriginClient {
  return {
    get label() {
      return inner.label;
    },
    async fetch(request: OriginRequest): Promise<Response> {
      const response = await inner.fetch(request);
      if (response.body === null) return response;
      // Errors and cancellation pass through unchanged: the origin client's contract (a body that
      // closes only at a clean end) holds for the counted stream too.
      const counted = response.body.pipeThrough(
        new TransformStream<Uint8Array, Uint8Array>({
          transform(chunk, controller) {
            onBytes(chunk.byteLength);
            controller.enqueue(chunk);
          },
        }),
      );
      return new Response(counted, { status: response.status, statusText: response.statusText, headers: response.headers });
    },
    close: inner.close ? () => inner.close!() : undefined,
  };
}
