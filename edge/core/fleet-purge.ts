/**
 * Fleet purge: a purge received by one node is applied there, then at
 * every shield, then at every edge of the fleet (`--peers`), so no edge
 * refills from a shield that still holds the old object (the race Fastly
 * documents for its shielding).
 *
 * - The node that receives a purge from a client coordinates it: it gives
 *   the purge an id and sends each peer a copy (`Edge-Purge-Id` header,
 *   `"forward": false` in the body, the shared admin token). A copy is
 *   applied where it lands and never forwarded again, so every node may
 *   list every other (or itself) without loops; a node that already applied
 *   an id answers `duplicate` without applying it again.
 * - Per peer, at most `concurrency` copies are in flight and `queue` wait;
 *   a purge that would exceed that anywhere is refused (503, Retry-After)
 *   before anything is purged.
 * - A peer that fails (no answer, timeout, 5xx, 401...) is reported with
 *   status 0 or its status and an error code, marked down, and its copies
 *   go to a bounded in-memory outbox replayed in order with back-off. While
 *   down, new copies go straight to the outbox. A restart of the sending
 *   node loses its outbox.
 *
 * Runtime-agnostic: Web `fetch`, `AbortSignal`, timers.
 */
import { EdgeError } from './errors.js';

export type PeerRole = 'edge' | 'shield';

/** One other node of the fleet, by the base URL of its admin API. */
export interface FleetPeer {
  /** Base URL without a trailing slash, e.g. `http://shield-1:8090`; purges go to `<url>/_edge/purge`. */
  url: string;
  role: PeerRole;
}

export const PURGE_ID_HEADER = 'edge-purge-id';
/** Purge ids: short printable tokens (a client may send its own to make retries idempotent). */
export const PURGE_ID = /^[\w.:@+=-]{1,128}$/;

const ROLES: ReadonlySet<string> = new Set(['edge', 'shield']);

/**
 * Parse peer entries: `[role=]url`, role `shield` or `edge` (bare URLs are
 * edges). Comma-separated for a list; one per line with `#` comments for a
 * file. Duplicates keep the first role given, except that `shield` wins.
 */
