/**
 * The embedded demo origin: a plain `node:http` server that answers like an
 * S3 bucket for the objects declared in `fixtures/demo-objects.ts`. `npm
 * start` runs it in-process when no origin is configured, so a new user
 * sees MISS then HIT with nothing else to set up; tests may use it too.
 *
 * What it copies from S3 because the edge's behaviour depends on it:
 * strong ETags (quoted MD5 of the body), `Last-Modified`, conditional GET
 * and HEAD (RFC 9110 section 13), single byte ranges, and XML error bodies
 * without `Cache-Control` (S3 sends none on errors, so the edge's handling
 * of uncacheable-by-default 404s is exercised as it would be in production).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import {
  DEMO_INDEX_PATH,
  DEMO_OBJECTS,
  type DemoImageSpec,
  type DemoObject,
} from '../../fixtures/demo-objects.js';

export interface DemoOriginOptions {
  /** TCP port; 0 picks a free one (read it back from `url`). @default 0 */
  port?: number;
  /** Interface to bind. @default '127.0.0.1' */
  host?: string;
}

export interface DemoOrigin {
  /** Base URL without a trailing slash, e.g. `http://127.0.0.1:41234`. */
  readonly url: string;
  /** Requests received so far (any method, any path, errors included). */
  readonly requests: number;
  /** Stops listening and destroys open connections, keep-alive ones included. */
  close(): Promise<void>;
}

/** An object ready to serve: body bytes and derived validators. */
interface LoadedObject {
  body: Buffer;
  contentType: string;
  etag: string;
  lastModified: string;
  /** `Last-Modified` in ms, whole seconds: HTTP dates have no finer resolution. */
  lastModifiedMs: number;
  headers: Record<string, string>;
}

type Sharp = (typeof import('sharp'))['default'];

let sharpModule: Promise<Sharp> | undefined;

// Loaded lazily and once: `npm start` with a real origin should not pay for
// libvips start-up, and a second demo origin in the same process reuses it.
function loadSharp(): Promise<Sharp> {
  sharpModule ??= import('sharp').then((m) => m.default);
  return sharpModule;
}

const renderedImages = new Map<string, Promise<Buffer>>();

/**
 * Renders an image spec to encoded bytes. Deterministic for a given sharp
 * build, so ETags stay the same across restarts (the disk tier relies on
 * that to revalidate instead of re-downloading). Memoised per spec.
 */
export function renderDemoImage(spec: DemoImageSpec): Promise<Buffer> {
  const key = JSON.stringify(spec);
  let rendered = renderedImages.get(key);
  if (!rendered) {
    rendered = encodeImage(spec);
    // A failed render should be retried by the next caller, not cached.
    rendered.catch(() => renderedImages.delete(key));
    renderedImages.set(key, rendered);
  }
  return rendered;
}

