/**
 * `Cache-Status` (RFC 9211). One member per cache on the path, nearest the
 * origin first; this node appends its own member after any upstream ones
 * (an origin shield's), so clients see `shield; hit, edge; fwd=miss; stored`.
 */

/** The outcome of one request at this node, echoed in logs and metrics. */
export type CacheOutcome = 'hit' | 'miss' | 'stale' | 'revalidated' | 'bypass' | 'error';

/** RFC 9211 2.2; `partial`: part of the response was stored (a sliced object's record), the rest was fetched. */
export type ForwardReason = 'bypass' | 'method' | 'uri-miss' | 'vary-miss' | 'miss' | 'request' | 'stale' | 'partial';

export interface CacheStatusFields {
  hit?: boolean;
  fwd?: ForwardReason;
  fwdStatus?: number;
  stored?: boolean;
  collapsed?: boolean;
  /** Remaining freshness in seconds (may be negative when stale). */
  ttl?: number;
  detail?: string;
}

export function formatCacheStatus(name: string, fields: CacheStatusFields, upstream?: string | null): string {
  let member = name;
  if (fields.hit) member += '; hit';
  if (fields.fwd) member += `; fwd=${fields.fwd}`;
  if (fields.fwdStatus !== undefined) member += `; fwd-status=${fields.fwdStatus}`;
  if (fields.stored) member += '; stored';
  if (fields.collapsed) member += '; collapsed';
  if (fields.ttl !== undefined) member += `; ttl=${Math.round(fields.ttl)}`;
  if (fields.detail) member += `; detail=${fields.detail}`;
  return upstream ? `${upstream}, ${member}` : member;
}
