/**
 * Image transformation contract. Parsing and validation of the query
 * parameters live in core (`params.ts`, runtime-agnostic); the pixel work
 * sits behind `ImageTransformer`, implemented with sharp on Node
 * (`edge/node/sharp-transformer.ts`) and by the Images binding on Workers.
 */

export type ImageFit = 'cover' | 'contain' | 'fill' | 'inside' | 'outside';
export type ImageOutputFormat = 'avif' | 'webp' | 'jpeg' | 'png';
export type ImageFormatParam = ImageOutputFormat | 'auto';

/** What the client asked for, validated (see `parseImageParams`). */
export interface ImageParams {
  width?: number;
  height?: number;
  /** @default 'inside' */
  fit: ImageFit;
  /** 1..100; undefined means the encoder default for the chosen format. */
  quality?: number;
  /** @default 'auto' */
  format: ImageFormatParam;
  /** 1..3, multiplies width and height. @default 1 */
  dpr: number;
  /** Gravity for `fit=cover`: centre, top, right top, ..., attention, entropy. @default 'centre' */
  position: string;
  /** Allow output larger than the source. @default false */
  enlarge: boolean;
}

/** Parameters after format negotiation and dpr applied: exactly what the transformer does. */
export interface ResolvedImageParams {
  width?: number;
  height?: number;
  fit: ImageFit;
  quality: number;
  format: ImageOutputFormat;
  position: string;
  enlarge: boolean;
}

export interface TransformedImage {
  body: Uint8Array;
  contentType: string;
  width: number;
  height: number;
  format: ImageOutputFormat;
}

export interface ImageTransformer {
  /**
   * Transform a source image. Rejects with an `EdgeError`:
   * `EDGE_UNPROCESSABLE_IMAGE` (422) for corrupt input or input over the
   * pixel limit, `EDGE_OVERLOADED` (503) when the queue is full,
   * `EDGE_TRANSFORM_TIMEOUT` (503) when the transform took too long.
   */
  transform(input: Uint8Array, params: ResolvedImageParams): Promise<TransformedImage>;
  /**
   * False while the transformer cannot work at all (e.g. a remote service
   * that is unreachable or not configured): image requests are then answered
   * as if there were no transformer, with the untransformed source and
   * `detail=image-transform-unavailable`. Asked before a transform and after
   * one fails. @default always available
   */
  available?(): boolean;
  close?(): Promise<void>;
}
