/**
 * Messages between the processes of a cluster (`--workers N`), over
 * node:cluster's IPC channels. Workers never talk to each other directly:
 * a worker sends a request to the primary, and the primary answers it
 * itself (metrics, the worker list) or delivers it to every other worker
 * and answers once each has acknowledged (a broadcast).
 *
 * Every request has a deadline. A worker that does not acknowledge a
 * broadcast in time is killed (SIGKILL) and the broadcast is answered once
 * it has exited: what a broadcast says (forget these keys) then holds for
 * every process that can still answer a request. A worker that exits
 * counts as having acknowledged (its memory went with it).
 *
 * Messages carry `edgeBus: 1`, so they never collide with prom-client's
 * own aggregation messages on the same channel.
 */
import type { Worker } from 'node:cluster';

/** Deliveries to the other workers are answered within this, or the laggard is killed. @default 5000 */
export const BROADCAST_TIMEOUT_MS = 5000;
/** A worker's request to the primary fails after this (the primary is gone or stuck). @default 15000 */
export const REQUEST_TIMEOUT_MS = 15_000;

type BusMessage =
  | { edgeBus: 1; kind: 'request'; id: number; type: string; payload: unknown }
  | { edgeBus: 1; kind: 'deliver'; id: number; type: string; payload: unknown }
  | { edgeBus: 1; kind: 'reply'; id: number; ok: true; value: unknown }
  | { edgeBus: 1; kind: 'reply'; id: number; ok: false; error: string }
  | { edgeBus: 1; kind: 'notice'; type: string; payload: unknown };

function isBusMessage(message: unknown): message is BusMessage {
  return typeof message === 'object' && message !== null && (message as { edgeBus?: unknown }).edgeBus === 1;
}

/** The bus failed to get an answer: `EDGE_CLUSTER_TIMEOUT` (no answer in time) or `EDGE_CLUSTER_DOWN` (no channel). */
export class ClusterBusError extends Error {
  constructor(
    readonly code: 'EDGE_CLUSTER_TIMEOUT' | 'EDGE_CLUSTER_DOWN' | 'EDGE_CLUSTER_FAILED',
    message: string,
  ) {
    super(message);
    this.name = 'ClusterBusError';
  }
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

type Handler = (payload: unknown) => unknown;

/** A worker's end of the bus (`process.send` / `process.on('message')`). */
export class WorkerBus {
  readonly #pending = new Map<number, Pending>();
  readonly #handlers = new Map<string, Handler>();
  readonly #notices = new Map<string, (payload: unknown) => void>();
  #next = 0;

  constructor() {
    process.on('message', (message: unknown) => {
      if (!isBusMessage(message)) return;
      if (message.kind === 'reply') this.#settle(message);
      else if (message.kind === 'deliver') void this.#deliver(message.id, message.type, message.payload);
      else if (message.kind === 'notice') this.#notices.get(message.type)?.(message.payload);
    });
    process.on('disconnect', () => {
      for (const [id, pending] of this.#pending) {
        this.#pending.delete(id);
        clearTimeout(pending.timer);
        pending.reject(new ClusterBusError('EDGE_CLUSTER_DOWN', 'The cluster primary is gone.'));
      }
    });
  }

  /** Ask the primary; `broadcast` asks it to deliver `{ type, payload }` to every other worker and wait for their acknowledgements. */
  request<T = unknown>(type: string, payload: unknown = null, timeoutMs = REQUEST_TIMEOUT_MS): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (!process.connected || !process.send) {
        reject(new ClusterBusError('EDGE_CLUSTER_DOWN', 'Not connected to a cluster primary.'));
        return;
      }
      const id = this.#next++;
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ClusterBusError('EDGE_CLUSTER_TIMEOUT', `The cluster primary did not answer ${type} within ${timeoutMs} ms.`));
      }, timeoutMs);
      this.#pending.set(id, { resolve: resolve as (value: unknown) => void, reject, timer });
      process.send({ edgeBus: 1, kind: 'request', id, type, payload } satisfies BusMessage);
    });
  }

  /** Deliver to every other worker and resolve once each has handled it (or was replaced). */
  broadcast(type: string, payload: unknown): Promise<void> {
    return this.request('broadcast', { type, payload }).then(() => undefined);
  }

  /** Handle deliveries of `type` (from other workers' broadcasts, or the primary); the returned value is the reply. */
  handle(type: string, handler: Handler): void {
    this.#handlers.set(type, handler);
  }

  /** Called for each notice of `type` from the primary (no reply). */
  onNotice(type: string, listener: (payload: unknown) => void): void {
    this.#notices.set(type, listener);
  }

  #settle(message: Extract<BusMessage, { kind: 'reply' }>): void {
    const pending = this.#pending.get(message.id);
    if (!pending) return;
    this.#pending.delete(message.id);
    clearTimeout(pending.timer);
    if (message.ok) pending.resolve(message.value);
    else pending.reject(new ClusterBusError('EDGE_CLUSTER_FAILED', message.error));
  }

  async #deliver(id: number, type: string, payload: unknown): Promise<void> {
    let reply: BusMessage;
    try {
      const handler = this.#handlers.get(type);
      if (!handler) throw new Error(`no handler for ${type}`);
      reply = { edgeBus: 1, kind: 'reply', id, ok: true, value: (await handler(payload)) ?? null };
    } catch (error) {
      reply = { edgeBus: 1, kind: 'reply', id, ok: false, error: (error as Error).message };
    }
    if (process.connected) process.send!(reply);
  }
}

