/**
 * A real S3 protocol implementation for tests: `s3rver` in-process on an
 * ephemeral port with a temp directory, buckets and objects created with
 * the AWS SDK v3 (`@aws-sdk/client-s3`).
 *
 * s3rver checks that the access key id exists but not V4 signatures, so
 * clients under test talk to it through a small `node:http` proxy that
 * records every request and recomputes its signature with AWS's own signer
 * (`@smithy/signature-v4`) and the test's secret. A request whose signature
 * does not match is answered the way S3 answers it (403
 * `SignatureDoesNotMatch`, XML rendered by s3rver's own error model), so a
 * signing bug fails the test instead of passing unnoticed.
 *
 * @example
 * const s3 = await startTestS3();
 * await s3.createBucket('media');
 * await s3.put('media', 'site/a.txt', 'hello', { ContentType: 'text/plain' });
 * const url = `s3://media/site?region=us-east-1&endpoint=${s3.endpoint}`;
 * ... expect(s3.requests.every((r) => r.signature === 'valid')).toBe(true);
 */
import { request as httpRequest, createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, PutObjectCommand, S3Client, type PutObjectCommandInput } from '@aws-sdk/client-s3';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import S3rver from 's3rver';
import S3rverAccounts from 's3rver/lib/models/account.js';
import S3Error from 's3rver/lib/models/error.js';

export interface TestCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface CapturedS3Request {
  method: string;
  /** Path and query exactly as received. */
  url: string;
  headers: IncomingHttpHeaders;
  /** `unsigned` when no Authorization header was sent. */
  signature: 'valid' | 'invalid' | 'unsigned';
  /** Why the signature did not verify. */
  problem?: string;
}

export interface SignatureCheck {
  valid: boolean;
  problem?: string;
  /** The signature AWS's signer computes with the given secret. */
  expected?: string;
  provided?: string;
}

export interface TestS3 {
  /** The verifying proxy, e.g. `http://127.0.0.1:41234`: what clients under test use as endpoint. */
  endpoint: string;
  /** s3rver itself (the SDK uploads here, unproxied). */
  directEndpoint: string;
  credentials: TestCredentials;
  /** Every request that reached the proxy, in order. */
  requests: CapturedS3Request[];
  /**
   * Answer missing keys as S3 does for principals without `s3:ListBucket`:
   * 403 AccessDenied instead of 404 NoSuchKey.
   */
  denyMissingKeys: boolean;
  /** Return an S3 error code to answer a request with it (e.g. 'InternalError'), instead of forwarding it. */
  override?: (request: CapturedS3Request) => string | undefined;
  createBucket(name: string): Promise<void>;
  put(bucket: string, key: string, body: string | Uint8Array, extra?: Partial<PutObjectCommandInput>): Promise<void>;
  close(): Promise<void>;
}

/** yyyyMMdd'T'HHmmss'Z' to a Date. */
function parseAmzDate(value: string): Date | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m) return undefined;
  return new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!));
}

const AUTHORIZATION = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$/;

/**
 * Recompute the V4 signature of a received request with `@smithy/signature-v4`
 * and `credentials`, over exactly the headers it claims to sign.
 */
export async function verifySignatureV4(
  request: { method: string; url: string; headers: IncomingHttpHeaders },
  credentials: TestCredentials,
): Promise<SignatureCheck> {
  const authorization = request.headers.authorization;
  if (typeof authorization !== 'string') return { valid: false, problem: 'no Authorization header' };
  const m = AUTHORIZATION.exec(authorization);
  if (!m) return { valid: false, problem: 'malformed Authorization header' };
  const [, accessKeyId, scopeDate, region, service, signedHeaderList, provided] = m as unknown as string[];
  if (accessKeyId !== credentials.accessKeyId) return { valid: false, problem: `unknown access key id`, provided };
  const amzDate = request.headers['x-amz-date'];
  const signingDate = typeof amzDate === 'string' ? parseAmzDate(amzDate) : undefined;
  if (!signingDate) return { valid: false, problem: 'missing or malformed x-amz-date', provided };
  if (amzDate!.slice(0, 8) !== scopeDate) return { valid: false, problem: 'credential scope date differs from x-amz-date', provided };
  if (Math.abs(Date.now() - signingDate.getTime()) > 15 * 60_000) return { valid: false, problem: 'request time too skewed', provided };

  const signed = signedHeaderList!.split(';');
  const headers: Record<string, string> = {};
  for (const name of signed) {
    const value = request.headers[name];
    if (value === undefined) return { valid: false, problem: `signed header ${name} is missing`, provided };
    headers[name] = Array.isArray(value) ? value.join(',') : value;
  }
  const [path, search = ''] = request.url.split(/\?(.*)/s) as [string, string?];
  const query: Record<string, string | string[]> = {};
  for (const [name, value] of new URLSearchParams(search)) {
    const prior = query[name];
    query[name] = prior === undefined ? value : ([] as string[]).concat(prior, value);
  }
  const host = headers.host ?? '';
  const signer = new SignatureV4({
    credentials: { accessKeyId: credentials.accessKeyId, secretAccessKey: credentials.secretAccessKey, sessionToken: credentials.sessionToken },
    region: region!,
    service: service!,
    sha256: Sha256,
    // S3 signs the path as sent (encoded once), without normalising it.
    uriEscapePath: false,
    applyChecksum: true,
  });
  const recomputed = await signer.sign(
    { method: request.method, protocol: 'http:', hostname: host.replace(/:\d+$/, ''), path, query, headers },
    { signingDate, signableHeaders: new Set(signed) },
  );
  const expectedAuth = String(recomputed.headers.authorization ?? recomputed.headers.Authorization);
  const expectedMatch = AUTHORIZATION.exec(expectedAuth);
  const expected = expectedMatch?.[6];
  if (expectedMatch?.[5] !== signedHeaderList) {
    return { valid: false, problem: `signed headers differ: sent ${signedHeaderList}, signer signs ${expectedMatch?.[5]}`, expected, provided };
  }
  return expected === provided ? { valid: true, expected, provided } : { valid: false, problem: 'signature does not match', expected, provided };
}

