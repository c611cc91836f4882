/**
 * The README's configuration table is the options schema: one row per
 * option, in schema order, flag, variable, default and meaning taken from
 * the schema's descriptions. `UPDATE_README=1 npx vitest run
 * test/readme-options.test.ts` rewrites the table after a schema change.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { edgeOptionsSchema, optionEnv, optionFlag } from '../edge/core/options.js';

const README = new URL('../README.md', import.meta.url);
const HEADER = '| flag | environment | default | meaning |\n|---|---|---|---|\n';

function optionsTable(): string {
  const rows = Object.entries(edgeOptionsSchema.shape).map(([name, schema]) => {
    const description = (schema as { description?: string }).description ?? '';
    const match = /^(.*?)\s*\(default ([^)]*)\)$/.exec(description);
    const meaning = (match ? match[1]! : description).replace(/\|/g, '\\|');
    const fallback = match ? `\`${match[2]}\`` : '—';
    return `| \`${optionFlag(name)}\` | \`${optionEnv(name)}\` | ${fallback} | ${meaning} |`;
  });
  return HEADER + rows.join('\n') + '\n';
}

it('the README configuration table lists every option as the schema describes it', () => {
  const readme = readFileSync(README, 'utf8');
  const start = readme.indexOf(HEADER);
  expect(start, 'README has the configuration table').toBeGreaterThan(0);
  let end = readme.indexOf('\n\n', start);
  if (end === -1) end = readme.length;
  const current = readme.slice(start, end + 1);
  const wanted = optionsTable();
  if (process.env.UPDATE_README && current !== wanted) writeFileSync(README, readme.slice(0, start) + wanted + readme.slice(end + 1));
  else expect(current).toBe(wanted);
});
