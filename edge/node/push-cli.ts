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
 * A run first makes a plan (upload, update, delete, skip) and then carries
 * it out; `--dry-run` prints the plan only. An unchanged file whose metadata
 * (content type, tags, `--cache-control`) differs is uploaded again, as the
 * push API has no metadata-only update. `--delete` removes pushed objects
 * under the prefix that are no longer in the folder, after every upload
 * succeeded.
 *
 * Uploads stream each file (never read whole into memory), a few at a time,
 * with one line per file on stderr (or, on a terminal, one progress line
 * with bytes and ETA) and a summary at the end.
 * Exit code: 0 when every step succeeded, 1 when any failed,
 * 2 for bad arguments.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { extname, join, relative, sep } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { contentType as mimeContentType } from 'mime-types';
import { Agent, request, type Dispatcher } from 'undici';

/** Where output goes and where the token may come from (tests inject both). */
export interface PushIo {
  /** Receives each progress and summary line, without the newline. @default process.stderr */
  log?: (line: string) => void;
  /** Environment read for EDGE_ADMIN_TOKEN. @default process.env */
  env?: NodeJS.ProcessEnv;
  /**
   * Show one progress line rewritten in place (bytes and ETA) instead of a
   * line per file. @default process.stderr.isTTY
   */
  tty?: boolean;
  /** Receives the in-place progress line's raw text (with `\r`). @default process.stderr.write */
  write?: (text: string) => void;
  /** The clock for rates and ETA, ms. @default Date.now */
  now?: () => number;
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
  /** Delete pushed objects under the prefix that are no longer in the folder. */
  delete: boolean;
  /** Print the plan, change nothing. */
  dryRun: boolean;
}

/** Version-control and desktop litter: never published (a pushed `.git/` would expose the source). */
const SKIPPED_NAMES = new Set(['.git', '.hg', '.svn', '.DS_Store', 'Thumbs.db']);

const MAX_CONCURRENCY = 64;
/** Attempts per request for failures worth retrying (network errors, 502/503/504). */
const ATTEMPTS = 3;

/**
 * Content type from the file's extension, with the charset for text types
 * (`mime-types`, the mime-db table: HLS/DASH playlists and segments, JPEG XL,
 * HEIC, feeds, JSON-LD, YAML and the rest). `.ts` is an MPEG transport
 * stream segment there, which is what a pushed folder holds (TypeScript
 * sources are not deployed). Anything unknown is application/octet-stream.
 */
export function contentTypeFor(file: string): string {
  const ext = extname(file).toLowerCase();
  return (ext && mimeContentType(ext)) || 'application/octet-stream';
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
    '  --delete                 Delete pushed objects under the prefix that are no longer in <dir>',
    '  --dry-run                Print the plan (upload, update, delete, skip) and change nothing',
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
        delete: { type: 'boolean' },
        'dry-run': { type: 'boolean' },
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
  return { dir: positionals[0]!, edge, token, prefix, concurrency, cacheControl: values['cache-control'], tags, delete: values.delete ?? false, dryRun: values['dry-run'] ?? false };
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

/** A pushed object as `GET /_edge/objects?pushed=true` shows it. */
interface RemoteObject {
  etag: string | null;
  contentType: string | null;
  tags: string[];
  /** Still served: not invalidated, not expired. */
  live: boolean;
}

/** Pushed objects under the prefix: path → what the node holds (one entry per path; the identity copy wins over coded variants). */
async function pushedObjects(options: PushOptions, dispatcher: Dispatcher, now: number): Promise<Map<string, RemoteObject>> {
  const objects = new Map<string, RemoteObject>();
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
      objects: { path: string; variant?: unknown; etag: string | null; contentType: string | null; tags?: string[]; invalidated: boolean; expiresAt: string | null }[];
      next: string | null;
    };
    for (const object of page.objects) {
      const expires = object.expiresAt ? Date.parse(object.expiresAt) : 0;
      const live = Boolean(object.etag) && !object.invalidated && expires > now;
      if (objects.has(object.path) && object.variant) continue;
      objects.set(object.path, { etag: object.etag, contentType: object.contentType, tags: object.tags ?? [], live });
    }
    cursor = page.next;
  } while (cursor);
  return objects;
}

