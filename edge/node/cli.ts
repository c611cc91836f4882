#!/usr/bin/env node
/**
 * `npx edge [options]`: start an edge node. Options come from flags, then
 * EDGE_* environment variables, then a JSON config file (`--config`), then
 * defaults; everything is validated once, and a bad value stops the
 * process with one line per problem. Without `--origin` the embedded demo
 * origin is started in-process so `npm start` works on a fresh clone.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { edgeOptionsSchema, EdgeOptionsError, optionEnv, optionFlag, resolveEdgeOptions, type EdgeOptions } from '../core/options.js';
import { startDemoOrigin } from './demo-origin.js';
import { startEdgeServer } from './server.js';

const OPTION_NAMES = Object.keys(edgeOptionsSchema.shape) as (keyof EdgeOptions)[];

export function helpText(program = 'edge'): string {
  const rows = OPTION_NAMES.map((name) => {
    const description = edgeOptionsSchema.shape[name].description ?? '';
    return `  ${optionFlag(name).padEnd(30)} ${optionEnv(name).padEnd(30)} ${description}`;
  });
  return [
    `Usage: npx ${program} --origin <url> [options]`,
    '',
    'Starts a caching edge node in front of <url>. Without --origin, an embedded demo origin is started.',
    'Every option can also be set by its environment variable or in a JSON file given with --config.',
    'Precedence: flag, then environment, then config file, then default.',
    '',
    `  ${'flag'.padEnd(30)} ${'environment'.padEnd(30)} meaning`,
    ...rows,
    `  ${'--config <file>'.padEnd(30)} ${'EDGE_CONFIG'.padEnd(30)} JSON file with any of the options above (camelCase keys).`,
    `  ${'--help'.padEnd(30)} ${''.padEnd(30)} Show this text.`,
  ].join('\n');
}

/** Merge flags, environment and config file into one raw input object. */
export function collectOptionInput(argv: string[], env: NodeJS.ProcessEnv): Record<string, unknown> {
  const flagSpec: Record<string, { type: 'string' | 'boolean' }> = { config: { type: 'string' }, help: { type: 'boolean' } };
  for (const name of OPTION_NAMES) flagSpec[optionFlag(name).slice(2)] = { type: 'string' };
  const { values } = parseArgs({ args: argv, options: flagSpec, allowPositionals: false, strict: true });

  const input: Record<string, unknown> = {};
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

async function main(): Promise<void> {
  // sharp runs on libuv's thread pool (4 threads by default): leave room for
  // one transform per core next to file-system work. Must be set before the
  // pool's first use.
  process.env.UV_THREADPOOL_SIZE ??= String(Math.max(8, availableParallelism() + 4));
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(helpText());
    return;
  }
  let options: EdgeOptions;
  try {
    options = resolveEdgeOptions(collectOptionInput(argv, process.env));
  } catch (error) {
    if (error instanceof EdgeOptionsError) {
      for (const problem of error.problems) console.error(`edge: ${problem}`);
    } else {
      console.error(`edge: ${(error as Error).message}`);
    }
    console.error('edge: run with --help to see every option.');
    process.exit(2);
  }

  let demo: Awaited<ReturnType<typeof startDemoOrigin>> | undefined;
  if (!options.origin) {
    demo = await startDemoOrigin();
    options = { ...options, origin: demo.url };
  }
  const server = await startEdgeServer(options);
  const where = `http://${options.host === '0.0.0.0' ? 'localhost' : options.host}:${server.port}`;
  console.error(`edge: listening on ${where} in front of ${options.origin}${demo ? ' (embedded demo origin)' : ''}`);
  if (demo) console.error(`edge: try  curl -i ${where}/data/products.json  (twice: MISS, then HIT)`);

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.error(`edge: ${signal}, closing`);
    await server.close();
    await demo?.close();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
}

main().catch((error) => {
  console.error(`edge: failed to start: ${(error as Error).message}`);
  process.exit(1);
});
