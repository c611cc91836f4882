/**
 * The compression section of `npm run bench` (`BENCH_ONLY=compression`,
 * about 50 s): what the node's compression saves and costs.
 *   1. bytes per type: every text object of the demo bucket
 *      (fixtures/demo-objects.ts), and the same kinds at production sizes
 *      (a catalog JSON and a stylesheet generated from the demo's, and real
 *      shipped JavaScript: hono's dist files from node_modules), at the
 *      node's fill levels (brotli 5, gzip 5) and at brotli 11;
 *   2. cold-miss cost per brotli level 1-11 (and gzip), in process, through
 *      the node's own coder streams (edge/node/zlib-coder.ts);
 *   3. decode on the fly vs store decoded: what decoding per request costs;
 *   4. on a real edge (a child process, in front of an origin in this
 *      process): the same object's br, gzip and identity hits under load,
 *      interleaved rounds (target: a compressed hit >= 0.9x an identity hit),
 *      and misses (unique query strings) with and without compression.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, get as httpGet, type Server } from 'node:http';
import { join } from 'node:path';
import { brotliCompressSync, brotliDecompressSync, constants, gunzipSync, gzipSync } from 'node:zlib';
import { DEMO_OBJECTS } from '../fixtures/demo-objects.js';
import { compileTypeMatcher, DEFAULT_COMPRESS_TYPES } from '../edge/core/compression.js';
import { createZlibCoder } from '../edge/node/zlib-coder.js';
import { median, type LoadGenerator, type LoadResult } from './load.js';
import { startChild, stop } from './procs.js';

export interface CompressionConfig {
  generator: LoadGenerator;
  duration: number;
  rounds: number;
  connections: number;
  threads: number;
}

interface Asset {
  name: string;
  type: string;
  body: Buffer;
  /** From the demo bucket as shipped, or scaled to a production size. */
  origin: 'demo' | 'production';
}

const KB = 1024;
const progress = (text: string) => process.stderr.write(text);
const fmtKb = (bytes: number) => (bytes >= 10 * KB ? `${Math.round(bytes / KB)} KB` : bytes >= KB ? `${(bytes / KB).toFixed(1)} KB` : `${bytes} B`);
const pct = (part: number, whole: number) => `${Math.round((1 - part / whole) * 100)} %`;
const fmtMs = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));
const fmtRps = (n: number) => (n >= 100 ? Math.round(n).toString() : n.toFixed(1));

/** A catalog like the demo's products.json, with 600 products. */
function catalog(): Buffer {
  const names = ['Espresso cup', 'Pour-over kettle', 'Grinder', 'Milk jug', 'Scale', 'Filter papers', 'Tamper', 'Knock box'];
  const products = Array.from({ length: 600 }, (_, i) => ({
    id: i + 1,
    name: `${names[i % names.length]} ${Math.floor(i / names.length) + 1}`,
    price: Number((((i * 7919) % 20000) / 100 + 5).toFixed(2)),
    image: `/images/${['photo.webp', 'gradient.jpg', 'logo.png'][i % 3]}`,
    stock: (i * 37) % 120,
    tags: ['coffee', i % 2 ? 'brewing' : 'serving', i % 5 ? 'new' : 'sale'],
  }));
  return Buffer.from(`${JSON.stringify({ products }, null, 2)}\n`);
}

/** A stylesheet in the demo's style, with the variety of a real site's: 1500 rules. */
function stylesheet(): Buffer {
  const properties = ['color', 'background', 'margin', 'padding', 'border-radius', 'font-size', 'line-height', 'gap', 'max-width', 'box-shadow'];
  const rules: string[] = [];
  for (let i = 0; i < 1500; i++) {
    const block = ['card', 'nav', 'btn', 'table', 'form', 'hero', 'footer'][i % 7];
    const declarations = Array.from({ length: 2 + (i % 4) }, (_, j) => {
      const property = properties[(i * 3 + j) % properties.length]!;
      const value = property.includes('color') || property === 'background' ? `#${((i * 2654435761 + j) >>> 8).toString(16).padStart(6, '0').slice(0, 6)}` : `${(i + j) % 48}px`;
      return `  ${property}: ${value};`;
    });
    rules.push(`.${block}-${i}${i % 3 ? `:hover` : ''} {\n${declarations.join('\n')}\n}`);
  }
  return Buffer.from(rules.join('\n') + '\n');
}