/** One step of a push, decided before anything changes (so `--dry-run` prints exactly what a run would do). */
type Action =
  | { kind: 'upload'; file: LocalFile; size: number; reason: 'new' | 'changed' }
  /** Same bytes, other metadata: the push API has no metadata-only update, so the file is uploaded again. */
  | { kind: 'update'; file: LocalFile; size: number; changed: string[] }
  | { kind: 'skip'; file: LocalFile }
  | { kind: 'delete'; path: string }
  | { kind: 'unreadable'; file: LocalFile; reason: string };

const normaliseType = (value: string | null) => (value ?? '').toLowerCase().replace(/\s+/g, '');
const sameTags = (a: readonly string[], b: readonly string[]) => {
  const left = [...new Set(a)].sort();
  const right = [...new Set(b)].sort();
  return left.length === right.length && left.every((tag, i) => tag === right[i]);
};

/** What differs between the pushed copy's metadata and what this run would store; [] when nothing does. */
async function metadataChanges(file: LocalFile, remote: RemoteObject, options: PushOptions, dispatcher: Dispatcher): Promise<string[]> {
  const changed: string[] = [];
  if (normaliseType(remote.contentType) !== normaliseType(contentTypeFor(file.absolute))) changed.push('content-type');
  if (!sameTags(remote.tags, options.tags)) changed.push('tags');
  // The listing does not carry Cache-Control; the pushed copy's answer does
  // (a HEAD on a pushed path is answered from the node, never the origin).
  // Without --cache-control the node's default applies and is not compared.
  if (options.cacheControl !== undefined) {
    const res = await request(new URL(file.path, options.edge), { method: 'HEAD', dispatcher });
    await res.body.dump();
    const stored = res.headers['cache-control'];
    if (res.statusCode !== 200 || (Array.isArray(stored) ? stored.join(', ') : stored ?? '') !== options.cacheControl) changed.push('cache-control');
  }
  return changed;
}

async function plan(files: LocalFile[], remote: Map<string, RemoteObject>, options: PushOptions, dispatcher: Dispatcher): Promise<Action[]> {
  const actions: Action[] = new Array(files.length);
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const index = next++;
      const file = files[index]!;
      try {
        const { size } = await stat(file.absolute);
        const etag = `"${await sha256File(file.absolute)}"`;
        const pushed = remote.get(file.path);
        if (!pushed || !pushed.live || pushed.etag !== etag) {
          actions[index] = { kind: 'upload', file, size, reason: pushed?.live ? 'changed' : 'new' };
          continue;
        }
        const changed = await metadataChanges(file, pushed, options, dispatcher);
        actions[index] = changed.length > 0 ? { kind: 'update', file, size, changed } : { kind: 'skip', file };
      } catch (error) {
        actions[index] = { kind: 'unreadable', file, reason: (error as Error).message };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency, Math.max(files.length, 1)) }, worker));
  if (options.delete) {
    const local = new Set(files.map((file) => file.path));
    for (const path of [...remote.keys()].sort()) if (!local.has(path)) actions.push({ kind: 'delete', path });
  }
  return actions;
}

type Outcome =
  | { kind: 'uploaded' | 'updated'; size: number }
  | { kind: 'skipped' | 'deleted' }
  | { kind: 'failed'; reason: string };

async function upload(file: LocalFile, size: number, options: PushOptions, dispatcher: Dispatcher): Promise<Outcome> {
  const url = new URL(`/_edge/push${file.path}`, options.edge);
  const headers: Record<string, string> = {
    authorization: `Bearer ${options.token}`,
    'content-type': contentTypeFor(file.absolute),
    'content-length': String(size),
  };
  if (options.cacheControl) headers['cache-control'] = options.cacheControl;
  if (options.tags.length > 0) headers['cache-tag'] = options.tags.join(', ');
  return withRetries(async () => {
    const res = await request(url, { method: 'PUT', dispatcher, headers, body: createReadStream(file.absolute) });
    if (res.statusCode === 201) {
      await res.body.dump();
      return { kind: 'uploaded', size };
    }
    return { retry: [502, 503, 504].includes(res.statusCode), reason: await describeFailure(res.statusCode, res.body) };
  });
}

