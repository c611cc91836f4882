/**
 * A file read at start-up and re-read when it changes: `fs.watch` on its
 * directory (editors that write a new file and rename it are seen too), a
 * `reload()` on demand (SIGHUP), and optionally a size/mtime check at most
 * once a second when the value is read, should a watch event be missed. A
 * file that turns unreadable or bad later keeps the previous value and
 * reports the problem. Shared by `--peers @file` and `--api-keys-file`.
 */
import { statSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';

export interface WatchedFile<T> {
  /** The value as last read; the same object until the file's content changes. */
  current(): T;
  /** Read the file again now; problems keep the previous value. */
  reload(): void;
  close(): void;
}

export interface WatchedFileOptions<T> {
  /** Read and validate the file; throws a message naming the flag when it cannot be used. */
  read(path: string): T;
  /** The problem line's end when a later read fails, e.g. "keeping the previous 3 peer(s)". */
  keeping(value: T): string;
  /** What is said when the directory cannot be watched (name the flag and the fallback). */
  unwatchable(path: string, error: Error): string;
  /** Also compare size and mtime at most once a second when `current()` is called. */
  checkOnRead?: boolean;
  onProblem(message: string): void;
}

/** Changes arrive as bursts of events (truncate, write, rename): read once they settle. */
const SETTLE_MS = 50;
/** The read-time check's interval, for a missed watch event. */
const STAT_EVERY_MS = 1000;

function fingerprint(path: string): string {
  try {
    const stat = statSync(path);
    return `${stat.size}:${stat.mtimeMs}:${stat.ino}`;
  } catch {
    return 'missing';
  }
}

/** Read `file` now (a problem throws: start-up stops) and keep it current. */
export function openWatchedFile<T>(file: string, options: WatchedFileOptions<T>): WatchedFile<T> {
  const path = resolve(file);
  let seen = fingerprint(path);
  let value = options.read(path);
  let text = JSON.stringify(value);
  let timer: NodeJS.Timeout | undefined;
  let checked = Date.now();

  const reload = () => {
    seen = fingerprint(path);
    try {
      const next = options.read(path);
      const nextText = JSON.stringify(next);
      // Same content, same object: users keep what they built from it.
      if (nextText !== text) {
        value = next;
        text = nextText;
      }
    } catch (error) {
      options.onProblem(`${(error as Error).message}; ${options.keeping(value)}`);
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
    options.onProblem(options.unwatchable(path, error as Error));
  }

  return {
    current: options.checkOnRead
      ? () => {
          const now = Date.now();
          if (now - checked >= STAT_EVERY_MS) {
            checked = now;
            if (fingerprint(path) !== seen) reload();
          }
          return value;
        }
      : () => value,
    reload,
    close() {
      clearTimeout(timer);
      watcher?.close();
    },
  };
}
