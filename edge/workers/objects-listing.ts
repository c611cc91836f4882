/**
 * `GET /_edge/objects` on Workers: the same query and answer as on Node
 * (`prefix`, `pushed`, `limit` up to 1,000, `cursor`; `{objects, next}`),
 * within the platform's subrequest limit whatever the number of entries.
 * The core's listing scans the whole store for every page (fine for LMDB);
 * here that would be every R2 listing page and one Cache API read per
 * pulled entry. Instead a page goes through, in this order:
 *
 * | phase | what                                        | subrequests                      |
 * | ----- | ------------------------------------------- | -------------------------------- |
 * | `r`   | pushed objects in R2, by object name        | 1 per 1,000 names (R2 `list`)    |
 * | `h`   | pushed keys too long for a name (`~h/`), with a prefix only | the same     |
 * | `c`   | this location's Cache API entries (directory) | 16 shards + 1 + 1 per entry listed |
 *
 * and stops when the page is full or the budget is spent; `next` says
 * where the next page starts (an opaque cursor: phase and position). A page
 * may hold fewer than `limit` objects while `next` is not null: follow
 * `next` until it is null, as every client of the Node listing already
 * does. Order differs from Node's (one key order over everything): pushed
 * objects first, then pulled entries, each in key order.
 */
import { listedObject } from '../core/admin.js';
import { EdgeError, errorResponse } from '../core/errors.js';
import type { CacheEntryMeta, CacheListFilter } from '../core/store/types.js';
import type { CfCacheStore } from './cf-cache-store.js';
import { tokenMatches } from './purge.js';
import type { R2PushStore } from './r2-push-store.js';

export interface WorkersListingDeps {
  adminToken?: string;
  cache: CfCacheStore;
  pushed?: R2PushStore;
  /** Subrequests one page may make (Free plan: 50). @default 50 */
  subrequestBudget?: number;
}

type Phase = 'r' | 'h' | 'c';
interface Cursor {
  s: Phase;
  a?: string;
}

const MAX_LIMIT = 1000;
const DEFAULT_LIMIT = 100;
/** What the Cache API phase needs at least: the directory shards, the purge log and one index. */
const CACHE_PHASE_MIN = 16 + 2;

const badRequest = (message: string) => errorResponse(new EdgeError('EDGE_BAD_REQUEST', message));

function encodeCursor(cursor: Cursor): string {
  let binary = '';
  for (const byte of new TextEncoder().encode(JSON.stringify(cursor))) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function decodeCursor(text: string): Cursor | undefined {
  if (!/^[A-Za-z0-9_-]+$/.test(text)) return undefined;
  try {
    const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/'));
    const cursor = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(binary, (ch) => ch.charCodeAt(0)))) as Cursor;
    if (!cursor || !['r', 'h', 'c'].includes(cursor.s) || (cursor.a !== undefined && typeof cursor.a !== 'string')) return undefined;
    return cursor;
  } catch {
    return undefined;
  }
}

/** Answers the listing, or undefined for the core app to answer (no token configured, a wrong token, bad parameters). */
export async function handleWorkersListing(request: Request, deps: WorkersListingDeps): Promise<Response | undefined> {
  if (!deps.adminToken || !(await tokenMatches(request.headers.get('authorization'), deps.adminToken))) return undefined;
  const query = new URL(request.url).searchParams;
  const limitParam = query.get('limit');
  const pushedParam = query.get('pushed');
  // The core names the problem with these, exactly as on Node.
  if (limitParam !== null && (!/^\d+$/.test(limitParam) || Number(limitParam) < 1 || Number(limitParam) > MAX_LIMIT)) return undefined;
  if (pushedParam !== null && pushedParam !== 'true' && pushedParam !== 'false') return undefined;
  const limit = limitParam === null ? DEFAULT_LIMIT : Number(limitParam);
  const prefix = query.get('prefix') || undefined;
  const filter: CacheListFilter = { prefix, pushed: pushedParam === null ? undefined : pushedParam === 'true' };
  const cursorParam = query.get('cursor');
  const cursor = cursorParam ? decodeCursor(cursorParam) : undefined;
  if (cursorParam && !cursor) return badRequest('cursor: not a cursor returned by this endpoint.');

  // Pushed objects are in R2 when there is a bucket; pulled entries (and, without one, pushed ones) in the Cache API.
  const phases: Phase[] = [];
  if (deps.pushed && filter.pushed !== false) phases.push('r');
  if (deps.pushed && filter.pushed !== false && prefix) phases.push('h');
  phases.push('c');
  let phase = cursor ? phases.indexOf(cursor.s) : 0;
  if (phase === -1) return badRequest('cursor: not a cursor returned by this endpoint.');
  let after = cursor?.a;
  let budget = deps.subrequestBudget ?? 50;
  const metas: CacheEntryMeta[] = [];
  while (phase < phases.length && metas.length < limit) {
    const current = phases[phase]!;
    let page: { metas: CacheEntryMeta[]; next?: string; calls: number };
    if (current === 'c') {
      if (budget < CACHE_PHASE_MIN) break;
      page = await deps.cache.listPage(filter, { after, limit: limit - metas.length, budget });
    } else {
      if (budget < 1) break;
      page = await deps.pushed!.listPage(filter, { after, limit: limit - metas.length, budget, scan: current === 'r' ? 'plain' : 'hashed' });
    }
    budget -= page.calls;
    metas.push(...page.metas);
    if (page.next !== undefined) {
      after = page.next;
      break;
    }
    phase++;
    after = undefined;
  }
  const next = phase < phases.length ? encodeCursor({ s: phases[phase]!, ...(after !== undefined ? { a: after } : {}) }) : null;
  return Response.json({ objects: metas.map(listedObject), next });
}