/** What the primary knows of a worker, for its handlers. */
export type RequestHandler = (payload: unknown, from: Worker) => unknown;

/** The primary's end: answers workers' requests, delivers broadcasts, sends notices. */
export class PrimaryBus {
  readonly #handlers = new Map<string, RequestHandler>();
  /** Deliveries awaiting a worker's reply, by worker id then delivery id. */
  readonly #pending = new Map<number, Map<number, Pending>>();
  readonly #workers = new Map<number, Worker>();
  /** Workers whose handlers are in place (they asked `join`): the targets of broadcasts. */
  readonly #joined = new Set<Worker>();
  readonly #onLaggard: (worker: Worker, type: string) => void;
  /** The primary's own listeners to broadcasts it relays, by type. */
  readonly #observers = new Map<string, (payload: unknown) => void>();
  #next = 0;

  constructor(options: { broadcastTimeoutMs?: number; onLaggard?: (worker: Worker, type: string) => void } = {}) {
    const timeoutMs = options.broadcastTimeoutMs ?? BROADCAST_TIMEOUT_MS;
    this.#onLaggard = options.onLaggard ?? (() => {});
    // A worker still starting has no listener yet (a message would be lost and it killed for not
    // answering) and nothing in memory; it joins once it handles deliveries, then reads LMDB.
    this.handle('join', (_payload, from) => {
      if (this.#workers.has(from.id)) this.#joined.add(from);
      return null;
    });
    this.handle('broadcast', async (payload, from) => {
      const { type, payload: inner } = payload as { type: string; payload: unknown };
      this.#observers.get(type)?.(inner);
      const others = [...this.#joined].filter((worker) => worker !== from);
      await Promise.all(others.map((worker) => this.#deliverOrKill(worker, type, inner, timeoutMs)));
      return others.length;
    });
  }

  /** Start routing a worker's messages; call right after `cluster.fork()`. */
  add(worker: Worker): void {
    this.#workers.set(worker.id, worker);
    this.#pending.set(worker.id, new Map());
    worker.on('message', (message: unknown) => {
      if (!isBusMessage(message)) return;
      if (message.kind === 'request') void this.#answer(worker, message.id, message.type, message.payload);
      else if (message.kind === 'reply') {
        const pending = this.#pending.get(worker.id)?.get(message.id);
        if (!pending) return;
        this.#pending.get(worker.id)!.delete(message.id);
        clearTimeout(pending.timer);
        if (message.ok) pending.resolve(message.value);
        else pending.reject(new ClusterBusError('EDGE_CLUSTER_FAILED', message.error));
      }
    });
    // A message written as the worker dies fails with EPIPE (or a closed channel) on the Worker
    // object, and an 'error' event without a listener would take the primary down with it; the
    // worker's exit is handled below, and a delivery it never answers times out.
    worker.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'EPIPE' || error.code === 'ERR_IPC_CHANNEL_CLOSED' || error.code === 'ECONNRESET') return;
      console.error(`edge: worker ${worker.process.pid}: ${error.message}`);
    });
    // Whatever it was asked, a worker that has exited has nothing left to forget.
    worker.once('exit', () => {
      this.#workers.delete(worker.id);
      this.#joined.delete(worker);
      const pending = this.#pending.get(worker.id);
      this.#pending.delete(worker.id);
      for (const delivery of pending?.values() ?? []) {
        clearTimeout(delivery.timer);
        delivery.resolve(null);
      }
    });
  }

  handle(type: string, handler: RequestHandler): void {
    this.#handlers.set(type, handler);
  }

  /** Called with each broadcast of `type` a worker sends, before it is delivered to the others. */
  observe(type: string, listener: (payload: unknown) => void): void {
    this.#observers.set(type, listener);
  }

  /** A message to every live worker, unanswered. */
  notify(type: string, payload: unknown): void {
    for (const worker of this.#workers.values()) {
      if (worker.isConnected()) worker.send({ edgeBus: 1, kind: 'notice', type, payload } satisfies BusMessage);
    }
  }

  /** Deliver to one worker; resolves with its reply (null if it exits first). */
  deliver(worker: Worker, type: string, payload: unknown, timeoutMs = BROADCAST_TIMEOUT_MS): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const pending = this.#pending.get(worker.id);
      if (!pending || !worker.isConnected()) {
        resolve(null);
        return;
      }
      const id = this.#next++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new ClusterBusError('EDGE_CLUSTER_TIMEOUT', `worker ${worker.process.pid} did not answer ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(id, { resolve, reject, timer });
      worker.send({ edgeBus: 1, kind: 'deliver', id, type, payload } satisfies BusMessage);
    });
  }

  /** A worker that fails or does not answer is killed, and counts once it has exited. */
  async #deliverOrKill(worker: Worker, type: string, payload: unknown, timeoutMs: number): Promise<void> {
    try {
      await this.deliver(worker, type, payload, timeoutMs);
    } catch {
      if (worker.isDead()) return;
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      this.#onLaggard(worker, type);
      worker.process.kill('SIGKILL');
      await exited;
    }
  }

  async #answer(worker: Worker, id: number, type: string, payload: unknown): Promise<void> {
    let reply: BusMessage;
    try {
      const handler = this.#handlers.get(type);
      if (!handler) throw new Error(`no handler for ${type}`);
      reply = { edgeBus: 1, kind: 'reply', id, ok: true, value: (await handler(payload, worker)) ?? null };
    } catch (error) {
      reply = { edgeBus: 1, kind: 'reply', id, ok: false, error: (error as Error).message };
    }
    if (worker.isConnected()) worker.send(reply);
  }
}
