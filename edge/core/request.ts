/**
 * The request-scoped types shared by the pull path, the origin fetch and
 * image variants: what a runtime hands in, what is logged, and a GET/HEAD
 * on its way through the cache.
 */
import type { CacheOutcome, ForwardReason } from './cache-status.js';
import type { FillCoordinator, FlightOutcome } from './collapse.js';
import type { BodyCoder } from './compression.js';
import type { Described } from './describe.js';
import type { EdgeOptions } from './options.js';
import type { OriginClient } from './origin/types.js';
import type { EdgePolicy, PolicyFactory, PolicyRequest } from './policy.js';
import type { RouteCacheRules } from './routes.js';
import type { CacheEntry, CacheStore } from './store/types.js';

/** Per-request facts recorded for the access log and metrics. */
export interface RequestLog {
  key?: string;
  outcome?: CacheOutcome;
  tier?: string;
  /** Time to the origin's response headers, ms. */
  originMs?: number;
  collapsed?: boolean;
  detail?: string;
}

/** What the runtime adapter provides for each request. */
export interface RequestContext {
  /** Address of the connected peer. */
  clientIp?: string;
  /** Keep background work (refreshes, cache fills) alive after the response is sent. */
  waitUntil(promise: Promise<unknown>): void;
  /** Relay a 103 Early Hints response to the client, where the runtime can. */
  sendEarlyHints?(headers: Record<string, string | string[]>): void;
  log: RequestLog;
}

/** A request as the pull path reads it: no Web `Request` needed. */
export interface IncomingRequest {
  method: string;
  /** Absolute URL. */
  url: string;
  /** Lower-case names, repeated fields joined with `, `. */
  headers: Record<string, string>;
  /** The request body (methods other than GET/HEAD). */
  body?: () => ReadableStream<Uint8Array> | null;
}

export interface PullDeps {
  options: EdgeOptions;
  store: CacheStore;
  origin: OriginClient;
  policies: PolicyFactory;
  now: () => number;
  /** Encodes and decodes bodies (`compression.ts`); without one, bodies pass as the origin coded them. */
  coder?: BodyCoder;
  /** Fill leases shared with other processes (cluster workers). @default SOLE_PROCESS_FILLS: this process is alone */
  fills?: FillCoordinator;
}

/** A GET/HEAD on its way through the pull path. */
export interface PullRequest {
  described: Described;
  /** The key looked up and stored under (the described key, or an image variant's). */
  key: string;
  policyRequest: PolicyRequest;
  isHead: boolean;
  rules?: RouteCacheRules;
  ctx: RequestContext;
}

/** How one origin fetch is to go. */
export interface OriginFetchPlan {
  /** `HEAD` for a HEAD request whose answer will not be stored (it is passed); otherwise a GET fills the cache. */
  method?: 'HEAD';
  reason: ForwardReason;
  /**
   * Send the client's `Range` and `If-Range` to the origin, and pass its
   * answer (206, 416 or 200) unstored: for keys known to be uncacheable.
   */
  forwardRange?: boolean;
  /** The stale entry being revalidated, if any. */
  stale?: { entry: CacheEntry; policy: EdgePolicy };
  /** Lands the collapsing flight this request leads. */
  land?: (outcome: FlightOutcome) => void;
}

