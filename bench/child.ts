/**
 * One benchmark server per child process, so the load generator and the
 * server under test run in different processes.
 *   bare [bytes]                    plain node:http: /blob/<n> answers n bytes,
 *                                   any other path [bytes] (default 1024)
 *   edge <originUrl> <memorySize> [quiet]
 *                                   an edge node in front of <originUrl>
 *                                   (memorySize 0: no memory tier, every hit
 *                                   from LMDB; quiet: access log off; more
 *                                   options as JSON in $BENCH_EDGE_OPTIONS)
 *   origin-image <width>x<height>   an origin serving /photo.jpg, a photo-like
 *                                   JPEG generated at start-up, and /blob/<n>,
 *                                   n bytes (any query string ignored)
 *   ipx <originUrl>                 ipx (no result cache) fetching from <originUrl>
 *   bare-tls <h1|h2> <cert> <key>   /blob/<n> as `bare`, over TLS: node:https
 *                                   (h1), or node:http2's secure server (h2)
 *   edge-tls <originUrl> <cert> <key>
 *                                   an edge node with TLS (HTTP/2 and HTTP/1.1)
 * Prints `{"url": ...}` once listening, on file descriptor $BENCH_READY_FD
 * (the bench sends stdout, where the edge writes its access log, to
 * /dev/null) or else on stdout. Exits when its stdin closes (the bench that
 * started it is gone). Edge data goes under $BENCH_SCRATCH (the bench
 * removes it) or a new temporary directory.
 */
import { createServer } from 'node:http';
import { mkdtempSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [kind, arg1, arg2, arg3] = process.argv.slice(2);

if (!process.stdin.isTTY) {
  process.stdin.on('end', () => process.exit(0)).on('error', () => process.exit(0)).resume();
}

function ready(url: string): void {
  const line = `${JSON.stringify({ url })}\n`;
  if (process.env.BENCH_READY_FD) writeSync(Number(process.env.BENCH_READY_FD), line);
  else process.stdout.write(line);
}

const BLOB = /^\/blob\/(\d{1,9})(?:\?|$)/;

/**
 * An edge module as `npm start` runs it: compiled, from dist/ (`npm run
 * bench` builds first). Under tsx's loader the same sources answered 1 KB
 * memory hits 20-25 % slower (interleaved A/B on this machine, 2026-12-02),
 * which is not what users run.
 */
function built<T>(path: string): Promise<T> {
  return import(new URL(`../dist/${path}`, import.meta.url).href) as Promise<T>;
}

if (kind === 'bare') {
  const fallback = Buffer.alloc(Number(arg1 ?? 1024), 'a');
  const bodies = new Map<string, Buffer>();
  const server = createServer((req, res) => {
    const url = req.url ?? '/';
    let body = bodies.get(url);
    if (!body) {
      const blob = BLOB.exec(url);
      body = blob ? Buffer.alloc(Number(blob[1]), 'a') : fallback;
      if (bodies.size < 64) bodies.set(url, body);
    }
    // The same bytes and the same cache headers the origin gives the edge.
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': body.length,
      'cache-control': 'public, max-age=3600',
      etag: '"bench"',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  server.keepAliveTimeout = 65_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address() as { port: number };
    ready(`http://127.0.0.1:${address.port}`);
  });
} else if (kind === 'edge') {
  // Imported here, so the other kinds start whatever state edge/ is in.
  const [{ resolveEdgeOptions }, { startEdgeServer }] = await Promise.all([
    built<typeof import('../edge/core/options.js')>('edge/core/options.js'),
    built<typeof import('../edge/node/server.js')>('edge/node/server.js'),
  ]);
  const dataDir = mkdtempSync(join(process.env.BENCH_SCRATCH ?? tmpdir(), 'edge-data-'));
  // BENCH_EDGE_OPTIONS: more options as JSON (the slicing section's --slice-size).
  const extra = JSON.parse(process.env.BENCH_EDGE_OPTIONS ?? '{}') as Record<string, unknown>;
  const options = resolveEdgeOptions({ origin: arg1, port: 0, host: '127.0.0.1', dataDir, memorySize: arg2, diskSize: '2GB', ...extra });
  // The access log as shipped (the server's own, on stdout: /dev/null under
  // the bench), unless `quiet` turns it off.
  const server = await startEdgeServer(options, arg3 === 'quiet' ? { logger: false } : {});
  ready(server.url);
} else if (kind === 'bare-tls') {
  // The same answer as `bare`, behind the same TLS server options the edge uses (edge/node/server.ts).
  const { readFileSync } = await import('node:fs');
  const tls = { cert: readFileSync(arg2!), key: readFileSync(arg3!) };
  const bodies = new Map<string, Buffer>();
  const answer = (url: string) => {
    let body = bodies.get(url);
    if (!body) {
      const blob = BLOB.exec(url);
      body = Buffer.alloc(blob ? Number(blob[1]) : 1024, 'a');
      if (bodies.size < 64) bodies.set(url, body);
    }
    return body;
  };
  const headers = (body: Buffer) => ({ 'content-type': 'application/octet-stream', 'content-length': body.length, 'cache-control': 'public, max-age=3600', etag: '"bench"' });
  let server: import('node:net').Server;
  if (arg1 === 'h2') {
    const { createSecureServer } = await import('node:http2');
    server = createSecureServer({ ...tls, allowHTTP1: true, noDelay: true, settings: { maxConcurrentStreams: 128 } }, (req, res) => {
      const body = answer(req.url ?? '/');
      res.writeHead(200, headers(body));
      if (req.method === 'HEAD') res.end();
      else res.end(body);
    });
  } else {
    const { createServer: createHttpsServer } = await import('node:https');
    const https = createHttpsServer(tls, (req, res) => {
      const body = answer(req.url ?? '/');
      res.writeHead(200, headers(body));
      res.end(req.method === 'HEAD' ? undefined : body);
    });
    https.keepAliveTimeout = 65_000;
    server = https;
  }
  server.listen(0, '127.0.0.1', () => {
    const address = server.address() as { port: number };
    ready(`https://127.0.0.1:${address.port}`);
  });
} else if (kind === 'edge-tls') {
  const [{ resolveEdgeOptions }, { startEdgeServer }] = await Promise.all([
    built<typeof import('../edge/core/options.js')>('edge/core/options.js'),
    built<typeof import('../edge/node/server.js')>('edge/node/server.js'),
  ]);
  const dataDir = mkdtempSync(join(process.env.BENCH_SCRATCH ?? tmpdir(), 'edge-data-'));
  const options = resolveEdgeOptions({ origin: arg1, port: 0, host: '127.0.0.1', dataDir, memorySize: '256MB', diskSize: '2GB', tlsCert: arg2, tlsKey: arg3 });
  const server = await startEdgeServer(options);
  ready(server.url);
} else if (kind === 'origin-image') {
  const [width, height] = (arg1 ?? '2400x1600').split('x').map(Number) as [number, number];
  const photo = await photoLikeJpeg(width, height);
  const blobs = new Map<number, Buffer>();
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const blob = BLOB.exec(path);
    let body: Buffer;
    let type: string;
    if (path === '/photo.jpg') {
      body = photo;
      type = 'image/jpeg';
    } else if (blob) {
      const n = Number(blob[1]);
      body = blobs.get(n) ?? Buffer.alloc(n, 'b');
      blobs.set(n, body);
      type = 'application/octet-stream';
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, {
      'content-type': type,
      'content-length': body.length,
      'cache-control': 'public, max-age=3600',
      etag: `"${path}"`,
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  server.keepAliveTimeout = 65_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address() as { port: number };
    ready(`http://127.0.0.1:${address.port}`);
  });
} else if (kind === 'ipx') {
  const { createIPX, createIPXNodeServer, ipxHttpStorage } = await import('ipx');
  const storage = ipxHttpStorage({ domains: [new URL(arg1!).host] });
  const ipx = createIPX({ storage, httpStorage: storage });
  const server = createServer(createIPXNodeServer(ipx));
  server.keepAliveTimeout = 65_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address() as { port: number };
    ready(`http://127.0.0.1:${address.port}`);
  });
} else {
  console.error('usage: child.ts bare [bytes] | edge <originUrl> <memorySize> [quiet] | origin-image <w>x<h> | ipx <originUrl> | bare-tls <h1|h2> <cert> <key> | edge-tls <originUrl> <cert> <key>');
  process.exit(2);
}

