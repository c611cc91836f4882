/**
 * `npx edge push <dir> --to <edge-url> --token <t> [--prefix /assets]`:
 * upload a folder to an edge node's push API, so a deploy is one command.
 *
 * Each file's SHA-256 is computed locally; the node's ETag for a pushed
 * object is the same hash, so files whose pushed copy already matches are
 * skipped. The pushed copies are read from `GET /_edge/objects?pushed=true`
 * (one authenticated request per 1000 objects) rather than a `HEAD` per
 * file on the public path: a HEAD for a path that is not pushed goes to the
 * origin and fills the cache as a side effect, and a pulled copy with a
 * coincidentally equal ETag would be mistaken for a pushed one.
 *
 * Uploads stream each file (never read whole into memory), a few at a time,
 * with one progress line per file on stderr and a summary at the end.
 * Exit code: 0 when every file was uploaded or skipped, 1 when any failed,
 * 2 for bad arguments.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { extname, join, relative, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { Agent, request, type Dispatcher } from 'undici';

/** Where output goes and where the token may come from (tests inject both). */
export interface PushIo {
  /** Receives each progress and summary line, without the newline. @default process.stderr */
  log?: (line: string) => void;
  /** Environment read for EDGE_ADMIN_TOKEN. @default process.env */
  env?: NodeJS.ProcessEnv;
}

interface PushOptions {
  dir: string;
  edge: URL;
  token: string;
  /** '' or `/assets` (leading slash, no trailing slash), already percent-encoded. */
  prefix: string;
  concurrency: number;
  cacheControl?: string;
  tags: string[];
}

/**
 * Content types for the files a web deploy holds. A small table instead of
 * a dependency: `mime-types` is only in node_modules as a dev tool's
 * transitive dependency, and these few dozen types cover static sites;
 * anything else is sent as application/octet-stream.
 */
const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.htm': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.cjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.webmanifest': 'application/manifest+json',
  '.xml': 'application/xml',
  '.txt': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.csv': 'text/csv; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.gif': 'image/gif',
  '.webp': 'image/webp',
  '.avif': 'image/avif',
  '.ico': 'image/x-icon',
  '.bmp': 'image/bmp',
  '.tif': 'image/tiff',
  '.tiff': 'image/tiff',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.ttf': 'font/ttf',
  '.otf': 'font/otf',
  '.eot': 'application/vnd.ms-fontobject',
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
  '.ogv': 'video/ogg',
  '.mp3': 'audio/mpeg',
  '.ogg': 'audio/ogg',
  '.wav': 'audio/wav',
  '.m4a': 'audio/mp4',
  '.pdf': 'application/pdf',
  '.zip': 'application/zip',
  '.gz': 'application/gzip',
  '.wasm': 'application/wasm',
};

/** Version-control and desktop litter: never published (a pushed `.git/` would expose the source). */
const SKIPPED_NAMES = new Set(['.git', '.hg', '.svn', '.DS_Store', 'Thumbs.db']);

const MAX_CONCURRENCY = 64;
/** Attempts per upload for failures worth retrying (network errors, 502/503/504). */
const ATTEMPTS = 3;

export function contentTypeFor(file: string): string {
  return CONTENT_TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream';
}

/**
 * One path segment as a browser sends it for a link to that file name:
 * what WHATWG URL serialisation produces, after escaping the characters
 * it would otherwise read as syntax (`%`, `?`, `#`, `\`).
 */
