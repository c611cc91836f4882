/**
 * The Node side of a configuration reload (`EdgeServer.reload()`, README
 * "Configuration reload"): which runtime pieces a new configuration needs
 * rebuilt, the one-line problems of a refused reload, and its log lines.
 * What may change at all is decided in `edge/core/reload.ts`.
 */
import { EdgeOptionsError, optionEnv, optionFlag, type EdgeOptions } from '../core/options.js';
import type { ReloadOutcome } from '../core/reload.js';
import { SharpImageTransformer } from './sharp-transformer.js';

/**
 * Options the origin client is built from. A reload that changes none of
 * them keeps the client, its keep-alive connections and its members'
 * health; one that does builds a new client and closes the old one once
 * the requests on it are done.
 */
export const ORIGIN_OPTIONS: readonly (keyof EdgeOptions)[] = ['origin', 'origins', 'shield', 'connectTimeout', 'originTimeout', 'bodyTimeout', 'originConnections', 'originCa'];

/** Options the image transformer (its queue and limits) is built from. */
export const TRANSFORMER_OPTIONS: readonly (keyof EdgeOptions)[] = ['images', 'imageMaxPixels', 'transformTimeout', 'transformQueue', 'avifEffort', 'transformConcurrency'];

/** Did any of `names` change between the two configurations? */
export function changedAny(changed: readonly string[], names: readonly (keyof EdgeOptions)[]): boolean {
  return names.some((name) => changed.includes(name));
}

/** sharp behind its queue and limits, or undefined with `--images false`. */
export function createImageTransformer(options: EdgeOptions): SharpImageTransformer | undefined {
  if (!options.images) return undefined;
  return new SharpImageTransformer({
    maxInputPixels: options.imageMaxPixels,
    timeoutMs: options.transformTimeout,
    maxQueue: options.transformQueue,
    avifEffort: options.avifEffort,
    ...(options.transformConcurrency > 0 ? { concurrency: options.transformConcurrency } : {}),
  });
}

/**
 * The one-line problems of a configuration that cannot be used, as the
 * start-up prints them: the schema's lines, a certificate file naming its
 * option, or the error's message.
 */
export function reloadProblems(error: unknown): string[] {
  if (error instanceof EdgeOptionsError) return error.problems;
  const { code, option, path, reason } = error as { code?: unknown; option?: unknown; path?: unknown; reason?: unknown };
  if (code === 'EDGE_TLS_CERTIFICATE' && typeof option === 'string') return [`${optionFlag(option)} (${optionEnv(option)}): got ${JSON.stringify(path)}: ${String(reason)}`];
  return [(error as Error).message];
}

/** The log lines of one reload (without the program's prefix). */
export function describeReload(outcome: ReloadOutcome, trigger: string): string[] {
  const workers = outcome.workers === undefined ? '' : ` by ${outcome.workers} worker${outcome.workers === 1 ? '' : 's'}`;
  if (outcome.applied) {
    const what = outcome.changed.length === 0 ? 'nothing changed' : `changed ${outcome.changed.join(', ')}`;
    return [`configuration reloaded (${trigger})${workers}: ${what}`];
  }
  return [...outcome.problems, `configuration NOT reloaded (${trigger}); still running the previous one`];
}