async function remove(path: string, options: PushOptions, dispatcher: Dispatcher): Promise<Outcome> {
  const url = new URL(`/_edge/push${path}`, options.edge);
  return withRetries(async () => {
    const res = await request(url, { method: 'DELETE', dispatcher, headers: { authorization: `Bearer ${options.token}` } });
    // 404: gone already (another deploy, a purge), which is what was wanted.
    if (res.statusCode === 204 || res.statusCode === 200 || res.statusCode === 404) {
      await res.body.dump();
      return { kind: 'deleted' };
    }
    return { retry: [502, 503, 504].includes(res.statusCode), reason: await describeFailure(res.statusCode, res.body) };
  });
}

/** Attempts for failures worth retrying (network errors, 502/503/504), with a short back-off. */
async function withRetries(attempt: () => Promise<Outcome | { retry: boolean; reason: string }>): Promise<Outcome> {
  let lastFailure = '';
  for (let n = 1; n <= ATTEMPTS; n++) {
    try {
      const result = await attempt();
      if ('kind' in result) return result;
      lastFailure = result.reason;
      if (!result.retry) break;
    } catch (error) {
      lastFailure = (error as Error).message;
    }
    if (n < ATTEMPTS) await new Promise((resolve) => setTimeout(resolve, 250 * n));
  }
  return { kind: 'failed', reason: lastFailure };
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

const shown = (path: string) => path.slice(1);
const actionPath = (action: Action) => shown(action.kind === 'delete' ? action.path : action.file.path);

/** The plan as `--dry-run` prints it: one line per step. */
function describeAction(action: Action): string {
  switch (action.kind) {
    case 'upload':
      return `upload ${actionPath(action)} (${formatSize(action.size)}, ${action.reason})`;
    case 'update':
      return `update ${actionPath(action)} (${action.changed.join(', ')} changed; re-uploads ${formatSize(action.size)})`;
    case 'skip':
      return `skip ${actionPath(action)} (unchanged)`;
    case 'delete':
      return `delete ${actionPath(action)} (not in the folder)`;
    case 'unreadable':
      return `fail ${actionPath(action)}: ${action.reason}`;
  }
}

/**
 * Run `edge push` with its arguments (after `push`); resolves to the exit
 * code. Never calls `process.exit` itself, so it can be tested in-process.
 */
export async function runPush(argv: string[], io: PushIo = {}): Promise<number> {
  const log = io.log ?? ((line: string) => void process.stderr.write(line + '\n'));
  const write = io.write ?? ((text: string) => void process.stderr.write(text));
  const tty = io.tty ?? (io.log === undefined && process.stderr.isTTY === true);
  const clock = io.now ?? Date.now;
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

  const started = clock();
  const dispatcher = new Agent({ connections: options.concurrency });
  try {
    let remote: Map<string, RemoteObject>;
    try {
      remote = await pushedObjects(options, dispatcher, Date.now());
    } catch (error) {
      log(`edge push: cannot list the objects pushed to ${options.edge.origin}: ${(error as Error).message}`);
      return 1;
    }
    const actions = await plan(files, remote, options, dispatcher);
    const count = (kind: Action['kind']) => actions.filter((a) => a.kind === kind).length;
    const bytesPlanned = actions.reduce((sum, a) => sum + (a.kind === 'upload' || a.kind === 'update' ? a.size : 0), 0);

    if (options.dryRun) {
      for (const action of actions) log(`would ${describeAction(action)}`);
      log(
        `edge push: dry run, nothing changed: would upload ${count('upload')}, update ${count('update')}, delete ${count('delete')},` +
          ` skip ${count('skip')} (${formatSize(bytesPlanned)} to ${options.edge.origin})`,
      );
      return count('unreadable') > 0 ? 1 : 0;
    }

    const counts = { uploaded: 0, updated: 0, deleted: 0, skipped: 0, failed: 0, bytes: 0 };
    let done = 0;
    const total = actions.length;
    let lastDraw = -Infinity;
    const draw = (force = false) => {
      if (!tty) return;
      const now = clock();
      if (!force && now - lastDraw < 100) return;
      lastDraw = now;
      const elapsed = (now - started) / 1000;
      const rate = elapsed > 0 ? counts.bytes / elapsed : 0;
      const eta = rate > 0 ? formatDuration((bytesPlanned - counts.bytes) / rate) : '?';
      write(`\r\x1b[K[${done}/${total}] ${formatSize(counts.bytes)} of ${formatSize(bytesPlanned)}, ${formatSize(rate)}/s, ETA ${eta}`);
    };
    /** A line that stays: on a TTY, printed over the progress line, which is then drawn again below it. */
    const say = (line: string, always = false) => {
      if (!tty) return log(line);
      if (!always) return;
      write('\r\x1b[K');
      log(line);
      draw(true);
    };
    const record = (action: Action, outcome: Outcome) => {
      done++;
      const position = `[${done}/${total}]`;
      const path = actionPath(action);
      switch (outcome.kind) {
        case 'uploaded':
          counts.uploaded++;
          counts.bytes += outcome.size;
          say(`${position} uploaded ${path} (${formatSize(outcome.size)})`);
          break;
        case 'updated':
          counts.updated++;
          counts.bytes += outcome.size;
          say(`${position} updated ${path} (${action.kind === 'update' ? action.changed.join(', ') : 'metadata'} changed; re-uploaded ${formatSize(outcome.size)})`);
          break;
        case 'skipped':
          counts.skipped++;
          say(`${position} skipped ${path} (unchanged)`);
          break;
        case 'deleted':
          counts.deleted++;
          say(`${position} deleted ${path}`);
          break;
        case 'failed':
          counts.failed++;
          say(`${position} failed ${path}: ${outcome.reason}`, true);
          break;
      }
      draw();
    };

    const run = async (action: Action): Promise<Outcome> => {
      switch (action.kind) {
        case 'skip':
          return { kind: 'skipped' };
        case 'unreadable':
          return { kind: 'failed', reason: action.reason };
        case 'upload':
          return upload(action.file, action.size, options, dispatcher);
        case 'update': {
          const outcome = await upload(action.file, action.size, options, dispatcher);
          return outcome.kind === 'uploaded' ? { kind: 'updated', size: outcome.size } : outcome;
        }
        case 'delete':
          return remove(action.path, options, dispatcher);
      }
    };
    const pool = async (list: Action[]) => {
      let next = 0;
      const worker = async () => {
        while (next < list.length) {
          const action = list[next++]!;
          record(action, await run(action));
        }
      };
      await Promise.all(Array.from({ length: Math.min(options.concurrency, Math.max(list.length, 1)) }, worker));
    };

    draw(true);
    await pool(actions.filter((a) => a.kind !== 'delete'));
    // Deletions last, and only after a complete upload: a deploy that failed
    // half-way keeps the old files the pages still being served link to.
    const deletions = actions.filter((a) => a.kind === 'delete');
    if (deletions.length > 0 && counts.failed > 0) {
      say(`edge push: ${deletions.length} deletion${deletions.length === 1 ? '' : 's'} not done because an upload failed`, true);
    } else {
      await pool(deletions);
    }
    if (tty) {
      draw(true);
      write('\r\x1b[K');
    }

    const seconds = ((clock() - started) / 1000).toFixed(1);
    log(
      `edge push: uploaded ${counts.uploaded}, updated ${counts.updated}, deleted ${counts.deleted}, skipped ${counts.skipped}, failed ${counts.failed}` +
        ` (${formatSize(counts.bytes)} to ${options.edge.origin} in ${seconds}s)`,
    );
    return counts.failed > 0 ? 1 : 0;
  } finally {
    await dispatcher.close();
  }
}
