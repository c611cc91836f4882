/**
 * Range slicing (issue 14), nginx's `slice` module done the cache's way:
 * an object longer than `--slice-size` is fetched from the origin in
 * fixed-size pieces, each with its own `Range`, and each piece is stored as
 * its own entry. A range miss then reads from the origin only the pieces it
 * covers, and a full GET streams piece after piece (a bounded number
 * fetched ahead), never holding the object whole.
 *
 * Entries (derived keys, `cache-key.ts`): the object's record at
 * `<key>#slice:` holds what a stored response holds (fields, policy, tags)
 * plus the length and piece size, and no body; piece n lives at
 * `<key>#slice:<n>` with the validators of the version it belongs to. Both
 * carry `sourceKey: <key>`, so purges, invalidation and soft purges of the
 * URL reach them as they reach image variants.
 *
 * One version only: a piece is used only when its `ETag` and
 * `Last-Modified` equal the record's, and pieces are asked for with
 * `If-Match` (or `If-Unmodified-Since`), so a changed object answers 412
 * instead of a piece of the new version. A change found while a body is
 * being sent drops the object's entries and ends that body with an error:
 * no client gets bytes of two versions.
 *
 * How slicing starts without knowing the length: a miss with `Range` (or
 * any GET under `--slice-paths`) asks the origin for the piece holding the
 * range's first byte. A `206` whose `Content-Range` length is over one piece
 * starts slicing; one covering the whole object is stored whole, as a `200`;
 * a `200` means the origin ignores `Range` (remembered for a while per
 * origin host), and it is stored and answered as any fill.
 */
import { formatCacheStatus, type CacheStatusFields, type ForwardReason } from './cache-status.js';
import { derivedKey, parseCacheKey, varyNames } from './cache-key.js';
import { SOLE_PROCESS_FILLS, waitForFlight, type FlightOutcome, type FlightTable } from './collapse.js';
import { EdgeError } from './errors.js';
import { drainInBackground, sliceFill } from './fill.js';
import { originRequestHeaders } from './headers.js';
import { FILL_STRIPPED_REQUEST_FIELDS, KEEP_WITH_VALIDATOR_SECONDS, storedTags, type OriginFetch } from './origin-fetch.js';
import { parseCacheControl, type EdgePolicy } from './policy.js';
import type { PurgeLog } from './purge-log.js';
import type { OriginFetchPlan, PullDeps, PullRequest } from './request.js';
import { answerGatewayTimeout, clientValidatorsMatch, decideRange, notModifiedHeaders, storedAnswerHeaders, type Answer } from './responder.js';
import type { CacheEntry, CacheEntryMeta, CacheWriter } from './store/types.js';

type StoredFields = ReturnType<OriginFetch['storedFields']>;

/** Pieces fetched ahead of the one a full GET is sending (each at most --slice-size in memory while it arrives). */
const READ_AHEAD = 2;
/** How long an origin host that answered a Range probe with a whole 200 is not probed again. */
const RANGE_IGNORED_MS = 10 * 60_000;
const MAX_RANGE_IGNORING_HOSTS = 1000;
/** A request restarted after following others' probes this often goes alone (a bound, not a tuning knob). */
const MAX_RESTARTS = 2;

/** What slicing needs from the pull cache. */
export interface SliceHooks {
  policyOf(meta: CacheEntryMeta): EdgePolicy;
  graceFor(pull: PullRequest): number;
  /** Serve the request again from the top (after following another request's probe: the cache now holds what it fetched). */
  restart(pull: PullRequest): Promise<Answer>;
}

/**
 * A piece at hand: a stored entry, the bytes just fetched when the store
 * did not keep them (purged meanwhile), or a piece arriving from the origin
 * that is stored as it streams (`arriving`: read it, or cancel it, exactly once).
 */
type Piece = CacheEntry | Uint8Array | { arriving: ReadableStream<Uint8Array> };

/** The piece a probe brought, and which one it is. */
interface FirstPiece {
  index: number;
  piece: Piece;
}

/** The outcome of asking the origin for a first piece. */
type Probe =
  /** Sliced: `record` is current; `first` is the piece the probe brought, if it brought one (still arriving, or stored). */
  | { kind: 'sliced'; record: CacheEntryMeta; first?: FirstPiece; fields: CacheStatusFields }
  /** Anything else, answered as the origin's answer (stored whole, passed, or an error). */
  | { kind: 'answer'; answer: Answer };

/** A piece request found another version (or a 200): the object changed at the origin. */
const CHANGED = new WeakSet<Error>();

function changedError(): EdgeError {
  const error = new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', 'The object changed at the origin while it was being sent in pieces; ask again.');
  CHANGED.add(error);
  return error;
}

export class SlicedObjects {
  /** Origin hosts that answered a Range probe with a whole 200, until when (ms). */
  private readonly rangeIgnored = new Map<string, number>();
  private readonly restarts = new WeakMap<PullRequest, number>();
  /** Records being revalidated in the background (stale-while-revalidate). */
  private readonly refreshing = new Set<string>();
  private readonly pieceSize: number;
  private readonly prefixes: readonly string[];

  constructor(
    private readonly deps: PullDeps,
    private readonly origin: OriginFetch,
    private readonly flights: FlightTable,
    private readonly purges: PurgeLog,
    private readonly dropped: ReadonlySet<string>,
    private readonly hooks: SliceHooks,
  ) {
    this.pieceSize = deps.options.sliceSize;
    this.prefixes = deps.options.slicePaths;
  }

  get enabled(): boolean {
    return this.pieceSize > 0;
  }

