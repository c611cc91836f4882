/**
 * The Workers {@link BodyCoder}: `DecompressionStream('gzip')`, so an
 * origin's gzip body reaches a client that does not accept gzip decoded.
 *
 * It encodes nothing, deliberately. Workers have no brotli encoder
 * (`CompressionStream` knows gzip and deflate only), and Cloudflare's own
 * network already compresses Worker responses to visitors with brotli or
 * gzip by content type, outside the Worker's CPU budget: a gzip made here
 * would be larger than Cloudflare's brotli, and billed. So on Workers the
 * node negotiates, keys variants by the negotiated coding and stores what
 * the origin sends (br from an origin that compresses is kept as is);
 * `--compress` and the level options change nothing there. A brotli body
 * sent to a client that does not accept it cannot be decoded here and is
 * passed through unstored (see `planCoding`).
 */
import type { BodyCoder } from '../core/compression.js';
import { EdgeError } from '../core/errors.js';

export function createWebCoder(): BodyCoder {
  return {
    encodes: [],
    decodes: ['gzip'],
    encoder(coding) {
      throw new TypeError(`createWebCoder: ${coding} is not encoded on this runtime`);
    },
    decoder(coding) {
      if (coding !== 'gzip') throw new TypeError(`createWebCoder: ${coding} is not decoded on this runtime`);
      const inner = new DecompressionStream('gzip');
      const reader = (inner.readable as ReadableStream<Uint8Array>).getReader();
      // The runtime's own error says nothing useful to a client; the coded one says what failed.
      const readable = new ReadableStream<Uint8Array>(
        {
          async pull(controller) {
            try {
              const { done, value } = await reader.read();
              if (done) controller.close();
              else controller.enqueue(value);
            } catch (error) {
              controller.error(new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', 'The gzip body could not be decoded (corrupt or cut short).', { cause: error }));
            }
          },
          cancel: (reason) => reader.cancel(reason),
        },
        { highWaterMark: 0 },
      );
      return { writable: inner.writable as WritableStream<Uint8Array>, readable };
    },
  };
}