/** Real shipped JavaScript: hono's ESM dist files, in name order, up to 160 KB. */
function bundle(): Buffer {
  const root = new URL('../node_modules/hono/dist/', import.meta.url).pathname;
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      if (name === 'cjs' || name === 'types') continue;
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith('.js')) files.push(path);
    }
  };
  walk(root);
  const chunks: Buffer[] = [];
  let size = 0;
  for (const file of files) {
    if (size >= 160 * KB) break;
    const text = readFileSync(file);
    chunks.push(text);
    size += text.length;
  }
  return Buffer.concat(chunks).subarray(0, 160 * KB);
}

function assets(): Asset[] {
  const demo: Asset[] = DEMO_OBJECTS.filter((object) => object.body !== undefined).map((object) => ({
    name: object.path,
    type: object.contentType,
    body: Buffer.from(object.body!),
    origin: 'demo',
  }));
  return [
    ...demo,
    { name: 'catalog.json (600 products)', type: 'application/json', body: catalog(), origin: 'production' },
    { name: 'site.css (1500 rules)', type: 'text/css; charset=utf-8', body: stylesheet(), origin: 'production' },
    { name: 'bundle.js (hono dist)', type: 'text/javascript; charset=utf-8', body: bundle(), origin: 'production' },
  ];
}

/** Brotli with the node's parameters for a body of known length (edge/node/zlib-coder.ts). */
const br = (body: Buffer, quality: number) =>
  brotliCompressSync(body, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: quality,
      [constants.BROTLI_PARAM_MODE]: constants.BROTLI_MODE_TEXT,
      [constants.BROTLI_PARAM_SIZE_HINT]: body.length,
      [constants.BROTLI_PARAM_LGWIN]: Math.min(22, Math.max(16, Math.ceil(Math.log2(body.length + 1)))),
    },
  });

/**
 * CPU ms of one compression with the node's parameters (the same zlib and
 * brotli settings as edge/node/zlib-coder.ts, run synchronously here so the
 * process's own CPU clock measures it, whatever else the machine runs), and
 * the bytes it makes. Median of `runs`.
 */
function cpuMs(body: Buffer, coding: 'br' | 'gzip', level: number, runs: number): { ms: number; bytes: number } {
  const samples: number[] = [];
  let bytes = 0;
  for (let i = 0; i < runs; i++) {
    const before = process.cpuUsage();
    bytes = (coding === 'br' ? br(body, level) : gzipSync(body, { level })).length;
    const used = process.cpuUsage(before);
    samples.push((used.user + used.system) / 1000);
  }
  return { ms: median(samples), bytes };
}

/** The same compression through the node's own coder stream, checked to give the same bytes (the streams are what a miss runs). */
async function streamBytes(body: Buffer, coding: 'br' | 'gzip', level: number): Promise<number> {
  const source = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let i = 0; i < body.length; i += 16 * KB) controller.enqueue(body.subarray(i, i + 16 * KB));
      controller.close();
    },
  });
  const reader = source.pipeThrough(createZlibCoder().encoder(coding, level, body.length)).getReader();
  let bytes = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return bytes;
    bytes += value.byteLength;
  }
}

/** Body bytes as sent (no decoding, unlike fetch). */
function rawSize(url: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    httpGet(url, { headers }, (res) => {
      let size = 0;
      res.on('data', (chunk: Buffer) => (size += chunk.length));
      res.on('end', () => resolve(size));
      res.on('error', reject);
    }).on('error', reject);
  });
}

function cpuPerRequestUs(result: LoadResult): number {
  return Number.isFinite(result.serverCpu) && result.rps > 0 ? (result.serverCpu / result.rps) * 1e6 : Number.NaN;
}

