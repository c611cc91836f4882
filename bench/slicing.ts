/**
 * The slicing section of `npm run bench` (`BENCH_ONLY=slicing`, about a
 * minute): what range slicing (`--slice-size`, README "Range slicing") saves
 * and costs, on loopback.
 *   1. seeks into cold 1 GB objects (a 64 KiB range at five offsets, one
 *      object each): time to the first body byte and bytes the origin sent,
 *      through an edge with --slice-size 4MB, and through one without
 *      slicing (it reads the object from byte 0 to the range's end and stops);
 *   2. a full GET of a 200 MB object (under --slice-paths): cold through the
 *      sliced edge (every piece from the origin), then from its stored pieces, against bare
 *      node:http sending the same number of bytes from memory (median of 3).
 * The origin runs in this process: it serves objects generated from a
 * pattern (never allocated whole), honours one Range, and counts the
 * requests and body bytes it sends. The edges and the bare server are child
 * processes (bench/child.ts).
 */
import { createServer, get as httpGet, type Server } from 'node:http';
import { startChild, stop } from './procs.js';
import { median } from './load.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const SEEK_OBJECT = GiB;
const SEEK_BYTES = 64 * 1024;
const SEEK_OFFSETS = [123_456_789, 456_789_012, 789_012_345, 987_654_321, 333_333_333];
const FULL_OBJECT = 200 * MiB;
const SLICE = '4MB';
const ROUNDS = 3;

const progress = (text: string) => process.stderr.write(text);
const fmtMs = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));
const fmtMb = (bytes: number) => `${(bytes / MiB).toFixed(bytes >= 10 * MiB ? 0 : 1)} MiB`;

/** The pattern every object is cut from: a length that is not a power of two, so pieces do not repeat it in step. */
const PATTERN = (() => {
  const bytes = Buffer.alloc(MiB + 13);
  let seed = 0x1234_5678;
  for (let i = 0; i < bytes.length; i++) {
    seed = (Math.imul(seed, 1_103_515_245) + 12_345) | 0;
    bytes[i] = seed >>> 24;
  }
  return bytes;
})();

interface RangeOrigin {
  url: string;
  server: Server;
  requests: number;
  bytes: number;
}

/** `/obj/<size>/<name>`: `size` bytes, ETag per path, one `bytes=a-b` / `a-` range honoured. */
async function startOrigin(): Promise<RangeOrigin> {
  const origin = { url: '', requests: 0, bytes: 0 } as RangeOrigin;
  origin.server = createServer((req, res) => {
    const match = /^\/obj\/(\d+)\//.exec(req.url ?? '');
    if (!match) {
      res.writeHead(404).end();
      return;
    }
    origin.requests++;
    const size = Number(match[1]);
    let start = 0;
    let end = size - 1;
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    const headers: Record<string, string | number> = {
      'content-type': 'video/mp4',
      'cache-control': 'public, max-age=3600',
      etag: `"${req.url}"`,
      'accept-ranges': 'bytes',
    };
    let status = 200;
    if (range && Number(range[1]) < size) {
      start = Number(range[1]);
      end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
      status = 206;
      headers['content-range'] = `bytes ${start}-${end}/${size}`;
    }
    headers['content-length'] = end - start + 1;
    res.writeHead(status, headers);
    let at = start;
    const write = () => {
      while (at <= end) {
        const from = at % PATTERN.length;
        const chunk = PATTERN.subarray(from, Math.min(PATTERN.length, from + 64 * 1024, from + end + 1 - at));
        at += chunk.length;
        origin.bytes += chunk.length;
        if (!res.write(chunk)) {
          res.once('drain', write);
          return;
        }
      }
      res.end();
    };
    res.on('close', () => res.removeAllListeners('drain'));
    write();
  });
  await new Promise<void>((resolve) => origin.server.listen(0, '127.0.0.1', resolve));
  origin.url = `http://127.0.0.1:${(origin.server.address() as { port: number }).port}`;
  return origin;
}

/** GET `url` on a fresh connection: ms to the first body byte, ms to the end, body bytes. */
function timedGet(url: string, headers: Record<string, string> = {}): Promise<{ firstByteMs: number; totalMs: number; bytes: number; status: number }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let firstByteMs = 0;
    let bytes = 0;
    httpGet(url, { headers, agent: false }, (res) => {
      res.on('data', (chunk: Buffer) => {
        if (bytes === 0) firstByteMs = performance.now() - started;
        bytes += chunk.length;
      });
      res.on('end', () => resolve({ firstByteMs, totalMs: performance.now() - started, bytes, status: res.statusCode ?? 0 }));
      res.on('error', reject);
    }).on('error', reject);
  });
}