/**
 * A deterministic photo-like JPEG (q90): smooth colour fields and soft
 * shapes, with fine grain, so encoders see both flat areas and texture,
 * as in a photograph (pure noise would make every codec look the same;
 * a flat image would make them all look free).
 */
async function photoLikeJpeg(width: number, height: number): Promise<Buffer> {
  const { default: sharp } = await import('sharp');
  const raw = Buffer.alloc(width * height * 3);
  let seed = 0x2f6b_1d3c;
  const random = () => {
    // mulberry32
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const discs = Array.from({ length: 24 }, () => ({
    x: random() * width,
    y: random() * height,
    r: 40 + random() * 260,
    c: [random() * 255, random() * 255, random() * 255],
  }));
  let i = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let r = 120 + 70 * Math.sin(x / 310 + y / 470);
      let g = 110 + 60 * Math.sin(x / 190 - y / 260 + 1);
      let b = 100 + 80 * Math.cos(y / 350 + x / 900);
      for (const d of discs) {
        const dx = x - d.x;
        const dy = y - d.y;
        if (dx * dx + dy * dy < d.r * d.r) {
          r = (r + d.c[0]!) / 2;
          g = (g + d.c[1]!) / 2;
          b = (b + d.c[2]!) / 2;
        }
      }
      const grain = (random() - 0.5) * 36;
      raw[i++] = Math.max(0, Math.min(255, r + grain));
      raw[i++] = Math.max(0, Math.min(255, g + grain));
      raw[i++] = Math.max(0, Math.min(255, b + grain));
    }
  }
  return sharp(raw, { raw: { width, height, channels: 3 } }).blur(0.6).jpeg({ quality: 90 }).toBuffer();
}
