/**
 * Image variants on Workers: the Cloudflare Images binding (`[images]` in
 * `wrangler.toml`, `env.IMAGES`) does the pixel work that sharp does on
 * Node. Parameter parsing, validation, format negotiation and the variant
 * cache keys stay in core, so URLs mean the same on both runtimes.
 *
 * Fit, from sharp's words to the binding's:
 *
 * | `fit`     | without `enlarge` | with `enlarge` |
 * | --------- | ----------------- | -------------- |
 * | `inside`  | `scale-down`      | `contain`      |
 * | `contain` | `pad`             | `pad`          |
 * | `cover`   | `crop`            | `cover`        |
 * | `fill`    | `squeeze`         | `squeeze`      |
 * | `outside` | `scale-down`/`contain` to the size covering the box, computed here |
 *
 * `position` becomes `gravity` (`attention` and `entropy` become `auto` and
 * `entropy`). Where no binding is configured the Worker has no transformer
 * and image parameters do not transform: see `edge/workers/index.ts`. Where
 * the binding is configured but fails (plain `wrangler dev` sends transforms
 * to Cloudflare and fails without a login; an account without Images), the
 * transformer reports itself unavailable for `retryMs` and the core serves
 * the original with `detail=image-transform-unavailable`, as the README says.
 */
import { EdgeError } from '../core/errors.js';
import { IMAGE_CONTENT_TYPES } from '../core/image/params.js';
import type { ImageTransformer, ResolvedImageParams, TransformedImage } from '../core/image/types.js';

/** The part of the Images binding this transformer uses (`ImagesBinding`). */
export interface ImagesBindingLike {
  info(stream: ReadableStream<Uint8Array>): Promise<{ format: string; width?: number; height?: number; fileSize?: number }>;
  input(stream: ReadableStream<Uint8Array>): ImagesTransformerLike;
}

export interface ImagesTransformerLike {
  transform(transform: Record<string, unknown>): ImagesTransformerLike;
  output(options: { format: string; quality?: number }): Promise<{ image(): ReadableStream<Uint8Array>; contentType(): string }>;
}

/** Options for {@link CfImagesTransformer}. */
export interface CfImagesTransformerOptions {
  /** `env.IMAGES`. */
  images: ImagesBindingLike;
  /** Largest source in pixels (width x height); larger ones get 422 before any transform. @default 50000000 */
  maxInputPixels?: number;
  /** A transform taking longer is answered 503 (`EDGE_TRANSFORM_TIMEOUT`). @default 10000 */
  timeoutMs?: number;
  /**
   * After the binding fails for a reason other than the input (unreachable,
   * not logged in under `wrangler dev`, an internal error), image requests
   * are answered with the untransformed original for this long, then the
   * binding is tried again. @default 30000
   */
  retryMs?: number;
  /** Time source, ms. @default Date.now */
  clock?: () => number;
}

/** Images binding error codes that mean "this input cannot be transformed" (Cloudflare Images error table). */
const INPUT_ERRORS = new Set([9412, 9413, 9420, 9421, 9422, 9520]);

/** sharp's named positions as the binding's gravity. */
const GRAVITY: Record<string, string | { x: number; y: number; mode: 'box-center' }> = {
  centre: 'center',
  center: 'center',
  top: 'top',
  right: 'right',
  bottom: 'bottom',
  left: 'left',
  'right top': { x: 1, y: 0, mode: 'box-center' },
  'right bottom': { x: 1, y: 1, mode: 'box-center' },
  'left bottom': { x: 0, y: 1, mode: 'box-center' },
  'left top': { x: 0, y: 0, mode: 'box-center' },
  attention: 'auto',
  entropy: 'entropy',
};

function streamOf(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(bytes);
      controller.close();
    },
  });
}

export class CfImagesTransformer implements ImageTransformer {
  private readonly images: ImagesBindingLike;
  private readonly maxInputPixels: number;
  private readonly timeoutMs: number;
  private readonly retryMs: number;
  private readonly clock: () => number;
  /** The binding failed: originals are served until then. */
  private downUntil = 0;
  /** Why the binding was last found unusable, for the health answer. */
  lastFailure: string | undefined;

  constructor(options: CfImagesTransformerOptions) {
    if (!options.images || typeof options.images.input !== 'function') throw new TypeError('CfImagesTransformer: images must be the Images binding (env.IMAGES)');
    this.images = options.images;
    this.maxInputPixels = options.maxInputPixels ?? 50_000_000;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.retryMs = options.retryMs ?? 30_000;
    this.clock = options.clock ?? Date.now;
  }

  /** False for `retryMs` after the binding itself failed: the core then serves originals (`detail=image-transform-unavailable`). */
  available(): boolean {
    return this.clock() >= this.downUntil;
  }

