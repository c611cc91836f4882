/**
 * Origin pools: several origin groups (each a set of members, HTTP origins
 * or S3 buckets), route rules that pick a group per request, and per group
 * load balancing, active health checks, passive ejection, a backup group
 * and sticky sessions for passing traffic. Like an ALB target group behind
 * listener rules, or an Envoy cluster with outlier detection.
 *
 * `createOriginClient()` is the one place the Node server builds its origin
 * client: a plain `UndiciOriginClient` or `S3OriginClient` for one URL, an
 * `OriginPool` for a list or a config file's `origins` section.
 */
import { createHash } from 'node:crypto';
import { isEdgeError } from '../core/errors.js';
import type { OriginClient, OriginRequest } from '../core/origin/types.js';
import { matchRoute, originsFromList, type OriginGroupConfig, type OriginsConfig, type RouteConfig } from '../core/routes.js';
import { S3OriginClient } from './s3-origin.js';
import { ORIGIN_RESET, UndiciOriginClient } from './undici-origin.js';

/** Timeouts and connection limits applied to every member (the node's origin options). */
export interface OriginTimeouts {
  /** @default 5000 */
  connectTimeout?: number;
  /** Time to response headers. @default 30000 */
  originTimeout?: number;
  /** Longest gap between body chunks. @default 30000 */
  bodyTimeout?: number;
  /** Keep-alive connections per member. @default 128 */
  originConnections?: number;
  /** TLS for https:// members (a `secureContext` trusting `--origin-ca`). @default Node's roots */
  originTls?: import('node:tls').ConnectionOptions;
}

export interface OriginPoolOptions extends OriginTimeouts {
  /** Groups and routes, as validated by `originsConfigSchema` (edge/core/routes.ts). */
  config: OriginsConfig;
  /** Default S3 credentials and region for s3:// members. @default process.env */
  env?: Record<string, string | undefined>;
  /** Clock for ejection windows and error times. @default Date.now */
  now?: () => number;
  /** Recent errors kept per member for `status()`. @default 10 */
  recentErrors?: number;
  /** Build a member's client; the default builds an UndiciOriginClient or S3OriginClient from its URL. */
  createMember?: (url: string, group: OriginGroupConfig) => OriginClient;
}

export interface OriginMemberStatus {
  /** Opaque, stable id (also the sticky-session cookie value). */
  id: string;
  /** The member's URL without credentials. */
  url: string;
  /** Active health-check state (members start healthy). */
  healthy: boolean;
  /** ISO time until which passive ejection keeps the member out, or null. */
  ejectedUntil: string | null;
  /** Healthy and not ejected: eligible for new requests. */
  available: boolean;
  inFlight: number;
  /** Requests sent (health checks not counted). */
  requests: number;
  /** Requests that failed to get an answer or got a 5xx. */
  failures: number;
  /** Newest last. */
  recentErrors: { at: string; message: string }[];
}

export interface OriginGroupStatus {
  name: string;
  balance: OriginGroupConfig['balance'];
  backup: string | null;
  healthCheck: { path: string; intervalMs: number } | null;
  /** Members eligible for new requests. */
  available: number;
  members: OriginMemberStatus[];
}

export interface OriginPoolStatus {
  groups: OriginGroupStatus[];
}

/** What `createOriginClient()` returns: an origin client, plus pool extras when it is a pool. */
export type EdgeOriginClient = OriginClient & {
  /** Per group and member health, load and recent errors (pools only), for `GET /_edge/origins`. */
  status?(): OriginPoolStatus;
  /** Start active health checks (pools only). */
  start?(): void;
};

export interface CreateOriginClientOptions extends OriginTimeouts {
  /** One URL (http://, https://, s3://) or a comma-separated list of them. */
  origin?: string;
  /** Groups and route rules from the config file; takes precedence over `origin`. */
  origins?: OriginsConfig;
  env?: Record<string, string | undefined>;
  now?: () => number;
}

/** Methods a cache may answer; other methods (and bypassed routes) are "passing" traffic. */
const CACHEABLE_METHODS = new Set(['GET', 'HEAD']);
/** Idempotent methods (RFC 9110 9.2.2): safe to send again when the first try never connected. */
const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']);
/**
 * Connection failures: the connect failed, or the connection closed or reset
 * before any answer (typically a kept-alive socket the member closed while
 * it restarted). Retried once on another member for idempotent requests
 * without a body; timeouts are not (the member may still be working on it).
 */
const CONNECT_FAILURES = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET', ORIGIN_RESET, 'EPIPE', 'UND_ERR_SOCKET']);