export function parsePeers(text: string, format: 'list' | 'file'): { peers: FleetPeer[]; problems: string[] } {
  const entries =
    format === 'list'
      ? text.split(',').map((entry, i) => ({ entry: entry.trim(), where: `entry ${i + 1}` }))
      : text.split(/\r?\n/).map((line, i) => ({ entry: line.replace(/#.*$/, '').trim(), where: `line ${i + 1}` }));
  const problems: string[] = [];
  const peers: FleetPeer[] = [];
  for (const { entry, where } of entries) {
    if (entry === '') continue;
    const match = /^([a-z]+)=(.*)$/i.exec(entry);
    let role: PeerRole = 'edge';
    let raw = entry;
    if (match && !match[2]!.startsWith('//')) {
      const name = match[1]!.toLowerCase();
      if (!ROLES.has(name)) {
        problems.push(`${where}: unknown role "${match[1]}" in "${entry}" (use shield=<url> or edge=<url>)`);
        continue;
      }
      role = name as PeerRole;
      raw = match[2]!.trim();
    }
    const url = peerBaseUrl(raw);
    if (typeof url !== 'string') {
      problems.push(`${where}: "${raw}" ${url.problem}`);
      continue;
    }
    addPeer(peers, { url, role });
  }
  return { peers, problems };
}

/** The base URL of a peer's admin API, normalised, or what is wrong with it. */
export function peerBaseUrl(raw: string): string | { problem: string } {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return { problem: 'is not an absolute http(s) URL, e.g. http://edge-2:8080' };
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return { problem: 'is not an http(s) URL' };
  if (url.username || url.password) return { problem: 'carries credentials (peers share the admin token instead)' };
  if (url.search || url.hash) return { problem: 'has a query or fragment' };
  return url.origin + url.pathname.replace(/\/+$/, '');
}

function addPeer(peers: FleetPeer[], peer: FleetPeer): void {
  const known = peers.find((p) => p.url === peer.url);
  if (!known) peers.push(peer);
  else if (peer.role === 'shield') known.role = 'shield';
}

/** The fleet as the purge fan-out sees it: `--shield` URLs as shields, then the peers. */
export function fleetPeers(shields: readonly string[], peers: readonly FleetPeer[]): FleetPeer[] {
  const all: FleetPeer[] = [];
  for (const shield of shields) {
    const url = peerBaseUrl(shield);
    if (typeof url === 'string') addPeer(all, { url, role: 'shield' });
  }
  for (const peer of peers) addPeer(all, { ...peer });
  return all;
}

// ---------------------------------------------------------------------------
// Ids of applied purges

/**
 * Purge ids this node has applied (or is applying), with the count each
 * purged: bounded, oldest forgotten first. In memory: after a restart a
 * replayed copy is applied again, which removes nothing that the first
 * application did not (at worst a refill made since).
 */
export class AppliedPurges {
  readonly #max: number;
  readonly #ids = new Map<string, Promise<number>>();

  constructor(max = 10_000) {
    this.#max = max;
  }

  /** The count of an earlier purge with this id, if there was one. */
  get(id: string): Promise<number> | undefined {
    return this.#ids.get(id);
  }

  /** Record `id` as applied by `work`; forgotten again if `work` fails, so a retry can apply it. */
  set(id: string, work: Promise<number>): void {
    this.#ids.set(id, work);
    if (this.#ids.size > this.#max) this.#ids.delete(this.#ids.keys().next().value!);
    work.catch(() => {
      if (this.#ids.get(id) === work) this.#ids.delete(id);
    });
  }
}

// ---------------------------------------------------------------------------
// Fan-out

/** What a peer is sent: the purge request body (selector, `soft`) and its id. */
export interface PurgeCopy {
  id: string;
  body: Record<string, unknown>;
}

/** One peer's part of a purge answer. */
export interface PeerResult {
  url: string;
  role: PeerRole;
  /** The peer's HTTP status; 0 when it gave none (unreachable, timeout) or was skipped as down. */
  status: number;
  /** Entries the peer purged. */
  purged?: number;
  /** The peer had applied this id already. */
  duplicate?: true;
  /** An error code: the peer's own (`EDGE_UNAUTHORIZED`), or `EDGE_PEER_UNREACHABLE`, `EDGE_PEER_TIMEOUT`, `EDGE_PEER_DOWN`. */
  error?: string;
  /** The low-level reason of `EDGE_PEER_UNREACHABLE` when known, e.g. `ECONNREFUSED`. */
  cause?: string;
  /** The copy waits in the peer's outbox and is replayed when the peer answers again. */
  queued?: true;
}

/** A peer's state for `GET /_edge/origins`. */
export interface PeerStatus {
  url: string;
  role: PeerRole;
  /** `unknown` until the first copy is sent. */
  state: 'unknown' | 'up' | 'down';
  /** The peer missed purges: some wait in the outbox, or some were dropped from it. */
  stale: boolean;
  /** Purges waiting in the outbox for replay. */
  pending: number;
  /** Purges dropped because the outbox was full (or refused by the peer on replay). */
  lost: number;
  inFlight: number;
  waiting: number;
  lastSuccess: string | null;
  lastFailure: string | null;
  lastError: string | null;
  nextRetry: string | null;
}

export interface FleetPurgeOptions {
  /** The admin token, sent to every peer. */
  token: string;
  /** The fleet now (re-read from a file on Node). */
  peers: () => readonly FleetPeer[];
  /** Copies in flight per peer. */
  concurrency: number;
  /** Copies waiting per peer beyond those in flight. */
  queue: number;
  /** Missed copies kept per peer. */
  outbox: number;
  /** First replay delay in ms; doubles per failed attempt up to `max(retryMs, 60 s)`. */
  retryMs: number;
  /** Per copy, in ms. */
  timeoutMs: number;
  now: () => number;
  /** Aborted when the node closes: replays stop, copies in flight are abandoned. */
  signal?: AbortSignal;
  fetch?: typeof fetch;
}

const MAX_RETRY_MS = 60_000;
const RETRY_AFTER_SECONDS = 1;
/** A peer's answer is a small JSON document; more is not read. */
const MAX_ANSWER_BYTES = 64 * 1024;

/** A hard `{ all: true }` purge: replaces anything queued before it. */
const purgesEverything = (copy: PurgeCopy) => copy.body.all === true && copy.body.soft !== true;

/** Answers worth replaying: the peer may take the copy later. 400 and 413 would be refused again. */
const replayable = (status: number) => status === 0 || (status >= 300 && status !== 400 && status !== 413);

/** Admitted purges, holding their place in each peer's queue. */
export interface FleetTicket {
  readonly peers: readonly FleetPeer[];
  /** Give the places back (the local purge failed: nothing is sent). */
  cancel(): void;
}

class PeerChannel {
  role: PeerRole;
  /** Admitted copies not yet completed (in flight + waiting). */
  backlog = 0;
  active = 0;
  readonly waiting: (() => void)[] = [];
  outbox: PurgeCopy[] = [];
  lost = 0;
  down = false;
  contacted = false;
  lastSuccess?: number;
  lastFailure?: number;
  lastError?: string;
  nextRetry?: number;
  delay: number;
  timer?: ReturnType<typeof setTimeout>;
  replaying = false;
  dropped = false;

  constructor(
    readonly url: string,
    role: PeerRole,
    private readonly fleet: FleetPurge,
  ) {
    this.role = role;
    this.delay = fleet.retryMs;
  }

  full(): boolean {
    const { concurrency, queue } = this.fleet.options;
    return !this.down && this.backlog >= concurrency + queue;
  }

  async deliver(copy: PurgeCopy): Promise<PeerResult> {
    try {
      if (this.down) return this.park(copy);
      await this.acquire();
      try {
        // It may have gone down while this copy waited.
        if (this.down) return this.park(copy);
        const result = await this.post(copy);
        if (result.status >= 200 && result.status < 300) {
          this.succeeded(copy);
          return result;
        }
        this.failed(result);
        if (!replayable(result.status)) return result;
        this.down = true;
        this.enqueue(copy);
        this.scheduleRetry();
        return { ...result, queued: true };
      } finally {
        this.release();
      }
    } finally {
      this.backlog--;
    }
  }

  /** Queue a copy for a peer known to be down, without trying it now. */
  private park(copy: PurgeCopy): PeerResult {
    this.enqueue(copy);
    this.scheduleRetry();
    return { url: this.url, role: this.role, status: 0, error: 'EDGE_PEER_DOWN', queued: true };
  }

  private enqueue(copy: PurgeCopy): void {
    if (purgesEverything(copy)) {
      // Everything goes at the peer: what it missed before no longer matters.
      this.outbox = [copy];
      this.lost = 0;
      return;
    }
    if (this.outbox.some((queued) => queued.id === copy.id)) return;
    this.outbox.push(copy);
    if (this.outbox.length > this.fleet.options.outbox) {
      this.outbox.shift();
      this.lost++;
    }
  }

  private acquire(): Promise<void> | void {
    if (this.active < this.fleet.options.concurrency) {
      this.active++;
      return;
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.active--;
  }

  private succeeded(copy: PurgeCopy): void {
    this.contacted = true;
    this.lastSuccess = this.fleet.options.now();
    if (purgesEverything(copy)) this.lost = 0;
  }

  private failed(result: PeerResult): void {
    this.contacted = true;
    this.lastFailure = this.fleet.options.now();
    this.lastError = result.cause ?? result.error ?? `HTTP ${result.status}`;
  }

  scheduleRetry(): void {
    if (this.timer !== undefined || this.replaying || this.dropped || this.fleet.closed) return;
    const delay = this.delay;
    this.nextRetry = this.fleet.options.now() + delay;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.nextRetry = undefined;
      void this.replay();
    }, delay);
    // Node: a pending replay does not keep the process alive (Workers timers have no unref).
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** Send the outbox in order; stop at the first failure and back off. */
  private async replay(): Promise<void> {
    if (this.fleet.closed || this.dropped) return;
    this.replaying = true;
    try {
      while (this.outbox.length > 0) {
        const copy = this.outbox[0]!;
        const result = await this.post(copy);
        if (this.fleet.closed || this.dropped) return;
        if (result.status >= 200 && result.status < 300) {
          this.succeeded(copy);
        } else {
          this.failed(result);
          if (replayable(result.status)) {
            this.delay = Math.min(this.delay * 2, Math.max(this.fleet.retryMs, MAX_RETRY_MS));
            return;
          }
          this.lost++;
        }
        if (this.outbox[0] === copy) this.outbox.shift();
      }
      this.down = false;
      this.delay = this.fleet.retryMs;
    } finally {
      this.replaying = false;
      if (this.down) this.scheduleRetry();
    }
  }

  private async post(copy: PurgeCopy): Promise<PeerResult> {
    const { options } = this.fleet;
    const base = { url: this.url, role: this.role };
    // One controller per copy (AbortSignal.any on the node's lifetime signal kept every copy's signal alive on Node 20).
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, options.timeoutMs);
    const onClose = () => controller.abort();
    options.signal?.addEventListener('abort', onClose, { once: true });
    try {
      const response = await (options.fetch ?? fetch)(`${this.url}/_edge/purge`, {
        method: 'POST',
        headers: { authorization: `Bearer ${options.token}`, 'content-type': 'application/json', [PURGE_ID_HEADER]: copy.id },
        body: JSON.stringify({ ...copy.body, forward: false }),
        redirect: 'manual',
        signal: controller.signal,
      });
      const answer = await readSmallJson(response);
      if (timedOut) return { ...base, status: 0, error: 'EDGE_PEER_TIMEOUT' };
      const result: PeerResult = { ...base, status: response.status };
      if (typeof answer.purged === 'number') result.purged = answer.purged;
      if (answer.duplicate === true) result.duplicate = true;
      if (!response.ok) result.error = typeof answer.error === 'string' && /^[A-Z0-9_]{1,64}$/.test(answer.error) ? answer.error : 'EDGE_PEER_BAD_RESPONSE';
      return result;
    } catch (error) {
      if (options.signal?.aborted) return { ...base, status: 0, error: 'EDGE_PEER_ABORTED' };
      if (timedOut) return { ...base, status: 0, error: 'EDGE_PEER_TIMEOUT' };
      return { ...base, status: 0, ...describeFailure(error) };
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onClose);
    }
  }

  status(): PeerStatus {
    const iso = (ms: number | undefined) => (ms === undefined ? null : new Date(ms).toISOString());
    return {
      url: this.url,
      role: this.role,
      state: !this.contacted ? (this.down ? 'down' : 'unknown') : this.down ? 'down' : 'up',
      stale: this.outbox.length > 0 || this.lost > 0,
      pending: this.outbox.length,
      lost: this.lost,
      inFlight: this.active,
      waiting: this.waiting.length,
      lastSuccess: iso(this.lastSuccess),
      lastFailure: iso(this.lastFailure),
      lastError: this.lastError ?? null,
      nextRetry: iso(this.nextRetry),
    };
  }

  drop(): void {
    this.dropped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** The error fields for a copy that got no HTTP answer: a code, never a stack. */
function describeFailure(error: unknown): Pick<PeerResult, 'error' | 'cause'> {
  let cause: unknown = error;
  for (let depth = 0; depth < 4 && cause; depth++) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === 'string' && /^[A-Z0-9_]{1,40}$/.test(code)) return { error: 'EDGE_PEER_UNREACHABLE', cause: code };
    cause = (cause as { cause?: unknown }).cause;
  }
  return { error: 'EDGE_PEER_UNREACHABLE' };
}

async function readSmallJson(response: Response): Promise<Record<string, unknown>> {
  if (!response.body) return {};
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > MAX_ANSWER_BYTES) {
        await reader.cancel().catch(() => {});
        return {};
      }
      chunks.push(value);
    }
    const bytes = new Uint8Array(size);
    let offset = 0;
    for (const chunk of chunks) {
      bytes.set(chunk, offset);
      offset += chunk.byteLength;
    }
    const json: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return typeof json === 'object' && json !== null && !Array.isArray(json) ? (json as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

class Ticket implements FleetTicket {
  readonly peers: readonly FleetPeer[];
  #channels: PeerChannel[] | undefined;

  constructor(channels: PeerChannel[]) {
    this.#channels = channels;
    // The roles as admitted: a reload of the list during the purge does not reorder it.
    this.peers = channels.map((channel) => ({ url: channel.url, role: channel.role }));
  }

  take(): PeerChannel[] {
    const channels = this.#channels;
    if (!channels) throw new TypeError('FleetPurge: this ticket was used or cancelled already');
    this.#channels = undefined;
    return channels;
  }

  cancel(): void {
    for (const channel of this.#channels ?? []) channel.backlog--;
    this.#channels = undefined;
  }
}

/**
 * The sending side of fleet purges: one channel per peer (queue, slots,
 * outbox, replay timer), kept in step with `peers()`.
 */
export class FleetPurge {
  readonly options: FleetPurgeOptions;
  /** `retryMs`, at least 10 ms: a zero delay would replay in a tight loop. */
  readonly retryMs: number;
  readonly #channels = new Map<string, PeerChannel>();
  #closed = false;

  constructor(options: FleetPurgeOptions) {
    this.options = options;
    this.retryMs = Math.max(10, options.retryMs);
    options.signal?.addEventListener('abort', () => this.close(), { once: true });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Channels for the peers listed now; peers no longer listed are dropped, with their outbox. */
  #sync(): PeerChannel[] {
    const listed = this.options.peers();
    const current: PeerChannel[] = [];
    const seen = new Set<string>();
    for (const peer of listed) {
      if (seen.has(peer.url)) continue;
      seen.add(peer.url);
      let channel = this.#channels.get(peer.url);
      if (!channel) {
        channel = new PeerChannel(peer.url, peer.role, this);
        this.#channels.set(peer.url, channel);
      }
      channel.role = peer.role;
      current.push(channel);
    }
    for (const [url, channel] of this.#channels) {
      if (!seen.has(url)) {
        channel.drop();
        this.#channels.delete(url);
      }
    }
    return current;
  }

  /**
   * Take a place in every peer's queue for one purge, or refuse it (503
   * `EDGE_OVERLOADED`, Retry-After) when a reachable peer's queue is full.
   * Down peers never refuse: their copies go to the outbox.
   */
  admit(): FleetTicket {
    const channels = this.#sync();
    const full = channels.find((channel) => channel.full());
    if (full) {
      const { concurrency, queue } = this.options;
      throw new EdgeError(
        'EDGE_OVERLOADED',
        `Too many purges are on their way to peer ${full.url} (${concurrency} in flight, ${queue} waiting: --peer-concurrency, --peer-queue); nothing was purged. Retry shortly.`,
        { headers: { 'retry-after': String(RETRY_AFTER_SECONDS) }, details: { peer: full.url } },
      );
    }
    for (const channel of channels) channel.backlog++;
    return new Ticket(channels);
  }

  /**
   * Send the copy to every peer of the ticket: all shields at once, and
   * once every shield has answered (or is queued), all edges. Resolves with
   * one result per peer, shields first.
   */
  async send(ticket: FleetTicket, copy: PurgeCopy): Promise<PeerResult[]> {
    if (!(ticket instanceof Ticket)) throw new TypeError('FleetPurge.send: not a ticket from admit()');
    const channels = ticket.take();
    const shields = channels.filter((_, i) => ticket.peers[i]!.role === 'shield');
    const edges = channels.filter((_, i) => ticket.peers[i]!.role !== 'shield');
    const first = await Promise.all(shields.map((channel) => channel.deliver(copy)));
    const then = await Promise.all(edges.map((channel) => channel.deliver(copy)));
    return [...first, ...then];
  }

  /** Every listed peer's state, for `GET /_edge/origins`. */
  status(): PeerStatus[] {
    return this.#sync().map((channel) => channel.status());
  }

  /** Stop replays (the outboxes are lost). */
  close(): void {
    this.#closed = true;
    for (const channel of this.#channels.values()) channel.drop();
  }
}
