/**
 * `--api-keys-file`: the API keys, read at start-up (a missing or bad file
 * stops the node naming the flag) and re-read when it changes: `fs.watch`
 * on its directory (editors that write a new file and rename it are seen
 * too), and, should an event be missed, a size/mtime check at most once a
 * second when keys are looked up. A file that turns bad later keeps the
 * previous keys and reports the problem. The core sees `current()` only
 * (`EdgeAppDeps.apiKeys`).
 */
import { readFileSync } from 'node:fs';
import { parseApiKeys, type ApiKey } from '../core/access/api-keys.js';
import { openWatchedFile, type WatchedFile } from './watched-file.js';

/** The keys as last read (the same array until the file changes), `reload()` and `close()`. */
export type ApiKeysFile = WatchedFile<readonly ApiKey[]>;

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

export function openApiKeysFile(file: string, onProblem: (message: string) => void): ApiKeysFile {
  return openWatchedFile(file, {
    read: readKeys,
    keeping: (keys) => `keeping the previous ${keys.length} key(s)`,
    unwatchable: (path, error) => `--api-keys-file (EDGE_API_KEYS_FILE): cannot watch ${path} (${error.message}); changes are seen within a second of a lookup`,
    checkOnRead: true,
    onProblem,
  });
}
