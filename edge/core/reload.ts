/**
 * Configuration reload (SIGHUP, `POST /_edge/reload`): which options a
 * running node can take on, and the one-line refusals for those it cannot.
 *
 * A reload re-reads everything (flags, environment, `--config` file) and
 * validates it with the same schema as at start-up. Options fixed for the
 * life of the process are listed here with the reason; when one of them
 * differs the whole reload is refused, naming each one, and the running
 * configuration stays (a half-applied configuration would be one nobody
 * wrote). Everything else is applied at once: the next request reads it.
 */
import { optionEnv, optionFlag, type EdgeOptions } from './options.js';

/** What a reload did, for the log line, `POST /_edge/reload` and the cluster primary. Plain JSON. */
export interface ReloadOutcome {
  /** The new configuration is in use (in a cluster: by every worker). */
  applied: boolean;
  /** Options whose value changed, as named in the config file (empty when nothing changed). */
  changed: string[];
  /** Why it was refused: one line per problem, as at start-up. Empty when applied. */
  problems: string[];
  /** In a cluster: the workers that answered. */
  workers?: number;
}

/** Why each option cannot change while the node runs (the end of its refusal line). */
export const RESTART_ONLY: Readonly<Partial<Record<keyof EdgeOptions, string>>> = {
  port: 'the listening socket is opened at start-up',
  host: 'the listening socket is opened at start-up',
  workers: 'the worker processes are forked at start-up',
  adminListen: 'the admin listener is opened at start-up',
  httpRedirectPort: 'the redirect listener is opened at start-up',
  tlsCert: 'the certificate files are re-read on reload, but their paths are fixed at start-up',
  tlsKey: 'the certificate files are re-read on reload, but their paths are fixed at start-up',
  tlsCa: 'the certificate files are re-read on reload, but their paths are fixed at start-up',
  dataDir: 'the cache is kept across a reload',
  diskSize: 'the cache is kept across a reload',
  memorySize: 'the cache is kept across a reload',
  memoryMaxObjectSize: 'the cache is kept across a reload',
  evictPushed: 'the cache is kept across a reload',
  apiKeysFile: 'the key file is re-read when it changes, but its path is fixed at start-up',
  adminToken: 'the admin API and fleet purges are set up with it at start-up',
  peerTimeout: 'the per-peer purge queues are set up at start-up',
  peerRetry: 'the per-peer purge queues are set up at start-up',
  peerConcurrency: 'the per-peer purge queues are set up at start-up',
  peerQueue: 'the per-peer purge queues are set up at start-up',
  peerOutbox: 'the per-peer purge queues are set up at start-up',
  rateLimitClients: 'the rate-limit counters are kept across a reload',
  collapseTimeout: 'cross-worker fill leases (--workers) are timed with it at start-up',
  name: 'the access log and metrics are labelled with it at start-up',
};

/** Options whose values never appear in a message (they are secrets). */
const SECRET: ReadonlySet<string> = new Set(['adminToken', 'urlSigningKey', 'imageSigningKey']);

const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

/** Names of the options whose value differs, in schema order. */
export function changedOptions(running: EdgeOptions, next: EdgeOptions): string[] {
  const names = new Set([...Object.keys(running), ...Object.keys(next)]) as Set<keyof EdgeOptions>;
  return [...names].filter((name) => !same(running[name], next[name]));
}

/**
 * One line per option that differs and cannot change without a restart,
 * e.g. `--port (EDGE_PORT): got 9090, running with 8080: the listening
 * socket is opened at start-up; restart the node to change it`.
 * Empty when the reload may go ahead.
 */
export function restartProblems(running: EdgeOptions, next: EdgeOptions): string[] {
  const problems: string[] = [];
  const line = (name: string, reason: string) => {
    const shown = (value: unknown) => (SECRET.has(name) ? '(hidden)' : value === undefined ? 'nothing' : JSON.stringify(value));
    const key = name as keyof EdgeOptions;
    problems.push(`${optionFlag(name)} (${optionEnv(name)}): got ${shown(next[key])}, running with ${shown(running[key])}: ${reason}; restart the node to change it`);
  };
  for (const name of changedOptions(running, next)) {
    const reason = RESTART_ONLY[name as keyof EdgeOptions];
    if (reason !== undefined) line(name, reason);
  }
  // A comma-separated list of peers may change; a peers file (watched from start-up) or turning fleet purges on or off may not.
  const isList = (peers: string | undefined) => peers !== undefined && !peers.startsWith('@');
  if (!same(running.peers, next.peers) && !(isList(running.peers) && isList(next.peers))) {
    line('peers', 'a list of peers may change on reload, but a peers file (re-read when it changes) and turning fleet purges on or off are set up at start-up');
  }
  return problems;
}
