/**
 * `ImageTransformer` on Node, backed by sharp (libvips).
 *
 * - sharp is imported lazily, once, on the first transform (the node starts
 *   and serves plain traffic without loading libvips).
 * - A bounded queue: at most `concurrency` transforms run, at most `maxQueue`
 *   wait; beyond that `transform()` rejects at once with `EDGE_OVERLOADED`
 *   (503, `Retry-After: 1`), so a burst cannot exhaust memory.
 * - Every failure is an `EdgeError` whose message is safe for clients; the
 *   sharp/libvips error is kept as `cause` for logs only.
 *
 * Pipeline: sniff the bytes -> read the header (`metadata()`, no decode) and
 * reject over-limit sources -> decode (`failOn: 'error'`) -> EXIF auto-orient
 * -> resize -> sRGB -> encode. Metadata (EXIF, XMP, ICC) is stripped.
 *
 * Colour: sharp converts sources with an embedded ICC profile (Display P3,
 * Adobe RGB, CMYK with profile) through that profile, and CMYK without one
 * through its built-in CMYK profile, then writes sRGB without a profile,
 * which browsers read as sRGB. `toColourspace('srgb')` pins that output
 * space; `keepIccProfile()` is deliberately not used, as it would keep the
 * source's wide-gamut profile.
 *
 * Animation (GIF/WebP sources with more than one frame): kept only when the
 * output is WebP and the `animated` option is on (the default). AVIF, JPEG
 * and PNG output is the first frame: sharp's AVIF writer drops animation
 * (it would emit all frames stacked as one tall image) and JPEG/PNG cannot
 * animate. `negotiateFormat` prefers WebP for GIF sources for this reason.
 * The pixel limit counts every decoded frame.
 *
 * Threads: `concurrency` transforms run at once (one per core by default).
 * Each sharp call runs on a libuv worker, so the entry point should set
 * `UV_THREADPOOL_SIZE` to at least `concurrency` + 4 (the default pool has
 * 4 threads). libvips' own per-image thread pool is `sharp.concurrency()`,
 * process-wide, set from the `threadsPerTransform` option.
 */

import { availableParallelism } from 'node:os';
import type { Metadata, Sharp, SharpOptions } from 'sharp';

import { EdgeError, isEdgeError } from '../core/errors.js';
import { IMAGE_CONTENT_TYPES, sniffImageFormat } from '../core/image/params.js';
import type { ImageTransformer, ResolvedImageParams, TransformedImage } from '../core/image/types.js';

type SharpFactory = (typeof import('sharp'))['default'];

export interface SharpImageTransformerOptions {
  /**
   * Largest source, in pixels (width x height x decoded frames). Checked
   * from the header before decoding; answered 422.
   * @default 50_000_000
   */
  maxInputPixels?: number;
  /** Transforms running at once. @default os.availableParallelism() */
  concurrency?: number;
  /** Transforms waiting for a slot; more are rejected with 503. @default 64 */
  maxQueue?: number;
  /**
   * Deadline for one transform, from the call (queue wait included) to the
   * encoded bytes; answered 503 `EDGE_TRANSFORM_TIMEOUT`.
   * @default 10_000
   */
  timeoutMs?: number;
  /**
   * AVIF encoder effort, 0 (fastest) to 9. sharp's default is 4; 2 encodes
   * several times faster for a few percent more bytes (see README).
   * @default 2
   */
  avifEffort?: number;
  /** WebP encoder effort, 0 to 6. @default 4 */
  webpEffort?: number;
  /** Keep the animation of GIF/WebP sources when the output is WebP. @default true */
  animated?: boolean;
  /**
   * libvips threads per image (`sharp.concurrency()`, a process-wide
   * setting). The default shares the cores between the transforms that
   * may run at once: `max(1, round(cores / concurrency))`.
   */
  threadsPerTransform?: number;
}

export interface SharpImageTransformerStats {
  /** Transforms holding a slot (including ones whose caller already timed out). */
  running: number;
  /** Transforms waiting for a slot. */
  queued: number;
}

let sharpPromise: Promise<SharpFactory> | undefined;

/** Import sharp once; a failed import is retried on the next call. */
function loadSharp(): Promise<SharpFactory> {
  sharpPromise ??= import('sharp').then(
    (mod) => mod.default,
    (err: unknown) => {
      sharpPromise = undefined;
      throw err;
    },
  );
  return sharpPromise;
}

interface Waiter {
  start: () => void;
  fail: (err: EdgeError) => void;
}

function positiveInteger(name: string, value: number | undefined, fallback: number, min = 1, max = Infinity): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < min || value > max) {
    const range = max === Infinity ? `>= ${min}` : `from ${min} to ${max}`;
    throw new TypeError(`SharpImageTransformer: ${name} must be an integer ${range} (got ${String(value)})`);
  }
  return value;
}

