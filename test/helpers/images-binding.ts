/**
 * A local Cloudflare Images service for the Worker's `IMAGES` binding in
 * Miniflare: the binding itself is workerd's (`cloudflare-internal:images-api`,
 * wired as wrangler's `--experimental-images-local-mode` wires it), and the
 * service behind it, which the binding calls over HTTP, is this function,
 * doing the pixel work with sharp. So the Worker's transformer runs exactly
 * as deployed, down to the requests the binding sends.
 */
import { Response as MiniflareResponse, type Request as MiniflareRequest } from 'miniflare';
import sharp, { type FitEnum, type Metadata, type Sharp } from 'sharp';

/** The binding's fits in sharp's words (Cloudflare Images "fit" option). */
const FITS: Record<string, { fit: keyof FitEnum; withoutEnlargement: boolean }> = {
  'scale-down': { fit: 'inside', withoutEnlargement: true },
  contain: { fit: 'inside', withoutEnlargement: false },
  cover: { fit: 'cover', withoutEnlargement: false },
  crop: { fit: 'cover', withoutEnlargement: true },
  pad: { fit: 'contain', withoutEnlargement: false },
  squeeze: { fit: 'fill', withoutEnlargement: false },
};

/** Every transform request the service received (its `transforms` JSON), for assertions. */
export interface ImagesServiceLog {
  transforms: unknown[];
}

function failure(status: number, code: number, message: string): MiniflareResponse {
  return new MiniflareResponse(`ERROR ${code}: ${message}`, { status, headers: { 'content-type': 'text/plain', 'cf-images-binding': `err=${code}` } });
}

export function imagesService(log: ImagesServiceLog = { transforms: [] }) {
  return async (request: MiniflareRequest): Promise<MiniflareResponse> => {
    const form = await request.formData();
    const image = form.get('image');
    if (!image || typeof image === 'string') return failure(400, 9523, 'expected an image');
    const bytes = Buffer.from(await image.arrayBuffer());
    let metadata: Metadata;
    try {
      metadata = await sharp(bytes).metadata();
    } catch {
      return failure(415, 9412, 'input is not an image');
    }
    if (new URL(request.url).pathname === '/info') {
      return MiniflareResponse.json({ format: `image/${metadata.format}`, fileSize: bytes.byteLength, width: metadata.width, height: metadata.height });
    }
    const transforms = JSON.parse(String(form.get('transforms') ?? '[]')) as { width?: number; height?: number; fit?: string }[];
    log.transforms.push(...transforms);
    let pipeline = sharp(bytes);
    for (const transform of transforms) {
      if (transform.width === undefined && transform.height === undefined) continue;
      const fit = FITS[transform.fit ?? 'scale-down'] ?? FITS['scale-down']!;
      pipeline = pipeline.resize(transform.width ?? null, transform.height ?? null, fit);
    }
    const format = String(form.get('output_format') ?? 'image/jpeg');
    const quality = form.get('output_quality') ? Number(form.get('output_quality')) : undefined;
    const encoders: Record<string, () => Sharp> = {
      'image/jpeg': () => pipeline.jpeg({ quality }),
      'image/png': () => pipeline.png(),
      'image/webp': () => pipeline.webp({ quality }),
      'image/avif': () => pipeline.avif({ quality, effort: 0 }),
    };
    const encode = encoders[format];
    if (!encode) return failure(415, 9520, `unsupported output ${format}`);
    return new MiniflareResponse(await encode().toBuffer(), { headers: { 'content-type': format } });
  };
}

/** The binding's worker: workerd's Images binding over `FETCHER`. */
export const IMAGES_BINDING_SCRIPT = "import makeBinding from 'cloudflare-internal:images-api';\nexport default function (env) { return makeBinding({ fetcher: env.FETCHER }); }\n";