function startOrigin(list: Asset[]): Promise<{ server: Server; url: string }> {
  const byPath = new Map(list.filter((a) => a.origin === 'production').map((a) => [`/${a.name.split(' ')[0]}`, a]));
  const server = createServer((req, res) => {
    const asset = byPath.get((req.url ?? '/').split('?')[0]!);
    if (!asset) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': asset.type, 'content-length': asset.body.length, 'cache-control': 'public, max-age=3600', etag: `"${asset.body.length}"` });
    res.end(req.method === 'HEAD' ? undefined : asset.body);
  });
  server.keepAliveTimeout = 65_000;
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}` })));
}

export async function compressionSection(config: CompressionConfig): Promise<void> {
  const started = performance.now();
  const { generator, connections, threads } = config;
  const duration = Math.min(config.duration, 3);
  const rounds = Math.min(config.rounds, 2);
  const list = assets();
  const compressible = compileTypeMatcher(DEFAULT_COMPRESS_TYPES);
  progress(`\ncompression: ${list.length} assets; load with ${generator.name}, ${connections} connections, ${rounds} rounds of ${duration} s\n`);

  // Cold-miss cost per level (printed after the bytes per type, which reuse its sizes).
  const levelLines: string[] = [];
  progress('  cold-miss cost per level ');
  const production = list.filter((a) => a.origin === 'production');
  levelLines.push('\n### Compression: cold-miss cost per level (CPU ms of one compression, and bytes saved)\n');
  levelLines.push(`| level | ${production.map((a) => a.name.split(' ')[0]).join(' | ')} | MB/s (all three) |`);
  levelLines.push(`|---|${production.map(() => '---:|').join('')}---:|`);
  const levelRows: { label: string; coding: 'br' | 'gzip'; level: number }[] = [
    ...Array.from({ length: 11 }, (_, i) => ({ label: `br ${i + 1}`, coding: 'br' as const, level: i + 1 })),
    { label: 'gzip 1', coding: 'gzip', level: 1 },
    { label: 'gzip 5', coding: 'gzip', level: 5 },
    { label: 'gzip 6', coding: 'gzip', level: 6 },
    { label: 'gzip 9', coding: 'gzip', level: 9 },
  ];
  const costs = new Map<string, { ms: number; bytes: number }[]>();
  for (const row of levelRows) {
    const runs = row.coding === 'br' && row.level >= 10 ? 1 : 5;
    const cells = [];
    for (const asset of production) cells.push(cpuMs(asset.body, row.coding, row.level, runs));
    costs.set(row.label, cells);
    const totalMs = cells.reduce((n, c) => n + c.ms, 0);
    const totalBytes = production.reduce((n, a) => n + a.body.length, 0);
    const marker = (row.coding === 'br' && row.level === 5) || (row.coding === 'gzip' && row.level === 5) ? ' (default)' : '';
    levelLines.push(
      `| ${row.label}${marker} | ${cells.map((c, i) => `${fmtMs(c.ms)} ms, ${pct(c.bytes, production[i]!.body.length)}`).join(' | ')} | ${((totalBytes / 1e6) / (totalMs / 1000)).toFixed(0)} |`,
    );
    progress('.');
  }
  progress(' done\n');
  const five = costs.get('br 5')!;
  const eleven = costs.get('br 11')!;
  for (const asset of production) {
    const streamed = await streamBytes(asset.body, 'br', 5);
    if (streamed !== costs.get('br 5')![production.indexOf(asset)]!.bytes) levelLines.push(`- Note: the node's stream made ${streamed} bytes of ${asset.name} at br 5, the sync call ${costs.get('br 5')![production.indexOf(asset)]!.bytes}.`);
  }
  levelLines.push(
    "\n- Cells: CPU ms of one compression (median of 5, one run at levels 10-11), measured on this process's CPU clock; in the node the same work runs on libuv's pool " +
      '(edge/node/zlib-coder.ts), so the event loop only moves chunks. MB/s: the three assets\' bytes over their CPU time.',
  );
  levelLines.push(
    `- Background pass (brotli 11 after a brotli 5 fill), per production asset: ${production
      .map((a, i) => `${a.name.split(' ')[0]} ${fmtKb(five[i]!.bytes - eleven[i]!.bytes)} less per response for ${fmtMs(eleven[i]!.ms)} ms once`)
      .join('; ')}.`,
  );

  // Bytes saved per type.
  console.log('\n### Compression: bytes per type (brotli 5 and gzip 5 at fill time, brotli 11 after the background pass)\n');
  console.log('| asset | type | identity | br 5 | br 11 | gzip 5 | saved (br 11) | compressed by the node |');
  console.log('|---|---|---:|---:|---:|---:|---:|---|');
  for (const asset of list) {
    const type = asset.type.split(';')[0]!;
    const cell = (label: string) => costs.get(label)?.[production.indexOf(asset)]?.bytes;
    const sizes = [cell('br 5') ?? br(asset.body, 5).length, cell('br 11') ?? br(asset.body, 11).length, cell('gzip 5') ?? gzipSync(asset.body, { level: 5 }).length];
    const by = !compressible(asset.type) ? 'no (type)' : asset.body.length < KB ? 'no (< 1 KB)' : 'yes';
    console.log(`| ${asset.name} | ${type} | ${fmtKb(asset.body.length)} | ${fmtKb(sizes[0]!)} | ${fmtKb(sizes[1]!)} | ${fmtKb(sizes[2]!)} | ${pct(sizes[1]!, asset.body.length)} | ${by} |`);
  }
  const demo = list.filter((a) => a.origin === 'demo');
  const demoTotal = demo.reduce((n, a) => n + a.body.length, 0);
  const demoBr = demo.reduce((n, a) => n + (a.body.length >= KB ? br(a.body, 11).length : a.body.length), 0);
  console.log(
    `\n- The demo bucket's text objects total ${fmtKb(demoTotal)}; compressing those of at least 1 KB (only the index page) makes them ${fmtKb(demoBr)} ` +
      `(${pct(demoBr, demoTotal)} saved). The demo objects are tiny; the production-size rows are what a site sends.`,
  );

  for (const line of levelLines) console.log(line);
  // Decode on the fly vs store decoded.
  const js = production.find((a) => a.name.startsWith('bundle'))!;
  const gz = gzipSync(js.body, { level: 5 });
  const brJs = br(js.body, 5);
  const decodeUs = (fn: () => void) => {
    const before = process.cpuUsage();
    for (let i = 0; i < 50; i++) fn();
    const used = process.cpuUsage(before);
    return (used.user + used.system) / 50;
  };
  const gunzipUs = decodeUs(() => gunzipSync(gz));
  const unbrUs = decodeUs(() => brotliDecompressSync(brJs));

  // Under load on a real edge.
  progress('  starting origin and edge ');
  const origin = await startOrigin(list);
  const edge = await startChild(['edge', origin.url, '256MB']);
  progress('done\n');
  try {
    const url = `${edge.url}/bundle.js`;
    const kinds: { key: string; label: string; headers: Record<string, string>; uniquePaths?: boolean }[] = [
      { key: 'identity', label: 'identity hit', headers: {} },
      { key: 'br', label: 'br hit', headers: { 'accept-encoding': 'br' } },
      { key: 'gzip', label: 'gzip hit', headers: { 'accept-encoding': 'gzip' } },
      { key: 'miss-identity', label: 'identity miss (unique query)', headers: {}, uniquePaths: true },
      { key: 'miss-br', label: 'br miss, compressed at level 5 (unique query)', headers: { 'accept-encoding': 'br' }, uniquePaths: true },
    ];
    const sizes = new Map<string, number>();
    for (const kind of kinds.slice(0, 3)) {
      // A miss, then a hit (which queues the br entry's background pass).
      for (let i = 0; i < 2; i++) {
        sizes.set(kind.key, await rawSize(url, kind.headers));
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
    // Measured after the background pass replaced the br entry, as a hot object is served.
    const finalBr = eleven[production.indexOf(js)]!.bytes;
    for (let waited = 0; waited < 30_000 && sizes.get('br') !== finalBr; waited += 500) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      sizes.set('br', await rawSize(url, { 'accept-encoding': 'br' }));
    }
    if (sizes.get('br') !== finalBr) progress(`  warning: the br entry is ${sizes.get('br')} bytes, not the level-11 ${finalBr}\n`);
    progress('  warm-up ');
    for (const kind of kinds) {
      await generator.run(url, { duration: 1, connections, threads, headers: kind.headers, uniquePaths: kind.uniquePaths });
      progress('.');
    }
    progress(' done\n');
    const runs = new Map<string, LoadResult[]>(kinds.map((k) => [k.key, []]));
    for (let round = 1; round <= rounds; round++) {
      for (const kind of kinds) {
        progress(`  [${round}/${rounds}] ${kind.label.padEnd(48)} `);
        const result = await generator.run(url, { duration, connections, threads, headers: kind.headers, uniquePaths: kind.uniquePaths, serverGroups: [edge.child.pid!] });
        runs.get(kind.key)!.push(result);
        progress(`${fmtRps(result.rps).padStart(6)} req/s  p99 ${fmtMs(result.p99).padStart(5)} ms${result.errors || result.non2xx ? `  ${result.errors} errors, ${result.non2xx} bad status` : ''}\n`);
        await new Promise((resolve) => setTimeout(resolve, kind.uniquePaths ? 1000 : 200));
      }
    }
    const rps = (key: string) => median(runs.get(key)!.map((r) => r.rps));
    const p99 = (key: string) => median(runs.get(key)!.map((r) => r.p99));
    const cpuUs = (key: string) => median(runs.get(key)!.map(cpuPerRequestUs));
    console.log(`\n### Compression: the same object (bundle.js, ${fmtKb(js.body.length)}) by coding, on one edge\n`);
    console.log(`Median of ${rounds} interleaved rounds of ${duration} s, ${connections} connections, ${generator.name}.\n`);
    console.log('| scenario | bytes per answer | req/s | p99 ms | server CPU per request | req/s vs identity hit |');
    console.log('|---|---:|---:|---:|---:|---:|');
    for (const kind of kinds) {
      // A miss sends what the fill makes (br 5); the br hit row is after the background pass (br 11).
      const bytes = sizes.get(kind.key) ?? (kind.key === 'miss-br' ? five[production.indexOf(js)]!.bytes : sizes.get('identity'));
      const base = kind.uniquePaths ? 'miss-identity' : 'identity';
      console.log(
        `| ${kind.label} | ${bytes === undefined ? '' : fmtKb(bytes)} | ${fmtRps(rps(kind.key))} | ${fmtMs(p99(kind.key))} | ${Number.isFinite(cpuUs(kind.key)) ? `${Math.round(cpuUs(kind.key))} µs` : 'n/a'} | ${(rps(kind.key) / rps(base)).toFixed(2)}x${kind.uniquePaths ? ' (vs identity miss)' : ''} |`,
      );
    }
    const ratio = rps('br') / rps('identity');
    console.log(`\n- Target: a compressed hit >= 0.9x an identity hit of the same object: br ${ratio.toFixed(2)}x, gzip ${(rps('gzip') / rps('identity')).toFixed(2)}x: ${ratio >= 0.9 ? 'met' : 'NOT met'}.`);
    console.log(
      `- Decode on the fly instead of storing the decoded copy: ${Math.round(gunzipUs)} µs (gzip) / ${Math.round(unbrUs)} µs (br) of CPU per request for this object, ` +
        `against ${Number.isFinite(cpuUs('identity')) ? `${Math.round(cpuUs('identity'))} µs` : 'n/a'} for a whole identity hit; storing the decoded copy costs ${fmtKb(js.body.length)} ` +
        `of cache once, beside the ${fmtKb(gz.length)} gzip. The node stores it.`,
    );
  } finally {
    await stop(edge.child);
    await new Promise((resolve) => origin.server.close(resolve));
    origin.server.closeAllConnections();
  }
  console.log(`\nCompression section time ${((performance.now() - started) / 1000).toFixed(0)} s.`);
}
