/**
 * Purges on Workers as markers: a purge is one small record in a per-location
 * purge log, not a delete per entry. The Cache API cannot be enumerated, and
 * a Worker may make only 50 subrequests per request (Free plan; Cache API
 * calls count), so deleting 1,000 entries one by one cannot fit in one
 * request, nor in its `waitUntil` (background work counts against the same
 * invocation). Instead every read of an entry's index also reads the log
 * (one more lookup, in parallel) and drops the variants a later marker
 * selects; soft markers mark them invalidated (revalidate before use). An
 * entry written after the marker is not affected; the next fill replaces the
 * purged index and deletes its body.
 */
import { formatCacheKey, parseCacheKey, type CacheKey } from '../core/cache-key.js';
import { sha256Hex } from '../core/bytes.js';

/** A URL or prefix a purge names: a path (every host) or an absolute URL (its scheme and host only). */
export interface PurgeTargetSpec {
  /** Normalised `path?query` (urls) or path prefix (prefixes), as pulled keys begin. */
  path: string;
  /** The pathname alone: what pushed keys hold. */
  pathname: string;
  scheme?: string;
  host?: string;
}

/** One purge, as stored in the log. */
export interface PurgeMarker {
  /** ms since epoch: entries stored at or before it are selected. */
  at: number;
  soft?: true;
  all?: true;
  tags?: string[];
  urls?: PurgeTargetSpec[];
  prefixes?: PurgeTargetSpec[];
  /** Entries derived from these keys (image variants, codings), not the keys themselves: a re-pushed or deleted source's. */
  sources?: string[];
}

/** Does the marker select an entry of this key with these tags (whenever it was stored)? */
export function markerSelects(marker: PurgeMarker, text: string, tags: readonly string[]): boolean {
  if (marker.all) return true;
  if (marker.tags) return tags.some((tag) => marker.tags!.includes(tag));
  const key = parseCacheKey(text);
  if (!key) return false;
  if (marker.sources) {
    if (!key.derived) return false;
    const { derived: _derived, ...source } = key;
    return marker.sources.includes(formatCacheKey(source as CacheKey));
  }
  const site = (target: PurgeTargetSpec) => target.host === undefined || key.kind === 'pushed' || (key.scheme === target.scheme && key.host === target.host);
  if (marker.urls) return marker.urls.some((target) => (key.kind === 'pushed' ? key.path === target.pathname : key.path === target.path) && site(target));
  if (marker.prefixes) return marker.prefixes.some((target) => key.path.startsWith(key.kind === 'pushed' ? target.pathname : target.path) && site(target));
  return false;
}

const hash32 = async (text: string) => (await sha256Hex(text)).slice(0, 32);

/**
 * Tags every stored copy of a URL carries in `Cache-Tag`, so that a zone
 * purge by tag reaches it: Cloudflare's purge by URL (`files`) does not
 * reach responses stored with the Cache API, purge by tag does.
 * `edge-path:` names the path and query on every host, `edge-url:` one
 * scheme and host too.
 */
export async function urlTagsOf(key: CacheKey | string): Promise<string[]> {
  const parsed = typeof key === 'string' ? parseCacheKey(key) : key;
  if (!parsed) return [];
  const path = parsed.kind === 'pushed' ? parsed.path : parsed.path;
  const tags = [`edge-path:${await hash32(path)}`];
  if (parsed.kind === 'pulled') tags.push(`edge-url:${await hash32(`${parsed.scheme}://${parsed.host}${parsed.path}`)}`);
  return tags;
}

/** The tags a zone purge by tag uses for a URL purge target. */
export async function urlTagOfTarget(target: PurgeTargetSpec): Promise<string> {
  if (target.host === undefined) return `edge-path:${await hash32(target.path)}`;
  return `edge-url:${await hash32(`${target.scheme}://${target.host}${target.path}`)}`;
}
