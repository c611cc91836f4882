/**
 * Starting a node from the command line, shared by `npx edge` and
 * `npx origin-shield` (a shield is the same node with other defaults).
 * Options come from flags, then
 * EDGE_* environment variables, then a JSON config file (`--config`), then
 * defaults; everything is validated once, and a bad value stops the
 * process with one line per problem. Without `--origin` (and without
 * `origins` in the config file) the embedded demo origin is started
 * in-process so `npm start` works on a fresh clone.
 */
import cluster from 'node:cluster';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { edgeOptionsSchema, EdgeOptionsError, optionEnv, optionFlag, resolveEdgeOptions, type EdgeOptions } from '../core/options.js';
import { restartProblems } from '../core/reload.js';
import { joinCluster, runPrimary } from './cluster.js';
import { startDemoOrigin } from './demo-origin.js';
import { prepareDataDir } from './lmdb-store.js';
import { startEdgeServer } from './server.js';
import { isExpired, loadTlsCertificate } from './tls.js';

const OPTION_NAMES = Object.keys(edgeOptionsSchema.shape) as (keyof EdgeOptions)[];

/** Per-program defaults applied under flags, environment and config file. */
export interface NodeProgram {
  name: string;
  defaults: Record<string, unknown>;
  /** What the program is, for --help. */
  summary: string;
  /** Start the embedded demo origin when no origin is given (edge only). */
  demoOrigin: boolean;
}

/** `--data-dir (EDGE_DATA_DIR): got "...": <reason>` for a `DataDirError` (matched on its code), else undefined. */
function dataDirProblem(error: unknown): string | undefined {
  const { code, path, reason } = error as { code?: unknown; path?: unknown; reason?: unknown };
  if (code !== 'EDGE_DATA_DIR') return undefined;
  return `${optionFlag('dataDir')} (${optionEnv('dataDir')}): got ${JSON.stringify(path)}: ${String(reason)}`;
}

/** `--tls-key (EDGE_TLS_KEY): got "...": <reason>` for a `TlsCertificateError` (matched on its code), else undefined. */
function tlsProblem(error: unknown): string | undefined {
  const { code, option, path, reason } = error as { code?: unknown; option?: unknown; path?: unknown; reason?: unknown };
  if (code !== 'EDGE_TLS_CERTIFICATE' || typeof option !== 'string') return undefined;
  return `${optionFlag(option)} (${optionEnv(option)}): got ${JSON.stringify(path)}: ${String(reason)}`;
}

/** What the node forwards to, for the start-up line (group names only: member URLs may carry credentials). */
function upstreamLabel(options: EdgeOptions): string {
  if (!options.origins) return options.origin ?? '';
  const groups = options.origins.groups.map(({ name, members }) => `${name} (${members.length} member${members.length === 1 ? '' : 's'})`);
  return `origin groups ${groups.join(', ')} from the config file`;
}

export function helpText(program: NodeProgram): string {
  const rows = OPTION_NAMES.map((name) => {
    let description = edgeOptionsSchema.shape[name].description ?? '';
    if (name in program.defaults) description = description.replace(/\(default [^)]*\)$/, `(default for ${program.name}: ${String(program.defaults[name])})`);
    return `  ${optionFlag(name).padEnd(30)} ${optionEnv(name).padEnd(30)} ${description}`;
  });
  return [
    `Usage: npx ${program.name} --origin <url> [options]`,
    '',
    program.summary,
    'Every option can also be set by its environment variable or in a JSON file given with --config.',
    'Precedence: flag, then environment, then config file, then default.',
    'SIGHUP (or POST /_edge/reload with the admin token) reads them again: the new configuration applies without a restart, or is refused naming what is wrong (README "Configuration reload").',
    '',
    `  ${'flag'.padEnd(30)} ${'environment'.padEnd(30)} meaning`,
    ...rows,
    `  ${'--config <file>'.padEnd(30)} ${'EDGE_CONFIG'.padEnd(30)} JSON file with any of the options above (camelCase keys).`,
    `  ${'--help'.padEnd(30)} ${''.padEnd(30)} Show this text.`,
  ].join('\n');
}

