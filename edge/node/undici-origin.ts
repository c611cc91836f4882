/**
 * The Node origin client: an undici `Pool` per origin with keep-alive,
 * connect / header / body timeouts, and failures mapped to EdgeErrors in
 * one table. `request()` rather than `fetch()` because fetch decodes
 * `Content-Encoding`, and a proxy must pass the origin's bytes untouched.
 *
 * What reaches the core is either a response with a status in 100-599 whose
 * body ends only at a clean end of message, or an `EdgeError`: before the
 * response (`fetch()` rejects) or during the body (the stream errors).
 */
import { Readable } from 'node:stream';
import { Client, Pool, errors as undiciErrors, type Dispatcher, type buildConnector } from 'undici';
import { EdgeError, isEdgeError, type EdgeErrorCode } from '../core/errors.js';
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

/**
 * The code a TCP reset from the origin carries once an origin connection
 * has seen it: ECONNRESET re-coded (see `OriginConnection`); the message
 * still says `read ECONNRESET`.
 */
export const ORIGIN_RESET = 'EDGE_ORIGIN_RESET';

/** undici / socket failure codes to our codes: timeouts are 504, everything else that prevents an answer 502. */
const FAILURE_TABLE: Record<string, EdgeErrorCode> = {
  UND_ERR_CONNECT_TIMEOUT: 'EDGE_ORIGIN_TIMEOUT',
  UND_ERR_HEADERS_TIMEOUT: 'EDGE_ORIGIN_TIMEOUT',
  UND_ERR_BODY_TIMEOUT: 'EDGE_ORIGIN_TIMEOUT',
  ETIMEDOUT: 'EDGE_ORIGIN_TIMEOUT',
  ECONNREFUSED: 'EDGE_ORIGIN_UNREACHABLE',
  ECONNRESET: 'EDGE_ORIGIN_UNREACHABLE',
  [ORIGIN_RESET]: 'EDGE_ORIGIN_UNREACHABLE',
  EPIPE: 'EDGE_ORIGIN_UNREACHABLE',
  ENOTFOUND: 'EDGE_ORIGIN_UNREACHABLE',
  EAI_AGAIN: 'EDGE_ORIGIN_UNREACHABLE',
  EHOSTUNREACH: 'EDGE_ORIGIN_UNREACHABLE',
  UND_ERR_SOCKET: 'EDGE_ORIGIN_UNREACHABLE',
  UND_ERR_CLOSED: 'EDGE_ORIGIN_UNREACHABLE',
  // The origin answered, but not in HTTP/1.1 (llhttp's HPE_* codes are matched below).
  UND_ERR_RES_CONTENT_LENGTH_MISMATCH: 'EDGE_ORIGIN_BAD_RESPONSE',
  UND_ERR_HEADERS_OVERFLOW: 'EDGE_ORIGIN_BAD_RESPONSE',
  UND_ERR_RES_EXCEEDED_MAX_SIZE: 'EDGE_ORIGIN_BAD_RESPONSE',
  // undici's parser asserts on some status lines it lets through (`099`, a `101` nobody asked for).
  ERR_ASSERTION: 'EDGE_ORIGIN_BAD_RESPONSE',
};

function failureCode(error: unknown): EdgeErrorCode {
  const { code, name } = (error ?? {}) as { code?: unknown; name?: unknown };
  // llhttp errors: `HPE_INVALID_STATUS` and the like, or no code at all (undici 7 drops some).
  if (name === 'HTTPParserError' || (typeof code === 'string' && code.startsWith('HPE_'))) return 'EDGE_ORIGIN_BAD_RESPONSE';
  return (typeof code === 'string' ? FAILURE_TABLE[code] : undefined) ?? 'EDGE_ORIGIN_UNREACHABLE';
}

/** The origin's answer is not HTTP. Client-facing: no origin address (the cause keeps the details for logs). */
function badResponse(message: string, cause?: unknown, details?: Record<string, unknown>): EdgeError {
  return new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', message, { cause, details });
}

/** A failure before the response: no connection, no answer in time, or an answer that is not HTTP. */
export function originFailure(error: unknown, label: string): EdgeError {
  const mapped = failureCode(error);
  if (mapped === 'EDGE_ORIGIN_BAD_RESPONSE') return badResponse('The origin sent a response that is not valid HTTP/1.1.', error);
  const message =
    mapped === 'EDGE_ORIGIN_TIMEOUT'
      ? `The origin ${label} did not answer in time.`
      : `The origin ${label} could not be reached.`;
  return new EdgeError(mapped, message, { cause: error, details: { origin: label } });
}

/**
 * A failure while the body streams: every consumer (the fill, the requests
 * collapsed behind it, a passing response) sees an `EdgeError` mapped to
 * 502 or 504, never undici's raw socket error (which renders as a 500).
 * The client's own aborts pass through unchanged.
 */
export function originBodyFailure(error: unknown): unknown {
  if (isEdgeError(error) || error instanceof undiciErrors.RequestAbortedError) return error;
  const mapped = failureCode(error);
  if (mapped === 'EDGE_ORIGIN_BAD_RESPONSE') return badResponse("The origin's body does not match its framing.", error);
  const message =
    mapped === 'EDGE_ORIGIN_TIMEOUT'
      ? 'The origin stopped sending the body for longer than the body timeout.'
      : "The origin's connection broke before the end of the body.";
  return new EdgeError(mapped, message, { cause: error });
}

/**
 * undici's body as a pull-driven Web stream. Hand-written rather than
 * `Readable.toWeb()`, which enqueues data arriving after `cancel()` and
 * throws "Controller is already closed" (nodejs/node#64529). Body errors
 * (reset, body timeout, bad framing) surface as stream errors, as
 * `EdgeError`s: the fill aborts and nothing is stored.
 */