export function encodePathSegment(segment: string): string {
  const escaped = segment.replace(/%/g, '%25').replace(/\?/g, '%3F').replace(/#/g, '%23').replace(/\\/g, '%5C');
  return new URL(`http://x/${escaped}`).pathname.slice(1);
}

export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

export function pushHelpText(): string {
  return [
    'Usage: npx edge push <dir> --to <edge-url> --token <token> [options]',
    '',
    'Uploads every file under <dir> to the edge node\'s push API (PUT /_edge/push/<prefix>/<path>),',
    'skipping files whose pushed copy already has the same SHA-256 ETag.',
    '',
    '  --to <url>               Edge node base URL, e.g. http://edge.internal:8080 (required)',
    '  --token <token>          Admin token; defaults to $EDGE_ADMIN_TOKEN (safer than a flag, which shows in ps)',
    '  --prefix <path>          Path prefix for every object, e.g. /assets (default: none)',
    '  --concurrency <n>        Uploads at a time, 1-64 (default 8)',
    '  --cache-control <value>  Cache-Control stored with every object (default: the node\'s, public, max-age=--push-ttl)',
    '  --tag <tag>              Cache-Tag for every object, for purge by tag; repeatable',
    '  --help                   Show this text',
  ].join('\n');
}

class UsageError extends Error {}

function parsePushArgs(argv: string[], env: NodeJS.ProcessEnv): PushOptions | 'help' {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        to: { type: 'string' },
        token: { type: 'string' },
        prefix: { type: 'string' },
        concurrency: { type: 'string' },
        'cache-control': { type: 'string' },
        tag: { type: 'string', multiple: true },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) return 'help';
  if (positionals.length !== 1) throw new UsageError(positionals.length === 0 ? 'give the folder to upload' : `give one folder, got ${positionals.length}`);
  if (!values.to) throw new UsageError('--to <edge-url> is required');
  let edge: URL;
  try {
    edge = new URL(values.to);
  } catch {
    throw new UsageError(`--to: "${values.to}" is not a URL`);
  }
  if (edge.protocol !== 'http:' && edge.protocol !== 'https:') throw new UsageError(`--to: "${values.to}" is not an http(s) URL`);
  const token = values.token ?? env.EDGE_ADMIN_TOKEN;
  if (!token) throw new UsageError('--token <token> (or EDGE_ADMIN_TOKEN) is required');

  let prefix = (values.prefix ?? '').trim();
  if (prefix !== '') {
    const segments = prefix.split('/').filter(Boolean);
    if (segments.some((s) => s === '.' || s === '..')) throw new UsageError(`--prefix: "${prefix}" must not contain . or .. segments`);
    prefix = segments.length === 0 ? '' : '/' + segments.map(encodePathSegment).join('/');
  }
  const concurrency = values.concurrency === undefined ? 8 : Number(values.concurrency);
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > MAX_CONCURRENCY) {
    throw new UsageError(`--concurrency: expected a whole number from 1 to ${MAX_CONCURRENCY}, got "${values.concurrency}"`);
  }
  const tags = (values.tag ?? []).flatMap((t) => t.split(',')).map((t) => t.trim()).filter(Boolean);
  return { dir: positionals[0]!, edge, token, prefix, concurrency, cacheControl: values['cache-control'], tags };
}

interface LocalFile {
  absolute: string;
  /** Path under the folder, `/`-separated, for messages. */
  relative: string;
  /** The object's path on the edge (encoded, leading slash). */
  path: string;
}

async function walk(root: string, prefix: string): Promise<LocalFile[]> {
  const files: LocalFile[] = [];
  async function visit(dir: string): Promise<void> {
    const entries = await readdir(dir, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const entry of entries) {
      if (SKIPPED_NAMES.has(entry.name)) continue;
      const absolute = join(dir, entry.name);
      let isFile = entry.isFile();
      if (entry.isDirectory()) {
        await visit(absolute);
        continue;
      }
      // Symlinks to files are followed; symlinked directories are not (no cycles, no escaping the folder tree).
      if (entry.isSymbolicLink()) isFile = (await stat(absolute).catch(() => undefined))?.isFile() ?? false;
      if (!isFile) continue;
      const rel = relative(root, absolute).split(sep);
      files.push({ absolute, relative: rel.join('/'), path: `${prefix}/${rel.map(encodePathSegment).join('/')}` });
    }
  }
  await visit(root);
  return files;
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file), hash);
  return hash.digest('hex');
}

/** `code message` from an edge error body, or the status alone. */
async function describeFailure(statusCode: number, body: Dispatcher.ResponseData['body']): Promise<string> {
  const text = await body.text().catch(() => '');
  try {
    const json = JSON.parse(text) as { error?: string; message?: string };
    if (json.error) return `${statusCode} ${json.error}: ${json.message ?? ''}`.trim();
  } catch {
    // Not the node's JSON error (a proxy in between, or no body).
  }
  return `HTTP ${statusCode}${text ? `: ${text.slice(0, 200)}` : ''}`;
}

/** Pushed objects under the prefix that are still served: path → ETag. */
async function pushedEtags(options: PushOptions, dispatcher: Dispatcher): Promise<Map<string, string>> {
  const etags = new Map<string, string>();
  const now = Date.now();
  let cursor: string | null = null;
  do {
    const url = new URL('/_edge/objects', options.edge);
    url.searchParams.set('pushed', 'true');
    url.searchParams.set('limit', '1000');
    url.searchParams.set('prefix', `${options.prefix}/`);
    if (cursor) url.searchParams.set('cursor', cursor);
    const res = await request(url, { dispatcher, headers: { authorization: `Bearer ${options.token}` } });
    if (res.statusCode !== 200) throw new Error(await describeFailure(res.statusCode, res.body));
    const page = (await res.body.json()) as {
      objects: { path: string; etag: string | null; invalidated: boolean; expiresAt: string | null }[];
      next: string | null;
    };
    for (const object of page.objects) {
      const expires = object.expiresAt ? Date.parse(object.expiresAt) : 0;
      if (object.etag && !object.invalidated && expires > now) etags.set(object.path, object.etag);
    }
    cursor = page.next;
  } while (cursor);
  return etags;
}