function sendS3Error(res: ServerResponse, method: string, code: string, message: string): void {
  const error = new S3Error(code, message);
  const xml = error.toXML();
  res.writeHead(error.status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(xml) });
  res.end(method === 'HEAD' ? undefined : xml);
}

let keyCounter = 0;

export async function startTestS3(options: { credentials?: TestCredentials } = {}): Promise<TestS3> {
  const directory = await mkdtemp(join(tmpdir(), 'edge-s3rver-'));
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, vhostBuckets: false });
  const { port: s3Port } = await server.run();
  const directEndpoint = `http://127.0.0.1:${s3Port}`;

  // A key pair s3rver accepts (it checks the access key id), unique per helper instance.
  const credentials: TestCredentials = options.credentials ?? {
    accessKeyId: `AKIDTEST${process.pid}X${++keyCounter}`,
    secretAccessKey: `test-secret-${Math.random().toString(36).slice(2)}-${Date.now().toString(36)}`,
  };
  S3rverAccounts.DUMMY_ACCOUNT.createKeyPair(credentials.accessKeyId, credentials.secretAccessKey);

  const sdk = new S3Client({
    region: 'us-east-1',
    endpoint: directEndpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: credentials.accessKeyId, secretAccessKey: credentials.secretAccessKey },
  });

  const sockets = new Set<Socket>();
  const proxy = createServer((req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const captured: CapturedS3Request = { method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers, signature: 'unsigned' };
      handle.requests.push(captured);
      if (req.headers.authorization !== undefined) {
        const check = await verifySignatureV4(captured, credentials);
        captured.signature = check.valid ? 'valid' : 'invalid';
        captured.problem = check.problem;
        if (!check.valid && check.problem !== 'unknown access key id') {
          // What S3 answers; an unknown key id goes on to s3rver, which answers InvalidAccessKeyId itself.
          sendS3Error(res, captured.method, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your key and signing method.');
          req.resume();
          return;
        }
      }
      const forced = handle.override?.(captured);
      if (forced) {
        sendS3Error(res, captured.method, forced, `Forced by the test: ${forced}`);
        req.resume();
        return;
      }
      const upstream = httpRequest({ host: '127.0.0.1', port: s3Port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
        if (handle.denyMissingKeys && answer.statusCode === 404 && (captured.method === 'GET' || captured.method === 'HEAD')) {
          const chunks: Buffer[] = [];
          answer.on('data', (c: Buffer) => chunks.push(c));
          answer.on('end', () => {
            const xml = Buffer.concat(chunks).toString('utf8');
            // HEAD answers carry no body; s3rver's 404 for a HEAD in an existing bucket is a missing key.
            if (captured.method === 'HEAD' || xml.includes('<Code>NoSuchKey</Code>')) {
              sendS3Error(res, captured.method, 'AccessDenied', 'Access Denied');
            } else {
              res.writeHead(404, answer.headers);
              res.end(xml);
            }
          });
          return;
        }
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      });
      upstream.on('error', () => res.destroy());
      req.pipe(upstream);
    })();
  });
  proxy.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  const { port } = proxy.address() as AddressInfo;

  const handle: TestS3 = {
    endpoint: `http://127.0.0.1:${port}`,
    directEndpoint,
    credentials,
    requests: [],
    denyMissingKeys: false,
    async createBucket(name) {
      await sdk.send(new CreateBucketCommand({ Bucket: name }));
    },
    async put(bucket, key, body, extra = {}) {
      await sdk.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ...extra }));
    },
    async close() {
      sdk.destroy();
      await new Promise<void>((resolve) => {
        proxy.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
      await server.close();
      S3rverAccounts.DUMMY_ACCOUNT.revokeAccessKey(credentials.accessKeyId);
      await rm(directory, { recursive: true, force: true });
    },
  };
  return handle;
}