  /**
   * A GET/HEAD whose key holds no whole entry: answer it from the object's
   * pieces, or start slicing it. Undefined when the pull path should go on
   * as for any miss (slicing off, not a candidate, the origin ignores Range).
   */
  async serve(pull: PullRequest, reason: ForwardReason): Promise<Answer | undefined> {
    if (!this.enabled || pull.described.credentials !== undefined) return undefined;
    const record = await this.record(pull.key);
    if (record) {
      const policy = this.hooks.policyOf(record);
      const freshness = record.invalidated ? 'revalidate' : policy.evaluate(pull.policyRequest, this.deps.options.honorRequestCacheControl);
      const ttl = policy.freshnessLifetime() - policy.age();
      if (freshness === 'fresh' || freshness === 'stale-allowed') {
        pull.ctx.log.outcome = freshness === 'fresh' ? 'hit' : 'stale';
        return this.answer(pull, record, { hit: true, ttl });
      }
      if (freshness === 'stale-while-revalidate') {
        pull.ctx.log.outcome = 'stale';
        this.refreshInBackground(pull, record);
        return this.answer(pull, record, { hit: true, ttl, detail: 'stale-while-revalidate' });
      }
      if (this.onlyIfCached(pull)) return undefined;
      // A range starting past the end revalidates with the last piece (a Range past the end would be refused or ignored).
      const { pieceSize, length } = record.sliced!;
      const probe = await this.probeCollapsed(pull, Math.min(this.firstPiece(pull, pieceSize), Math.ceil(length / pieceSize) - 1), 'stale', record);
      return probe.kind === 'answer' ? probe.answer : this.answer(pull, probe.record, probe.fields, probe.first);
    }
    if (pull.isHead || this.onlyIfCached(pull)) return undefined;
    if (pull.described.headers.range === undefined && !this.prefixes.some((prefix) => pull.described.pathname.startsWith(prefix))) return undefined;
    if (this.ignoresRanges(pull)) return undefined;
    const probe = await this.probeCollapsed(pull, this.firstPiece(pull, this.pieceSize), reason);
    return probe.kind === 'answer' ? probe.answer : this.answer(pull, probe.record, probe.fields, probe.first);
  }

  /**
   * Stale-while-revalidate: one conditional piece request in the
   * background per record at a time; its answer (a 304, or a new version's
   * first piece, read into the cache) is no client's.
   */
  private refreshInBackground(pull: PullRequest, record: CacheEntryMeta): void {
    if (this.refreshing.has(record.key)) return;
    this.refreshing.add(record.key);
    const background: PullRequest = { ...pull, isHead: true, ctx: { ...pull.ctx, log: {}, sendEarlyHints: undefined } };
    const { pieceSize, length } = record.sliced!;
    const work = this.probeCollapsed(background, Math.min(this.firstPiece(pull, pieceSize), Math.ceil(length / pieceSize) - 1), 'stale', record)
      .then(async (probe) => {
        if (probe.kind === 'answer' && probe.answer.body instanceof ReadableStream) await probe.answer.body.cancel();
        if (probe.kind === 'sliced' && probe.first && 'arriving' in probe.first.piece) await probe.first.piece.arriving.cancel();
      })
      .catch(() => {
        // A failed refresh leaves the stale record; the next request tries again.
      })
      .finally(() => this.refreshing.delete(record.key));
    pull.ctx.waitUntil(work);
  }

  /** The object's record, if it has one. */
  private async record(key: string): Promise<CacheEntryMeta | undefined> {
    const [entry] = await this.deps.store.get(recordKey(key));
    return entry?.meta.sliced ? entry.meta : undefined;
  }

  private onlyIfCached(pull: PullRequest): boolean {
    return this.deps.options.honorRequestCacheControl && parseCacheControl(pull.described.headers['cache-control']).has('only-if-cached');
  }

  /** The piece holding the first byte of the request's range (0 without one, or for a suffix range: its length is not known yet). */
  private firstPiece(pull: PullRequest, pieceSize: number): number {
    const match = /^\s*bytes\s*=\s*(\d+)\s*-/i.exec(pull.described.headers.range ?? '');
    return match ? Math.floor(Number(match[1]) / pieceSize) : 0;
  }

  private ignoresRanges(pull: PullRequest): boolean {
    const host = pull.described.cacheKey.host;
    const until = this.rangeIgnored.get(host);
    if (until === undefined) return false;
    if (until > this.deps.now()) return true;
    this.rangeIgnored.delete(host);
    return false;
  }

  private rememberRangesIgnored(pull: PullRequest): void {
    const host = pull.described.cacheKey.host;
    this.rangeIgnored.delete(host);
    this.rangeIgnored.set(host, this.deps.now() + RANGE_IGNORED_MS);
    if (this.rangeIgnored.size > MAX_RANGE_IGNORING_HOSTS) this.rangeIgnored.delete(this.rangeIgnored.keys().next().value!);
  }

