/**
 * `--peers @/path/to/file`: the fleet's other nodes, one `[shield=|edge=]url`
 * per line with `#` comments, read at start-up (a missing or bad file stops
 * the node) and re-read when it changes (`fs.watch` on its directory, so
 * editors that write a new file and rename it are seen too) or on `reload()`
 * (SIGHUP). A file that turns unreadable or bad later keeps the previous
 * list and reports the problem.
 */
import { readFileSync } from 'node:fs';
import { parsePeers, type FleetPeer } from '../core/fleet-purge.js';
import { openWatchedFile, type WatchedFile } from './watched-file.js';

/** The list as last read (the same array until the file changes), `reload()` (SIGHUP) and `close()`. */
export type PeersFile = WatchedFile<readonly FleetPeer[]>;

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

export function openPeersFile(file: string, onProblem: (message: string) => void): PeersFile {
  return openWatchedFile(file, {
    read: readPeers,
    keeping: (peers) => `keeping the previous ${peers.length} peer(s)`,
    unwatchable: (path, error) => `--peers (EDGE_PEERS): cannot watch ${path} (${error.message}); send SIGHUP after editing it`,
    onProblem,
  });
}