/** Merge flags, environment and config file into one raw input object. */
export function collectOptionInput(argv: string[], env: NodeJS.ProcessEnv, defaults: Record<string, unknown> = {}): Record<string, unknown> {
  const flagSpec: Record<string, { type: 'string' | 'boolean' }> = { config: { type: 'string' }, help: { type: 'boolean' } };
  for (const name of OPTION_NAMES) flagSpec[optionFlag(name).slice(2)] = { type: 'string' };
  const { values } = parseArgs({ args: argv, options: flagSpec, allowPositionals: false, strict: true });

  const input: Record<string, unknown> = { ...defaults };
  const configPath = (values.config as string | undefined) ?? env.EDGE_CONFIG;
  if (configPath) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(configPath, 'utf8'));
    } catch (error) {
      throw new EdgeOptionsError([`--config (EDGE_CONFIG): cannot read ${configPath}: ${(error as Error).message}`]);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new EdgeOptionsError([`--config (EDGE_CONFIG): ${configPath} must hold a JSON object of options`]);
    }
    Object.assign(input, parsed);
  }
  for (const name of OPTION_NAMES) {
    const fromEnv = env[optionEnv(name)];
    if (fromEnv !== undefined && fromEnv !== '') input[name] = fromEnv;
    const fromFlag = values[optionFlag(name).slice(2)];
    if (fromFlag !== undefined) input[name] = fromFlag;
  }
  return input;
}

/**
 * The options from flags, environment and config file, read again for a
 * reload (SIGHUP, `POST /_edge/reload`), with the embedded demo origin
 * standing in for a missing origin as at start-up. Throws
 * `EdgeOptionsError` with the start-up's lines.
 */
function rereadOptions(program: NodeProgram, argv: string[], demoUrl: string | undefined): EdgeOptions {
  const options = resolveEdgeOptions(collectOptionInput(argv, process.env, program.defaults));
  if (options.origin || options.origins) return options;
  if (demoUrl !== undefined) return { ...options, origin: demoUrl };
  throw new EdgeOptionsError(['--origin (EDGE_ORIGIN) is required, or origins in a --config file']);
}

export async function runNode(program: NodeProgram, argv: string[]): Promise<void> {
  const tag = program.name;
  // sharp runs on libuv's thread pool (4 threads by default): leave room for
  // one transform per core next to file-system work. Must be set before the
  // pool's first use.
  process.env.UV_THREADPOOL_SIZE ??= String(Math.max(8, availableParallelism() + 4));
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(helpText(program));
    return;
  }
  let options: EdgeOptions;
  try {
    options = resolveEdgeOptions(collectOptionInput(argv, process.env, program.defaults));
  } catch (error) {
    if (error instanceof EdgeOptionsError) {
      for (const problem of error.problems) console.error(`${tag}: ${problem}`);
    } else {
      console.error(`${tag}: ${(error as Error).message}`);
    }
    console.error(`${tag}: run with --help to see every option.`);
    process.exit(2);
  }

  // Checked before anything starts: an unusable directory is one line and exit 2, never a hang.
  try {
    prepareDataDir(options.dataDir);
  } catch (error) {
    const problem = dataDirProblem(error);
    if (problem === undefined) throw error;
    console.error(`${tag}: ${problem}`);
    process.exit(2);
  }

  if (options.peers !== undefined && options.adminToken === undefined) {
    console.error(`${tag}: ${optionFlag('peers')} (${optionEnv('peers')}): fleet purges go through the admin API: set --admin-token (EDGE_ADMIN_TOKEN), the same on every node`);
    process.exit(2);
  }
  // Certificates checked before anything starts, like the data dir: one line naming the option, exit 2.
  if (options.tlsCert !== undefined && options.tlsKey !== undefined) {
    try {
      const certificate = loadTlsCertificate({ cert: options.tlsCert, key: options.tlsKey, ca: options.tlsCa });
      if (isExpired(certificate)) {
        console.error(`${tag}: warning: the TLS certificate (${options.tlsCert}, serial ${certificate.serialNumber}) expired on ${certificate.validTo.toISOString()}; clients will refuse it`);
      }
    } catch (error) {
      const problem = tlsProblem(error);
      if (problem === undefined) throw error;
      console.error(`${tag}: ${problem}`);
      process.exit(2);
    }
  }

  if (options.adminToken !== undefined && options.adminToken.length < 16) {
    console.error(`${tag}: warning: the admin token is ${options.adminToken.length} characters; use 32+ random characters (e.g. openssl rand -hex 32) outside a test setup`);
  }
  let demo: Awaited<ReturnType<typeof startDemoOrigin>> | undefined;
  // Origin groups from the config file are an upstream too.
  if (!options.origin && !options.origins) {
    if (!program.demoOrigin) {
      console.error(`${tag}: --origin (EDGE_ORIGIN) is required, or origins in a --config file`);
      process.exit(2);
    }
    demo = await startDemoOrigin();
    options = { ...options, origin: demo.url };
  }
  const workers = options.workers === 0 ? availableParallelism() : options.workers;
  if (workers > 1 || cluster.isWorker) {
    await runClustered(program, argv, options, workers, demo);
    return;
  }
  const server = await startEdgeServer(options, { readOptions: () => rereadOptions(program, argv, demo?.url) });
  // SIGHUP reloads the configuration, and re-reads the certificate and peers files (README "Configuration reload").
  // Listened for before the start-up line: a supervisor may reload as soon as it sees the node listen.
  process.on('SIGHUP', () => void server.reload('SIGHUP'));
  const listenHost = options.host === '0.0.0.0' ? 'localhost' : options.host;
  const where = `${server.tls ? 'https' : 'http'}://${listenHost}:${server.port}`;
  const protocols = server.tls ? ' (HTTP/2 and HTTP/1.1)' : '';
  console.error(`${tag}: listening on ${where}${protocols} in front of ${upstreamLabel(options)}${demo ? ' (embedded demo origin)' : ''}`);
  if (server.redirect) console.error(`${tag}: redirecting http://${listenHost}:${server.redirect.port} to https (308), /_edge/health answered there too`);
  if (server.adminUrl) console.error(`${tag}: /_edge/ (admin API, metrics, origins) on ${server.adminUrl}; the public port answers content and /_edge/health only`);
  if (demo) console.error(`${tag}: try  curl -i ${server.tls ? '-k ' : ''}${where}/data/products.json  (twice: MISS, then HIT)`);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.error(`${tag}: ${signal}, closing`);
    await server.close();
    await demo?.close();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
}