  /**
   * One probe per piece at a time: followers wait for it, then serve again
   * from the top (the record, the piece or the whole object is stored by then).
   */
  private async probeCollapsed(pull: PullRequest, index: number, reason: ForwardReason, stale?: CacheEntryMeta): Promise<Probe> {
    const key = pieceKey(pull.key, index);
    const restarts = this.restarts.get(pull) ?? 0;
    const flight = restarts < MAX_RESTARTS ? this.flights.join(key) : undefined;
    if (flight) {
      const outcome = await waitForFlight(flight, this.deps.options.collapseTimeout);
      pull.ctx.log.collapsed = true;
      if (outcome !== 'timeout' && outcome.kind === 'failed') throw outcome.error;
      this.restarts.set(pull, restarts + 1);
      return { kind: 'answer', answer: await this.hooks.restart(pull) };
    }
    let land: (outcome: FlightOutcome) => void = () => {};
    if (restarts < MAX_RESTARTS) {
      const led = await this.leadAcross(key);
      if ('followed' in led) {
        // Another worker probed: the cache holds what it found.
        pull.ctx.log.collapsed = true;
        if (led.followed.kind === 'failed') throw led.followed.error;
        this.restarts.set(pull, restarts + 1);
        return { kind: 'answer', answer: await this.hooks.restart(pull) };
      }
      land = led.land;
    }
    try {
      return await this.probe(pull, index, reason, stale, land);
    } catch (error) {
      land({ kind: 'failed', error });
      throw error;
    }
  }

  /** The request headers of a piece: the described request's, identity coding (ranges of one representation), no preconditions of the client's. */
  private pieceHeaders(pull: PullRequest, start: number, end: number): Headers {
    const { described } = pull;
    const headers = originRequestHeaders(described.upstream, described.headers, described.forwarding);
    for (const name of FILL_STRIPPED_REQUEST_FIELDS) headers.delete(name);
    headers.delete('accept-encoding');
    headers.set('range', `bytes=${start}-${end}`);
    return headers;
  }

  private async ask(pull: PullRequest, headers: Headers): Promise<Response> {
    const started = this.deps.now();
    try {
      return await this.deps.origin.fetch({ method: 'GET', pathAndQuery: pull.described.upstreamPath, headers, cacheKey: pull.key });
    } finally {
      pull.ctx.log.originMs = this.deps.now() - started;
    }
  }

