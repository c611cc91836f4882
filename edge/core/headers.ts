/**
 * Header plumbing shared by the pull path, the push API and the shield:
 * hop-by-hop stripping (RFC 9110 section 7.6.1), forwarding headers, and
 * conversions between Web `Headers` and the plain lower-case records that
 * `http-cache-semantics` and the stores use.
 */

/** Fields that describe one connection, never forwarded or stored (RFC 9110 7.6.1). */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/**
 * Request headers a client could use to steer the origin into producing a
 * different body for the same URL (web cache poisoning). They are not part
 * of the cache key, so they never reach the origin from an untrusted client.
 */
const UNTRUSTED_REQUEST_HEADERS = new Set([
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-forwarded-port',
  'x-forwarded-server',
  'x-forwarded-prefix',
  'x-real-ip',
  'x-host',
  'x-original-url',
  'x-rewrite-url',
  'x-original-host',
  'x-http-method-override',
  'x-http-method',
  'x-method-override',
]);

/** Names listed in a `Connection` field value: hop-by-hop too (RFC 9110 7.6.1). */
export function connectionTokens(value: string | null | undefined): Set<string> {
  if (!value) return new Set();
  return new Set(
    value
      .split(',')
      .map((token) => token.trim().toLowerCase())
      .filter(Boolean),
  );
}

/** A copy of `headers` without hop-by-hop fields (including those named by `Connection`). */
export function withoutHopByHop(headers: Headers): Headers {
  const named = connectionTokens(headers.get('connection'));
  const out = new Headers();
  headers.forEach((value, name) => {
    if (HOP_BY_HOP.has(name) || named.has(name) || name === 'set-cookie') return;
    out.append(name, value);
  });
  for (const cookie of headers.getSetCookie()) {
    if (!named.has('set-cookie')) out.append('set-cookie', cookie);
  }
  return out;
}

/**
 * `Headers` to a lower-case record with multi-valued fields joined by `, `
 * (RFC 9110 5.3). `Set-Cookie` is the one field that cannot be joined, so it
 * is left out here; callers that need it read `getSetCookie()`.
 */
export function headersToRecord(headers: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  headers.forEach((value, name) => {
    if (name === 'set-cookie') return;
    out[name] = value;
  });
  return out;
}

export interface ForwardingOptions {
  /** The address of the client connected to us. */
  clientIp: string | undefined;
  /** True when the connected peer is a configured trusted proxy. */
  trustedPeer: boolean;
  /** Scheme and host as the client used them. */
  proto: string;
  host: string;
  port?: string;
  /** This node's pseudonym for `Via`, e.g. `edge`. */
  via: string;
}

/**
 * Build the request headers sent upstream: hop-by-hop removed, client-sent
 * forwarding headers dropped unless the peer is trusted, then
 * `X-Forwarded-For` (appended), `-Proto`, `-Host`, `-Port` and `Via` set.
 */
export function forwardRequestHeaders(incoming: Headers, opts: ForwardingOptions): Headers {
  const out = withoutHopByHop(incoming);
  out.delete('host');
  // This node answers `100 Continue` to its client itself; the origin request carries the whole body.
  out.delete('expect');
  let priorFor: string | null = null;
  if (opts.trustedPeer) {
    priorFor = out.get('x-forwarded-for');
  } else {
    for (const name of UNTRUSTED_REQUEST_HEADERS) out.delete(name);
  }
  const chain = [priorFor, opts.clientIp].filter((part): part is string => !!part);
  if (chain.length > 0) out.set('x-forwarded-for', chain.join(', '));
  if (!opts.trustedPeer || !out.has('x-forwarded-proto')) out.set('x-forwarded-proto', opts.proto);
  if (!opts.trustedPeer || !out.has('x-forwarded-host')) out.set('x-forwarded-host', opts.host);
  if (opts.port && (!opts.trustedPeer || !out.has('x-forwarded-port'))) out.set('x-forwarded-port', opts.port);
  appendVia(out, opts.via);
  return out;
}

/**
 * The request headers of a GET/HEAD sent upstream: the described request's
 * allow-listed fields (`Described.upstream`) plus this node's own
 * forwarding fields. Client-sent `X-Forwarded-*` are kept only from a
 * trusted peer, and only the standard ones.
 */
export function originRequestHeaders(upstream: Record<string, string>, client: Record<string, string>, opts: ForwardingOptions): Headers {
  const out = new Headers();
  for (const name in upstream) out.set(name, upstream[name]!);
  const priorFor = opts.trustedPeer ? client['x-forwarded-for'] : undefined;
  const chain = [priorFor, opts.clientIp].filter((part): part is string => !!part);
  if (chain.length > 0) out.set('x-forwarded-for', chain.join(', '));
  out.set('x-forwarded-proto', opts.proto);
  out.set('x-forwarded-host', opts.host);
  if (opts.port) out.set('x-forwarded-port', opts.port);
  const via = opts.trustedPeer ? client.via : undefined;
  out.set('via', via ? `${via}, 1.1 ${opts.via}` : `1.1 ${opts.via}`);
  return out;
}

/** Append `1.1 <pseudonym>` to `Via` (RFC 9110 7.6.3). */
export function appendVia(headers: Headers, pseudonym: string): void {
  const prior = headers.get('via');
  headers.set('via', prior ? `${prior}, 1.1 ${pseudonym}` : `1.1 ${pseudonym}`);
}

/** Split a comma-separated field value into trimmed, non-empty members. */
export function splitList(value: string | null | undefined): string[] {
  if (!value) return [];
  return value
    .split(',')
    .map((part) => part.trim())
    .filter(Boolean);
}
