/**
 * The Node {@link BodyCoder}: brotli and gzip streams from `node:zlib`, run
 * on libuv's thread pool (the main thread only moves chunks), wrapped as Web
 * `TransformStream`s so the core pipes bodies through them as it does on
 * Workers. A corrupt or truncated coded body fails its stream with
 * `EDGE_ORIGIN_BAD_RESPONSE`, so it is never stored.
 */
import { constants, createBrotliCompress, createBrotliDecompress, createGunzip, createGzip, type BrotliOptions, type ZlibOptions } from 'node:zlib';
import type { Transform } from 'node:stream';
import type { BodyCoder, ContentCoding } from '../core/compression.js';
import { EdgeError } from '../core/errors.js';

/** Output is handed on in pieces of at most this size (zlib's default is 16 KiB). */
const CHUNK_SIZE = 64 * 1024;

/**
 * Input is handed to zlib in pieces of at least this size (the last may be
 * smaller): each write is a trip to the thread pool, and a body arriving in
 * 1 KB socket reads cost brotli 5 about four times the CPU of the same body
 * in 64 KB pieces (bench, 160 KB of JavaScript).
 */
const INPUT_BATCH = 64 * 1024;

export function createZlibCoder(): BodyCoder {
  return {
    encodes: ['br', 'gzip'],
    decodes: ['br', 'gzip'],
    encoder(coding: ContentCoding, level: number, sizeHint?: number) {
      if (coding === 'br') {
        const params: Record<number, number> = {
          [constants.BROTLI_PARAM_QUALITY]: Math.min(11, Math.max(0, level)),
          [constants.BROTLI_PARAM_MODE]: constants.BROTLI_MODE_TEXT,
        };
        if (sizeHint !== undefined && sizeHint > 0) {
          params[constants.BROTLI_PARAM_SIZE_HINT] = Math.min(sizeHint, 2 ** 30);
          // A window as large as the body (not the default 4 MB) loses nothing and allocates less.
          params[constants.BROTLI_PARAM_LGWIN] = Math.min(22, Math.max(16, Math.ceil(Math.log2(sizeHint + 1))));
        }
        const options: BrotliOptions = { chunkSize: CHUNK_SIZE, params };
        return zlibStream(() => createBrotliCompress(options), coding, 'encode');
      }
      const options: ZlibOptions = { chunkSize: CHUNK_SIZE, level: Math.min(9, Math.max(1, level)) };
      return zlibStream(() => createGzip(options), coding, 'encode');
    },
    decoder(coding: ContentCoding) {
      const options = { chunkSize: CHUNK_SIZE };
      return zlibStream(() => (coding === 'br' ? createBrotliDecompress(options) : createGunzip(options)), coding, 'decode');
    },
  };
}

/**
 * A zlib stream as a `TransformStream`: each chunk is written and the write
 * waits for zlib to take it, so the Web stream's backpressure reaches zlib.
 */
function zlibStream(create: () => Transform, coding: ContentCoding, direction: 'encode' | 'decode'): TransformStream<Uint8Array, Uint8Array> {
  let engine: Transform;
  let failure: unknown;
  let batch: Uint8Array[] = [];
  let batched = 0;
  const take = (): Buffer => {
    const input = batch.length === 1 ? Buffer.from(batch[0]!.buffer, batch[0]!.byteOffset, batch[0]!.byteLength) : Buffer.concat(batch, batched);
    batch = [];
    batched = 0;
    return input;
  };
  const fail = (error: unknown) =>
    direction === 'decode'
      ? new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', `The ${coding} body could not be decoded (corrupt or cut short).`, { cause: error })
      : error;
  /** A promise for one step of the engine, rejected as soon as the engine fails. */
  const settled = (step: (resolve: () => void, reject: (error: unknown) => void) => void) =>
    new Promise<void>((resolve, reject) => {
      if (failure || engine.destroyed) return reject(failure ?? fail(new Error('zlib stream closed')));
      const onError = () => reject(failure);
      engine.once('error', onError);
      step(
        () => {
          engine.off('error', onError);
          resolve();
        },
        (error) => {
          engine.off('error', onError);
          reject(error);
        },
      );
    });
  return new TransformStream<Uint8Array, Uint8Array>({
    start(controller) {
      engine = create();
      engine.on('data', (chunk: Buffer) => controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)));
      engine.on('error', (error) => {
        failure ??= fail(error);
      });
    },
    transform(chunk) {
      batch.push(chunk);
      batched += chunk.byteLength;
      if (batched < INPUT_BATCH) return;
      const input = take();
      // A failed engine may never call the write back: its 'error' settles the write too.
      return settled((resolve, reject) => engine.write(input, (error) => (error || failure ? reject(failure ?? fail(error)) : resolve())));
    },
    flush() {
      return settled((resolve, reject) => {
        engine.once('end', () => (failure ? reject(failure) : resolve()));
        if (batched > 0) engine.write(take());
        engine.end();
      });
    },
    // Called when the reader cancels (newer runtimes): free zlib's memory at once rather than at GC.
    cancel() {
      engine.destroy();
    },
  } as Transformer<Uint8Array, Uint8Array>);
}