/** Build the client for one member URL. */
export function createMemberClient(url: string, options: OriginTimeouts & { s3?: OriginGroupConfig['s3']; env?: Record<string, string | undefined> } = {}): OriginClient {
  const timeouts = {
    connectTimeout: options.connectTimeout,
    headersTimeout: options.originTimeout,
    bodyTimeout: options.bodyTimeout,
    connections: options.originConnections,
  };
  if (url.startsWith('s3:')) return new S3OriginClient({ url, credentials: options.s3, env: options.env, ...timeouts });
  return new UndiciOriginClient({ url, ...timeouts, tls: options.originTls });
}

/** A URL for display: no user or password. */
function displayUrl(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.username = '';
    parsed.password = '';
    return parsed.href.replace(/\/$/, '');
  } catch {
    return '(invalid URL)';
  }
}

function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}

function failureCode(error: unknown): string | undefined {
  const cause = ((error as { cause?: unknown } | null)?.cause ?? error) as { code?: unknown; errors?: { code?: unknown }[] } | null;
  let code = cause?.code;
  // Happy-eyeballs connects (several addresses) fail with an AggregateError: use the first attempt's code.
  if (typeof code !== 'string' && Array.isArray(cause?.errors)) code = cause.errors[0]?.code;
  return typeof code === 'string' ? code : undefined;
}