/** Wait until the origin has sent nothing for a moment (a cut-off whole-object fill stops some chunks late). */
async function quiet(origin: RangeOrigin): Promise<void> {
  let last = -1;
  while (origin.bytes !== last) {
    last = origin.bytes;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

export async function slicingSection(): Promise<void> {
  progress('\nslicing: seeks into cold 1 GB objects, full GETs of a 200 MB sliced object\n');
  const origin = await startOrigin();
  // bench/child.ts merges BENCH_EDGE_OPTIONS into an edge's options.
  process.env.BENCH_EDGE_OPTIONS = JSON.stringify({ sliceSize: SLICE, slicePaths: ['/obj/'] });
  const sliced = await startChild(['edge', origin.url, '256MB', 'quiet']).finally(() => delete process.env.BENCH_EDGE_OPTIONS);
  const whole = await startChild(['edge', origin.url, '256MB', 'quiet']);
  const bare = await startChild(['bare']);
  try {
    const seekRows: string[] = [];
    for (const [label, edge, prefix] of [
      [`--slice-size ${SLICE}`, sliced.url, 'sliced'],
      ['no slicing (whole-object fill, cut off)', whole.url, 'whole'],
    ] as const) {
      const firstBytes: number[] = [];
      const originBytes: number[] = [];
      for (const [i, offset] of SEEK_OFFSETS.entries()) {
        await quiet(origin);
        const before = origin.bytes;
        const res = await timedGet(`${edge}/obj/${SEEK_OBJECT}/${prefix}-seek-${i}`, { range: `bytes=${offset}-${offset + SEEK_BYTES - 1}` });
        if (res.status !== 206 || res.bytes !== SEEK_BYTES) throw new Error(`seek through ${label}: got ${res.status} with ${res.bytes} bytes`);
        await quiet(origin);
        firstBytes.push(res.firstByteMs);
        originBytes.push(origin.bytes - before);
      }
      progress(`  seek, ${label.padEnd(40)} first byte ${fmtMs(median(firstBytes))} ms, origin sent ${fmtMb(median(originBytes))} per seek\n`);
      seekRows.push(`| ${label} | ${fmtMs(median(firstBytes))} ms (${fmtMs(Math.min(...firstBytes))}-${fmtMs(Math.max(...firstBytes))}) | ${fmtMb(median(originBytes))} (${fmtMb(Math.min(...originBytes))}-${fmtMb(Math.max(...originBytes))}) |`);
    }

    const path = `/obj/${FULL_OBJECT}/full`;
    const beforeCold = origin.bytes;
    const requestsBefore = origin.requests;
    const cold = await timedGet(`${sliced.url}${path}`);
    if (cold.status !== 200 || cold.bytes !== FULL_OBJECT) throw new Error(`cold full GET: got ${cold.status} with ${cold.bytes} bytes`);
    const coldPieces = origin.requests - requestsBefore;
    const coldOrigin = origin.bytes - beforeCold;
    progress(`  full GET, cold through the sliced edge: ${fmtMs(cold.totalMs)} ms, ${coldPieces} origin requests, ${fmtMb(coldOrigin)}\n`);
    const fromPieces: number[] = [];
    const fromBare: number[] = [];
    const beforeWarm = origin.requests;
    for (let round = 0; round < ROUNDS; round++) {
      const hit = await timedGet(`${sliced.url}${path}`);
      if (hit.bytes !== FULL_OBJECT) throw new Error(`full GET from pieces: ${hit.bytes} bytes`);
      fromPieces.push(hit.totalMs);
      const plain = await timedGet(`${bare.url}/blob/${FULL_OBJECT}`);
      if (plain.bytes !== FULL_OBJECT) throw new Error(`bare full GET: ${plain.bytes} bytes`);
      fromBare.push(plain.totalMs);
    }
    if (origin.requests !== beforeWarm) throw new Error(`full GETs from pieces asked the origin ${origin.requests - beforeWarm} times`);
    const mbps = (ms: number) => FULL_OBJECT / MiB / (ms / 1000);
    progress(`  full GET from pieces ${Math.round(mbps(median(fromPieces)))} MiB/s, bare node:http ${Math.round(mbps(median(fromBare)))} MiB/s\n`);

    console.log(`\n### Range slicing: seeks into cold 1 GB objects (${SEEK_BYTES / 1024} KiB ranges, median of ${SEEK_OFFSETS.length} offsets, min-max)\n`);
    console.log('| edge | time to first byte | origin bytes per seek |');
    console.log('|---|---|---|');
    for (const row of seekRows) console.log(row);
    console.log(`\n### Range slicing: full GET of a 200 MB object (median of ${ROUNDS})\n`);
    console.log('| | time | throughput | origin |');
    console.log('|---|---|---|---|');
    console.log(`| cold, through the sliced edge | ${fmtMs(cold.totalMs)} ms | ${Math.round(mbps(cold.totalMs))} MiB/s | ${coldPieces} requests, ${fmtMb(coldOrigin)} |`);
    console.log(`| from stored pieces (${SLICE}) | ${fmtMs(median(fromPieces))} ms | ${Math.round(mbps(median(fromPieces)))} MiB/s | none |`);
    console.log(`| bare node:http, same bytes from memory | ${fmtMs(median(fromBare))} ms | ${Math.round(mbps(median(fromBare)))} MiB/s | |`);
    console.log(`| ratio pieces / bare | | ${(mbps(median(fromPieces)) / mbps(median(fromBare))).toFixed(2)} | |`);
  } finally {
    await Promise.all([stop(sliced.child), stop(whole.child), stop(bare.child)]);
    await new Promise<void>((resolve) => origin.server.close(() => resolve()));
    origin.server.closeAllConnections();
  }
}
