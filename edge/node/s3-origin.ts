/**
 * An S3 bucket (AWS, or any S3-compatible store: MinIO, R2, Ceph, s3rver)
 * as an origin: `s3://bucket[/prefix]?region=us-east-1&endpoint=http://host:port`.
 *
 * Requests are signed with AWS Signature V4 by `aws4fetch`'s `AwsV4Signer`
 * (a maintained signer; no hand-written canonicalisation) and sent with an
 * undici `Pool` (`request()`: keep-alive, raw bytes, the same timeouts and
 * failure table as `undici-origin.ts`).
 *
 * What clients see:
 * - Only reads (GET, HEAD) go to the bucket; other methods are answered 405
 *   here, so the node's credentials never write or delete.
 * - The object key is the request path (decoded once) under the prefix; the
 *   query string is not sent (S3 subresources such as `?acl` or a listing
 *   must not be reachable through the node).
 * - `404 NoSuchKey`, and `403 AccessDenied` (what S3 answers for a missing
 *   key when the credentials lack `s3:ListBucket`), become a plain 404.
 * - Any other S3 error (bad signature, unknown key id, missing bucket, 5xx,
 *   redirects to another region) rejects with `EDGE_ORIGIN_BAD_RESPONSE`
 *   (502) naming the bucket, the endpoint and S3's error code. S3's XML body
 *   and the credentials never reach a client or an error message.
 * - `x-amz-*` response headers (request ids, encryption key ids, version ids,
 *   user metadata) are removed: they describe the bucket, not the resource.
 */
import { AwsV4Signer } from 'aws4fetch';
import { Pool, errors as undiciErrors, type Dispatcher } from 'undici';
import { EdgeError } from '../core/errors.js';
import type { OriginClient, OriginRequest } from '../core/origin/types.js';
import { createOriginPool, originBody, originFailure } from './undici-origin.js';

/** Credentials for signing. Never logged, never part of `label` or an error. */
export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface S3OriginOptions {
  /**
   * `s3://bucket[/prefix]?region=...&endpoint=...`.
   * @example 's3://media/images?region=eu-west-1'
   * @example 's3://media?region=us-east-1&endpoint=http://127.0.0.1:9000'
   */
  url: string;
  /** @default from `env`: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN */
  credentials?: S3Credentials;
  /** Where default credentials and region come from. @default process.env */
  env?: Record<string, string | undefined>;
  /** @default 5000 */
  connectTimeout?: number;
  /** Time to response headers. @default 30000 */
  headersTimeout?: number;
  /** Longest gap between body chunks. @default 30000 */
  bodyTimeout?: number;
  /** @default 128 */
  connections?: number;
}

/** A parsed `s3://` origin URL. */
export interface S3Location {
  bucket: string;
  /** Key prefix without leading or trailing slash; '' for the whole bucket. */
  prefix: string;
  region: string;
  /** Base URL requests go to (endpoint origin, plus `/bucket` with path-style addressing). */
  baseUrl: URL;
  /** True for custom endpoints and for bucket names with dots on AWS. */
  pathStyle: boolean;
  /** The endpoint given in the URL (origin only), undefined for AWS. */
  endpoint?: string;
}

/** Conditional and range fields S3 honours on reads; nothing else from the client is sent. */
const FORWARDED_REQUEST_FIELDS = ['range', 'if-match', 'if-none-match', 'if-modified-since', 'if-unmodified-since'];

/** SHA-256 of the empty body: GET and HEAD sign their (empty) payload. */
const EMPTY_BODY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** Largest S3 error body read to find its `<Code>`; the rest is discarded. */
const MAX_ERROR_BODY = 16 * 1024;

const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/**
 * Parse and validate an `s3://` URL. Throws a `TypeError` naming the
 * problem (never echoing credentials).
 */
