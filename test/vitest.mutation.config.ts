/**
 * Vitest configuration for mutation testing (`npm run test:mutation`, see
 * `test/stryker.config.mjs`): the same settings as `vitest.config.ts`, but
 * only the test files of the targets being mutated, which the Stryker
 * configuration passes in `EDGE_MUTATION_TEST_FILES` (comma-separated).
 *
 * Why not StrykerJS's own `testFiles` option: with it, StrykerJS 9 runs
 * static mutants (module-level code, such as lookup tables) without
 * reloading the module, so they always survive.
 */
import { defineConfig } from 'vitest/config';

const files = (process.env.EDGE_MUTATION_TEST_FILES ?? '').split(',').filter(Boolean);
if (files.length === 0) throw new Error('test/vitest.mutation.config.ts: EDGE_MUTATION_TEST_FILES is empty; run `npm run test:mutation`.');

export default defineConfig({
  test: {
    include: files,
    // As in vitest.config.ts: real servers, real LMDB and real sharp.
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
