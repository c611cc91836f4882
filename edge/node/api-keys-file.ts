/**
 * `--api-keys-file`: the API keys, read at start-up (a missing or bad file
 * stops the node naming the flag) and re-read when it changes: `fs.watch`
 * on its directory (editors that write a new file and rename it are seen
 * too), and, should an event be missed, a size/mtime check at most once a
 * second when keys are looked up. A file that turns bad later keeps the
 * previous keys and reports the problem. The core sees `current()` only
 * (`EdgeAppDeps.apiKeys`).
 */
import { readFileSync, statSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { parseApiKeys, type ApiKey } from '../core/access/api-keys.js';

export interface ApiKeysFile {
  /** The keys as last read; the same array until the file changes. */
  current(): readonly ApiKey[];
  /** Read the file again now; problems keep the previous keys. */
  reload(): void;
  close(): void;
}

/** An `--api-keys-file` that cannot be used, with the flag named. */
export class ApiKeysFileError extends Error {
  readonly code = 'EDGE_API_KEYS_FILE';
  constructor(message: string) {
    super(message);
    this.name = 'ApiKeysFileError';
  }
}

function readKeys(path: string): ApiKey[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ApiKeysFileError(`--api-keys-file (EDGE_API_KEYS_FILE): cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  try {
    return parseApiKeys(text);
  } catch (error) {
    throw new ApiKeysFileError(`--api-keys-file (EDGE_API_KEYS_FILE): ${path}: ${(error as Error).message}`);
  }
}

/** Changes arrive as bursts of events (truncate, write, rename): read once they settle. */
const SETTLE_MS = 50;
/** The fallback check's interval, for a missed watch event. */
const STAT_EVERY_MS = 1000;

function fingerprint(path: string): string {
  try {
    const stat = statSync(path);
    return `${stat.size}:${stat.mtimeMs}:${stat.ino}`;
  } catch {
    return 'missing';
  }
}

export function openApiKeysFile(file: string, onProblem: (message: string) => void): ApiKeysFile {
  const path = resolve(file);
  let seen = fingerprint(path);
  let keys: readonly ApiKey[] = readKeys(path);
  let text = JSON.stringify(keys);
  let timer: NodeJS.Timeout | undefined;
  let checked = Date.now();

  const reload = () => {
    seen = fingerprint(path);
    try {
      const next = readKeys(path);
      const nextText = JSON.stringify(next);
      if (nextText !== text) {
        keys = next;
        text = nextText;
      }
    } catch (error) {
      onProblem(`${(error as Error).message}; keeping the previous ${keys.length} key(s)`);
    }
  };

  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dirname(path), { persistent: false }, (_event, name) => {
      if (name !== null && name !== basename(path)) return;
      clearTimeout(timer);
      timer = setTimeout(reload, SETTLE_MS);
      timer.unref();
    });
    watcher.on('error', () => {});
  } catch (error) {
    onProblem(`--api-keys-file (EDGE_API_KEYS_FILE): cannot watch ${path} (${(error as Error).message}); changes are seen within a second of a lookup`);
  }

  return {
    current: () => {
      const now = Date.now();
      if (now - checked >= STAT_EVERY_MS) {
        checked = now;
        if (fingerprint(path) !== seen) reload();
      }
      return keys;
    },
    reload,
    close() {
      clearTimeout(timer);
      watcher?.close();
    },
  };
}