function megapixels(pixels: number): string {
  return `${Math.round(pixels / 100_000) / 10} MP`;
}

function unprocessable(message: string, cause?: unknown): EdgeError {
  return new EdgeError('EDGE_UNPROCESSABLE_IMAGE', message, { cause });
}

export class SharpImageTransformer implements ImageTransformer {
  readonly maxInputPixels: number;
  readonly concurrency: number;
  readonly maxQueue: number;
  readonly timeoutMs: number;
  readonly avifEffort: number;
  readonly webpEffort: number;
  readonly animated: boolean;
  readonly threadsPerTransform: number;

  #running = 0;
  readonly #queue: Waiter[] = [];
  #closed = false;
  #drain: Promise<void> | undefined;
  #drained: (() => void) | undefined;
  #configured = false;

  constructor(options: SharpImageTransformerOptions = {}) {
    const cores = availableParallelism();
    this.maxInputPixels = positiveInteger('maxInputPixels', options.maxInputPixels, 50_000_000);
    this.concurrency = positiveInteger('concurrency', options.concurrency, cores);
    this.maxQueue = positiveInteger('maxQueue', options.maxQueue, 64, 0);
    this.timeoutMs = positiveInteger('timeoutMs', options.timeoutMs, 10_000, 1, 3_600_000);
    this.avifEffort = positiveInteger('avifEffort', options.avifEffort, 2, 0, 9);
    this.webpEffort = positiveInteger('webpEffort', options.webpEffort, 4, 0, 6);
    this.threadsPerTransform = positiveInteger(
      'threadsPerTransform',
      options.threadsPerTransform,
      Math.max(1, Math.round(cores / this.concurrency)),
    );
    if (options.animated !== undefined && typeof options.animated !== 'boolean') {
      throw new TypeError(`SharpImageTransformer: animated must be a boolean (got ${String(options.animated)})`);
    }
    this.animated = options.animated ?? true;
  }

  stats(): SharpImageTransformerStats {
    return { running: this.#running, queued: this.#queue.length };
  }

  transform(input: Uint8Array, params: ResolvedImageParams): Promise<TransformedImage> {
    if (this.#closed) {
      return Promise.reject(
        new EdgeError('EDGE_OVERLOADED', 'The image transformer is shutting down; retry shortly.', {
          headers: { 'retry-after': '1' },
        }),
      );
    }
    // Checked synchronously, so an overflowing call fails without waiting.
    if (this.#running >= this.concurrency && this.#queue.length >= this.maxQueue) {
      return Promise.reject(
        new EdgeError('EDGE_OVERLOADED', 'Too many image transformations in progress; retry shortly.', {
          headers: { 'retry-after': '1' },
        }),
      );
    }

    return new Promise<TransformedImage>((resolve, reject) => {
      let done = false;
      let waiter: Waiter | undefined;

      const timer = setTimeout(() => {
        done = true;
        if (waiter) this.#dequeue(waiter);
        reject(
          new EdgeError(
            'EDGE_TRANSFORM_TIMEOUT',
            `The image transformation did not finish within ${this.timeoutMs} ms; retry later or ask for a smaller image.`,
            { headers: { 'retry-after': '1' } },
          ),
        );
      }, this.timeoutMs);

      const start = () => {
        waiter = undefined;
        this.#running++;
        // The slot is held until sharp really finishes, even when the caller
        // has already been answered 503: the CPU and memory are still in use.
        this.#run(input, params)
          .then(
            (result) => {
              if (done) return;
              done = true;
              clearTimeout(timer);
              resolve(result);
            },
            (err: unknown) => {
              if (done) return;
              done = true;
              clearTimeout(timer);
              // Anything not already classified (sharp failing to load, a bug
              // building the pipeline) is ours, not the client's: 500.
              reject(
                isEdgeError(err)
                  ? err
                  : new EdgeError('EDGE_INTERNAL', 'The edge node failed to handle this request.', { cause: err }),
              );
            },
          )
          .finally(() => {
            this.#running--;
            this.#next();
          });
      };

      if (this.#running < this.concurrency) {
        start();
      } else {
        waiter = {
          start,
          fail: (err) => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            reject(err);
          },
        };
        this.#queue.push(waiter);
      }
    });
  }

