/**
 * The images section of `npm run bench` (`BENCH_ONLY=images`): a 2400x1600
 * photo-like JPEG, transformed to width 800 in AVIF, WebP and JPEG by
 *   - our edge (the source cached, each variant cold),
 *   - plain sharp in this process with the edge's encoder settings (the floor),
 *   - ipx in front of the same origin (sharp as well, its own defaults, no
 *     result cache: every request fetches the source and transforms again),
 * then repeated requests for one URL (a cached variant on the edge; a full
 * transform every time on ipx), and output bytes at the default qualities.
 * Every server is a child process (bench/child.ts); the whole section takes
 * well under 90 s with the default BENCH_DURATION of 5 s.
 */
import type { ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import sharp from 'sharp';
import { median } from './load.js';

interface LoadResult {
  rps: number;
  p99: number;
  errors: number;
  non2xx: number;
}

export interface ImageSectionDeps {
  /** The load generator's name, for the table heading. */
  generator: string;
  /** Load `url` (bench/load.ts): one progress line on stderr unless `quiet`; `timeout` in seconds. */
  load(label: string, url: string, opts?: { duration?: number; connections?: number; timeout?: number; quiet?: boolean }): Promise<LoadResult>;
  startChild(args: string[]): Promise<{ url: string; child: ChildProcess }>;
  stop(child: ChildProcess): Promise<void>;
}

type Format = 'avif' | 'webp' | 'jpeg';
const FORMATS: Format[] = ['avif', 'webp', 'jpeg'];
const SOURCE = '2400x1600';
const WIDTH = 800;
/** Cold samples per subject and format: widths 800..806, each a new variant. */
const SAMPLES = 7;
const DURATION = Number(process.env.BENCH_DURATION ?? 5);
/**
 * Connections for ipx: it transforms on every request, so a few per core
 * saturate it; 32 would only queue requests past the end of the run (each
 * AVIF takes about a second) and count nothing.
 */
const IPX_CONNECTIONS = 2 * availableParallelism();

/** The edge's defaults (options.ts, sharp-transformer.ts): quality 75 on the JPEG scale. */
const EDGE_DEFAULTS = { quality: 75, avifQuality: 56, avifEffort: 2, webpEffort: 4 };

const progress = (text: string) => process.stderr.write(text);

/** GET a URL, read the whole body; ms to the last byte. */
async function timedGet(url: string): Promise<{ ms: number; bytes: Buffer; status: number; type: string | null }> {
  const started = performance.now();
  const res = await fetch(url);
  const bytes = Buffer.from(await res.arrayBuffer());
  const ms = performance.now() - started;
  if (res.status !== 200) throw new Error(`bench images: ${url} answered ${res.status}: ${bytes.toString().slice(0, 200)}`);
  return { ms, bytes, status: res.status, type: res.headers.get('content-type') };
}

/** The same pipeline as SharpImageTransformer, in process. */
function sharpTransform(source: Buffer, width: number, format: Format): Promise<Buffer> {
  const image = sharp(source, { failOn: 'error', sequentialRead: true })
    .autoOrient()
    .resize({ width, fit: 'inside', withoutEnlargement: true })
    .toColourspace('srgb');
  switch (format) {
    case 'avif':
      return image.avif({ quality: EDGE_DEFAULTS.avifQuality, effort: EDGE_DEFAULTS.avifEffort, chromaSubsampling: '4:2:0' }).toBuffer();
    case 'webp':
      return image.webp({ quality: EDGE_DEFAULTS.quality, effort: EDGE_DEFAULTS.webpEffort }).toBuffer();
    case 'jpeg':
      return image.flatten({ background: '#ffffff' }).jpeg({ quality: EDGE_DEFAULTS.quality, progressive: true, mozjpeg: false }).toBuffer();
  }
}

async function checkFormat(bytes: Buffer, format: Format, width: number, who: string): Promise<void> {
  const meta = await sharp(bytes).metadata();
  const got = meta.format === 'heif' && meta.compression === 'av1' ? 'avif' : meta.format;
  if (got !== format || meta.width !== width) {
    throw new Error(`bench images: ${who} returned ${got} ${meta.width}x${meta.height}, expected ${format} width ${width}`);
  }
}

interface Cold {
  ms: number[];
  bytes: number;
}

export async function imageSection({ generator, load, startChild, stop }: ImageSectionDeps): Promise<void> {
  /** ipx with a few connections (see IPX_CONNECTIONS) and a long timeout; req/s = completed requests over the run. */
  const ipxLoad = (label: string, url: string) => load(label, url, { connections: IPX_CONNECTIONS, duration: DURATION, timeout: 60 });
  const sectionStarted = performance.now();
  progress(`\nimages: ${SOURCE} photo-like JPEG to width ${WIDTH}; cold = median of ${SAMPLES} new variants (widths ${WIDTH}..${WIDTH + SAMPLES - 1})\n`);
  const origin = await startChild(['origin-image', SOURCE]);
  const [edge, ipx] = await Promise.all([startChild(['edge', origin.url, '256MB']), startChild(['ipx', origin.url])]);
  try {
    const source = (await timedGet(`${origin.url}/photo.jpg`)).bytes;
    progress(`  source ${SOURCE} JPEG, ${(source.length / 1024).toFixed(0)} KiB\n`);

    const urls = {
      edge: (width: number, format: Format) => `${edge.url}/photo.jpg?width=${width}&format=${format}`,
      ipx: (width: number, format: Format) => `${ipx.url}/w_${width},f_${format}/${origin.url}/photo.jpg`,
    };

    // Warm-up, not measured: sharp loaded in each process, the source in the edge's cache.
    progress('  warm-up ');
    await timedGet(`${edge.url}/photo.jpg`);
    await timedGet(urls.edge(320, 'jpeg'));
    await timedGet(urls.ipx(320, 'jpeg'));
    await sharpTransform(source, 320, 'jpeg');
    progress('done\n');

    // Subjects interleaved per sample, so background load drifts hit all three alike.
    const cold: Record<'edge' | 'sharp' | 'ipx', Record<Format, Cold>> = { edge: {}, sharp: {}, ipx: {} } as never;
    const subjects = ['sharp', 'edge', 'ipx'] as const;
    for (const format of FORMATS) {
      progress(`  cold ${format.padEnd(4)} `);
      for (const subject of subjects) cold[subject][format] = { ms: [], bytes: 0 };
      for (let i = 0; i < SAMPLES; i++) {
        const width = WIDTH + i;
        for (const subject of subjects) {
          let out: Buffer;
          if (subject === 'sharp') {
            const started = performance.now();
            out = await sharpTransform(source, width, format);
            cold.sharp[format].ms.push(performance.now() - started);
          } else {
            const answer = await timedGet(urls[subject](width, format));
            cold[subject][format].ms.push(answer.ms);
            out = answer.bytes;
          }
          if (i === 0) {
            await checkFormat(out, format, width, subject);
            cold[subject][format].bytes = out.length;
          }
        }
        progress('.');
      }
      progress(` median ms: ${subjects.map((s) => `${s} ${median(cold[s][format].ms).toFixed(0)}`).join(', ')}\n`);
    }

    // Repeated requests for one URL. The edge variant is cached by the cold run
    // (width 800); its hit is compared with a hit on a plain object of the same size.
    const variantBytes = cold.edge.avif.bytes;
    await timedGet(`${edge.url}/blob/${variantBytes}`);
    await timedGet(`${edge.url}/blob/${variantBytes}`);
    // Both hit paths equally warm (JIT) before either is measured.
    progress('  warm-up of the hit paths ');
    await timedGet(urls.edge(WIDTH, 'webp'));
    for (const url of [urls.edge(WIDTH, 'avif'), `${edge.url}/blob/${variantBytes}`, urls.edge(WIDTH, 'webp')]) {
      await load('', url, { connections: 8, duration: 2, quiet: true });
      progress('.');
    }
    progress(' done\n');
    progress(`  repeated requests, ${DURATION} s each\n`);
    const edgeHit = await load('edge, cached AVIF variant', urls.edge(WIDTH, 'avif'));
    const plainHit = await load('edge, plain hit of the same size', `${edge.url}/blob/${variantBytes}`);
    const edgeHitWebp = await load('edge, cached WebP variant', urls.edge(WIDTH, 'webp'));
    // ipx last: requests still in flight when a run ends keep its CPUs busy.
    const ipxRepeat = await ipxLoad('ipx, same AVIF URL (no cache)', urls.ipx(WIDTH, 'avif'));
    const ipxRepeatWebp = await ipxLoad('ipx, same WebP URL (no cache)', urls.ipx(WIDTH, 'webp'));

    // Tables.
    const fmt = (ms: number) => `${ms.toFixed(0)}`;
    console.log(`\n### Images: ${SOURCE} photo-like JPEG (${(source.length / 1024).toFixed(0)} KiB) to width ${WIDTH}\n`);
    console.log(`Cold transform, ms to the last byte (median of ${SAMPLES} new variants; the edge and ipx over loopback HTTP):\n`);
    console.log('| format | plain sharp (floor) | edge | ipx | edge / sharp | ipx / edge | bytes (edge) | bytes (ipx) |');
    console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
    for (const format of FORMATS) {
      const s = median(cold.sharp[format].ms);
      const e = median(cold.edge[format].ms);
      const i = median(cold.ipx[format].ms);
      console.log(
        `| ${format.toUpperCase()} | ${fmt(s)} | ${fmt(e)} | ${fmt(i)} | ${(e / s).toFixed(2)}x | ${(i / e).toFixed(2)}x | ${cold.edge[format].bytes} | ${cold.ipx[format].bytes} |`,
      );
    }
    console.log(`\nRepeated requests for one URL (${generator}):\n`);
    console.log('| scenario | req/s | p99 ms | errors + non-2xx |');
    console.log('|---|---:|---:|---:|');
    const row = (name: string, r: LoadResult) => console.log(`| ${name} | ${r.rps >= 100 ? Math.round(r.rps) : r.rps.toFixed(1)} | ${r.p99 >= 10 ? r.p99.toFixed(0) : r.p99.toFixed(1)} | ${r.errors + r.non2xx} |`);
    row('edge, cached AVIF variant', edgeHit);
    row(`edge, plain cache hit, same size (${variantBytes} B)`, plainHit);
    row('edge, cached WebP variant', edgeHitWebp);
    row(`ipx, AVIF (transforms every time; ${IPX_CONNECTIONS} connections)`, ipxRepeat);
    row(`ipx, WebP (transforms every time; ${IPX_CONNECTIONS} connections)`, ipxRepeatWebp);

    const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(a / b >= 10 ? 0 : 2)}x` : 'n/a (0 req/s)');
    console.log('\nRatios:\n');
    for (const format of FORMATS) {
      console.log(`- edge cold / sharp cold, ${format.toUpperCase()}: ${(median(cold.edge[format].ms) / median(cold.sharp[format].ms)).toFixed(2)}x (target <= 1.10x)`);
    }
    console.log(`- edge repeated / ipx repeated, AVIF: ${ratio(edgeHit.rps, ipxRepeat.rps)} (target >= 100x)`);
    console.log(`- edge repeated / ipx repeated, WebP: ${ratio(edgeHitWebp.rps, ipxRepeatWebp.rps)}`);
    console.log(`- cached variant hit / plain hit of the same size: ${(edgeHit.rps / plainHit.rps).toFixed(2)}x (target ~1x)`);
    console.log(
      `- AVIF bytes / JPEG bytes at the defaults (edge: AVIF q56 effort 2 4:2:0, JPEG q75 progressive): ${(cold.edge.avif.bytes / cold.edge.jpeg.bytes).toFixed(2)} (target <= 0.60)`,
    );
    console.log(`- WebP bytes / JPEG bytes: ${(cold.edge.webp.bytes / cold.edge.jpeg.bytes).toFixed(2)}`);
    console.log(
      `\nipx ${ipxVersion()} uses sharp's own defaults for the same URL parameters (AVIF quality 50, effort 4, 4:4:4; WebP 80; JPEG 80), so its bytes differ. Section time ${((performance.now() - sectionStarted) / 1000).toFixed(0)} s.`,
    );
  } finally {
    await Promise.all([stop(ipx.child), stop(edge.child)]);
    await stop(origin.child);
  }
}

function ipxVersion(): string {
  try {
    // Read from the installed package, so the table names what was measured.
    let dir = dirname(createRequire(import.meta.url).resolve('ipx'));
    while (!dir.endsWith('ipx') && dirname(dir) !== dir) dir = dirname(dir);
    return (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return '(version unknown)';
  }
}