  /**
   * Ask for the piece at `index` not knowing the length (or revalidating a
   * stale record, conditionally), and decide from the answer whether the
   * object is sliced.
   */
  private async probe(pull: PullRequest, index: number, reason: ForwardReason, stale: CacheEntryMeta | undefined, land: (outcome: FlightOutcome) => void): Promise<Probe> {
    const { policies, now } = this.deps;
    const pieceSize = stale?.sliced?.pieceSize ?? this.pieceSize;
    const start = index * pieceSize;
    const end = stale ? Math.min(stale.sliced!.length, start + pieceSize) - 1 : start + pieceSize - 1;
    const headers = this.pieceHeaders(pull, start, end);
    if (stale?.headers.etag !== undefined) headers.set('if-none-match', stale.headers.etag);
    if (stale?.headers['last-modified'] !== undefined) headers.set('if-modified-since', stale.headers['last-modified']);
    let response: Response;
    try {
      response = await this.ask(pull, headers);
    } catch (error) {
      if (stale && this.hooks.policyOf(stale).canServeStaleOnError(this.hooks.graceFor(pull))) {
        land({ kind: 'failed', error });
        return this.staleAnswer(pull, stale, index);
      }
      throw error;
    }
    const status = response.status;

    if (stale && status === 304) {
      await response.body?.cancel();
      const freshened = policies.freshen(this.hooks.policyOf(stale), stale.headers, 200, pull.policyRequest, {
        status: 304,
        headers: this.origin.storedFields(pull, response.headers).stored,
      });
      if (!freshened) {
        // The 304 does not describe what is stored (RFC 9111 4.3.3): start over, unconditionally.
        await this.drop(pull.key, stale);
        return this.probe(pull, index, reason, undefined, land);
      }
      const record: CacheEntryMeta = {
        ...stale,
        headers: freshened.headers,
        policy: freshened.policy.toObject(),
        storedAt: now(),
        expiresAt: freshened.policy.usefulUntil(this.hooks.graceFor(pull), KEEP_WITH_VALIDATOR_SECONDS),
        invalidated: false,
      };
      await this.deps.store.updateMeta(record);
      land({ kind: 'stored' });
      pull.ctx.log.outcome = 'revalidated';
      const ttl = freshened.policy.freshnessLifetime() - freshened.policy.age();
      // The pieces the answer needs are read (or fetched) by the answer: a 304, HEAD or 416 needs none.
      return { kind: 'sliced', record, fields: { fwd: 'stale', fwdStatus: 304, ttl } };
    }

    if (status === 206) {
      const split = this.origin.storedFields(pull, response.headers);
      const range = parseContentRange(split.stored['content-range']);
      if (range && start === 0 && range.start === 0 && range.end === range.length - 1) {
        // The whole object in one piece: stored whole (as a 200) like any fill, the client's range cut from it.
        if (stale) await this.drop(pull.key, stale);
        return { kind: 'answer', answer: await this.origin.respond(pull, { reason, land }, wholeResponse(response, range.length)) };
      }
      const judged = range && range.start === start && this.judge(pull, split, range.length);
      if (!judged) {
        // Not something to slice (not storable, no strong validator, a coding, Vary): the client's range, unstored.
        await response.body?.cancel();
        if (stale) await this.drop(pull.key, stale);
        land({ kind: 'uncacheable' });
        return { kind: 'answer', answer: await this.origin.fetch(pull, { reason, forwardRange: true }, false) };
      }
      const sameVersion = stale !== undefined && sameValidators(stale.headers, judged.headers);
      if (stale && !sameVersion) await this.drop(pull.key, stale);
      const record = this.recordFor(pull, judged, pieceSize, range.length);
      // The record is committed while the piece streams (its first byte does not wait for a disk commit);
      // those waiting on the probe are answered once both are stored.
      const recordStored = this.deps.store.createWriter(record.key, '', 0).commit(record).catch(() => false);
      const piece = this.streamingPiece(pull, record, index, response, this.purges.begin(), (outcome) => {
        void recordStored.then((stored) => land(stored ? outcome : { kind: 'uncacheable' }));
      });
      pull.ctx.log.outcome = stale ? 'stale' : 'miss';
      const ttl = judged.policy.freshnessLifetime() - judged.policy.age();
      return { kind: 'sliced', record, first: { index, piece }, fields: stale ? { fwd: 'stale', fwdStatus: 206, stored: true, ttl } : { fwd: reason, stored: true, ttl } };
    }

    if (stale && status >= 500 && this.hooks.policyOf(stale).canServeStaleOnError(this.hooks.graceFor(pull))) {
      await response.body?.cancel();
      land({ kind: 'failed', error: new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', `The origin answered ${status}.`) });
      return this.staleAnswer(pull, stale, index);
    }
    // A whole 200: this origin ignores Range. Anything else (404, 416, 5xx)
    // is the object's answer. Either way it goes the usual way, stored whole if it may be.
    if (status === 200) this.rememberRangesIgnored(pull);
    if (stale && status < 500) await this.drop(pull.key, stale);
    return { kind: 'answer', answer: await this.origin.respond(pull, { reason, land }, response) };
  }

  /** A stale record standing in for a failing origin (stale-if-error, grace): only from pieces already stored. */
  private async staleAnswer(pull: PullRequest, stale: CacheEntryMeta, index: number): Promise<Probe> {
    const piece = await this.storedPiece(pull.key, stale, index);
    if (!piece) throw new EdgeError('EDGE_ORIGIN_UNREACHABLE', 'The origin could not be reached.');
    pull.ctx.log.outcome = 'stale';
    return { kind: 'sliced', record: stale, first: { index, piece }, fields: { fwd: 'stale', detail: 'stale-if-error' } };
  }

  /** The object's record (no body): the fields and freshness every piece is judged and served by. */
  private recordFor(pull: PullRequest, judged: { headers: Record<string, string>; policy: EdgePolicy }, pieceSize: number, length: number): CacheEntryMeta {
    return {
      key: recordKey(pull.key),
      variant: '',
      status: 200,
      headers: judged.headers,
      policy: judged.policy.toObject(),
      size: 0,
      tags: storedTags(judged.headers),
      storedAt: this.deps.now(),
      expiresAt: judged.policy.usefulUntil(this.hooks.graceFor(pull), KEEP_WITH_VALIDATOR_SECONDS),
      sourceKey: pull.key,
      sliced: { pieceSize, length },
    };
  }

  /**
   * May this 206 be sliced? The fields it would be stored with (the
   * representation's: no Content-Range, the whole length) and their policy,
   * or undefined: not storable, a content coding, Vary, Set-Cookie, or no
   * strong validator to keep the pieces of one version together.
   */
  private judge(
    pull: PullRequest,
    split: StoredFields,
    length: number,
  ): { headers: Record<string, string>; policy: EdgePolicy } | undefined {
    const headers = { ...split.stored };
    delete headers['content-range'];
    headers['content-length'] = String(length);
    const policy = this.deps.policies.fromResponse(pull.policyRequest, { status: 200, headers });
    const coding = headers['content-encoding'];
    const vary = varyNames(headers.vary);
    const strongEtag = headers.etag !== undefined && !headers.etag.startsWith('W/');
    const ok =
      policy.storable() &&
      (split.setCookies.length === 0 || this.deps.options.cacheSetCookie) &&
      (policy.freshnessLifetime() > 0 || policy.hasValidator()) &&
      (coding === undefined || coding === 'identity') &&
      vary !== '*' &&
      vary.length === 0 &&
      (strongEtag || (headers.etag === undefined && headers['last-modified'] !== undefined));
    return ok ? { headers, policy } : undefined;
  }

  /**
   * A whole `200` longer than --max-object-size, for a plain GET: stored in
   * pieces as it streams to the client (no second request) instead of
   * passing uncached; later ranges and GETs are answered from the pieces.
   * Undefined when it may not be sliced (the caller passes it on as before).
   */
  async sliceWhole(pull: PullRequest, plan: OriginFetchPlan, response: Response, split: StoredFields, length: number): Promise<Answer | undefined> {
    if (!this.enabled || pull.isHead || plan.stale || plan.forwardRange || response.body === null) return undefined;
    if (pull.described.headers.range !== undefined || pull.described.credentials !== undefined || length <= this.pieceSize) return undefined;
    const judged = this.judge(pull, split, length);
    if (!judged) return undefined;
    const { options } = this.deps;
    const record = this.recordFor(pull, judged, this.pieceSize, length);
    // The first pieces' flights are led before the record can be seen: a request that finds the record waits on them.
    const ahead = new Map<number, (outcome: FlightOutcome) => void>();
    for (let i = 0; i <= Math.min(READ_AHEAD, Math.ceil(length / this.pieceSize) - 1); i++) ahead.set(i, this.flights.lead(pieceKey(pull.key, i)));
    const stored = await this.deps.store.createWriter(record.key, '', 0).commit(record).catch(() => false);
    if (!stored) {
      for (const land of ahead.values()) land({ kind: 'uncacheable' });
      return undefined;
    }
    const ttl = judged.policy.freshnessLifetime() - judged.policy.age();
    const headers: Record<string, string> = {
      ...storedAnswerHeaders({ ...record, size: length }, this.dropped, options.name),
      age: '0',
      'cache-status': formatCacheStatus(options.name, { fwd: plan.reason, stored: true, ttl }, split.upstreamStatus),
    };
    const body = this.piecesWhileStreaming(pull, record, response.body, ahead);
    // Followers of this fill find the record, then wait on the pieces' flights.
    plan.land?.({ kind: 'stored' });
    if (clientValidatorsMatch(pull.described.headers, record.headers)) {
      // No client reads it: it is stored all the same (as a fill for a 304 is).
      drainInBackground(body, pull.ctx.waitUntil);
      return { status: 304, headers: notModifiedHeaders(headers), body: null };
    }
    return { status: 200, headers, body };
  }

  /**
   * Pass `source` (the whole object) through, storing it piece by piece:
   * each piece is committed before its last bytes go on. The piece being
   * written and the {@link READ_AHEAD} after it are flights led by this
   * stream, so requests that need them (collapsed requests for the same
   * object, which read that far ahead) wait instead of fetching them.
   * A client that leaves stops the origin: the pieces so far stay stored.
   */
  private piecesWhileStreaming(
    pull: PullRequest,
    record: CacheEntryMeta,
    source: ReadableStream<Uint8Array>,
    /** Flights of the pieces ahead, led before their bytes arrive (the first ones by the caller). */
    ahead: Map<number, (outcome: FlightOutcome) => void>,
  ): ReadableStream<Uint8Array> {
    const { store } = this.deps;
    const { length } = record.sliced!;
    const reader = source.getReader();
    const fill = this.purges.begin();
    let index = 0;
    let filled = 0;
    let total = 0;
    let piece: { writer: CacheWriter; land: (outcome: FlightOutcome) => void } | undefined;
    const last = Math.ceil(length / record.sliced!.pieceSize) - 1;
    const leadThrough = (through: number) => {
      for (let i = index; i <= Math.min(through, last); i++) if (!ahead.has(i)) ahead.set(i, this.flights.lead(pieceKey(pull.key, i)));
    };
    const stop = async (error?: unknown) => {
      fill.end();
      const outcome: FlightOutcome = error === undefined ? { kind: 'uncacheable' } : { kind: 'failed', error };
      for (const land of ahead.values()) land(outcome);
      ahead.clear();
      if (!piece) return;
      const { writer, land } = piece;
      piece = undefined;
      await writer.abort().catch(() => {});
      land(outcome);
    };
    const commit = async () => {
      const { writer, land } = piece!;
      piece = undefined;
      let stored = false;
      try {
        if (!this.purges.purgedSince(fill.epoch, pull.key, record.tags)) {
          stored = await this.purges.landing(writer.commit(this.pieceMeta(pull, record, index)));
        } else {
          await writer.abort();
        }
      } catch {
        // A store that cannot take a piece does not fail the client; the piece is fetched again when needed.
      }
      land(stored ? { kind: 'stored' } : { kind: 'uncacheable' });
    };
    return new ReadableStream<Uint8Array>(
      {
        pull: async (controller) => {
          let result: ReadableStreamReadResult<Uint8Array>;
          try {
            result = await reader.read();
          } catch (cause) {
            const error = new EdgeError('EDGE_ORIGIN_UNREACHABLE', "The origin's body broke off before its end.", { cause });
            await stop(error);
            controller.error(error);
            return;
          }
          if (result.done) {
            if (total !== length) {
              const error = new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', 'The origin sent a body of another length than it announced.');
              await stop(error);
              controller.error(error);
              return;
            }
            fill.end();
            controller.close();
            return;
          }
          const chunk = result.value;
          total += chunk.byteLength;
          if (total > length) {
            const error = new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', 'The origin sent a body of another length than it announced.');
            await reader.cancel().catch(() => {});
            await stop(error);
            controller.error(error);
            return;
          }
          for (let offset = 0; offset < chunk.byteLength; ) {
            if (!piece) {
              leadThrough(index + READ_AHEAD);
              const land = ahead.get(index)!;
              ahead.delete(index);
              piece = { writer: store.createWriter(pieceKey(pull.key, index), '', pieceLength(record, index)), land };
            }
            const n = Math.min(chunk.byteLength - offset, pieceLength(record, index) - filled);
            try {
              piece.writer.write(chunk.subarray(offset, offset + n));
            } catch {
              // Declined by the store: the piece is simply not kept.
            }
            offset += n;
            filled += n;
            if (filled === pieceLength(record, index)) {
              await commit();
              index++;
              filled = 0;
            }
          }
          controller.enqueue(chunk);
        },
        cancel: async (reason) => {
          await stop();
          await reader.cancel(reason).catch(() => {});
        },
      },
      { highWaterMark: 0 },
    );
  }

  /** Answer from the record: validators, HEAD, the range (If-Range honoured), the body from pieces. */
  private async answer(pull: PullRequest, record: CacheEntryMeta, fields: CacheStatusFields, first?: FirstPiece): Promise<Answer> {
    const { pieceSize, length } = record.sliced!;
    // A piece still arriving that this answer does not send is let go: it is read into the cache on its own.
    const unused = () => {
      if (first && 'arriving' in first.piece) void first.piece.arriving.cancel();
    };
    const { options } = this.deps;
    const policy = this.hooks.policyOf(record);
    const headers: Record<string, string> = {
      ...storedAnswerHeaders({ ...record, size: length }, this.dropped, options.name),
      age: String(Math.max(0, Math.floor(policy.age()))),
    };
    const request = pull.described.headers;
    if (clientValidatorsMatch(request, record.headers)) {
      unused();
      return { status: 304, headers: { ...notModifiedHeaders(headers), 'cache-status': formatCacheStatus(options.name, fields) }, body: null };
    }
    if (pull.isHead) {
      unused();
      return { status: 200, headers: { ...headers, 'cache-status': formatCacheStatus(options.name, fields) }, body: null };
    }
    let status = 200;
    let start = 0;
    let end = length - 1;
    if (request.range !== undefined) {
      const range = decideRange(request, record.headers, length);
      if (range.kind === 'unsatisfiable') {
        headers['content-range'] = `bytes */${length}`;
        delete headers['content-length'];
        unused();
        return { status: 416, headers: { ...headers, 'cache-status': formatCacheStatus(options.name, fields) }, body: null };
      }
      if (range.kind === 'partial') {
        status = 206;
        ({ start, end } = range);
        headers['content-range'] = `bytes ${start}-${end}/${length}`;
        headers['content-length'] = String(end - start + 1);
      }
    }
    const index = Math.floor(start / pieceSize);
    if (this.onlyIfCached(pull) && !(await this.allStored(pull.key, record, index, Math.floor(end / pieceSize)))) {
      // RFC 9111 5.2.1.7: part of it would have to come from the origin.
      unused();
      pull.ctx.log.outcome = 'miss';
      return answerGatewayTimeout(options.name, { fwd: 'partial', detail: 'only-if-cached' });
    }
    let piece = first?.index === index ? first.piece : undefined;
    if (!piece) {
      unused();
      // The first piece's answer is in before the status line, so a changed or failing origin still gets a clean answer.
      try {
        const got = await this.ensurePiece(pull, record, index, true);
        piece = got.piece;
        if (got.fetched && fields.hit) fields = { fwd: 'partial', stored: true, ttl: fields.ttl };
      } catch (error) {
        if (!CHANGED.has(error as Error) || (this.restarts.get(pull) ?? 0) >= MAX_RESTARTS) throw error;
        // Changed at the origin: start over with the new version.
        this.restarts.set(pull, (this.restarts.get(pull) ?? 0) + 1);
        return this.hooks.restart(pull);
      }
    }
    headers['cache-status'] = formatCacheStatus(options.name, fields);
    return { status, headers, body: this.body(pull, record, start, end, piece) };
  }

  /**
   * The bytes `[start, end]` of the object, piece after piece, fetching
   * up to {@link READ_AHEAD} pieces ahead of the one being sent. A piece
   * that cannot be had (the object changed, the origin failed) ends the
   * body with an error: a client never gets a short or spliced body.
   */
  private body(pull: PullRequest, record: CacheEntryMeta, start: number, end: number, first: Piece): ReadableStream<Uint8Array> {
    const { pieceSize } = record.sliced!;
    const firstIndex = Math.floor(start / pieceSize);
    const last = Math.floor(end / pieceSize);
    let index = firstIndex;
    const pending = new Map<number, Promise<Piece>>([[firstIndex, Promise.resolve(first)]]);
    const want = (i: number) => {
      if (i > last || pending.has(i)) return;
      const promise = this.ensurePiece(pull, record, i).then((got) => got.piece);
      // Fetched ahead: a failure is reported when (if) the body reaches this piece.
      promise.catch(() => {});
      pull.ctx.waitUntil(promise.catch(() => {}));
      pending.set(i, promise);
    };
    let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
    const { waitUntil } = pull.ctx;
    return new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          try {
            for (;;) {
              if (!reader) {
                if (index > last) {
                  controller.close();
                  return;
                }
                want(index);
                for (let ahead = index + 1; ahead <= index + READ_AHEAD; ahead++) want(ahead);
                const piece = await pending.get(index)!;
                pending.delete(index);
                const from = index === firstIndex ? start - index * pieceSize : 0;
                const to = index === last ? end - index * pieceSize : pieceLength(record, index) - 1;
                reader = pieceStream(piece, from, to, waitUntil).getReader();
              }
              const { done, value } = await reader.read();
              if (!done) {
                controller.enqueue(value);
                return;
              }
              reader = undefined;
              index++;
            }
          } catch (error) {
            controller.error(error);
          }
        },
        cancel(reason) {
          return reader?.cancel(reason);
        },
      },
      { highWaterMark: 0 },
    );
  }

  /** Are pieces `from` to `to` of this version all stored? */
  private async allStored(key: string, record: CacheEntryMeta, from: number, to: number): Promise<boolean> {
    for (let index = from; index <= to; index++) if (!(await this.storedPiece(key, record, index))) return false;
    return true;
  }

  /** A stored piece of this version of the object, if there is one. */
  private async storedPiece(key: string, record: CacheEntryMeta, index: number): Promise<CacheEntry | undefined> {
    const [entry] = await this.deps.store.get(pieceKey(key, index));
    // A soft purge marks the pieces too; they are still good once the record is revalidated (same validators).
    if (!entry || entry.meta.size !== pieceLength(record, index) || !sameValidators(entry.meta.headers, record.headers)) return undefined;
    return entry;
  }

  /**
   * The stored piece, or else the piece fetched now (once for everyone who
   * needs it at the same time). `streaming`: the request that fetches it gets
   * it as it arrives (its first byte need not wait for the piece's last);
   * others wait until it is stored.
   */
  private async ensurePiece(pull: PullRequest, record: CacheEntryMeta, index: number, streaming = false): Promise<{ piece: Piece; fetched: boolean }> {
    const stored = await this.storedPiece(pull.key, record, index);
    if (stored) return { piece: stored, fetched: false };
    const key = pieceKey(pull.key, index);
    const flight = this.flights.join(key);
    if (flight) {
      const outcome = await waitForFlight(flight, this.deps.options.collapseTimeout);
      const after = await this.storedPiece(pull.key, record, index);
      if (after) return { piece: after, fetched: false };
      if (outcome !== 'timeout' && outcome.kind === 'failed') throw outcome.error;
      return { piece: await this.piece(pull, record, index), fetched: true };
    }
    const led = await this.leadAcross(key);
    if ('followed' in led) {
      const after = await this.storedPiece(pull.key, record, index);
      if (after) return { piece: after, fetched: false };
      if (led.followed.kind === 'failed') throw led.followed.error;
      return { piece: await this.piece(pull, record, index), fetched: true };
    }
    if (streaming) {
      const fill = this.purges.begin();
      try {
        const response = await this.askPiece(pull, record, index);
        return { piece: this.streamingPiece(pull, record, index, response, fill, led.land), fetched: true };
      } catch (error) {
        fill.end();
        led.land({ kind: 'failed', error });
        throw error;
      }
    }
    try {
      const piece = await this.piece(pull, record, index);
      led.land({ kind: 'stored' });
      return { piece, fetched: true };
    } catch (error) {
      led.land({ kind: 'failed', error });
      throw error;
    }
  }

  /**
   * Lead this process's flight for `key`, and hold the fill lease of the
   * whole node for it (cluster workers, `collapse.ts`): or learn the
   * outcome of another worker's fetch of it (this process's followers get it too).
   */
  private async leadAcross(key: string): Promise<{ land: (outcome: FlightOutcome) => void } | { followed: FlightOutcome }> {
    const land = this.flights.lead(key);
    const lease = await (this.deps.fills ?? SOLE_PROCESS_FILLS).acquire(key);
    if (lease.role === 'follow') {
      land(lease.outcome);
      return { followed: lease.outcome };
    }
    if (lease.role === 'alone') return { land };
    return {
      land: (outcome) => {
        lease.land(outcome);
        land(outcome);
      },
    };
  }

  /** Fetch piece `index` of the record's version from the origin and store it. */
  private async piece(pull: PullRequest, record: CacheEntryMeta, index: number): Promise<Piece> {
    const stored = await this.storedPiece(pull.key, record, index);
    if (stored) return stored;
    const fill = this.purges.begin();
    try {
      return (await this.storePiece(pull, record, index, (await this.askPiece(pull, record, index)).body, fill.epoch))!;
    } finally {
      fill.end();
    }
  }

  /**
   * Ask the origin for piece `index` of the record's version: its answer
   * once its status and fields say it is that piece of that version (the
   * body still to be read). A changed object drops the record and pieces.
   */
  private async askPiece(pull: PullRequest, record: CacheEntryMeta, index: number): Promise<Response> {
    const start = index * record.sliced!.pieceSize;
    const end = start + pieceLength(record, index) - 1;
    const headers = this.pieceHeaders(pull, start, end);
    // The origin answers 412 rather than a piece of another version (RFC 9110 13.1.1, 13.1.4).
    const etag = record.headers.etag;
    if (etag !== undefined && !etag.startsWith('W/')) headers.set('if-match', etag);
    else if (record.headers['last-modified'] !== undefined) headers.set('if-unmodified-since', record.headers['last-modified']);
    {
      const response = await this.ask(pull, headers);
      const range = response.status === 206 ? parseContentRange(response.headers.get('content-range') ?? undefined) : undefined;
      const validators = { etag: response.headers.get('etag') ?? undefined, 'last-modified': response.headers.get('last-modified') ?? undefined };
      if (response.status === 412 || response.status === 200 || (response.status === 206 && (!sameValidators(validators, record.headers) || range?.length !== record.sliced!.length))) {
        await response.body?.cancel();
        if (response.status === 200) this.rememberRangesIgnored(pull);
        await this.drop(pull.key, record);
        throw changedError();
      }
      if (!range || range.start !== start || range.end !== end) {
        await response.body?.cancel();
        throw new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', `The origin answered ${response.status} to a request for a piece.`, { details: { upstreamStatus: response.status } });
      }
      return response;
    }
  }

  /**
   * A piece passed on as it arrives while it is stored. The origin is read
   * at its own pace, not the client's (`tee`: a slow client has the rest
   * buffered, at most one piece), so requests waiting on this piece do not
   * wait for that client. `land` is told once it is stored or not, `fill`
   * ended then.
   */
  private streamingPiece(
    pull: PullRequest,
    record: CacheEntryMeta,
    index: number,
    response: Response,
    fill: { epoch: number; end: () => void },
    land: (outcome: FlightOutcome) => void,
  ): Piece {
    const body = response.body ?? new ReadableStream<Uint8Array>({ start: (controller) => controller.close() });
    const [toStore, toClient] = body.tee();
    const stored = this.storePiece(pull, record, index, toStore, fill.epoch, false).then(
      (piece) => land(piece ? { kind: 'stored' } : { kind: 'uncacheable' }),
      (error: unknown) => land({ kind: 'failed', error }),
    );
    pull.ctx.waitUntil(stored.finally(fill.end));
    return { arriving: toClient };
  }

  /** The stored fields of piece `index`: the version's validators and its place in the object. */
  private pieceMeta(pull: PullRequest, record: CacheEntryMeta, index: number): CacheEntryMeta {
    const { now } = this.deps;
    const size = pieceLength(record, index);
    const start = index * record.sliced!.pieceSize;
    return {
      key: pieceKey(pull.key, index),
      variant: '',
      status: 206,
      headers: { ...validatorsOf(record.headers), 'content-range': `bytes ${start}-${start + size - 1}/${record.sliced!.length}` },
      policy: record.policy,
      size,
      tags: record.tags,
      storedAt: now(),
      // Pieces are checked against the record on every use: they may outlive its freshness and serve after a 304.
      expiresAt: Math.max(record.expiresAt, now() + KEEP_WITH_VALIDATOR_SECONDS * 1000),
      sourceKey: pull.key,
    };
  }

  /**
   * Read a piece's body into its entry. With `keepBytes` also into memory:
   * the bytes answer even if a purge keeps them out of the store; without,
   * undefined when the piece was not stored.
   */
  private async storePiece(pull: PullRequest, record: CacheEntryMeta, index: number, body: ReadableStream<Uint8Array> | null, epoch: number, keepBytes = true): Promise<Piece | undefined> {
    const size = pieceLength(record, index);
    const writer = this.deps.store.createWriter(pieceKey(pull.key, index), '', size);
    const bytes = keepBytes ? new Uint8Array(size) : undefined;
    let at = 0;
    try {
      if (body) {
        const reader = body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          if (at + value.byteLength > size) {
            await reader.cancel();
            break;
          }
          bytes?.set(value, at);
          at += value.byteLength;
          writer.write(value);
        }
      }
    } catch (cause) {
      await writer.abort();
      throw new EdgeError('EDGE_ORIGIN_UNREACHABLE', "The origin's body broke off before its end.", { cause });
    }
    if (at !== size) {
      await writer.abort();
      throw new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', 'A piece from the origin did not match its Content-Range.');
    }
    // Purged while it was on its way: this request has it, the cache does not.
    if (this.purges.purgedSince(epoch, pull.key, record.tags)) {
      await writer.abort();
      return bytes;
    }
    const stored = await this.purges.landing(writer.commit(this.pieceMeta(pull, record, index)));
    if (!stored) return bytes;
    return (await this.storedPiece(pull.key, record, index)) ?? bytes;
  }

  /** Remove the object's record and pieces, unless another request already stored a newer version. */
  private async drop(key: string, version: CacheEntryMeta): Promise<void> {
    const current = await this.record(key);
    if (current && !sameValidators(current.headers, version.headers)) return;
    const { store } = this.deps;
    const doomed: string[] = [];
    for await (const meta of store.list({ sourceKey: key })) {
      if (parseCacheKey(meta.key)?.derived?.kind === 'slice') doomed.push(meta.key);
    }
    await Promise.all([...new Set(doomed)].map((derived) => store.delete(derived)));
  }
}

