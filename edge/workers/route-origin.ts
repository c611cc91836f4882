/**
 * Route rules on Workers (`ORIGINS`, the config file's `origins` section as
 * JSON): each route sends its requests to its group's origin, chosen the way
 * Node's origin pool chooses (`matchRoute` on the path, the client's host,
 * headers). What a route carries besides its group (cache rules, `access`:
 * signed URLs, API keys, rate limits) is read by the core from the options
 * and works as on Node.
 *
 * A group here is one `http(s)://` origin through `fetch`: the pool's
 * features (several members with balancing, health checks, passive
 * ejection, backups, sticky sessions, `s3://` members) run on Node only and
 * are refused at start-up by `routeOriginProblems`.
 */
import { matchRoute, type OriginsConfig, type RouteConfig } from '../core/routes.js';
import type { OriginClient, OriginRequest } from '../core/origin/types.js';

/** Why this `origins` config cannot run on Workers (empty: it can). */
export function routeOriginProblems(config: OriginsConfig): string[] {
  const problems: string[] = [];
  for (const group of config.groups) {
    const where = `group "${group.name}"`;
    if (group.members.length !== 1) problems.push(`${where} has ${group.members.length} members: on Workers a group is one http(s):// origin (origin pools run on the Node node)`);
    else if (!/^https?:\/\//i.test(group.members[0]!)) problems.push(`${where}: ${JSON.stringify(group.members[0])} is not an http(s):// URL (s3:// origins run on the Node node)`);
    if (group.healthCheck) problems.push(`${where}: healthCheck needs timers between requests (Node only)`);
    if (group.backup !== undefined) problems.push(`${where}: backup groups need health state (Node only)`);
    if (group.stickyCookie !== undefined) problems.push(`${where}: stickyCookie picks among members (Node only)`);
  }
  return problems;
}

/** Options for {@link RouteOriginClient}. */
export interface RouteOriginClientOptions {
  /** Validated `origins` config that {@link routeOriginProblems} accepts. */
  config: OriginsConfig;
  /** The client for one group's origin URL (`FetchOriginClient` on Workers). */
  createClient: (url: string) => OriginClient;
}

export class RouteOriginClient implements OriginClient {
  readonly label: string;
  readonly #groups = new Map<string, OriginClient>();
  readonly #default: OriginClient;
  readonly #routes: readonly RouteConfig[];

  constructor(options: RouteOriginClientOptions) {
    const problems = routeOriginProblems(options.config);
    if (problems.length > 0) throw new TypeError(`RouteOriginClient: ${problems.join('; ')}`);
    for (const group of options.config.groups) this.#groups.set(group.name, options.createClient(group.members[0]!));
    this.#default = this.#groups.get(options.config.defaultGroup ?? options.config.groups[0]!.name)!;
    this.#routes = options.config.routes;
    this.label = options.config.groups.map((group) => `${group.name}[${this.#groups.get(group.name)!.label}]`).join(' ');
  }

  fetch(request: OriginRequest): Promise<Response> {
    return this.#clientFor(request).fetch(request);
  }

  #clientFor(request: OriginRequest): OriginClient {
    if (this.#routes.length === 0) return this.#default;
    const headers: Record<string, string> = {};
    request.headers.forEach((value, name) => {
      headers[name] = value;
    });
    // As on Node: the edge sets X-Forwarded-Host to the host the client asked for.
    const host = (headers['x-forwarded-host'] ?? headers.host ?? '').split(',')[0]!.trim();
    const route = matchRoute(this.#routes, { pathname: request.pathAndQuery.split('?')[0]!, host, headers });
    return (route?.group !== undefined ? this.#groups.get(route.group) : undefined) ?? this.#default;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#groups.values()].map((client) => client.close?.()));
  }
}
