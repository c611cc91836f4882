#!/usr/bin/env node
/**
 * `npx edge [options]` starts an edge node (see `--help`);
 * `npx edge push <dir> --to <url> --token <t>` uploads a folder;
 * `npx edge sign <url> --expires 1h [--key-id k]` prints a signed URL.
 */
import { main } from './run-node.js';

const EDGE = {
  name: 'edge',
  summary: 'Starts a caching edge node in front of <url>. Without --origin (or origins in a --config file), an embedded demo origin is started.',
  defaults: {},
  demoOrigin: true,
};

if (process.argv[2] === 'sign') {
  const { runSign } = await import('./sign-cli.js');
  process.exit(await runSign(process.argv.slice(3)));
}
if (process.argv[2] === 'push') {
  const { runPush } = await import('./push-cli.js');
  process.exit(await runPush(process.argv.slice(3)));
}
main(EDGE);
