/**
 * A hand-driven clock for TTL tests: pass `clock.now` where the edge takes
 * a `now()` option and move time with `advance`, instead of sleeping.
 */
export interface TestClock {
  /** Current time, ms since epoch. */
  now(): number;
  /** Moves time forward by `ms` (never backward: caches assume monotonic time). */
  advance(ms: number): void;
  /** Jumps to an absolute time, ms since epoch. */
  set(ms: number): void;
}

/** @param start ms since epoch. @default Date.UTC(2026, 0, 1) */
export function createTestClock(start: number = Date.UTC(2026, 0, 1)): TestClock {
  let current = start;
  return {
    // Arrow functions so `clock.now` can be passed around unbound.
    now: () => current,
    advance: (ms) => {
      if (!Number.isFinite(ms) || ms < 0) throw new TypeError(`clock.advance: ms must be a finite number >= 0, got ${ms}`);
      current += ms;
    },
    set: (ms) => {
      if (!Number.isFinite(ms)) throw new TypeError(`clock.set: ms must be a finite number, got ${ms}`);
      current = ms;
    },
  };
}