/** Entry-point wrapper: run, and turn a start-up failure into one line and exit 1 (2 for an unusable --data-dir). */
export function main(program: NodeProgram): void {
  runNode(program, process.argv.slice(2)).catch((error) => {
    const problem = dataDirProblem(error) ?? tlsProblem(error);
    console.error(`${program.name}: ${problem ?? `failed to start: ${(error as Error).message}`}`);
    process.exit(problem === undefined ? 1 : 2);
  });
}

/**
 * `--workers N` above 1: the primary forks the workers (see `cluster.ts`);
 * a worker serves like a single node, with its store, metrics and health
 * joined to the others', and exits when the primary goes.
 */
async function runClustered(
  program: NodeProgram,
  argv: string[],
  options: EdgeOptions,
  workers: number,
  demo: { url: string; close(): Promise<void> } | undefined,
): Promise<void> {
  const tag = program.name;
  if (cluster.isPrimary) {
    await runPrimary({
      name: tag,
      workers,
      options,
      env: demo ? { EDGE_ORIGIN: demo.url } : {},
      onStopped: async () => demo?.close(),
      onReady: (ready) => {
        const listenHost = options.host === '0.0.0.0' ? 'localhost' : options.host;
        const where = `${ready.tls ? 'https' : 'http'}://${listenHost}:${ready.port}`;
        const protocols = ready.tls ? ' (HTTP/2 and HTTP/1.1)' : '';
        console.error(`${tag}: listening on ${where}${protocols} in front of ${upstreamLabel(options)}${demo ? ' (embedded demo origin)' : ''}, ${workers} workers`);
        if (ready.redirectPort !== undefined) console.error(`${tag}: redirecting http://${listenHost}:${ready.redirectPort} to https (308), /_edge/health answered there too`);
        if (ready.adminUrl !== undefined) console.error(`${tag}: /_edge/ (admin API, metrics, origins) on ${ready.adminUrl}; the public port answers content and /_edge/health only`);
        if (demo) console.error(`${tag}: try  curl -i ${ready.tls ? '-k ' : ''}${where}/data/products.json  (twice: MISS, then HIT)`);
      },
    });
    return;
  }
  // Image transforms are bounded per machine: the per-process limit (one per core by default) is shared out.
  const perWorker = (given: EdgeOptions): EdgeOptions => ({ ...given, transformConcurrency: Math.max(1, Math.floor((given.transformConcurrency || availableParallelism()) / workers)) });
  const member = joinCluster();
  // A replacement reads the config file as it is now: what takes a restart must still be what the cluster runs with.
  const fixed = restartProblems(await member.startOptions(), options);
  if (fixed.length > 0) {
    for (const problem of fixed) console.error(`${tag}: ${problem}`);
    console.error(`${tag}: worker ${process.pid} not started: the config file differs from what the cluster started with`);
    process.exit(2);
  }
  const server = await startEdgeServer(perWorker(options), {
    cluster: member,
    // The worker's own environment holds the demo origin's URL (EDGE_ORIGIN).
    readOptions: () => perWorker(rereadOptions(program, argv, undefined)),
    // The primary logs one line for the whole cluster.
    onReload: () => {},
  });
  member.onReload((trigger) => server.reload(trigger));
  // The primary turns SIGHUP into a reload of every worker; one sent to a worker itself is ignored, not fatal.
  process.on('SIGHUP', () => {});
  await member.ready({ port: server.port, url: server.url, tls: server.tls !== undefined, redirectPort: server.redirect?.port, adminUrl: server.adminUrl });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await server.close();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
  // The primary is gone (crashed or killed): never serve without it.
  process.on('disconnect', () => void stop());
}
