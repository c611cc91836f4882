/**
 * `--peers @/path/to/file`: the fleet's other nodes, one `[shield=|edge=]url`
 * per line with `#` comments, read at start-up (a missing or bad file stops
 * the node) and re-read when it changes (`fs.watch` on its directory, so
 * editors that write a new file and rename it are seen too) or on `reload()`
 * (SIGHUP). A file that turns unreadable or bad later keeps the previous
 * list and reports the problem.
 */
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { parsePeers, type FleetPeer } from '../core/fleet-purge.js';

export interface PeersFile {
  /** The list as last read; the same array until the file changes. */
  current(): readonly FleetPeer[];
  /** Read the file again now (SIGHUP); problems keep the previous list. */
  reload(): void;
  close(): void;
}

/** A `--peers` file that cannot be used, with the flag named. */
export class PeersFileError extends Error {
  readonly code = 'EDGE_PEERS_FILE';
  constructor(message: string) {
    super(message);
    this.name = 'PeersFileError';
  }
}

function readPeers(path: string): readonly FleetPeer[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new PeersFileError(`--peers (EDGE_PEERS): cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const { peers, problems } = parsePeers(text, 'file');
  if (problems.length > 0) throw new PeersFileError(`--peers (EDGE_PEERS): ${path}: ${problems.join('; ')}`);
  return peers;
}

/** Changes arrive as bursts of events (truncate, write, rename): read once they settle. */
const SETTLE_MS = 50;

export function openPeersFile(file: string, onProblem: (message: string) => void): PeersFile {
  const path = resolve(file);
  let peers = readPeers(path);
  let text = JSON.stringify(peers);
  let timer: NodeJS.Timeout | undefined;

  const reload = () => {
    try {
      const next = readPeers(path);
      const nextText = JSON.stringify(next);
      // Same content, same array: the fan-out keeps its channels as they are.
      if (nextText !== text) {
        peers = next;
        text = nextText;
      }
    } catch (error) {
      onProblem(`${(error as Error).message}; keeping the previous ${peers.length} peer(s)`);
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
    onProblem(`--peers (EDGE_PEERS): cannot watch ${path} (${(error as Error).message}); send SIGHUP after editing it`);
  }

  return {
    current: () => peers,
    reload,
    close() {
      clearTimeout(timer);
      watcher?.close();
    },
  };
}
