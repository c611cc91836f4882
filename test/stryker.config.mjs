// @ts-check
/**
 * Mutation testing (StrykerJS, vitest runner) of the decision code:
 * `npm run test:mutation`, or one target at a time to bound the run:
 * `EDGE_MUTATE=pull npm run test:mutation` (comma-separated target names
 * from TARGETS below). Not part of CI: a full run takes about an hour on
 * two cores.
 *
 * - Only the test files relevant to the selected targets are run (through
 *   `test/vitest.mutation.config.ts`), and per mutant only the tests that
 *   executed it (`coverageAnalysis: perTest`); a mutant of module-level code
 *   (static) runs all of them, with the module reloaded.
 * - Incremental: results are kept per target in `test/.stryker/`
 *   (git-ignored); a later run tests again only mutants whose code or
 *   covering tests changed. `-- --force` retests everything.
 * - The sandbox lives in the OS temp dir, not in the repository, so a
 *   concurrent `npx vitest run` never picks up its copies of the tests.
 * - pull.ts and admin.ts are mutated only in the decision functions; their
 *   line ranges are looked up when the run starts, since those files change
 *   often.
 */
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * `file:start-end` for a function or method of `file`: from the line whose
 * code starts with `signature` to the first later line that closes it at the
 * same indentation.
 * @param {string} file
 * @param {RegExp} signature
 */
function span(file, signature) {
  const lines = readFileSync(file, 'utf8').split('\n');
  const start = lines.findIndex((line) => signature.test(line));
  if (start === -1) throw new Error(`stryker.config: ${signature} not found in ${file}; update test/stryker.config.mjs`);
  const indent = /^\s*/.exec(lines[start])[0];
  const end = lines.findIndex((line, i) => i > start && line === `${indent}}`);
  if (end === -1) throw new Error(`stryker.config: end of ${signature} not found in ${file}`);
  return `${file}:${start + 1}-${end + 1}`;
}

/** What each target mutates, and the test files that exercise it. */
const TARGETS = {
  policy: {
    mutate: () => ['edge/core/policy.ts'],
    tests: [
      'test/pull-conformance.test.ts',
      'test/conformance-rfc9111.test.ts',
      'test/hit-path.test.ts',
      'test/route-rules.test.ts',
      'test/mutation-policy.test.ts',
    ],
  },
  'cache-key': {
    mutate: () => ['edge/core/cache-key.ts'],
    tests: [
      'test/pull-conformance.test.ts',
      'test/hit-path.test.ts',
      'test/push-api.test.ts',
      'test/route-rules.test.ts',
      'test/mutation-cache-key.test.ts',
    ],
  },
  pull: {
    mutate: () => [
      span('edge/core/pull.ts', /^\s*(private\s+)?decide\(/),
      span('edge/core/pull.ts', /^\s*(private\s+)?selectVariant\(/),
    ],
    tests: [
      'test/pull-conformance.test.ts',
      'test/conformance-rfc9111.test.ts',
      'test/hit-path.test.ts',
      'test/route-rules.test.ts',
      'test/mutation-pull.test.ts',
    ],
  },
  admin: {
    mutate: () => [
      span('edge/core/admin.ts', /^(async\s+)?function selectForPurge\(/),
      span('edge/core/admin.ts', /^function parsePurgeTarget\(/),
    ],
    tests: ['test/push-api.test.ts', 'test/hit-path.test.ts', 'test/mutation-admin.test.ts'],
  },
  params: {
    mutate: () => ['edge/core/image/params.ts'],
    tests: ['test/image-params.test.ts', 'test/mutation-image-params.test.ts'],
  },
};

const names = (process.env.EDGE_MUTATE ?? Object.keys(TARGETS).join(','))
  .split(',')
  .map((name) => name.trim())
  .filter(Boolean);
for (const name of names) {
  if (!Object.hasOwn(TARGETS, name)) {
    throw new Error(`EDGE_MUTATE: unknown target "${name}" (targets: ${Object.keys(TARGETS).join(', ')})`);
  }
}
const selected = names.map((name) => TARGETS[/** @type {keyof typeof TARGETS} */ (name)]);
const label = names.length === Object.keys(TARGETS).length ? 'all' : names.join('+');
// Files not written yet are skipped rather than failing the run. Passed to
// the vitest config through the environment, which the test-runner child
// processes inherit. Not StrykerJS's `testFiles` option: with it, static
// mutants are run without reloading the module and always survive.
process.env.EDGE_MUTATION_TEST_FILES = [...new Set(selected.flatMap((target) => target.tests))].filter((file) => existsSync(file)).join(',');

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'vitest',
  vitest: { configFile: 'test/vitest.mutation.config.ts', related: false },
  mutate: selected.flatMap((target) => target.mutate()),
  coverageAnalysis: 'perTest',
  concurrency: 2,
  incremental: true,
  incrementalFile: `test/.stryker/incremental-${label}.json`,
  tempDirName: join(tmpdir(), 'edge-cache-stryker'),
  ignorePatterns: ['dist', '.edge-data', '.shield-data', '.wrangler', 'bench/results', 'test/.stryker', '*.log'],
  reporters: ['clear-text', 'progress-append-only', 'html'],
  htmlReporter: { fileName: `test/.stryker/report-${label}.html` },
  clearTextReporter: { allowColor: false, logTests: false, maxTestsToLog: 0 },
  // Real servers, LMDB and sharp per test: allow for a loaded machine.
  timeoutMS: 15_000,
  thresholds: { high: 90, low: 80, break: null },
};