/** The key of an object's record. */
export function recordKey(key: string): string {
  return derivedKey(key, { kind: 'slice' });
}

/** The key of piece `index` of an object. */
export function pieceKey(key: string, index: number): string {
  return derivedKey(key, { kind: 'slice', piece: index });
}

function pieceLength(record: CacheEntryMeta, index: number): number {
  const { pieceSize, length } = record.sliced!;
  return Math.min(pieceSize, length - index * pieceSize);
}

function pieceStream(piece: Piece, from: number, to: number, waitUntil: (promise: Promise<unknown>) => void): ReadableStream<Uint8Array> {
  // A piece still arriving: the bytes wanted, the rest still read into the cache; short of `to` is an error.
  if ('arriving' in piece) return exactly(sliceFill(piece.arriving, from, to, waitUntil), to - from + 1);
  if (piece instanceof Uint8Array) {
    const bytes = piece.subarray(from, to + 1);
    return new ReadableStream({ start: (controller) => (controller.enqueue(bytes), controller.close()) });
  }
  return piece.body.stream(from, to);
}

function validatorsOf(headers: Record<string, string | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  if (headers.etag !== undefined) out.etag = headers.etag;
  if (headers['last-modified'] !== undefined) out['last-modified'] = headers['last-modified'];
  return out;
}

