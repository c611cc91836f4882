/**
 * `Authorization: Bearer <token>` checked in constant time, for endpoints
 * that only the admin token holder may read (`GET /_edge/metrics`).
 * Runtime-agnostic: Web Crypto only.
 */
import { EdgeError } from './errors.js';

/**
 * A check that resolves when the header carries the token and throws
 * `EDGE_UNAUTHORIZED` otherwise. Both values are hashed with SHA-256 and the
 * digests compared with an XOR loop, so neither the position of the first
 * differing byte nor the token's length shows in the timing.
 */
export function createBearerCheck(token: string, what: string): (header: string | undefined) => Promise<void> {
  const encoder = new TextEncoder();
  const expected = crypto.subtle.digest('SHA-256', encoder.encode(token)).then((d) => new Uint8Array(d));
  return async (header) => {
    const match = header === undefined ? null : /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
    if (!match) {
      throw new EdgeError('EDGE_UNAUTHORIZED', `${what} needs an \`Authorization: Bearer <admin token>\` header.`, {
        headers: { 'www-authenticate': 'Bearer realm="edge-admin"' },
      });
    }
    const given = new Uint8Array(await crypto.subtle.digest('SHA-256', encoder.encode(match[1])));
    const wanted = await expected;
    let diff = 0;
    for (let i = 0; i < wanted.length; i++) diff |= wanted[i]! ^ given[i]!;
    if (diff !== 0) {
      throw new EdgeError('EDGE_UNAUTHORIZED', 'The admin token is wrong.', {
        headers: { 'www-authenticate': 'Bearer realm="edge-admin", error="invalid_token"' },
      });
    }
  };
}