export function parseS3Url(value: string, env: Record<string, string | undefined> = {}): S3Location {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new TypeError('S3 origin: expected a URL like s3://bucket/prefix?region=us-east-1&endpoint=http://127.0.0.1:9000');
  }
  if (url.protocol !== 's3:') throw new TypeError(`S3 origin: expected the s3: scheme, got ${url.protocol}`);
  if (url.username || url.password) {
    throw new TypeError('S3 origin: credentials do not belong in the s3:// URL; use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the group\'s "s3" field');
  }
  const bucket = url.hostname;
  if (!BUCKET_NAME.test(bucket)) throw new TypeError(`S3 origin: "${bucket}" is not a valid bucket name (3-63 lower-case letters, digits, dots, hyphens)`);
  for (const name of url.searchParams.keys()) {
    if (name !== 'region' && name !== 'endpoint') throw new TypeError(`S3 origin s3://${bucket}: unknown parameter "${name}" (allowed: region, endpoint)`);
  }
  const region = url.searchParams.get('region') || env.AWS_REGION || env.AWS_DEFAULT_REGION || 'us-east-1';
  if (!/^[a-z0-9-]+$/.test(region)) throw new TypeError(`S3 origin s3://${bucket}: "${region}" is not a region name`);
  let prefix: string;
  try {
    prefix = decodeURIComponent(url.pathname).replace(/^\/+|\/+$/g, '');
  } catch {
    throw new TypeError(`S3 origin s3://${bucket}: the prefix is not valid percent-encoding`);
  }

  const endpointParam = url.searchParams.get('endpoint');
  if (endpointParam) {
    let endpoint: URL;
    try {
      endpoint = new URL(endpointParam);
    } catch {
      throw new TypeError(`S3 origin s3://${bucket}: endpoint must be an http(s):// URL`);
    }
    if (endpoint.protocol !== 'http:' && endpoint.protocol !== 'https:') throw new TypeError(`S3 origin s3://${bucket}: endpoint must be an http(s):// URL`);
    // Path-style for custom endpoints: S3-compatible stores rarely have wildcard DNS.
    const base = new URL(endpoint.origin);
    base.pathname = `${endpoint.pathname.replace(/\/+$/, '')}/${bucket}`;
    return { bucket, prefix, region, baseUrl: base, pathStyle: true, endpoint: endpoint.origin };
  }
  // Virtual-hosted style on AWS, except for dotted names, whose host would not match the wildcard certificate.
  if (bucket.includes('.')) {
    return { bucket, prefix, region, baseUrl: new URL(`https://s3.${region}.amazonaws.com/${bucket}`), pathStyle: true };
  }
  return { bucket, prefix, region, baseUrl: new URL(`https://${bucket}.s3.${region}.amazonaws.com`), pathStyle: false };
}

/** The object key for a request path, or undefined when the path names no object. */
export function objectKey(pathAndQuery: string, prefix: string): string | undefined {
  const pathname = pathAndQuery.split('?')[0]!.replace(/^\/+/, '');
  let segments: string[];
  try {
    segments = pathname.split('/').map((segment) => decodeURIComponent(segment));
  } catch {
    return undefined;
  }
  // Dot segments could climb out of the prefix (or, path-style, out of the bucket) on a normalising hop.
  if (segments.some((segment) => segment === '.' || segment === '..')) return undefined;
  const rest = segments.join('/');
  if (rest === '' && prefix === '') return undefined; // the bucket itself: a listing, never served
  return prefix === '' ? rest : `${prefix}/${rest}`;
}

function encodeKey(key: string): string {
  return key
    .split('/')
    .map((segment) => encodeURIComponent(segment).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase()))
    .join('/');
}

function plainResponse(status: number, code: string, message: string, extra: Record<string, string> = {}): Response {
  // No Cache-Control: whether a 404 is cached is the node's policy (defaultTtl, route rules).
  return new Response(JSON.stringify({ error: code, message }), {
    status,
    headers: { 'content-type': 'application/json; charset=utf-8', ...extra },
  });
}

async function readCapped(body: Dispatcher.ResponseData['body'], limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of body) {
      const buffer = chunk as Buffer;
      chunks.push(buffer);
      size += buffer.length;
      if (size >= limit) break;
    }
  } catch {
    // A truncated error body still may hold the code; nothing else is needed from it.
  } finally {
    if (!body.destroyed) body.destroy();
  }
  return Buffer.concat(chunks).subarray(0, limit).toString('utf8');
}

/** S3 error codes are short alphanumeric tokens; anything else is not echoed. */
function s3ErrorCode(xml: string): string | undefined {
  const code = /<Code>([^<]{1,64})<\/Code>/.exec(xml)?.[1];
  return code !== undefined && /^[A-Za-z0-9.]+$/.test(code) ? code : undefined;
}

export class S3OriginClient implements OriginClient {
  /** `s3://bucket/prefix at <endpoint>` (or `(region)` on AWS): no credentials. */
  readonly label: string;
  readonly location: S3Location;
  private readonly credentials: S3Credentials;
  private readonly pool: Pool;
  /** aws4fetch caches derived signing keys per (secret, date, region, service) here. */
  private readonly signingKeys = new Map<string, ArrayBuffer>();

