/**
 * S3-style origins (issue 5): a private bucket on a real S3 implementation
 * (s3rver, objects uploaded with the AWS SDK), read through
 * `S3OriginClient` directly and through a real edge node. Every signed
 * request is recomputed with AWS's own signer (`@smithy/signature-v4`) by
 * the proxy in `helpers/s3.ts`; a mismatch is answered 403
 * SignatureDoesNotMatch, and each test also asserts that all requests
 * verified.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { AwsV4Signer } from 'aws4fetch';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { resolveEdgeOptions } from '../edge/core/options.js';
import type { OriginRequest } from '../edge/core/origin/types.js';
import { createOriginClient } from '../edge/node/origin-pool.js';
import { S3OriginClient, objectKey, parseS3Url } from '../edge/node/s3-origin.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';
import { startTestS3, verifySignatureV4, type TestS3 } from './helpers/s3.js';

const BUCKET = 'media';
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const HELLO = 'hello from s3';
const GZIPPED = gzipSync(Buffer.from('{"compressed":true}'));

let s3: TestS3;
let url: string;
const clients: S3OriginClient[] = [];

function client(overrides: Partial<ConstructorParameters<typeof S3OriginClient>[0]> = {}): S3OriginClient {
  const c = new S3OriginClient({ url, credentials: s3.credentials, env: {}, ...overrides });
  clients.push(c);
  return c;
}

function req(pathAndQuery: string, init: Omit<Partial<OriginRequest>, 'headers'> & { headers?: Record<string, string> } = {}): OriginRequest {
  return { method: 'GET', ...init, pathAndQuery, headers: new Headers(init.headers ?? {}) };
}

beforeAll(async () => {
  s3 = await startTestS3();
  url = `s3://${BUCKET}/site?region=us-east-1&endpoint=${s3.endpoint}`;
  await s3.createBucket(BUCKET);
  await s3.put(BUCKET, 'site/hello.txt', HELLO, { ContentType: 'text/plain; charset=utf-8', CacheControl: 'public, max-age=60', Metadata: { owner: 'team-a' } });
  await s3.put(BUCKET, 'site/dir/a b+c (1)!.txt', 'special', { ContentType: 'text/plain' });
  await s3.put(BUCKET, 'site/data.json', GZIPPED, { ContentType: 'application/json', ContentEncoding: 'gzip', CacheControl: 'max-age=60' });
  await s3.put(BUCKET, 'outside.txt', 'not under the prefix', { ContentType: 'text/plain' });
  await s3.put(BUCKET, 'site/nocache.txt', 'no freshness', { ContentType: 'text/plain' });
});

afterEach(async () => {
  // Every request a correctly configured client signed must verify (tests that sign wrongly on purpose clear the log).
  const invalid = s3.requests.filter((r) => r.signature !== 'valid').map((r) => `${r.method} ${r.url}: ${r.signature} ${r.problem ?? ''}`);
  s3.requests.length = 0;
  s3.denyMissingKeys = false;
  s3.override = undefined;
  await Promise.all(clients.splice(0).map((c) => c.close()));
  expect(invalid).toEqual([]);
});

afterAll(async () => {
  await s3?.close();
});

describe('S3OriginClient against s3rver', () => {
  it('reads an object with a V4 signature AWS\'s signer verifies, path-style, without x-amz-* headers', async () => {
    const res = await client().fetch(req('/hello.txt', { headers: { cookie: 'session=secret', authorization: 'Bearer client-token', 'x-forwarded-host': 'www.example.com' } }));
    expect(res.status).toBe(200);
    expect(await res.text()).toBe(HELLO);
    expect(res.headers.get('content-type')).toBe('text/plain; charset=utf-8');
    expect(res.headers.get('cache-control')).toBe('public, max-age=60');
    expect(res.headers.get('etag')).toMatch(/^"[0-9a-f]+"$/);
    expect(res.headers.get('last-modified')).toBeTruthy();
    expect([...res.headers.keys()].filter((name) => name.startsWith('x-amz-'))).toEqual([]);

    expect(s3.requests).toHaveLength(1);
    const sent = s3.requests[0]!;
    expect(sent.signature).toBe('valid');
    expect(sent.method).toBe('GET');
    expect(sent.url).toBe('/media/site/hello.txt');
    expect(sent.headers['x-amz-content-sha256']).toBe(EMPTY_SHA256);
    expect(sent.headers.authorization).toMatch(new RegExp(`^AWS4-HMAC-SHA256 Credential=${s3.credentials.accessKeyId}/\\d{8}/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=[0-9a-f]{64}$`));
    // The client's cookie, bearer token and forwarding headers stay at the edge.
    expect(sent.headers.cookie).toBeUndefined();
    expect(sent.headers['x-forwarded-host']).toBeUndefined();
  });

  it('signs keys with spaces, plus signs, parentheses and ! (encoded once, as S3 canonicalises them)', async () => {
    const res = await client().fetch(req('/dir/a%20b+c%20(1)!.txt'));
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('special');
    expect(s3.requests[0]!.url).toBe('/media/site/dir/a%20b%2Bc%20%281%29%21.txt');
    expect(s3.requests[0]!.signature).toBe('valid');
  });

  it('passes Range and conditional headers (signed) and S3\'s 206 / 304', async () => {
    const c = client();
    const range = await c.fetch(req('/hello.txt', { headers: { range: 'bytes=0-4' } }));
    expect(range.status).toBe(206);
    expect(await range.text()).toBe('hello');
    expect(range.headers.get('content-range')).toBe(`bytes 0-4/${HELLO.length}`);

    const full = await c.fetch(req('/hello.txt'));
    const etag = full.headers.get('etag')!;
    await full.text();
    const notModified = await c.fetch(req('/hello.txt', { headers: { 'if-none-match': etag } }));
    expect(notModified.status).toBe(304);
    expect(notModified.body).toBeNull();
    expect(s3.requests.map((r) => r.signature)).toEqual(['valid', 'valid', 'valid']);
    expect(s3.requests[2]!.headers.authorization).toContain('if-none-match');
  });

  it('returns stored Content-Encoding bytes untouched', async () => {
    const res = await client().fetch(req('/data.json', { headers: { 'accept-encoding': 'gzip' } }));
    expect(res.headers.get('content-encoding')).toBe('gzip');
    expect(Buffer.from(await res.arrayBuffer()).equals(GZIPPED)).toBe(true);
  });

  it('answers HEAD with headers and no body', async () => {
    const res = await client().fetch(req('/hello.txt', { method: 'HEAD' }));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(HELLO.length));
    expect(res.body).toBeNull();
    expect(s3.requests.map((r) => [r.method, r.signature])).toEqual([['HEAD', 'valid']]);
  });

  it('turns 404 NoSuchKey into a plain JSON 404 without S3\'s XML', async () => {
    const res = await client().fetch(req('/missing.txt'));
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const body = await res.text();
    expect(JSON.parse(body)).toEqual({ error: 'EDGE_NOT_FOUND', message: 'Not found.' });
    expect(body).not.toMatch(/xml|NoSuchKey|site\/missing/i);
  });

  it('turns 403 AccessDenied (a missing key without list permission) into 404, for GET and HEAD', async () => {
    s3.denyMissingKeys = true;
    const c = client();
    const res = await c.fetch(req('/missing.txt'));
    expect(res.status).toBe(404);
    expect(await res.text()).not.toMatch(/AccessDenied|xml/i);
    const head = await c.fetch(req('/missing.txt', { method: 'HEAD' }));
    expect(head.status).toBe(404);
    // The HEAD's bodyless 403 was followed by a one-byte GET to read S3's error code.
    expect(s3.requests.map((r) => `${r.method} ${r.headers.range ?? ''}`)).toEqual(['GET ', 'HEAD ', 'GET bytes=0-0']);
  });

  it('keeps the key under the prefix and never asks for a bucket listing', async () => {
    const bare = client({ url: `s3://${BUCKET}?region=us-east-1&endpoint=${s3.endpoint}` });
    expect((await bare.fetch(req('/'))).status).toBe(404);
    expect((await bare.fetch(req('/?list-type=2'))).status).toBe(404);
    expect((await client().fetch(req('/%2e%2e/outside.txt'))).status).toBe(404);
    expect(s3.requests).toEqual([]);
    // The query is not sent: S3 subresources (?acl, ?tagging) are not reachable through the edge.
    const withQuery = await client().fetch(req('/hello.txt?acl&v=2'));
    expect(await withQuery.text()).toBe(HELLO);
    expect(s3.requests[0]!.url).toBe('/media/site/hello.txt');
    expect(objectKey('/a/b.txt', 'p')).toBe('p/a/b.txt');
    expect(objectKey('/a/./b', '')).toBeUndefined();
    expect(objectKey('/%E0%A4%A', '')).toBeUndefined();
  });

  it('answers other methods 405 without sending them (the credentials never write)', async () => {
    const res = await client().fetch(req('/hello.txt', { method: 'PUT', body: new Blob(['x']).stream() }));
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('GET, HEAD');
    expect(s3.requests).toEqual([]);
  });

  it('sends and signs the session token', async () => {
    const res = await client({ credentials: { ...s3.credentials, sessionToken: 'session-token-value' } }).fetch(req('/hello.txt'));
    expect(res.status).toBe(200);
    await res.text();
    expect(s3.requests[0]!.headers['x-amz-security-token']).toBe('session-token-value');
    expect(s3.requests[0]!.headers.authorization).toContain('x-amz-security-token');
  });

  it('takes credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, and refuses to start without any', async () => {
    const fromEnv = client({ credentials: undefined, env: { AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey } });
    const res = await fromEnv.fetch(req('/hello.txt'));
    expect(await res.text()).toBe(HELLO);
    expect(() => new S3OriginClient({ url, env: {} })).toThrow(/no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/);
  });

  it('rejects a wrong secret with EDGE_ORIGIN_BAD_RESPONSE naming bucket, endpoint and S3 error code, not the credential', async () => {
    const wrongSecret = 'wrong-secret-do-not-leak-0123456789';
    const c = client({ credentials: { accessKeyId: s3.credentials.accessKeyId, secretAccessKey: wrongSecret } });
    const error = await c.fetch(req('/hello.txt', { headers: {} })).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ code: 'EDGE_ORIGIN_BAD_RESPONSE', status: 502 });
    const { message, details } = error as { message: string; details: Record<string, unknown> };
    expect(message).toBe(`The S3 origin s3://media/site at ${s3.endpoint} answered 403 SignatureDoesNotMatch.`);
    expect(details).toEqual({ origin: `s3://media/site at ${s3.endpoint}`, upstreamStatus: 403, s3Error: 'SignatureDoesNotMatch' });
    const text = JSON.stringify({ message, details });
    expect(text).not.toContain(wrongSecret);
    expect(text).not.toContain(s3.credentials.secretAccessKey);
    expect(text).not.toContain(s3.credentials.accessKeyId);
    // The verifier caught it: AWS's signer with the test's secret computes another signature.
    expect(s3.requests.map((r) => [r.signature, r.problem])).toEqual([['invalid', 'signature does not match']]);
    s3.requests.length = 0;
  });

  it('rejects an unknown access key id (s3rver\'s own InvalidAccessKeyId) with a 502 EdgeError', async () => {
    const c = client({ credentials: { accessKeyId: 'AKIDNOSUCHKEY', secretAccessKey: 'whatever-secret' } });
    await expect(c.fetch(req('/hello.txt'))).rejects.toMatchObject({ code: 'EDGE_ORIGIN_BAD_RESPONSE', message: expect.stringMatching(/answered 403 InvalidAccessKeyId\.$/) });
    // The verifier did not know the key either; s3rver answered it.
    expect(s3.requests.map((r) => r.problem)).toEqual(['unknown access key id']);
    s3.requests.length = 0;
  });

  it('rejects a missing bucket and S3 5xx errors with 502, never passing them as 404 or 5xx bodies', async () => {
    const noBucket = client({ url: `s3://no-such-bucket?region=us-east-1&endpoint=${s3.endpoint}` });
    await expect(noBucket.fetch(req('/hello.txt'))).rejects.toMatchObject({ code: 'EDGE_ORIGIN_BAD_RESPONSE', message: expect.stringContaining('answered 404 NoSuchBucket') });
    s3.override = () => 'InternalError';
    await expect(client().fetch(req('/hello.txt'))).rejects.toMatchObject({ code: 'EDGE_ORIGIN_BAD_RESPONSE', message: expect.stringContaining('answered 500 InternalError') });
    s3.override = () => 'SlowDown';
    await expect(client().fetch(req('/hello.txt', { method: 'HEAD' }))).rejects.toMatchObject({ message: expect.stringContaining('answered 503 SlowDown') });
  });

  it('maps an unreachable endpoint to EDGE_ORIGIN_UNREACHABLE', async () => {
    const closed = client({ url: `s3://${BUCKET}?region=us-east-1&endpoint=http://127.0.0.1:9`, connectTimeout: 2000 });
    await expect(closed.fetch(req('/hello.txt'))).rejects.toMatchObject({ code: 'EDGE_ORIGIN_UNREACHABLE', status: 502 });
  });
});

describe('signature verification (the check that makes the tests trustworthy)', () => {
  async function signedWith(secretAccessKey: string, path = '/media/site/hello.txt') {
    const signer = new AwsV4Signer({
      method: 'GET',
      url: `${s3.endpoint}${path}`,
      headers: { 'x-amz-content-sha256': EMPTY_SHA256 },
      accessKeyId: s3.credentials.accessKeyId,
      secretAccessKey,
      service: 's3',
      region: 'us-east-1',
    });
    const signed = await signer.sign();
    const headers: Record<string, string> = { host: new URL(s3.endpoint).host };
    signed.headers.forEach((value, name) => (headers[name] = value));
    return { method: 'GET', url: signer.encodedPath, headers };
  }

  it('accepts a request signed with the test\'s secret', async () => {
    const check = await verifySignatureV4(await signedWith(s3.credentials.secretAccessKey), s3.credentials);
    expect(check).toMatchObject({ valid: true });
    expect(check.expected).toBe(check.provided);
  });

  it('rejects a request signed with a wrong secret: the recomputed signature differs', async () => {
    const check = await verifySignatureV4(await signedWith('not-the-secret'), s3.credentials);
    expect(check.valid).toBe(false);
    expect(check.problem).toBe('signature does not match');
    expect(check.expected).toMatch(/^[0-9a-f]{64}$/);
    expect(check.expected).not.toBe(check.provided);
  });

  it('rejects a request whose path or signed header was changed after signing', async () => {
    const request = await signedWith(s3.credentials.secretAccessKey);
    expect((await verifySignatureV4({ ...request, url: '/media/site/other.txt' }, s3.credentials)).valid).toBe(false);
    const tampered = { ...request, headers: { ...request.headers, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' } };
    expect((await verifySignatureV4(tampered, s3.credentials)).valid).toBe(false);
  });

  it('answers a badly signed request as S3 does (403 SignatureDoesNotMatch), so a signing bug fails end to end', async () => {
    const bad = await signedWith('not-the-secret');
    const res = await undiciFetch(`${s3.endpoint}${bad.url}`, { headers: bad.headers });
    expect(res.status).toBe(403);
    expect(await res.text()).toContain('<Code>SignatureDoesNotMatch</Code>');
    s3.requests.length = 0;
  });
});

describe('s3:// URLs', () => {
  it('uses virtual-hosted addressing on AWS, path-style for custom endpoints and dotted bucket names', () => {
    expect(parseS3Url('s3://media/img?region=eu-west-1')).toMatchObject({ bucket: 'media', prefix: 'img', region: 'eu-west-1', pathStyle: false });
    expect(parseS3Url('s3://media/img?region=eu-west-1').baseUrl.href).toBe('https://media.s3.eu-west-1.amazonaws.com/');
    expect(parseS3Url('s3://my.media?region=eu-west-1').baseUrl.href).toBe('https://s3.eu-west-1.amazonaws.com/my.media');
    expect(parseS3Url('s3://media/a/b/?endpoint=http://127.0.0.1:4569').baseUrl.href).toBe('http://127.0.0.1:4569/media');
    expect(parseS3Url('s3://media/a/b/?endpoint=http://127.0.0.1:4569')).toMatchObject({ prefix: 'a/b', region: 'us-east-1', pathStyle: true });
    expect(parseS3Url('s3://media', { AWS_REGION: 'ap-south-1' }).region).toBe('ap-south-1');
  });

  it('refuses credentials in the URL, unknown parameters and bad bucket names, without echoing secrets', () => {
    expect(() => parseS3Url('s3://AKID:topsecret@media')).toThrow(/credentials do not belong in the s3:\/\/ URL/);
    try {
      parseS3Url('s3://AKID:topsecret@media');
    } catch (error) {
      expect(String(error)).not.toContain('topsecret');
    }
    expect(() => parseS3Url('s3://media?regoin=x')).toThrow(/unknown parameter "regoin"/);
    expect(() => parseS3Url('s3://Bad_Bucket')).toThrow(/not a valid bucket name/);
    expect(() => parseS3Url('s3://media?endpoint=ftp://x')).toThrow(/endpoint must be an http/);
  });

  it('labels the client without credentials', () => {
    const c = client({ credentials: { accessKeyId: 'AKIDLABEL', secretAccessKey: 'label-secret' } });
    expect(c.label).toBe(`s3://media/site at ${s3.endpoint}`);
    expect(new S3OriginClient({ url: 's3://media', credentials: { accessKeyId: 'a', secretAccessKey: 'b' } }).label).toBe('s3://media (us-east-1)');
  });
});

describe('an edge node in front of the bucket', () => {
  let edge: EdgeServer | undefined;
  let dataDir: string | undefined;
  let agent: Agent | undefined;

  afterEach(async () => {
    await agent?.close();
    await edge?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
    edge = undefined;
    dataDir = undefined;
  });

  /** The real node (startEdgeServer), its origin built by createOriginClient from `--origin s3://...`. */
  async function startS3Edge(secretAccessKey = s3.credentials.secretAccessKey) {
    dataDir = await mkdtemp(join(tmpdir(), 'edge-s3-test-'));
    const options = resolveEdgeOptions({ origin: url, port: 0, host: '127.0.0.1', dataDir, logLevel: 'silent' });
    const origin = createOriginClient({ ...options, env: { AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey } });
    edge = await startEdgeServer(options, { origin, logger: false });
    agent = new Agent();
    const a = agent;
    const base = edge.url;
    return (path: string, init: Record<string, unknown> = {}) => undiciFetch(base + path, { ...init, dispatcher: a });
  }

  it('serves objects from the private bucket, then from cache', async () => {
    const get = await startS3Edge();
    const first = await get('/hello.txt', { headers: { cookie: 'session=abc' } });
    expect(first.status).toBe(200);
    expect(await first.text()).toBe(HELLO);
    expect(first.headers.get('cache-status')).toMatch(/stored/);
    await edge!.edge.settle();
    const second = await get('/hello.txt');
    expect(await second.text()).toBe(HELLO);
    expect(second.headers.get('cache-status')).toMatch(/hit/);
    expect(s3.requests).toHaveLength(1);
    expect(s3.requests[0]!.signature).toBe('valid');
    expect(s3.requests[0]!.headers.cookie).toBeUndefined();
    expect([...first.headers.keys()].filter((name) => name.startsWith('x-amz-'))).toEqual([]);
  });

  it('answers a missing key 404 without S3 XML, also when S3 says AccessDenied', async () => {
    const get = await startS3Edge();
    s3.denyMissingKeys = true;
    const res = await get('/nope.txt');
    expect(res.status).toBe(404);
    const body = await res.text();
    expect(body).not.toMatch(/<\?xml|<Error>|AccessDenied|NoSuchKey/);
    expect(JSON.parse(body)).toMatchObject({ error: 'EDGE_NOT_FOUND' });
  });

  it('answers a wrong secret 502 with a JSON error naming neither the origin (bucket, endpoint) nor the credential', async () => {
    const wrongSecret = 'edge-wrong-secret-zz-987654321';
    const get = await startS3Edge(wrongSecret);
    const res = await get('/hello.txt');
    expect(res.status).toBe(502);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const text = await res.text();
    expect(JSON.parse(text)).toEqual({ error: 'EDGE_ORIGIN_BAD_RESPONSE', message: 'The origin sent an answer this node cannot use.', upstreamStatus: 403 });
    expect(text).not.toContain(s3.endpoint);
    expect(text).not.toContain('media');
    expect(text).not.toContain(wrongSecret);
    expect(text).not.toContain(s3.credentials.secretAccessKey);
    expect(text).not.toContain(s3.credentials.accessKeyId);
    expect(text).not.toMatch(/<\?xml|<Error>/);
    expect(s3.requests.every((r) => r.signature === 'invalid')).toBe(true);
    s3.requests.length = 0;
  });

  it('answers a write method 405 without touching the bucket', async () => {
    const get = await startS3Edge();
    const res = await get('/hello.txt', { method: 'DELETE' });
    expect(res.status).toBe(405);
    await res.text();
    expect(s3.requests).toEqual([]);
  });
});

