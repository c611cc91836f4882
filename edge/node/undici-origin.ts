/**
 * The Node origin client: an undici `Pool` per origin with keep-alive,
 * connect / header / body timeouts, and failures mapped to EdgeErrors in
 * one table. `request()` rather than `fetch()` because fetch decodes
 * `Content-Encoding`, and a proxy must pass the origin's bytes untouched.
 */
import { Readable } from 'node:stream';
import { Pool, errors as undiciErrors } from 'undici';
import { EdgeError, type EdgeErrorCode } from '../core/errors.js';
import type { OriginClient, OriginRequest } from '../core/origin/types.js';

export interface UndiciOriginOptions {
  /** Base URL of the origin, e.g. `http://127.0.0.1:9000/bucket`. Its path is prefixed to every request. */
  url: string;
  /** @default 5000 */
  connectTimeout?: number;
  /** Time to response headers. @default 30000 */
  headersTimeout?: number;
  /** Longest gap between body chunks. @default 30000 */
  bodyTimeout?: number;
  /** @default 128 */
  connections?: number;
  /** TLS for https:// origins, e.g. a `secureContext` trusting a private CA (`--origin-ca`); SNI is the URL's host name. */
  tls?: import('node:tls').ConnectionOptions;
}

/** undici / socket failure codes to our codes: timeouts are 504, everything else that prevents an answer 502. */
const FAILURE_TABLE: Record<string, EdgeErrorCode> = {
  UND_ERR_CONNECT_TIMEOUT: 'EDGE_ORIGIN_TIMEOUT',
  UND_ERR_HEADERS_TIMEOUT: 'EDGE_ORIGIN_TIMEOUT',
  UND_ERR_BODY_TIMEOUT: 'EDGE_ORIGIN_TIMEOUT',
  ETIMEDOUT: 'EDGE_ORIGIN_TIMEOUT',
  ECONNREFUSED: 'EDGE_ORIGIN_UNREACHABLE',
  ECONNRESET: 'EDGE_ORIGIN_UNREACHABLE',
  EPIPE: 'EDGE_ORIGIN_UNREACHABLE',
  ENOTFOUND: 'EDGE_ORIGIN_UNREACHABLE',
  EAI_AGAIN: 'EDGE_ORIGIN_UNREACHABLE',
  EHOSTUNREACH: 'EDGE_ORIGIN_UNREACHABLE',
  UND_ERR_SOCKET: 'EDGE_ORIGIN_UNREACHABLE',
  UND_ERR_CLOSED: 'EDGE_ORIGIN_UNREACHABLE',
};

export function originFailure(error: unknown, label: string): EdgeError {
  const code = (error as { code?: string } | null)?.code ?? '';
  const mapped = FAILURE_TABLE[code] ?? 'EDGE_ORIGIN_UNREACHABLE';
  const message =
    mapped === 'EDGE_ORIGIN_TIMEOUT'
      ? `The origin ${label} did not answer in time.`
      : `The origin ${label} could not be reached.`;
  return new EdgeError(mapped, message, { cause: error, details: { origin: label } });
}

/**
 * undici's body as a pull-driven Web stream. Hand-written rather than
 * `Readable.toWeb()`, which enqueues data arriving after `cancel()` and
 * throws "Controller is already closed" (nodejs/node#64529). Body errors
 * (reset, body timeout) surface as stream errors: the fill aborts and
 * nothing is stored.
 */
function webBody(body: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> {
  const iterator = body[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const { done, value } = await iterator.next();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      async cancel() {
        await iterator.return?.();
      },
    },
    { highWaterMark: 0 },
  );
}

/** The keep-alive pool every HTTP-speaking origin client uses, with the node's timeouts. */
export function createOriginPool(origin: string, options: Omit<UndiciOriginOptions, 'url'>): Pool {
  return new Pool(origin, {
    connections: options.connections ?? 128,
    connectTimeout: options.connectTimeout ?? 5000,
    headersTimeout: options.headersTimeout ?? 30_000,
    bodyTimeout: options.bodyTimeout ?? 30_000,
    keepAliveTimeout: 30_000,
    ...(options.tls ? { connect: options.tls } : {}),
  });
}

export class UndiciOriginClient implements OriginClient {
  readonly label: string;
  private readonly pool: Pool;
  private readonly basePath: string;

  constructor(options: UndiciOriginOptions) {
    const url = new URL(options.url);
    // Never put credentials from the URL into logs or client-facing errors.
    this.label = url.origin;
    this.basePath = url.pathname.replace(/\/+$/, '');
    this.pool = createOriginPool(url.origin, options);
  }

  async fetch(request: OriginRequest): Promise<Response> {
    const headers: Record<string, string> = {};
    request.headers.forEach((value, name) => {
      headers[name] = value;
    });
    let result;
    try {
      result = await this.pool.request({
        method: request.method as 'GET',
        path: this.basePath + request.pathAndQuery,
        headers,
        body: request.body ? Readable.fromWeb(request.body as import('node:stream/web').ReadableStream) : undefined,
        signal: request.signal,
        onInfo: request.onInformational
          ? (info) => request.onInformational!(info.statusCode, info.headers)
          : undefined,
      });
    } catch (error) {
      if (error instanceof undiciErrors.RequestAbortedError) throw error;
      throw originFailure(error, this.label);
    }

    const responseHeaders = new Headers();
    for (const [name, value] of Object.entries(result.headers)) {
      if (value === undefined) continue;
      if (Array.isArray(value)) for (const v of value) responseHeaders.append(name, v);
      else responseHeaders.append(name, value);
    }
    const status = result.statusCode;
    const noBody = status === 204 || status === 304 || request.method === 'HEAD' || (status >= 100 && status < 200);
    if (noBody) {
      result.body.resume();
      return new Response(null, { status, headers: responseHeaders });
    }
    return new Response(webBody(result.body), { status, headers: responseHeaders });
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}
