/**
 * Regression: when a collapsed fill's origin body reset midway, the
 * requests waiting on the same key got `500 EDGE_INTERNAL`: the fill handed
 * the flight undici's raw socket error, which is no `EdgeError`. Body
 * failures are `EdgeError`s now (the cause kept): the waiters get a 502
 * (504 when the origin stalled past --body-timeout), and the one request
 * already streaming the body sees its connection aborted.
 *
 * No sleeps: the origin sends headers and part of the body at once, and
 * holds the fault until every other request is waiting on the flight (read
 * from the pull path's flight table, polled between event-loop turns).
 */
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { PullCache } from '../edge/core/pull.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { startRawOrigin, type RawOrigin } from './helpers/origin.js';

const CLIENTS = 20;
const LENGTH = 1024 * 1024;

/** Requests waiting behind a leader, over all keys (the flight table is private to the pull path). */
function waiters(pull: PullCache): number {
  return pull.flightStats().waiters;
}

/** Turn the event loop until `condition` holds (no timers: the test's own timeout bounds it). */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setImmediate(resolve));
}

function write(socket: Socket, data: string | Buffer): Promise<void> {
  return new Promise((resolve, reject) => socket.write(data, (error) => (error ? reject(error) : resolve())));
}

interface Outcome {
  status: number;
  error?: string;
  /** The body broke off (the leader's stream). */
  broken?: boolean;
}

async function outcome(res: Response): Promise<Outcome> {
  const body = await res.arrayBuffer().then(
    (bytes) => new Uint8Array(bytes),
    () => undefined,
  );
  if (body === undefined) return { status: res.status, broken: true };
  const type = res.headers.get('content-type') ?? '';
  return { status: res.status, error: type.startsWith('application/json') ? JSON.parse(new TextDecoder().decode(body)).error : undefined };
}

let t: TestEdge | undefined;
let raw: RawOrigin | undefined;
afterEach(async () => {
  await t?.close();
  await raw?.close();
  t = raw = undefined;
});

describe('faults: a collapsed fill whose origin body fails', () => {
  const faults: [string, 'reset' | 'stall', number, string][] = [
    ['resets midway', 'reset', 502, 'EDGE_ORIGIN_UNREACHABLE'],
    ['stalls past --body-timeout', 'stall', 504, 'EDGE_ORIGIN_TIMEOUT'],
  ];
  for (const [name, fault, status, code] of faults) {
    it(`when the body ${name}, every waiting request gets ${status} ${code}, none a 500, and the origin is asked once`, async () => {
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      raw = await startRawOrigin(async (socket) => {
        await write(socket, `HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nContent-Length: ${LENGTH}\r\n\r\n`);
        await write(socket, Buffer.alloc(64 * 1024, 1));
        await released;
        if (fault === 'reset') socket.resetAndDestroy();
        // A stall: nothing more is sent; the edge's body timeout cuts it.
      });
      t = await startTestEdge({ origin: raw.url, bodyTimeout: '300ms', collapseTimeout: '30s' });
      const pull = t.edge.edge.pull;

      const answers = Array.from({ length: CLIENTS }, () => t!.get('/shared.bin').then(outcome));
      await raw.received(1);
      await until(() => waiters(pull) === CLIENTS - 1);
      release();
      const outcomes = await Promise.all(answers);

      expect(outcomes.filter((o) => o.status === 500)).toEqual([]);
      const leaders = outcomes.filter((o) => o.broken);
      const followers = outcomes.filter((o) => !o.broken);
      expect(leaders).toEqual([{ status: 200, broken: true }]);
      expect(followers).toEqual(Array.from({ length: CLIENTS - 1 }, () => ({ status, error: code })));
      expect(raw.requests.length).toBe(1);
    });
  }
});