describe('startTestEdge with --origin s3://', () => {
  let t: TestEdge | undefined;
  const saved: Record<string, string | undefined> = {};

  beforeAll(() => {
    for (const name of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']) saved[name] = process.env[name];
  });
  afterEach(async () => {
    await t?.close();
    t = undefined;
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  });

  it('serves objects through the node built from options, credentials from the environment', async () => {
    process.env.AWS_ACCESS_KEY_ID = s3.credentials.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = s3.credentials.secretAccessKey;
    delete process.env.AWS_SESSION_TOKEN;
    t = await startTestEdge({ origin: url });
    const res = await t.get('/hello.txt');
    expect(res.status).toBe(200);
    expect(await res.text()).toBe(HELLO);
    expect((await t.get('/missing.txt')).status).toBe(404);
    expect(s3.requests.every((r) => r.signature === 'valid')).toBe(true);
  });

  it('answers 502 without naming the origin when the secret is wrong', async () => {
    process.env.AWS_ACCESS_KEY_ID = s3.credentials.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = 'env-wrong-secret-42';
    t = await startTestEdge({ origin: url });
    const res = await t.get('/hello.txt');
    expect(res.status).toBe(502);
    const text = await res.text();
    expect(JSON.parse(text)).toMatchObject({ error: 'EDGE_ORIGIN_BAD_RESPONSE', upstreamStatus: 403 });
    expect(text).not.toContain(s3.endpoint);
    expect(text).not.toContain('env-wrong-secret-42');
    s3.requests.length = 0;
  });
});