function readCookie(header: string | null, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

class Member {
  healthy = true;
  okStreak = 0;
  failStreak = 0;
  /** Consecutive request failures, for passive ejection. */
  consecutiveFailures = 0;
  ejectedUntil = 0;
  inFlight = 0;
  requests = 0;
  failures = 0;
  checking = false;
  readonly recentErrors: { at: number; message: string }[] = [];

  constructor(
    readonly id: string,
    readonly url: string,
    readonly client: OriginClient,
    readonly group: Group,
  ) {}

  available(now: number): boolean {
    return this.healthy && this.ejectedUntil <= now;
  }
}

class Group {
  readonly members: Member[] = [];
  /** Rotation counter: round robin, and the tie-break for least outstanding. */
  turn = 0;
  timer?: NodeJS.Timeout;

  constructor(readonly config: OriginGroupConfig) {}

  available(now: number): Member[] {
    return this.members.filter((m) => m.available(now));
  }
}

export class OriginPool implements OriginClient {
  readonly label: string;
  private readonly groups = new Map<string, Group>();
  private readonly routes: readonly RouteConfig[];
  private readonly defaultGroup: Group;
  private readonly now: () => number;
  private readonly keepErrors: number;
  private started = false;
  private closed = false;

  constructor(options: OriginPoolOptions) {
    this.now = options.now ?? Date.now;
    this.keepErrors = options.recentErrors ?? 10;
    this.routes = options.config.routes;
    const build =
      options.createMember ??
      ((url: string, group: OriginGroupConfig) => createMemberClient(url, { ...options, s3: group.s3, env: options.env }));
    for (const config of options.config.groups) {
      const group = new Group(config);
      config.members.forEach((url, index) => {
        const client = build(url, config);
        // s3:// members label themselves (bucket, prefix, endpoint); http members are shown without credentials.
        const shown = url.startsWith('s3:') ? client.label : displayUrl(url);
        // Stable across restarts with the same config, so sticky cookies survive them; no credentials hashed.
        const id = createHash('sha256').update(`${config.name}\n${index}\n${shown}`).digest('hex').slice(0, 16);
        group.members.push(new Member(id, shown, client, group));
      });
      this.groups.set(config.name, group);
    }
    this.defaultGroup = this.groups.get(options.config.defaultGroup ?? options.config.groups[0]!.name)!;
    this.label =
      this.groups.size === 1
        ? this.defaultGroup.members.map((m) => m.url).join(', ')
        : [...this.groups.values()].map((g) => `${g.config.name}[${g.members.map((m) => m.url).join(', ')}]`).join(' ');
  }

  /** Start active health checks for groups that configure them (idempotent). Timers do not keep the process alive. */
  start(): void {
    if (this.started || this.closed) return;
    this.started = true;
    for (const group of this.groups.values()) {
      const check = group.config.healthCheck;
      if (!check) continue;
      const run = () => {
        for (const member of group.members) if (!member.checking) void this.check(member);
      };
      run();
      group.timer = setInterval(run, Math.max(check.interval, 10));
      group.timer.unref();
    }
  }

  async fetch(request: OriginRequest): Promise<Response> {
    const now = this.now();
    const route = this.route(request);
    const primary = route?.group !== undefined ? this.groups.get(route.group)! : this.defaultGroup;
    const group = this.servingGroup(primary, now);
    // No member available anywhere: try the primary's members anyway rather than fail outright (Envoy's panic mode).
    const available = group.available(now);
    const candidates = available.length > 0 ? available : group.members;

    const passing = !CACHEABLE_METHODS.has(request.method.toUpperCase()) || route?.cache?.bypass === true;
    const cookieName = passing ? group.config.stickyCookie : undefined;
    const wanted = cookieName ? readCookie(request.headers.get('cookie'), cookieName) : undefined;
    let member = (wanted !== undefined && candidates.find((m) => m.id === wanted)) || this.pick(group, candidates);

    const retryable = IDEMPOTENT_METHODS.has(request.method.toUpperCase()) && !request.body;
    const tried = new Set<Member>();
    for (;;) {
      tried.add(member);
      try {
        const response = await this.attempt(member, request);
        const cookie = cookieName && wanted !== member.id ? this.stickyCookie(cookieName, member, request) : undefined;
        return this.track(member, response, cookie);
      } catch (error) {
        const code = failureCode(error);
        if (!retryable || tried.size > 1 || code === undefined || !CONNECT_FAILURES.has(code) || request.signal?.aborted) throw error;
        const next = this.retryTarget(group, tried);
        if (!next) throw error;
        member = next;
      }
    }
  }

  /** Per group and member: health, ejection, load and recent errors. No credentials. */
  status(): OriginPoolStatus {
    const now = this.now();
    return {
      groups: [...this.groups.values()].map((group) => ({
        name: group.config.name,
        balance: group.config.balance,
        backup: group.config.backup ?? null,
        healthCheck: group.config.healthCheck ? { path: group.config.healthCheck.path, intervalMs: group.config.healthCheck.interval } : null,
        available: group.available(now).length,
        members: group.members.map((m) => ({
          id: m.id,
          url: m.url,
          healthy: m.healthy,
          ejectedUntil: m.ejectedUntil > now ? new Date(m.ejectedUntil).toISOString() : null,
          available: m.available(now),
          inFlight: m.inFlight,
          requests: m.requests,
          failures: m.failures,
          recentErrors: m.recentErrors.map((e) => ({ at: new Date(e.at).toISOString(), message: e.message })),
        })),
      })),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const group of this.groups.values()) clearInterval(group.timer);
    await Promise.allSettled([...this.groups.values()].flatMap((g) => g.members.map((m) => m.client.close?.())));
  }

  private route(request: OriginRequest): RouteConfig | undefined {
    if (this.routes.length === 0) return undefined;
    const headers: Record<string, string> = {};
    request.headers.forEach((value, name) => {
      headers[name] = value;
    });
    // The edge sets X-Forwarded-Host to the host the client asked for (Host itself is the member's).
    const host = (headers['x-forwarded-host'] ?? headers.host ?? '').split(',')[0]!.trim();
    const pathname = request.pathAndQuery.split('?')[0]!;
    return matchRoute(this.routes, { pathname, host, headers });
  }

  /** The primary group if it has an available member, else the first backup (following the chain) that has one. */
  private servingGroup(primary: Group, now: number): Group {
    const seen = new Set<Group>();
    for (let group: Group | undefined = primary; group && !seen.has(group); group = group.config.backup ? this.groups.get(group.config.backup) : undefined) {
      seen.add(group);
      if (group.members.some((m) => m.available(now))) return group;
    }
    return primary;
  }

  private pick(group: Group, candidates: Member[]): Member {
    const start = group.turn++ % candidates.length;
    if (group.config.balance === 'round-robin') return candidates[start]!;
    let best = candidates[start]!;
    for (let i = 1; i < candidates.length; i++) {
      const member = candidates[(start + i) % candidates.length]!;
      if (member.inFlight < best.inFlight) best = member;
    }
    return best;
  }

  /** Another member for a request whose first try never connected: same group, then its backups, then any untried member. */
  private retryTarget(group: Group, tried: Set<Member>): Member | undefined {
    const now = this.now();
    const lists: Member[][] = [group.available(now)];
    const seen = new Set<Group>([group]);
    for (let backup = group.config.backup ? this.groups.get(group.config.backup) : undefined; backup && !seen.has(backup); backup = backup.config.backup ? this.groups.get(backup.config.backup) : undefined) {
      seen.add(backup);
      lists.push(backup.available(now));
    }
    lists.push(group.members);
    for (const list of lists) {
      const untried = list.filter((m) => !tried.has(m));
      if (untried.length > 0) return this.pick(untried[0]!.group, untried);
    }
    return undefined;
  }

  private async attempt(member: Member, request: OriginRequest): Promise<Response> {
    member.inFlight++;
    member.requests++;
    let response: Response;
    try {
      response = await member.client.fetch(request);
    } catch (error) {
      member.inFlight--;
      // Aborts (the client left) say nothing about the member; EdgeErrors (unreachable, timeout, bad response) do.
      if (isEdgeError(error)) this.recordFailure(member, errorMessage(error));
      throw error;
    }
    if (response.status >= 500) this.recordFailure(member, `answered ${response.status}`);
    else member.consecutiveFailures = 0;
    return response;
  }

  private recordFailure(member: Member, message: string): void {
    const now = this.now();
    member.failures++;
    member.consecutiveFailures++;
    this.remember(member, message, now);
    const { ejectAfterFailures, ejectFor } = member.group.config;
    if (member.consecutiveFailures >= ejectAfterFailures && member.ejectedUntil <= now) {
      member.ejectedUntil = now + ejectFor;
      member.consecutiveFailures = 0;
      this.remember(member, `ejected for ${ejectFor} ms after ${ejectAfterFailures} consecutive failures`, now);
    }
  }

  private remember(member: Member, message: string, at: number): void {
    member.recentErrors.push({ at, message });
    if (member.recentErrors.length > this.keepErrors) member.recentErrors.shift();
  }

  private stickyCookie(name: string, member: Member, request: OriginRequest): string {
    const secure = request.headers.get('x-forwarded-proto')?.split(',')[0]?.trim() === 'https' ? '; Secure' : '';
    return `${name}=${member.id}; Path=/; HttpOnly; SameSite=Lax${secure}`;
  }

  /**
   * Count the request in flight until its body is read, cancelled or fails
   * (least-outstanding balances on whole exchanges, not on headers), and add
   * the sticky cookie when one is due.
   */
  private track(member: Member, response: Response, cookie: string | undefined): Response {
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      member.inFlight--;
    };
    const headers = cookie ? new Headers(response.headers) : response.headers;
    if (cookie) headers.append('set-cookie', cookie);
    if (!response.body) {
      finish();
      return cookie ? new Response(null, { status: response.status, statusText: response.statusText, headers }) : response;
    }
    const reader = response.body.getReader();
    const body = new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          try {
            const { done, value } = await reader.read();
            if (done) {
              finish();
              controller.close();
            } else {
              controller.enqueue(value);
            }
          } catch (error) {
            finish();
            controller.error(error);
          }
        },
        cancel(reason) {
          finish();
          return reader.cancel(reason);
        },
      },
      { highWaterMark: 0 },
    );
    return new Response(body, { status: response.status, statusText: response.statusText, headers });
  }

  private async check(member: Member): Promise<void> {
    const config = member.group.config.healthCheck!;
    member.checking = true;
    const signal = AbortSignal.timeout(config.timeout);
    let failure: string | undefined;
    try {
      const response = await member.client.fetch({
        method: 'GET',
        pathAndQuery: config.path,
        headers: new Headers({ 'user-agent': 'edge-health-check', accept: '*/*' }),
        signal,
      });
      await response.body?.cancel().catch(() => undefined);
      if (response.status >= config.healthyBelowStatus) failure = `health check ${config.path}: answered ${response.status}`;
    } catch (error) {
      failure = `health check ${config.path}: ${signal.aborted ? `no answer within ${config.timeout} ms` : errorMessage(error)}`;
    } finally {
      member.checking = false;
    }
    if (this.closed) return;
    if (failure === undefined) {
      member.failStreak = 0;
      member.okStreak++;
      if (member.okStreak >= config.healthyThreshold) {
        member.healthy = true;
        // As Envoy's successful_active_health_check_uneject_host (default on): a passing check ends a passive ejection.
        if (member.ejectedUntil > this.now()) member.ejectedUntil = 0;
      }
    } else {
      member.okStreak = 0;
      member.failStreak++;
      this.remember(member, failure, this.now());
      if (member.failStreak >= config.unhealthyThreshold) member.healthy = false;
    }
  }
}

/**
 * The node's origin client from its options: one http(s):// URL gives an
 * `UndiciOriginClient`, one s3:// URL an `S3OriginClient`, a comma-separated
 * list a single-group `OriginPool` (round robin), and `origins` (the config
 * file's groups and routes) a full `OriginPool`. Call `start?.()` once the
 * node is up to begin health checks.
 */
export function createOriginClient(options: CreateOriginClientOptions): EdgeOriginClient {
  if (options.origins) return new OriginPool({ ...options, config: options.origins });
  const urls = (options.origin ?? '')
    .split(',')
    .map((url) => url.trim())
    .filter(Boolean);
  if (urls.length === 0) throw new TypeError('createOriginClient: set origin (a URL or a comma-separated list) or origins');
  if (urls.length === 1) return createMemberClient(urls[0]!, options);
  return new OriginPool({ ...options, config: originsFromList(urls) });
}