  constructor(options: S3OriginOptions) {
    const env = options.env ?? process.env;
    this.location = parseS3Url(options.url, env);
    const { bucket, prefix, region, endpoint } = this.location;
    this.label = `s3://${bucket}${prefix ? '/' + prefix : ''} ${endpoint ? `at ${endpoint}` : `(${region})`}`;
    const credentials =
      options.credentials ??
      (env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY
        ? { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY, sessionToken: env.AWS_SESSION_TOKEN || undefined }
        : undefined);
    if (!credentials) {
      throw new TypeError(`S3 origin ${this.label}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the origin group's "s3" field`);
    }
    this.credentials = credentials;
    this.pool = createOriginPool(this.location.baseUrl.origin, options);
  }

  async fetch(request: OriginRequest): Promise<Response> {
    const method = request.method.toUpperCase();
    if (method !== 'GET' && method !== 'HEAD') {
      return plainResponse(405, 'EDGE_METHOD_NOT_ALLOWED', 'This origin serves GET and HEAD only.', { allow: 'GET, HEAD' });
    }
    const key = objectKey(request.pathAndQuery, this.location.prefix);
    if (key === undefined) return plainResponse(404, 'EDGE_NOT_FOUND', 'Not found.');

    let result = await this.send(method, key, request);
    let status = result.statusCode;
    if (status < 300 || status === 304) return this.success(result, method);

    let code: string | undefined;
    if (method === 'GET') {
      code = s3ErrorCode(await readCapped(result.body, MAX_ERROR_BODY));
    } else {
      // A HEAD error has no body to name the code: ask again with a one-byte GET.
      result.body.resume();
      const probeHeaders = new Headers(request.headers);
      probeHeaders.set('range', 'bytes=0-0');
      const probe = await this.send('GET', key, { ...request, headers: probeHeaders });
      if (probe.statusCode < 300 || probe.statusCode === 304) {
        // The object appeared between the two requests: answer the HEAD again.
        probe.body.resume();
        result = await this.send('HEAD', key, request);
        if (result.statusCode < 300 || result.statusCode === 304) return this.success(result, method);
        result.body.resume();
        status = result.statusCode;
      } else {
        status = probe.statusCode;
        code = s3ErrorCode(await readCapped(probe.body, MAX_ERROR_BODY));
      }
    }

    if ((status === 404 && code === 'NoSuchKey') || (status === 403 && code === 'AccessDenied')) {
      return plainResponse(404, 'EDGE_NOT_FOUND', 'Not found.');
    }
    if (status === 412) return new Response(null, { status: 412 });
    if (status === 416) return plainResponse(416, 'EDGE_RANGE_NOT_SATISFIABLE', 'The requested range is not satisfiable.');
    throw new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', `The S3 origin ${this.label} answered ${status} ${code ?? '(no error code)'}.`, {
      details: { origin: this.label, upstreamStatus: status, ...(code ? { s3Error: code } : {}) },
    });
  }

  private async send(method: string, key: string, request: OriginRequest): Promise<Dispatcher.ResponseData> {
    const headers = new Headers();
    for (const name of FORWARDED_REQUEST_FIELDS) {
      const value = request.headers.get(name);
      if (value !== null) headers.set(name, value);
    }
    headers.set('x-amz-content-sha256', EMPTY_BODY_SHA256);
    const base = this.location.baseUrl;
    const signer = new AwsV4Signer({
      method,
      url: `${base.origin}${base.pathname.replace(/\/+$/, '')}/${encodeKey(key)}`,
      headers,
      accessKeyId: this.credentials.accessKeyId,
      secretAccessKey: this.credentials.secretAccessKey,
      sessionToken: this.credentials.sessionToken,
      service: 's3',
      region: this.location.region,
      cache: this.signingKeys,
    });
    const signed = await signer.sign();
    const wireHeaders: Record<string, string> = {};
    signed.headers.forEach((value, name) => {
      wireHeaders[name] = value;
    });
    try {
      return await this.pool.request({
        method: method as 'GET',
        // The path exactly as it was canonicalised, so S3 recomputes the same signature.
        path: signer.encodedPath,
        headers: wireHeaders,
        signal: request.signal,
      });
    } catch (error) {
      if (error instanceof undiciErrors.RequestAbortedError) throw error;
      throw originFailure(error, this.label);
    }
  }

  private success(result: Dispatcher.ResponseData, method: string): Response {
    const headers = new Headers();
    for (const [name, value] of Object.entries(result.headers)) {
      if (value === undefined || name.startsWith('x-amz-')) continue;
      if (Array.isArray(value)) for (const v of value) headers.append(name, v);
      else headers.append(name, value);
    }
    const status = result.statusCode;
    if (status === 204 || status === 304 || method === 'HEAD') {
      result.body.resume();
      return new Response(null, { status, headers });
    }
    // Body failures (reset, body timeout, short body) surface as EdgeErrors, as for HTTP origins.
    return new Response(originBody(result.body), { status, headers });
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}
