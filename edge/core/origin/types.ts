/**
 * How the core talks to whatever sits upstream (an HTTP origin, an S3
 * bucket, an origin shield). One implementation per runtime: undici on
 * Node (`edge/node/undici-origin.ts`), global `fetch` on Workers.
 */

export interface OriginRequest {
  method: string;
  /** Path and query as the client sent them (after the node's own rewrites), e.g. `/a/b.png?x=1`. */
  pathAndQuery: string;
  /** Request headers to send: hop-by-hop fields already removed, forwarding headers added. */
  headers: Headers;
  /** Request body for methods that pass through (POST, PUT, ...). */
  body?: ReadableStream<Uint8Array> | null;
  /** Aborted when the client goes away and nobody else waits for the answer. */
  signal?: AbortSignal;
  /** The primary cache key, for clients that route by key (shield rendezvous hashing). */
  cacheKey?: string;
  /** Called for each 1xx interim response (e.g. 103 Early Hints) before the final one. */
  onInformational?: (status: number, headers: Record<string, string | string[]>) => void;
}

export interface OriginClient {
  /**
   * Send one request upstream. Resolves with the raw response (body not
   * decoded: `Content-Encoding` passes through untouched). Rejects with an
   * `EdgeError` coded `EDGE_ORIGIN_UNREACHABLE` (502) or
   * `EDGE_ORIGIN_TIMEOUT` (504) when no response arrives, and
   * `EDGE_ORIGIN_BAD_RESPONSE` (502) when what arrives is not HTTP (a status
   * outside 100-599, an unparseable head).
   *
   * The body closes only at a clean end of message (RFC 9112 6.3): the
   * announced Content-Length reached, the last chunk read, or a
   * close-delimited body ended by a clean close (FIN), never by a reset.
   * Anything else errors the stream with an `EdgeError` (502, or 504 for
   * the body timeout), so that a consumer that saw `close` may store it.
   */
  fetch(request: OriginRequest): Promise<Response>;
  /** A short label for logs and error messages, e.g. the origin's URL without credentials. */
  readonly label: string;
  close?(): Promise<void>;
}
