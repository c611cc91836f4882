/**
 * `--image-max-pixels` to the pixel, end to end: a source of exactly the
 * limit is transformed, one pixel more is refused with 422 (from the header,
 * before decoding). Frames count for animated output. A break found by hand
 * while mutation testing (`pixels >= limit`, or `limit + 1`) passed every
 * other test.
 */
import sharp from 'sharp';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

let t: TestEdge;
afterEach(async () => {
  await t?.close();
});

const fx = {} as { png: Buffer; gif: Buffer };
beforeAll(async () => {
  fx.png = await sharp({ create: { width: 100, height: 80, channels: 3, background: 'teal' } }).png().toBuffer();
  const frames = await Promise.all(
    ['red', 'lime', 'blue'].map((background) => sharp({ create: { width: 64, height: 48, channels: 4, background } }).png().toBuffer()),
  );
  fx.gif = await sharp(frames, { join: { animated: true } }).gif({ delay: 100 }).toBuffer();
});

function serve(path: string, body: Buffer, type: string): void {
  t.origin.set(path, { headers: { 'content-type': type, 'cache-control': 'public, max-age=600' }, body });
}

async function status(path: string): Promise<{ status: number; body: string; type: string | null }> {
  const res = await t.get(path);
  const bytes = Buffer.from(await res.arrayBuffer());
  return { status: res.status, type: res.headers.get('content-type'), body: res.status === 200 ? '' : bytes.toString() };
}

describe('--image-max-pixels', () => {
  it('transforms a source of exactly the limit', async () => {
    t = await startTestEdge({ imageMaxPixels: 100 * 80 });
    serve('/exact.png', fx.png, 'image/png');
    const res = await t.get('/exact.png?width=50&format=png');
    expect(res.status).toBe(200);
    const meta = await sharp(Buffer.from(await res.arrayBuffer())).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(['png', 50, 40]);
  });

  it('refuses a source one pixel over the limit with 422, naming its size', async () => {
    t = await startTestEdge({ imageMaxPixels: 100 * 80 - 1 });
    serve('/over.png', fx.png, 'image/png');
    const over = await status('/over.png?width=50&format=png');
    expect(over.status).toBe(422);
    const body = JSON.parse(over.body);
    expect(body.error).toBe('EDGE_UNPROCESSABLE_IMAGE');
    expect(body.message).toMatch(/too large to transform \(100x80,/);
    // The source itself is still served as it is.
    const direct = await t.get('/over.png');
    expect(Buffer.from(await direct.arrayBuffer()).equals(fx.png)).toBe(true);
  });

  it('counts every frame of an animated output: 64x48 x 3 frames is 9216 pixels', async () => {
    t = await startTestEdge({ imageMaxPixels: 64 * 48 * 3 });
    serve('/anim.gif', fx.gif, 'image/gif');
    expect((await status('/anim.gif?width=32&format=webp')).status).toBe(200);
    await t.close();

    t = await startTestEdge({ imageMaxPixels: 64 * 48 * 3 - 1 });
    serve('/anim.gif', fx.gif, 'image/gif');
    const over = await status('/anim.gif?width=32&format=webp');
    expect(over.status).toBe(422);
    expect(JSON.parse(over.body).message).toMatch(/64x48x3 frames/);
    // A still output decodes one frame: well under the limit.
    expect((await status('/anim.gif?width=32&format=png')).status).toBe(200);
  });
});
