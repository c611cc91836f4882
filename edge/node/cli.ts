#!/usr/bin/env node
/**
 * `npx edge [options]` starts an edge node (see `--help`);
 * `npx edge push <dir> --to <url> --token <t>` uploads a folder;
 * `npx edge sign <url> --expires 1h [--key-id k]` prints a signed URL;
 * `npx edge --version` prints the package version.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { helpText, main } from './run-node.js';

const EDGE = {
  name: 'edge',
  summary: 'Starts a caching edge node in front of <url>. Without --origin (or origins in a --config file), an embedded demo origin is started.',
  defaults: {},
  demoOrigin: true,
};

const COMMANDS = [
  'Commands:',
  '  npx edge [options]                               Start an edge node (the options below).',
  '  npx edge push <dir> --to <url> [--delete] [--dry-run]',
  '                                                   Deploy a folder through the push API (edge push --help).',
  '  npx edge sign <url> --expires 1h [--key-id k]    Print a signed URL (edge sign --help).',
  '  npx edge --version                               Print the version.',
].join('\n');

/**
 * The version in this package's package.json: found by walking up from this
 * file, as it sits at edge/node/ in the sources and dist/edge/node/ when built.
 */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'package.json');
    if (existsSync(candidate)) {
      const pkg = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'edge-cache-node' && pkg.version) return pkg.version;
    }
    const parent = dirname(dir);
    if (parent === dir) return 'unknown';
    dir = parent;
  }
}

const command = process.argv[2];
if (command === 'sign') {
  const { runSign } = await import('./sign-cli.js');
  process.exit(await runSign(process.argv.slice(3)));
}
if (command === 'push') {
  const { runPush } = await import('./push-cli.js');
  process.exit(await runPush(process.argv.slice(3)));
}
if (command === '--version' || command === '-v' || command === 'version') {
  console.log(packageVersion());
  process.exit(0);
}
if (process.argv.includes('--help') || process.argv.includes('-h')) {
  console.log(`${helpText(EDGE)}\n\n${COMMANDS}`);
  process.exit(0);
}
main(EDGE);
