#!/usr/bin/env node
/**
 * `npx origin-shield --origin <url>`: the mid tier many edges point at
 * (`npx edge --shield <url>`), built from the edge's own core with the
 * defaults in `defaults.ts`.
 */
import { main } from '../edge/node/run-node.js';
import { SHIELD_DEFAULTS } from './defaults.js';

main({
  name: 'origin-shield',
  summary: 'Starts an origin shield in front of <url>: point edges at it with `npx edge --shield <shield-url>`.',
  defaults: SHIELD_DEFAULTS,
  demoOrigin: false,
});