/** mulberry32: tiny, seeded, good enough for visual noise. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

function clampByte(v: number): number {
  return v < 0 ? 0 : v > 255 ? 255 : v | 0;
}

function clamp01(v: number): number {
  return v < 0 ? 0 : v > 1 ? 1 : v;
}

function rawPixels(spec: DemoImageSpec): { data: Buffer; channels: 3 | 4 } {
  const { width: w, height: h, pattern } = spec;
  const next = prng(spec.seed ?? 1);
  if (pattern === 'alpha-logo') {
    const data = Buffer.alloc(w * h * 4);
    const cx = w / 2;
    const cy = h / 2;
    const outer = Math.min(w, h) * 0.42;
    const inner = Math.min(w, h) * 0.28;
    const dot = Math.min(w, h) * 0.12;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const d = Math.hypot(x + 0.5 - cx, y + 0.5 - cy);
        // Coverage within half a pixel of an edge gives anti-aliased (partial) alpha.
        const ring = clamp01(outer - d + 0.5) * clamp01(d - inner + 0.5);
        const centre = clamp01(dot - d + 0.5);
        const i = (y * w + x) * 4;
        data[i] = centre > 0 ? 40 : 210;
        data[i + 1] = centre > 0 ? 40 : 105;
        data[i + 2] = centre > 0 ? 40 : 30;
        data[i + 3] = clampByte(Math.max(ring, centre) * 255);
      }
    }
    return { data, channels: 4 };
  }
  const data = Buffer.alloc(w * h * 3);
  const amplitude = (pattern === 'noisy-gradient' ? 48 : 96) / 255;
  const half = amplitude * 127.5;
  for (let y = 0; y < h; y++) {
    const fy = y / h;
    const sky = fy < 0.55;
    for (let x = 0; x < w; x++) {
      const fx = x / w;
      const i = (y * w + x) * 3;
      // One PRNG draw per pixel, one byte of it per channel.
      const n = next();
      const n0 = (n & 0xff) * amplitude - half;
      const n1 = ((n >>> 8) & 0xff) * amplitude - half;
      const n2 = ((n >>> 16) & 0xff) * amplitude - half;
      if (pattern === 'noisy-gradient') {
        data[i] = clampByte(255 * fx + n0);
        data[i + 1] = clampByte(255 * fy + n1);
        data[i + 2] = clampByte(64 + 128 * (1 - fx) + n2);
      } else {
        // Sky above, ground below: reads as a (very) soft-focus landscape.
        data[i] = clampByte((sky ? 120 + 80 * fy : 70 + 40 * fx) + n0);
        data[i + 1] = clampByte((sky ? 170 + 40 * fy : 110 + 30 * fy) + n1);
        data[i + 2] = clampByte((sky ? 235 - 60 * fy : 50) + n2);
      }
    }
  }
  return { data, channels: 3 };
}

async function encodeImage(spec: DemoImageSpec): Promise<Buffer> {
  const sharp = await loadSharp();
  const { data, channels } = rawPixels(spec);
  let image = sharp(data, { raw: { width: spec.width, height: spec.height, channels } });
  if (spec.pattern === 'soft-photo') image = image.blur(3);
  const quality = spec.quality ?? 80;
  switch (spec.format) {
    case 'jpeg':
      return image.jpeg({ quality }).toBuffer();
    case 'png':
      return image.png().toBuffer();
    case 'webp':
      return image.webp({ quality }).toBuffer();
  }
}

async function loadObject(object: DemoObject, startedAt: number): Promise<LoadedObject> {
  const body = object.image
    ? await renderDemoImage(object.image)
    : Buffer.from(object.body ?? '', 'utf8');
  const modified =
    typeof object.lastModified === 'string'
      ? Date.parse(object.lastModified)
      : startedAt - object.lastModified.secondsBeforeStart * 1000;
  if (!Number.isFinite(modified)) {
    throw new TypeError(`demo object ${object.path}: invalid lastModified ${JSON.stringify(object.lastModified)}`);
  }
  const lastModifiedMs = Math.floor(modified / 1000) * 1000;
  return {
    body,
    contentType: object.contentType,
    etag: `"${createHash('md5').update(body).digest('hex')}"`,
    lastModified: new Date(lastModifiedMs).toUTCString(),
    lastModifiedMs,
    headers: object.headers,
  };
}

/** Weak comparison (RFC 9110 section 8.8.3.2): `W/` is ignored. */
function etagListMatches(header: string, etag: string, strong: boolean): boolean {
  if (header.trim() === '*') return true;
  for (const match of header.matchAll(/(W\/)?("[^"]*")/g)) {
    if (strong && match[1]) continue;
    if (match[2] === etag) return true;
  }
  return false;
}

function parseHttpDate(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const ms = Date.parse(value);
  return Number.isFinite(ms) ? ms : undefined;
}

type RangeResult = { start: number; end: number } | 'unsatisfiable' | undefined;

/**
 * A single `bytes=` range. Anything else (other units, several ranges,
 * bad syntax) is ignored and the whole object is sent, which RFC 9110
 * section 14.2 allows and S3 does.
 */
function parseRange(header: string, size: number): RangeResult {
  const match = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!match) return undefined;
  const [, first, last] = match;
  if (first === '' && last === '') return undefined;
  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  if (last !== '' && Number(last) < start) return undefined;
  if (start >= size) return 'unsatisfiable';
  return { start, end: last === '' ? size - 1 : Math.min(Number(last), size - 1) };
}

