/**
 * One error type for the whole node. Every failure that reaches a client
 * is an `EdgeError` with a stable `code`, an HTTP `status` and a message a
 * person can act on; the `cause` is kept for logs and never sent to clients.
 *
 * Match on `err.code`, not `instanceof`: a bundle may hold two copies of
 * this module (same advice as undici's errors).
 */

/** Stable error codes and the HTTP status each one is answered with. */
export const EDGE_ERROR_STATUS = {
  EDGE_BAD_REQUEST: 400,
  EDGE_BAD_PARAMETER: 400,
  EDGE_BAD_KEY: 400,
  EDGE_BAD_CONFIG: 400,
  EDGE_BAD_SIGNATURE: 403,
  EDGE_FORBIDDEN: 403,
  EDGE_UNAUTHORIZED: 401,
  EDGE_ADMIN_DISABLED: 404,
  EDGE_NOT_FOUND: 404,
  EDGE_METHOD_NOT_ALLOWED: 405,
  EDGE_PAYLOAD_TOO_LARGE: 413,
  EDGE_UNSUPPORTED_MEDIA_TYPE: 415,
  EDGE_RANGE_NOT_SATISFIABLE: 416,
  EDGE_UNPROCESSABLE_IMAGE: 422,
  EDGE_RATE_LIMITED: 429,
  EDGE_INTERNAL: 500,
  EDGE_ORIGIN_UNREACHABLE: 502,
  EDGE_ORIGIN_BAD_RESPONSE: 502,
  EDGE_OVERLOADED: 503,
  EDGE_TRANSFORM_TIMEOUT: 503,
  EDGE_ORIGIN_TIMEOUT: 504,
  EDGE_INSUFFICIENT_STORAGE: 507,
} as const;

export type EdgeErrorCode = keyof typeof EDGE_ERROR_STATUS;

export interface EdgeErrorOptions {
  cause?: unknown;
  /** Extra response headers, e.g. `Retry-After` for 503. */
  headers?: Record<string, string>;
  /** Extra JSON fields for the client, e.g. `{ parameter: 'width' }`. */
  details?: Record<string, unknown>;
}

export class EdgeError extends Error {
  readonly code: EdgeErrorCode;
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly details: Record<string, unknown>;

  constructor(code: EdgeErrorCode, message: string, options: EdgeErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = 'EdgeError';
    this.code = code;
    this.status = EDGE_ERROR_STATUS[code];
    this.headers = options.headers ?? {};
    this.details = options.details ?? {};
  }
}

export function isEdgeError(err: unknown): err is EdgeError {
  return (
    typeof err === 'object' &&
    err !== null &&
    typeof (err as { code?: unknown }).code === 'string' &&
    (err as { code: string }).code in EDGE_ERROR_STATUS &&
    typeof (err as { status?: unknown }).status === 'number'
  );
}

/**
 * The single renderer for errors: `{ "error": code, "message": ... }`.
 * Anything that is not an EdgeError becomes a generic 500 without details
 * (no stack traces or internal messages reach clients).
 */
export function errorResponse(err: unknown, extraHeaders: Record<string, string> = {}): Response {
  const edgeError = isEdgeError(err)
    ? err
    : new EdgeError('EDGE_INTERNAL', 'The edge node failed to handle this request.', { cause: err });
  const body = JSON.stringify({ error: edgeError.code, message: edgeError.message, ...edgeError.details });
  return new Response(body, {
    status: edgeError.status,
    headers: {
      'content-type': 'application/json; charset=utf-8',
      'cache-control': 'no-store',
      ...edgeError.headers,
      ...extraHeaders,
    },
  });
}