  async transform(input: Uint8Array, params: ResolvedImageParams): Promise<TransformedImage> {
    return this.withTimeout(async () => {
      const info = await this.call(async () => {
        const found = await this.images.info(streamOf(input));
        // A binding whose service answered something else (e.g. an API error document) reports no size.
        if (!found || typeof found.format !== 'string' || (found.format !== 'image/svg+xml' && !(Number(found.width) > 0 && Number(found.height) > 0))) {
          throw new Error(`the Images binding answered info() with ${JSON.stringify(found).slice(0, 120)}`);
        }
        return found;
      });
      const sourceWidth = info.width ?? 0;
      const sourceHeight = info.height ?? 0;
      if (sourceWidth * sourceHeight > this.maxInputPixels) {
        throw new EdgeError('EDGE_UNPROCESSABLE_IMAGE', `The source image has ${sourceWidth * sourceHeight} pixels; at most ${this.maxInputPixels} are transformed.`);
      }
      const { transform, width, height } = plan(params, sourceWidth, sourceHeight);
      const result = await this.call(() =>
        this.images.input(streamOf(input)).transform(transform).output({ format: IMAGE_CONTENT_TYPES[params.format], quality: params.quality }),
      );
      const body = new Uint8Array(await new Response(result.image()).arrayBuffer());
      if (!looksLike(params.format, body)) {
        // Never cache or serve an error document as an image.
        await this.call(() => Promise.reject(new Error(`the Images binding's output is not ${params.format} (${body.byteLength} bytes)`)));
      }
      return { body, contentType: result.contentType() || IMAGE_CONTENT_TYPES[params.format], width, height, format: params.format };
    });
  }

  private async call<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      if ((error as { code?: unknown } | null)?.code === 'EDGE_UNPROCESSABLE_IMAGE') throw error;
      const code = Number((error as { code?: unknown } | null)?.code ?? /ERROR (\d{4})/.exec(String((error as Error)?.message))?.[1]);
      if (INPUT_ERRORS.has(code)) {
        throw new EdgeError('EDGE_UNPROCESSABLE_IMAGE', 'The source image could not be decoded or transformed by the Images binding.', { cause: error });
      }
      // Not the input's fault: the binding itself is unusable (plain `wrangler dev` cannot reach
      // Cloudflare Images, an account without Images, an outage). Originals until `retryMs` passes.
      this.downUntil = this.clock() + this.retryMs;
      this.lastFailure = String((error as Error)?.message ?? error).slice(0, 200);
      throw new EdgeError('EDGE_OVERLOADED', 'The Images binding failed to transform the image; try again.', {
        cause: error,
        headers: { 'retry-after': '1' },
      });
    }
  }

  private async withTimeout<T>(work: () => Promise<T>): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new EdgeError('EDGE_TRANSFORM_TIMEOUT', `The image transform took longer than ${this.timeoutMs} ms.`, { headers: { 'retry-after': '1' } })),
        this.timeoutMs,
      );
    });
    try {
      return await Promise.race([work(), timeout]);
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
  }
}

/** Magic numbers of the output formats: what the binding produced is what was asked for. */
function looksLike(format: string, body: Uint8Array): boolean {
  const ascii = (start: number, end: number) => String.fromCharCode(...body.subarray(start, end));
  switch (format) {
    case 'jpeg':
      return body[0] === 0xff && body[1] === 0xd8 && body[2] === 0xff;
    case 'png':
      return body[0] === 0x89 && ascii(1, 4) === 'PNG';
    case 'webp':
      return ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP';
    case 'avif':
      return ascii(4, 8) === 'ftyp';
    case 'gif':
      return ascii(0, 4) === 'GIF8';
    default:
      return body.byteLength > 0;
  }
}

/** The binding's transform for resolved parameters, and the output size it gives (for the variant's record). */
export function plan(params: ResolvedImageParams, sourceWidth: number, sourceHeight: number): { transform: Record<string, unknown>; width: number; height: number } {
  const transform: Record<string, unknown> = {};
  let { width, height } = params;
  let fit: string;
  switch (params.fit) {
    case 'cover':
      fit = params.enlarge ? 'cover' : 'crop';
      break;
    case 'contain':
      fit = 'pad';
      break;
    case 'fill':
      fit = 'squeeze';
      break;
    case 'outside': {
      // The smallest size that covers the box, aspect kept: scale by the larger ratio.
      if (width !== undefined && height !== undefined && sourceWidth > 0 && sourceHeight > 0) {
        const scale = Math.max(width / sourceWidth, height / sourceHeight);
        width = Math.round(sourceWidth * scale);
        height = Math.round(sourceHeight * scale);
      }
      fit = params.enlarge ? 'contain' : 'scale-down';
      break;
    }
    default:
      fit = params.enlarge ? 'contain' : 'scale-down';
  }
  if (width !== undefined) transform.width = width;
  if (height !== undefined) transform.height = height;
  transform.fit = fit;
  const gravity = GRAVITY[params.position];
  if (gravity !== undefined && (fit === 'cover' || fit === 'crop')) transform.gravity = gravity;
  return { transform, ...outputSize(params, fit, width, height, sourceWidth, sourceHeight) };
}

/** The output size the binding produces for `fit`, computed (the binding does not report it). */
function outputSize(
  params: ResolvedImageParams,
  fit: string,
  width: number | undefined,
  height: number | undefined,
  sourceWidth: number,
  sourceHeight: number,
): { width: number; height: number } {
  if (sourceWidth <= 0 || sourceHeight <= 0) return { width: width ?? 0, height: height ?? 0 };
  const ratio = sourceWidth / sourceHeight;
  const w = width ?? Math.round((height ?? sourceHeight) * ratio);
  const h = height ?? Math.round((width ?? sourceWidth) / ratio);
  if (fit === 'squeeze' || fit === 'pad' || fit === 'cover') return { width: w, height: h };
  if (fit === 'crop') return { width: Math.min(w, sourceWidth), height: Math.min(h, sourceHeight) };
  // contain / scale-down: fit inside the box, aspect kept.
  let scale = Math.min(w / sourceWidth, h / sourceHeight);
  if (fit === 'scale-down' && !params.enlarge) scale = Math.min(scale, 1);
  return { width: Math.max(1, Math.round(sourceWidth * scale)), height: Math.max(1, Math.round(sourceHeight * scale)) };
}
