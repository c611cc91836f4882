/**
 * The Workers origin client: global `fetch`, as the undici pool is on Node
 * (`edge/node/undici-origin.ts`), with the same failure table.
 *
 * Encodings. Workers' `fetch` decodes a gzip or brotli body while it is
 * read, yet leaves `Content-Encoding` (and the encoded `Content-Length`) on
 * the response, so the bytes and the headers would disagree. This client
 * asks for the origin's bytes as sent (`encodeResponseBody: 'manual'`): the
 * cache stores exactly what the origin encoded, under the origin's
 * `Content-Encoding`, `Content-Length`, `ETag` and `Vary`, as on Node. The
 * Worker entry sends such responses out with `encodeBody: 'manual'`, so the
 * runtime does not compress them a second time (`edge/workers/index.ts`).
 *
 * Redirects are never followed (`redirect: 'manual'`): a 3xx is the
 * origin's answer and is cached or passed on like any other.
 *
 * Timeouts. Workers' `fetch` has no separate connect timeout, so the time
 * to response headers (`originTimeout`) covers connecting too; after that
 * a gap of `bodyTimeout` between body chunks errors the body stream, and a
 * fill in progress is aborted (nothing truncated is stored).
 */
import { EdgeError } from '../core/errors.js';
import type { OriginClient, OriginRequest } from '../core/origin/types.js';

/** Options for {@link FetchOriginClient}. */
export interface FetchOriginOptions {
  /**
   * Base URL of the origin; its path is prefixed to every request.
   * @example 'https://origin.example.com/static'
   */
  url: string;
  /**
   * Milliseconds to the response headers, connecting included; then the
   * request is aborted with `EDGE_ORIGIN_TIMEOUT` (504).
   * @default 30000
   */
  headersTimeout?: number;
  /**
   * Longest gap between two body chunks, ms; a longer one errors the body
   * stream with `EDGE_ORIGIN_TIMEOUT`. 0 disables the check.
   * @default 30000
   */
  bodyTimeout?: number;
  /** The fetch to use. @default globalThis.fetch */
  fetch?: typeof fetch;
}

/** Statuses that carry no body (RFC 9110 6.4.1). */
function hasNoBody(method: string, status: number): boolean {
  return method === 'HEAD' || status === 204 || status === 304 || (status >= 100 && status < 200);
}

export class FetchOriginClient implements OriginClient {
  readonly label: string;
  private readonly base: string;
  private readonly headersTimeout: number;
  private readonly bodyTimeout: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: FetchOriginOptions) {
    let url: URL;
    try {
      url = new URL(options.url);
    } catch {
      throw new TypeError(`FetchOriginClient: url must be an absolute http(s) URL, got ${JSON.stringify(options.url)}`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new TypeError(`FetchOriginClient: url must be http:// or https://, got ${JSON.stringify(options.url)}`);
    }
    // Credentials in the URL never reach logs or client-facing errors.
    this.label = url.origin;
    this.base = url.origin + url.pathname.replace(/\/+$/, '');
    this.headersTimeout = options.headersTimeout ?? 30_000;
    this.bodyTimeout = options.bodyTimeout ?? 30_000;
    // Bound, so a runtime that checks `this` on fetch (Workers does) accepts the call.
    this.fetchImpl = options.fetch ?? ((input, init) => fetch(input, init));
  }

  async fetch(request: OriginRequest): Promise<Response> {
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.headersTimeout);
    const onClientAbort = () => controller.abort();
    request.signal?.addEventListener('abort', onClientAbort, { once: true });
    if (request.signal?.aborted) controller.abort();

    const init: RequestInit & { encodeResponseBody?: 'manual' | 'automatic'; duplex?: 'half' } = {
      method: request.method,
      headers: request.headers,
      redirect: 'manual',
      signal: controller.signal,
      // The origin's bytes, not a decoded copy under an encoded Content-Encoding.
      encodeResponseBody: 'manual',
    };
    if (request.body && request.method !== 'GET' && request.method !== 'HEAD') {
      init.body = request.body;
      init.duplex = 'half';
    }

    let response: Response;
    try {
      response = await this.fetchImpl(this.base + request.pathAndQuery, init);
    } catch (error) {
      request.signal?.removeEventListener('abort', onClientAbort);
      if (request.signal?.aborted && !timedOut) throw error;
      throw this.failure(error, timedOut);
    } finally {
      clearTimeout(timer);
    }

    if (hasNoBody(request.method, response.status) || !response.body) {
      request.signal?.removeEventListener('abort', onClientAbort);
      await response.body?.cancel().catch(() => {});
      return new Response(null, { status: response.status, statusText: response.statusText, headers: response.headers });
    }
    const body = this.watchBody(response.body, controller, () => request.signal?.removeEventListener('abort', onClientAbort));
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  }

  /** The origin body, errored with `EDGE_ORIGIN_TIMEOUT` when it stalls longer than `bodyTimeout`. */
  private watchBody(source: ReadableStream<Uint8Array>, controller: AbortController, done: () => void): ReadableStream<Uint8Array> {
    const reader = source.getReader();
    const limit = this.bodyTimeout;
    const label = this.label;
    return new ReadableStream<Uint8Array>(
      {
        async pull(out) {
          let timer: ReturnType<typeof setTimeout> | undefined;
          const stalled =
            limit > 0
              ? new Promise<never>((_, reject) => {
                  timer = setTimeout(() => {
                    controller.abort();
                    reject(new EdgeError('EDGE_ORIGIN_TIMEOUT', `The origin ${label} stopped sending the body for ${limit} ms.`));
                  }, limit);
                })
              : undefined;
          try {
            const result = await (stalled ? Promise.race([reader.read(), stalled]) : reader.read());
            if (result.done) {
              done();
              out.close();
            } else {
              out.enqueue(result.value);
            }
          } catch (error) {
            done();
            reader.cancel().catch(() => {});
            out.error(error);
          } finally {
            if (timer !== undefined) clearTimeout(timer);
          }
        },
        async cancel(reason) {
          done();
          await reader.cancel(reason).catch(() => {});
        },
      },
      { highWaterMark: 0 },
    );
  }

  private failure(error: unknown, timedOut: boolean): EdgeError {
    if (timedOut) {
      return new EdgeError('EDGE_ORIGIN_TIMEOUT', `The origin ${this.label} did not answer within ${this.headersTimeout} ms.`, {
        cause: error,
        details: { origin: this.label },
      });
    }
    return new EdgeError('EDGE_ORIGIN_UNREACHABLE', `The origin ${this.label} could not be reached.`, {
      cause: error,
      details: { origin: this.label },
    });
  }
}