/** Same ETag and same Last-Modified (each absent on both, or equal): the same version. */
function sameValidators(a: Record<string, string | undefined>, b: Record<string, string | undefined>): boolean {
  return a.etag === b.etag && a['last-modified'] === b['last-modified'];
}

/** `bytes first-last/length` (RFC 9110 14.4); undefined for anything else (`*` lengths included). */
export function parseContentRange(value: string | undefined): { start: number; end: number; length: number } | undefined {
  const match = /^\s*bytes\s+(\d+)-(\d+)\/(\d+)\s*$/i.exec(value ?? '');
  if (!match) return undefined;
  const [start, end, length] = [Number(match[1]), Number(match[2]), Number(match[3])];
  return start <= end && end < length ? { start, end, length } : undefined;
}

/** `source`, failing if it ends before `length` bytes (a piece cut short must not end a body cleanly). */
function exactly(source: ReadableStream<Uint8Array>, length: number): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  let seen = 0;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const { done, value } = await reader.read();
        if (!done) {
          seen += value.byteLength;
          controller.enqueue(value);
        } else if (seen === length) {
          controller.close();
        } else {
          controller.error(new EdgeError('EDGE_ORIGIN_UNREACHABLE', "The origin's body broke off before its end."));
        }
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
}

/** A 206 that holds the whole object, as the 200 it stands for. */
function wholeResponse(response: Response, length: number): Response {
  const headers = new Headers(response.headers);
  headers.delete('content-range');
  headers.set('content-length', String(length));
  return new Response(response.body, { status: 200, headers });
}
