/**
 * `POST /_edge/purge` on Workers: the same request body as on Node
 * (`{urls}`, `{prefixes}`, `{tags}` or `{all}`, optional `soft`), answered
 * within the platform's subrequest limit whatever the number of entries:
 *
 * | where                        | how                                                        | subrequests |
 * | ---------------------------- | ---------------------------------------------------------- | ----------- |
 * | this location's Cache API    | one purge marker (`purge-markers.ts`); count from the directory | 2 + 16 shards |
 * | pushed objects (R2, global)  | listed and deleted in batches of 1,000 (`R2PushStore.purgeWhere`) | 1 per 1,000 |
 * | every location (zone purge)  | Cloudflare's purge API, 100 items a request (`zone-purge.ts`)   | 1 per 100 items |
 *
 * The answer says what was purged where:
 * `{"purged": n, "location": "local", "pushed": {...}, "global": {"status": 200, "id": "..."}}`.
 *
 * Requests this handler does not take (no admin token configured, a wrong
 * token, a body it does not read) go to the core app, which answers them
 * exactly as on Node (401, 400 with the problem named).
 */
import type { EdgeApp } from '../core/app.js';
import type { CacheEntryMeta } from '../core/store/types.js';
import type { CfCacheStore } from './cf-cache-store.js';
import { markerSelects, urlTagOfTarget, type PurgeMarker, type PurgeTargetSpec } from './purge-markers.js';
import type { R2PushStore } from './r2-push-store.js';
import { chunked, type ZonePurgeClient, type ZonePurgePayload, type ZonePurgeResult } from './zone-purge.js';
import { parseCacheKey } from '../core/cache-key.js';

export interface WorkersPurgeDeps {
  edge: EdgeApp;
  adminToken?: string;
  cache: CfCacheStore;
  pushed?: R2PushStore;
  /** This isolate's answers to "is this path pushed?": forgotten after a purge of everything. */
  pushedLookup?: { clear(): void };
  zone?: ZonePurgeClient;
  /** Hosts a path prefix is purged on at the zone (`PURGE_HOSTS`); the purge request's own host when empty. */
  zoneHosts: string[];
  now: () => number;
  /** Subrequests this request may make (Free plan: 50); what does not fit is reported as unfinished. @default 50 */
  subrequestBudget?: number;
}

interface PurgeBody {
  urls?: string[];
  prefixes?: string[];
  tags?: string[];
  all?: true;
  soft?: boolean;
}

const SELECTORS = ['urls', 'prefixes', 'tags', 'all'] as const;
const MAX_ITEMS = 1000;
const MAX_BODY = 1024 * 1024;

/** The request body when it is a purge this handler can take; undefined hands it to the core (which names the problem). */
function readBody(text: string): PurgeBody | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) return undefined;
  const body = json as Record<string, unknown>;
  if (Object.keys(body).some((name) => !['urls', 'prefixes', 'tags', 'all', 'soft', 'forward'].includes(name))) return undefined;
  if (SELECTORS.filter((name) => body[name] !== undefined).length !== 1) return undefined;
  if (body.all !== undefined && body.all !== true) return undefined;
  if (body.soft !== undefined && typeof body.soft !== 'boolean') return undefined;
  if (body.forward !== undefined && typeof body.forward !== 'boolean') return undefined;
  for (const name of ['urls', 'prefixes', 'tags'] as const) {
    const list = body[name];
    if (list === undefined) continue;
    if (!Array.isArray(list) || list.length === 0 || list.length > MAX_ITEMS) return undefined;
    if (list.some((item) => typeof item !== 'string' || item === '' || item.length > 3000)) return undefined;
  }
  return body as PurgeBody;
}

/** The admin bearer token, compared in constant time (hashes of both). */
export async function tokenMatches(header: string | null, token: string): Promise<boolean> {
  const match = header === null ? null : /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  if (!match) return false;
  const encoder = new TextEncoder();
  const [a, b] = await Promise.all([crypto.subtle.digest('SHA-256', encoder.encode(match[1])), crypto.subtle.digest('SHA-256', encoder.encode(token))]);
  const x = new Uint8Array(a);
  const y = new Uint8Array(b);
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i]! ^ y[i]!;
  return diff === 0;
}

/** A purge URL or prefix as the keys hold it (the pull path's normalisation); undefined when it is not one (the core says why). */
function targetOf(value: string, edge: EdgeApp, isPrefix: boolean): PurgeTargetSpec | undefined {
  let url: URL;
  let absolute = false;
  try {
    if (value.startsWith('/')) url = new URL('http://purge.invalid' + value);
    else {
      url = new URL(value);
      absolute = true;
      if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.username || url.password) return undefined;
    }
  } catch {
    return undefined;
  }
  const { cacheKey } = edge.pull.describe(url.href, undefined, {});
  const path = isPrefix ? url.pathname + (value.includes('?') ? '?' + url.search.slice(1) : '') : cacheKey.path;
  return absolute ? { path, pathname: url.pathname, scheme: cacheKey.scheme, host: cacheKey.host } : { path, pathname: url.pathname };
}

