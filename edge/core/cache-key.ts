/**
 * Cache keys. A primary key is `<path>?<normalised query> <scheme>://<host>`:
 * the path comes first so that keys sort by path, which makes purge by
 * prefix a range scan and keeps every host's copy of `/a.css` together.
 * GET and HEAD share a key (HEAD is answered from the stored GET).
 */
import { splitList } from './headers.js';

/** Keys longer than this are not cached (LMDB keys are bounded; such URLs are rare and unshared). */
export const MAX_KEY_LENGTH = 1500;

export interface CacheKeyOptions {
  /** Query parameter names to drop; `*` at the end matches a prefix. @default ['utm_*', 'fbclid', 'gclid'] */
  ignoreQueryParams: string[];
  /** Sort query parameters so `?a=1&b=2` and `?b=2&a=1` share an entry. @default true */
  sortQuery: boolean;
}

export function compileParamMatcher(patterns: string[]): (name: string) => boolean {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  for (const pattern of patterns) {
    if (pattern.endsWith('*')) prefixes.push(pattern.slice(0, -1));
    else exact.add(pattern);
  }
  return (name) => exact.has(name) || prefixes.some((prefix) => name.startsWith(prefix));
}

/** Normalised `?query` (or '') with ignored parameters removed and, optionally, sorted. */
export function normaliseQuery(search: string, ignore: (name: string) => boolean, sort: boolean, alsoDrop?: (name: string) => boolean): string {
  if (search === '' || search === '?') return '';
  const params = new URLSearchParams(search);
  const kept: [string, string][] = [];
  for (const [name, value] of params) {
    if (ignore(name) || alsoDrop?.(name)) continue;
    kept.push([name, value]);
  }
  if (kept.length === 0) return '';
  // By name only (the sort is stable): the order of a repeated parameter is meaningful (?id=2&id=1).
  if (sort) kept.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return '?' + new URLSearchParams(kept).toString();
}

export function primaryKey(pathAndQuery: string, scheme: string, host: string): string {
  return `${pathAndQuery} ${scheme}://${host.toLowerCase()}`;
}

/**
 * Key of a pushed object: its path only, with a marker instead of a host,
 * so a pushed object answers every host and any query string, and sorts
 * beside the pulled copies of the same path (prefix purge covers both).
 */
export function pushedKey(pathname: string): string {
  return `${pathname} push:`;
}

/** The path-and-query part of a primary key (what purge by URL and prefix match on). */
export function keyPath(key: string): string {
  const space = key.lastIndexOf(' ');
  return space === -1 ? key : key.slice(0, space);
}

/** Normalised header names listed in `Vary`, or '*' when the response varies on everything. */
export function varyNames(vary: string | undefined): string[] | '*' {
  const names = [...new Set(splitList(vary).map((n) => n.toLowerCase()))].sort();
  return names.includes('*') ? '*' : names;
}

/**
 * Secondary key for a request given the stored response's Vary names
 * (RFC 9111 4.1): each named header's value with whitespace normalised.
 */
export function variantFor(names: string[], requestHeaders: Record<string, string>): string {
  if (names.length === 0) return '';
  return names.map((name) => `${name}:${(requestHeaders[name] ?? '').replace(/\s+/g, ' ').trim()}`).join('\n');
}