function xmlEscape(text: string): string {
  return text.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

function sendError(
  req: IncomingMessage,
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  extra: Record<string, string> = {},
): void {
  const fields = Object.entries(extra)
    .map(([name, value]) => `<${name}>${xmlEscape(value)}</${name}>`)
    .join('');
  const requestId = String(res.getHeader('x-amz-request-id'));
  const body = Buffer.from(
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
      `<Error><Code>${code}</Code><Message>${xmlEscape(message)}</Message>${fields}<RequestId>${requestId}</RequestId></Error>`,
    'utf8',
  );
  res.statusCode = status;
  res.setHeader('content-type', 'application/xml');
  res.setHeader('content-length', body.length);
  res.end(req.method === 'HEAD' ? undefined : body);
}

function setObjectMetadata(res: ServerResponse, object: LoadedObject): void {
  for (const [name, value] of Object.entries(object.headers)) res.setHeader(name, value);
  res.setHeader('etag', object.etag);
  res.setHeader('last-modified', object.lastModified);
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(', ') : value;
}

function serveObject(req: IncomingMessage, res: ServerResponse, object: LoadedObject): void {
  const h = req.headers;
  const size = object.body.length;

  // Preconditions in RFC 9110 section 13.2.2 order; each step skips the
  // date-based header when its entity-tag counterpart is present.
  if (h['if-match'] !== undefined) {
    if (!etagListMatches(h['if-match'], object.etag, true)) {
      return sendError(req, res, 412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', { Condition: 'If-Match' });
    }
  } else {
    const since = parseHttpDate(h['if-unmodified-since']);
    if (since !== undefined && object.lastModifiedMs > since) {
      return sendError(req, res, 412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', { Condition: 'If-Unmodified-Since' });
    }
  }
  let notModified = false;
  if (h['if-none-match'] !== undefined) {
    notModified = etagListMatches(h['if-none-match'], object.etag, false);
  } else {
    const since = parseHttpDate(h['if-modified-since']);
    notModified = since !== undefined && object.lastModifiedMs <= since;
  }
  if (notModified) {
    // A 304 carries the metadata a 200 would (RFC 9110 section 15.4.5) so a
    // cache can refresh its stored headers, but no representation headers.
    setObjectMetadata(res, object);
    res.statusCode = 304;
    res.end();
    return;
  }

  let range: RangeResult;
  if (req.method === 'GET' && h.range !== undefined) {
    const ifRange = headerValue(h['if-range']);
    // If-Range needs a strong match; a date must equal Last-Modified exactly.
    const rangeAllowed =
      ifRange === undefined ||
      (/^\s*(W\/)?"/.test(ifRange)
        ? etagListMatches(ifRange, object.etag, true)
        : parseHttpDate(ifRange) === object.lastModifiedMs);
    if (rangeAllowed) range = parseRange(h.range, size);
  }
  if (range === 'unsatisfiable') {
    // An error, like S3's: no object metadata, so nothing here invites caching.
    res.setHeader('content-range', `bytes */${size}`);
    return sendError(req, res, 416, 'InvalidRange', 'The requested range is not satisfiable', {
      RangeRequested: h.range ?? '',
      ActualObjectSize: String(size),
    });
  }
  setObjectMetadata(res, object);
  res.setHeader('accept-ranges', 'bytes');
  res.setHeader('content-type', object.contentType);
  if (range) {
    res.statusCode = 206;
    res.setHeader('content-range', `bytes ${range.start}-${range.end}/${size}`);
    res.setHeader('content-length', range.end - range.start + 1);
    res.end(object.body.subarray(range.start, range.end + 1));
    return;
  }
  res.statusCode = 200;
  res.setHeader('content-length', size);
  res.end(req.method === 'HEAD' ? undefined : object.body);
}

function handle(req: IncomingMessage, res: ServerResponse, objects: Map<string, LoadedObject>): void {
  res.setHeader('server', 'edge-demo-origin');
  res.setHeader('x-amz-request-id', randomBytes(8).toString('hex').toUpperCase());

  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    return sendError(req, res, 405, 'MethodNotAllowed', 'The specified method is not allowed against this resource.', {
      Method: req.method ?? '',
      ResourceType: 'OBJECT',
    });
  }
  // Query strings are ignored, as S3 ignores unknown parameters on GetObject.
  const rawPath = (req.url ?? '/').split('?')[0] ?? '/';
  let path: string;
  try {
    path = decodeURIComponent(rawPath);
  } catch {
    return sendError(req, res, 400, 'InvalidURI', "Couldn't parse the specified URI.", { URI: rawPath });
  }
  const object = objects.get(path === '/' ? DEMO_INDEX_PATH : path);
  if (!object) {
    return sendError(req, res, 404, 'NoSuchKey', 'The specified key does not exist.', { Key: path.replace(/^\//, '') });
  }
  serveObject(req, res, object);
}

function validateOptions(options: DemoOriginOptions): Required<DemoOriginOptions> {
  const port = options.port ?? 0;
  const host = options.host ?? '127.0.0.1';
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new TypeError(`startDemoOrigin: option "port" must be an integer from 0 to 65535, got ${String(options.port)}`);
  }
  if (typeof host !== 'string' || host === '') {
    throw new TypeError(`startDemoOrigin: option "host" must be a non-empty string, got ${String(options.host)}`);
  }
  return { port, host };
}

/**
 * Starts the demo bucket. Images are rendered before the port opens, so the
 * first request never waits on sharp.
 *
 * @example
 * const origin = await startDemoOrigin();
 * await fetch(`${origin.url}/data/products.json`);
 * await origin.close();
 */
export async function startDemoOrigin(options: DemoOriginOptions = {}): Promise<DemoOrigin> {
  const { port, host } = validateOptions(options);
  const startedAt = Date.now();
  const loaded = await Promise.all(DEMO_OBJECTS.map((o) => loadObject(o, startedAt)));
  const objects = new Map(DEMO_OBJECTS.map((o, i) => [o.path, loaded[i]!]));

  let requests = 0;
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    requests++;
    try {
      handle(req, res, objects);
    } catch (err) {
      if (res.headersSent) res.destroy(err as Error);
      else sendError(req, res, 500, 'InternalError', 'We encountered an internal error. Please try again.');
    }
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const hostForUrl = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${hostForUrl}:${address.port}`;

  let closing: Promise<void> | undefined;
  return {
    url,
    get requests() {
      return requests;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive sockets from the edge's undici pool would hold close() open.
        for (const socket of sockets) socket.destroy();
      });
      return closing;
    },
  };
}