  /**
   * Stop accepting work, reject queued transforms with `EDGE_OVERLOADED`
   * and wait for the running ones to finish.
   */
  async close(): Promise<void> {
    this.#closed = true;
    for (const waiter of this.#queue.splice(0)) {
      waiter.fail(
        new EdgeError('EDGE_OVERLOADED', 'The image transformer is shutting down; retry shortly.', {
          headers: { 'retry-after': '1' },
        }),
      );
    }
    if (this.#running > 0) {
      this.#drain ??= new Promise<void>((resolve) => {
        this.#drained = resolve;
      });
      await this.#drain;
    }
  }

  #dequeue(waiter: Waiter): void {
    const i = this.#queue.indexOf(waiter);
    if (i !== -1) this.#queue.splice(i, 1);
  }

  #next(): void {
    if (this.#running < this.concurrency) this.#queue.shift()?.start();
    if (this.#running === 0 && this.#queue.length === 0 && this.#drained) {
      this.#drained();
      this.#drained = undefined;
    }
  }

  async #sharp(): Promise<SharpFactory> {
    const sharp = await loadSharp();
    if (!this.#configured) {
      this.#configured = true;
      sharp.concurrency(this.threadsPerTransform);
      // Results are cached by the edge itself; libvips' operation cache
      // would only hold memory for inputs we never see again.
      sharp.cache(false);
    }
    return sharp;
  }

  async #run(input: Uint8Array, params: ResolvedImageParams): Promise<TransformedImage> {
    if (!Object.hasOwn(IMAGE_CONTENT_TYPES, params.format)) {
      throw new TypeError(`unsupported output format ${String(params.format)}`);
    }
    const sharp = await this.#sharp();

    // Only bytes that really are a supported raster format reach libvips:
    // never its SVG, PDF or other loaders, whatever the origin's Content-Type.
    const sourceFormat = sniffImageFormat(input);
    if (sourceFormat === undefined) {
      throw unprocessable('The source is not a JPEG, PNG, WebP, AVIF, GIF or TIFF image.');
    }

    let meta: Metadata;
    try {
      // Header only, nothing is decoded: lift sharp's own limit here so a
      // bomb gets the precise "too large" answer below.
      meta = await sharp(input, { failOn: 'error', limitInputPixels: false }).metadata();
    } catch (err) {
      throw unprocessable('The source image could not be decoded.', err);
    }

    const frames = meta.pages ?? 1;
    const animated = this.animated && params.format === 'webp' && frames > 1;
    const width = meta.width ?? 0;
    const frameHeight = meta.pageHeight ?? meta.height ?? 0;
    const pixels = width * frameHeight * (animated ? frames : 1);
    if (width < 1 || frameHeight < 1) {
      throw unprocessable('The source image could not be decoded.');
    }
    if (pixels > this.maxInputPixels) {
      throw unprocessable(
        `The source image is too large to transform (${width}x${frameHeight}${animated ? `x${frames} frames` : ''}, ` +
          `${megapixels(pixels)}; the limit is ${megapixels(this.maxInputPixels)}).`,
      );
    }

    const options: SharpOptions = {
      limitInputPixels: this.maxInputPixels,
      failOn: 'error',
      animated,
      sequentialRead: true,
    };
    // libvips' own timeout (whole seconds) stops the work shortly after the
    // caller's deadline, so an abandoned transform frees its slot.
    // Building the pipeline only validates our own arguments: a throw here is
    // a bug (500), not a bad image.
    const pipeline = this.#pipeline(
      sharp(input, options).timeout({ seconds: Math.ceil(this.timeoutMs / 1000) }),
      params,
    );
    try {
      const { data, info } = await pipeline.toBuffer({ resolveWithObject: true });
      return {
        body: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
        contentType: IMAGE_CONTENT_TYPES[params.format],
        width: info.width,
        // An animated result is a strip of frames; report one frame's size.
        height: animated && info.pageHeight ? info.pageHeight : info.height,
        format: params.format,
      };
    } catch (err) {
      if (err instanceof Error && /timeout/i.test(err.message)) {
        throw new EdgeError('EDGE_TRANSFORM_TIMEOUT', 'The image transformation took too long; retry later.', {
          cause: err,
          headers: { 'retry-after': '1' },
        });
      }
      throw unprocessable('The source image could not be decoded or converted.', err);
    }
  }

  #pipeline(image: Sharp, params: ResolvedImageParams): Sharp {
    // EXIF orientation first: it is lost when metadata is stripped.
    image.autoOrient();
    if (params.width !== undefined || params.height !== undefined) {
      image.resize({
        width: params.width,
        height: params.height,
        fit: params.fit,
        position: params.position,
        withoutEnlargement: !params.enlarge,
      });
    }
    image.toColourspace('srgb');

    switch (params.format) {
      case 'avif':
        return image.avif({ quality: params.quality, effort: this.avifEffort, chromaSubsampling: '4:2:0' });
      case 'webp':
        return image.webp({ quality: params.quality, effort: this.webpEffort });
      case 'jpeg':
        // JPEG has no alpha: composite on white rather than libvips' black.
        return image.flatten({ background: '#ffffff' }).jpeg({ quality: params.quality, progressive: true, mozjpeg: false });
      case 'png':
        return image.png({ compressionLevel: 6 });
    }
  }
}