type Outcome = { kind: 'uploaded'; size: number } | { kind: 'skipped' } | { kind: 'failed'; reason: string };

async function upload(file: LocalFile, size: number, options: PushOptions, dispatcher: Dispatcher): Promise<Outcome> {
  const url = new URL(`/_edge/push${file.path}`, options.edge);
  const headers: Record<string, string> = {
    authorization: `Bearer ${options.token}`,
    'content-type': contentTypeFor(file.absolute),
    'content-length': String(size),
  };
  if (options.cacheControl) headers['cache-control'] = options.cacheControl;
  if (options.tags.length > 0) headers['cache-tag'] = options.tags.join(', ');
  let lastFailure = '';
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    try {
      const res = await request(url, { method: 'PUT', dispatcher, headers, body: createReadStream(file.absolute) });
      if (res.statusCode === 201) {
        await res.body.dump();
        return { kind: 'uploaded', size };
      }
      lastFailure = await describeFailure(res.statusCode, res.body);
      if (![502, 503, 504].includes(res.statusCode)) break;
    } catch (error) {
      lastFailure = (error as Error).message;
    }
    if (attempt < ATTEMPTS) await new Promise((resolve) => setTimeout(resolve, 250 * attempt));
  }
  return { kind: 'failed', reason: lastFailure };
}

/**
 * Run `edge push` with its arguments (after `push`); resolves to the exit
 * code. Never calls `process.exit` itself, so it can be tested in-process.
 */
export async function runPush(argv: string[], io: PushIo = {}): Promise<number> {
  const log = io.log ?? ((line: string) => void process.stderr.write(line + '\n'));
  let options: PushOptions;
  try {
    const parsed = parsePushArgs(argv, io.env ?? process.env);
    if (parsed === 'help') {
      log(pushHelpText());
      return 0;
    }
    options = parsed;
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    log(`edge push: ${error.message}`);
    log('edge push: run with --help for usage.');
    return 2;
  }

  let files: LocalFile[];
  try {
    if (!(await stat(options.dir)).isDirectory()) throw new Error('not a directory');
    files = await walk(options.dir, options.prefix);
  } catch (error) {
    log(`edge push: cannot read ${options.dir}: ${(error as Error).message}`);
    return 2;
  }

  const started = Date.now();
  const dispatcher = new Agent({ connections: options.concurrency });
  try {
    let remote: Map<string, string>;
    try {
      remote = await pushedEtags(options, dispatcher);
    } catch (error) {
      log(`edge push: cannot list the objects pushed to ${options.edge.origin}: ${(error as Error).message}`);
      return 1;
    }

    const counts = { uploaded: 0, skipped: 0, failed: 0, bytes: 0 };
    let done = 0;
    let next = 0;
    const total = files.length;
    const shown = (file: LocalFile) => file.path.slice(1);

    const handle = async (file: LocalFile): Promise<Outcome> => {
      try {
        const { size } = await stat(file.absolute);
        const etag = `"${await sha256File(file.absolute)}"`;
        if (remote.get(file.path) === etag) return { kind: 'skipped' };
        return await upload(file, size, options, dispatcher);
      } catch (error) {
        return { kind: 'failed', reason: (error as Error).message };
      }
    };

    const worker = async () => {
      while (next < files.length) {
        const file = files[next++]!;
        const outcome = await handle(file);
        done++;
        const position = `[${done}/${total}]`;
        if (outcome.kind === 'uploaded') {
          counts.uploaded++;
          counts.bytes += outcome.size;
          log(`${position} uploaded ${shown(file)} (${formatSize(outcome.size)})`);
        } else if (outcome.kind === 'skipped') {
          counts.skipped++;
          log(`${position} skipped ${shown(file)} (unchanged)`);
        } else {
          counts.failed++;
          log(`${position} failed ${shown(file)}: ${outcome.reason}`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(options.concurrency, Math.max(files.length, 1)) }, worker));

    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    log(
      `edge push: uploaded ${counts.uploaded}, skipped ${counts.skipped}, failed ${counts.failed}` +
        ` (${formatSize(counts.bytes)} to ${options.edge.origin} in ${seconds}s)`,
    );
    return counts.failed > 0 ? 1 : 0;
  } finally {
    await dispatcher.close();
  }
}