/** Handles the purge, or returns undefined for the core app to answer. */
export async function handleWorkersPurge(request: Request, deps: WorkersPurgeDeps): Promise<{ response?: Response; retry?: Request }> {
  const { edge, cache, pushed, zone } = deps;
  if (!deps.adminToken || !(await tokenMatches(request.headers.get('authorization'), deps.adminToken))) return {};
  const length = Number(request.headers.get('content-length') ?? '0');
  if (length > MAX_BODY) return {};
  const text = await request.text();
  // The body is read: the core gets a copy if it has to answer.
  const retry = new Request(request.url, { method: 'POST', headers: request.headers, body: text });
  const body = readBody(text);
  if (!body) return { retry };
  const marker: PurgeMarker = { at: deps.now() };
  if (body.soft) marker.soft = true;
  if (body.all) marker.all = true;
  if (body.tags) marker.tags = [...new Set(body.tags)];
  if (body.urls || body.prefixes) {
    const targets: PurgeTargetSpec[] = [];
    for (const value of body.urls ?? body.prefixes!) {
      const target = targetOf(value, edge, body.prefixes !== undefined);
      if (!target) return { retry };
      targets.push(target);
    }
    if (body.urls) marker.urls = targets;
    else marker.prefixes = targets;
  }
  const select = (key: string, tags: readonly string[]) => markerSelects(marker, key, tags);
  let budget = deps.subrequestBudget ?? 50;

  // Fills in flight in this isolate are not stored after the purge; then this location's marker.
  if (!body.soft) edge.pull.purges.record(select);
  await cache.addPurgeMarker(marker);
  budget -= 2;
  const zonePayloads = zone ? await zonePayloadsOf(body, marker, deps.zoneHosts.length ? deps.zoneHosts : [new URL(request.url).host]) : [];
  // The zone purge first in the budget: it is what reaches every location.
  const zoneBudget = Math.min(zonePayloads.length, Math.max(0, budget - 17));
  budget -= zoneBudget;
  const [local, global] = await Promise.all([
    cache.countListed(select),
    zone ? zone.purge(zonePayloads.slice(0, zoneBudget)) : Promise.resolve(undefined),
  ]);
  budget -= 16;

  const answer: Record<string, unknown> = { purged: local, location: 'local' };
  if (pushed) {
    const result = await pushed.purgeWhere((meta: CacheEntryMeta) => select(meta.key, meta.tags), { budget: Math.max(0, budget), soft: body.soft });
    for (const meta of result.purged) {
      const key = parseCacheKey(meta.key);
      if (!body.soft && key?.kind === 'pushed' && !key.derived) edge.pull.pushedPaths.delete(key.path);
    }
    if (body.all && !body.soft) {
      edge.pull.pushedPaths.clear();
      deps.pushedLookup?.clear();
    }
    answer.purged = local + result.purged.length;
    answer.pushed = { purged: result.purged.length, complete: result.complete };
  }
  if (!zone) {
    answer.global = { status: 'not-configured', detail: 'set CLOUDFLARE_ZONE_ID and the CLOUDFLARE_API_TOKEN secret to purge every location' };
  } else {
    answer.global = summarise(global!, zonePayloads.length);
    if (body.soft) (answer.global as Record<string, unknown>).detail = 'the zone purge API has no soft purge: entries are removed everywhere else';
  }
  return { response: Response.json(answer, { status: 200 }) };
}

function summarise(results: ZonePurgeResult[], wanted: number): Record<string, unknown> {
  const failed = results.filter((result) => result.errors);
  const out: Record<string, unknown> = { status: failed[0]?.status ?? results[0]?.status ?? 200, requests: results.length };
  const ids = results.map((result) => result.id).filter((id): id is string => id !== undefined);
  if (ids.length === 1) out.id = ids[0];
  else if (ids.length > 1) out.ids = ids;
  if (failed.length) out.errors = failed.flatMap((result) => result.errors ?? []);
  if (results.length < wanted) {
    out.complete = false;
    out.detail = `${wanted - results.length} of ${wanted} purge API requests did not fit in this request's subrequest limit: send the rest again`;
  }
  return out;
}

/**
 * The zone purge for a purge request. URL purges become tag purges of the
 * URL tags every stored copy carries (`urlTagsOf`): purge by URL does not
 * reach Cache API entries. Path prefixes are purged on `hosts`.
 */
async function zonePayloadsOf(body: PurgeBody, marker: PurgeMarker, hosts: string[]): Promise<ZonePurgePayload[]> {
  if (body.all) return [{ purge_everything: true }];
  if (marker.tags) return chunked('tags', marker.tags);
  if (marker.urls) {
    const tags: string[] = [];
    for (const target of marker.urls) {
      tags.push(await urlTagOfTarget(target));
      // The pushed object's derived entries (codings, image variants) carry the pathname's tag.
      tags.push(await urlTagOfTarget({ path: target.pathname, pathname: target.pathname }));
    }
    return chunked('tags', tags);
  }
  const prefixes: string[] = [];
  for (const target of marker.prefixes ?? []) {
    // Prefixes are `host/path`, without scheme or query.
    const path = target.path.split('?')[0]!;
    if (target.host !== undefined) prefixes.push(target.host + path);
    else for (const host of hosts) prefixes.push(host + path);
  }
  return chunked('prefixes', prefixes);
}