export function originBody(body: Dispatcher.ResponseData['body']): ReadableStream<Uint8Array> {
  const iterator = (body as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        let result: IteratorResult<Uint8Array>;
        try {
          result = await iterator.next();
        } catch (error) {
          throw originBodyFailure(error);
        }
        if (result.done) controller.close();
        else controller.enqueue(result.value);
      },
      async cancel() {
        await iterator.return?.();
        // An iterator that was never started returns without running its
        // cleanup: destroy the body itself, or the request stays open (and
        // the pool's close() waits for it forever). Destroyed unread, undici's
        // body emits an AbortError nobody is left to hear: heard here, or it
        // is an uncaught exception.
        if (!body.destroyed) body.on('error', () => {}).destroy();
      },
    },
    { highWaterMark: 0 },
  );
}

type ParserResume = () => void;

/** What a connection knows about its parser, shared with the handlers of its requests. */
interface ParserControl {
  /** The parser's resume (one parser per connection), handed over with each response's headers. */
  resume?: ParserResume;
  /** The stream has ended: nothing is left to parse, a full body buffer is no reason to pause. */
  ended: boolean;
}

/**
 * One keep-alive connection of the pool: an undici `Client` (undici 7, the
 * last line for Node 20) with two of its end-of-body paths corrected from
 * the socket, whose listeners we add before undici adds its own.
 *
 * - A reset is an error, never an end. A close-delimited body (no
 *   Content-Length, not chunked) ends when the origin closes the connection
 *   (RFC 9112 6.3 (8)), and only a clean close (FIN) is that end. undici's
 *   `onHttpSocketError` (client-h1.js) takes an ECONNRESET on a connection
 *   that is not kept alive for the close and calls the parser's `finish()`:
 *   a 4 MB body reset after 128 KB "ended" after fewer bytes still (what
 *   undici had buffered is dropped) and was stored. Re-coded, the reset
 *   takes undici's ordinary error path and the body fails.
 * - The parser is not left paused at the end of the stream. When the body
 *   is not being read (backpressure) undici pauses its parser, and a FIN
 *   (or, before the re-coding, a reset) arriving then made `finish()` throw
 *   `assert(!this.paused)` from a socket listener: an uncaught exception
 *   that takes the whole node down (nodejs/undici#5360, fixed in undici 8
 *   only). At the end of the stream every byte is already parsed, so the
 *   parser is resumed first, and the handler does not ask it to pause again
 *   (a close-delimited body's open span calls `onData` with no bytes).
 */
class OriginConnection extends Client {
  private readonly parser: ParserControl;

  constructor(origin: URL, options: Client.Options) {
    const parser: ParserControl = { ended: false };
    // The Pool hands its factory a connector function built from its own options.
    const connect = options.connect as buildConnector.connector;
    super(origin, {
      ...options,
      connect: (connectOptions, callback) =>
        connect(connectOptions, (...result) => {
          const socket = result[1];
          if (socket) {
            parser.resume = undefined;
            parser.ended = false;
            socket.on('error', (error: NodeJS.ErrnoException) => {
              if (error.code === 'ECONNRESET') error.code = ORIGIN_RESET;
            });
            socket.on('end', () => {
              parser.ended = true;
              parser.resume?.();
            });
          }
          callback(...result);
        }),
    });
    this.parser = parser;
  }

  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    return super.dispatch(options, withParserControl(handler, this.parser));
  }
}

/**
 * `handler`, handing the parser's resume function (from `onHeaders`) to
 * `parser`, and never asking for a pause once the stream has ended.
 * Handlers reach a pool's clients in undici's legacy form (`Pool.request`,
 * and the pool unwraps the other form), which is the form this reads.
 */
function withParserControl(handler: Dispatcher.DispatchHandler, parser: ParserControl): Dispatcher.DispatchHandler {
  const target = handler as unknown as Record<string | symbol, unknown>;
  const { onHeaders, onData } = target;
  if (typeof onHeaders !== 'function' || typeof onData !== 'function') return handler;
  const own = new Map<string | symbol, unknown>([
    [
      'onHeaders',
      (statusCode: number, rawHeaders: unknown, resume: ParserResume, statusText: string) => {
        parser.resume = resume;
        return onHeaders.call(target, statusCode, rawHeaders, resume, statusText);
      },
    ],
    ['onData', (chunk: Uint8Array) => onData.call(target, chunk) !== false || parser.ended],
  ]);
  return new Proxy(target, {
    get(_, property) {
      if (own.has(property)) return own.get(property);
      const value = target[property];
      if (typeof value !== 'function') return value;
      // Bound to the real handler: its methods may use private fields.
      const method = value.bind(target);
      own.set(property, method);
      return method;
    },
  }) as unknown as Dispatcher.DispatchHandler;
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
    factory: (url, clientOptions) => new OriginConnection(url, clientOptions as Client.Options),
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
      // undici refuses `Expect` (NotSupportedError): the node answers `100 Continue` to its client itself and sends the whole body.
      if (name !== 'expect') headers[name] = value;
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
    // llhttp lets any three digits through; RFC 9110 15 allows 100-599 (and `new Response()` throws on the rest).
    if (status < 100 || status > 599) {
      // Not reused: a connection that carried this is not to be trusted with the next request.
      result.body.on('error', () => {}).destroy();
      throw badResponse(`The origin answered with status ${status}, outside 100-599.`, undefined, { upstreamStatus: status });
    }
    const noBody = status === 204 || status === 304 || request.method === 'HEAD' || (status >= 100 && status < 200);
    if (noBody) {
      result.body.resume();
      return new Response(null, { status, headers: responseHeaders });
    }
    return new Response(originBody(result.body), { status, headers: responseHeaders });
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}
