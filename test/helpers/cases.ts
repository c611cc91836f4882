/**
 * Behavioural cases that hold on every runtime, written once as data and
 * run against the Node edge (`startTestEdge`) and the Worker on workerd
 * (`test/workers.test.ts`): an origin script, requests in order, and what
 * each answer and the origin must show. Cases use real time only where
 * both runtimes can (no injected clock on workerd): `max-age=0` with a
 * validator makes an entry stale at once.
 */
import { gzipSync } from 'node:zlib';
import { expect } from 'vitest';
import type { OriginResponseSpec, TestOrigin } from './origin.js';

/** Admin token the runners configure. */
export const CASE_ADMIN_TOKEN = 'case-admin-token-0123456789';

export interface CaseRequest {
  path: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
  /** Send `Authorization: Bearer <CASE_ADMIN_TOKEN>`. */
  admin?: boolean;
}

export interface CaseExpectation {
  status: number;
  /** Exact text, or a pattern. */
  body?: string | RegExp;
  /** Body bytes (compared by length and content). */
  bytes?: Uint8Array;
  /** JSON body: these fields, compared with `toMatchObject`. */
  json?: Record<string, unknown>;
  /** Header values (exact or pattern); null: the header is absent. */
  headers?: Record<string, string | RegExp | null>;
}

export interface CaseStep {
  request: CaseRequest;
  expect: CaseExpectation;
  /** Requests the origin has received per path (with or without query) after this step. */
  originCount?: Record<string, number>;
  /** Headers of the origin's latest request for a path, after this step. */
  originSaw?: { path: string; headers: Record<string, string | RegExp | null> };
  /** Background work (refreshes, fills) must have reached the origin this often; polled, runtimes differ in how to wait. */
  eventually?: Record<string, number>;
  /**
   * Repeat this request (up to 5 s) until its expectations hold: for the
   * result of background work, which workerd gives no way to await from
   * outside (on Node, `settle()` has waited already and the first try holds).
   */
  poll?: boolean;
}

export interface BehaviourCase {
  name: string;
  /** Origin script: path -> answer(s). */
  origin: Record<string, OriginResponseSpec | OriginResponseSpec[]>;
  /** Edge options (camelCase, as `resolveEdgeOptions` takes them); the Worker gets them as variables. */
  options?: Record<string, unknown>;
  steps: CaseStep[];
}

/** What a runner provides for one case. */
export interface EdgeUnderTest {
  fetch(path: string, init?: RequestInit): Promise<Response>;
  origin: TestOrigin;
  /** Wait until background work is done, where the runtime can tell; otherwise resolve at once. */
  settle(): Promise<void>;
}

function patternedBytes(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + (i >> 8)) & 0xff;
  return bytes;
}

const LARGE = patternedBytes(3 * 1024 * 1024 + 17);

export const BEHAVIOUR_CASES: BehaviourCase[] = [
  {
    name: 'a miss is stored and the next request is a hit',
    origin: { '/data/a.json': { headers: { 'content-type': 'application/json', 'cache-control': 'public, max-age=60' }, body: '{"a":1}' } },
    steps: [
      { request: { path: '/data/a.json' }, expect: { status: 200, body: '{"a":1}', headers: { 'cache-status': /^edge; fwd=uri-miss; stored; ttl=(5\d|60)$/ } } },
      {
        // identity: Cloudflare (and Miniflare) compress compressible types for clients that accept gzip, dropping Content-Length.
        request: { path: '/data/a.json', headers: { 'accept-encoding': 'identity' } },
        expect: { status: 200, body: '{"a":1}', headers: { 'cache-status': /^edge; hit; ttl=(5\d|60)$/, 'content-type': 'application/json', 'content-length': '7' } },
        originCount: { '/data/a.json': 1 },
      },
    ],
  },
  {
    name: 'HEAD is answered from the stored GET',
    origin: { '/h.txt': { headers: { 'cache-control': 'max-age=60' }, body: 'hello' } },
    steps: [
      { request: { path: '/h.txt' }, expect: { status: 200, body: 'hello' } },
      { request: { path: '/h.txt', method: 'HEAD' }, expect: { status: 200, body: '', headers: { 'cache-status': /^edge; hit/, 'content-length': '5' } }, originCount: { '/h.txt': 1 } },
    ],
  },
  {
    name: 'no-store responses are not stored',
    origin: { '/private.txt': { headers: { 'cache-control': 'no-store, max-age=60' }, body: 'secret' } },
    steps: [
      { request: { path: '/private.txt' }, expect: { status: 200, body: 'secret', headers: { 'cache-status': 'edge; fwd=uri-miss' } } },
      { request: { path: '/private.txt' }, expect: { status: 200, body: 'secret', headers: { 'cache-status': 'edge; fwd=uri-miss' } }, originCount: { '/private.txt': 2 } },
    ],
  },
  {
    name: 'a stale entry is revalidated with a conditional request and a 304 refreshes it',
    origin: {
      '/r.txt': [
        { headers: { 'cache-control': 'max-age=0', etag: '"v1"' }, body: 'version one' },
        { status: 304, headers: { 'cache-control': 'max-age=60', etag: '"v1"' } },
      ],
    },
    steps: [
      { request: { path: '/r.txt' }, expect: { status: 200, body: 'version one', headers: { 'cache-status': /^edge; fwd=uri-miss; stored/ } } },
      {
        request: { path: '/r.txt' },
        expect: { status: 200, body: 'version one', headers: { 'cache-status': /^edge; fwd=stale; fwd-status=304; ttl=(5\d|60)$/, etag: '"v1"' } },
        originCount: { '/r.txt': 2 },
        originSaw: { path: '/r.txt', headers: { 'if-none-match': '"v1"' } },
      },
      { request: { path: '/r.txt' }, expect: { status: 200, body: 'version one', headers: { 'cache-status': /^edge; hit; ttl=(5\d|60)$/ } }, originCount: { '/r.txt': 2 } },
    ],
  },
  {
    name: 'stale-while-revalidate answers at once and refreshes in the background',
    origin: {
      '/swr.txt': [
        { headers: { 'cache-control': 'max-age=0, stale-while-revalidate=60', etag: '"s1"' }, body: 'old' },
        { headers: { 'cache-control': 'max-age=60', etag: '"s2"' }, body: 'new' },
      ],
    },
    steps: [
      { request: { path: '/swr.txt' }, expect: { status: 200, body: 'old' } },
      { request: { path: '/swr.txt' }, expect: { status: 200, body: 'old', headers: { 'cache-status': /^edge; hit; ttl=-?\d+; detail=stale-while-revalidate$/ } }, eventually: { '/swr.txt': 2 } },
      { request: { path: '/swr.txt' }, expect: { status: 200, body: 'new', headers: { 'cache-status': /^edge; hit/ } }, originCount: { '/swr.txt': 2 }, poll: true },
    ],
  },
  {
    name: 'Vary keeps one stored variant per request header value',
    origin: {
      '/greeting': [
        { headers: { 'cache-control': 'max-age=60', vary: 'Accept-Language', 'content-language': 'en' }, body: 'hello' },
        { headers: { 'cache-control': 'max-age=60', vary: 'Accept-Language', 'content-language': 'fr' }, body: 'bonjour' },
      ],
    },
    steps: [
      { request: { path: '/greeting', headers: { 'accept-language': 'en' } }, expect: { status: 200, body: 'hello' } },
      { request: { path: '/greeting', headers: { 'accept-language': 'fr' } }, expect: { status: 200, body: 'bonjour', headers: { 'cache-status': /^edge; fwd=vary-miss; stored/ } } },
      { request: { path: '/greeting', headers: { 'accept-language': 'en' } }, expect: { status: 200, body: 'hello', headers: { 'cache-status': /^edge; hit/ } } },
      { request: { path: '/greeting', headers: { 'accept-language': 'fr' } }, expect: { status: 200, body: 'bonjour', headers: { 'cache-status': /^edge; hit/ } }, originCount: { '/greeting': 2 } },
    ],
  },
  {
    name: 'byte ranges are served from a stored body',
    origin: { '/big.bin': { headers: { 'cache-control': 'max-age=60', 'content-type': 'application/octet-stream' }, body: LARGE } },
    steps: [
      { request: { path: '/big.bin' }, expect: { status: 200, bytes: LARGE } },
      { request: { path: '/big.bin' }, expect: { status: 200, bytes: LARGE, headers: { 'cache-status': /^edge; hit/ } } },
      {
        request: { path: '/big.bin', headers: { range: 'bytes=1048570-1048580' } },
        expect: { status: 206, bytes: LARGE.subarray(1_048_570, 1_048_581), headers: { 'content-range': `bytes 1048570-1048580/${LARGE.byteLength}` } },
        originCount: { '/big.bin': 1 },
      },
    ],
  },
  {
    name: "the origin's Content-Encoding passes through, on a miss and on a hit",
    origin: { '/z.txt': { headers: { 'cache-control': 'max-age=60', 'content-encoding': 'gzip', 'content-type': 'text/plain' }, body: gzipSync('hello, gzip') } },
    steps: [
      // The client (undici's fetch) decodes: the text is only right if the bytes were encoded exactly once.
      { request: { path: '/z.txt', headers: { 'accept-encoding': 'gzip' } }, expect: { status: 200, body: 'hello, gzip' } },
      { request: { path: '/z.txt', headers: { 'accept-encoding': 'gzip' } }, expect: { status: 200, body: 'hello, gzip', headers: { 'cache-status': /^edge; hit/ } }, originCount: { '/z.txt': 1 } },
    ],
  },
  {
    name: 'other methods pass through and invalidate the URL',
    origin: {
      '/item': [
        { headers: { 'cache-control': 'max-age=60' }, body: 'item v1' },
        { status: 204 },
        { headers: { 'cache-control': 'max-age=60' }, body: 'item v2' },
      ],
    },
    steps: [
      { request: { path: '/item' }, expect: { status: 200, body: 'item v1' } },
      { request: { path: '/item', method: 'POST', body: 'change' }, expect: { status: 204, headers: { 'cache-status': 'edge; fwd=method' } } },
      { request: { path: '/item' }, expect: { status: 200, body: 'item v2', headers: { 'cache-status': /^edge; fwd=uri-miss; stored/ } }, originCount: { '/item': 3 } },
    ],
  },
  {
    name: 'a pushed object is served without asking the origin',
    origin: {},
    options: { adminToken: CASE_ADMIN_TOKEN },
    steps: [
      {
        request: { path: '/_edge/push/assets/app.css', method: 'PUT', admin: true, headers: { 'content-type': 'text/css', 'cache-tag': 'deploy-1' }, body: 'body{color:red}' },
        expect: { status: 201, json: { key: '/assets/app.css push:', path: '/assets/app.css', size: 15 } },
      },
      { request: { path: '/assets/app.css?v=3' }, expect: { status: 200, body: 'body{color:red}', headers: { 'cache-status': /^edge; hit; ttl=\d+; detail=pushed$/, 'content-type': 'text/css' } } },
      { request: { path: '/_edge/push/assets/app.css', method: 'DELETE', admin: true }, expect: { status: 204 } },
      { request: { path: '/assets/app.css' }, expect: { status: 404, body: 'no route for /assets/app.css' }, originCount: { '/assets/app.css': 1 } },
    ],
  },
  {
    name: 'purge by URL removes the entry',
    origin: { '/u.txt': { headers: { 'cache-control': 'max-age=60' }, body: 'u' } },
    options: { adminToken: CASE_ADMIN_TOKEN },
    steps: [
      { request: { path: '/u.txt' }, expect: { status: 200, body: 'u' } },
      { request: { path: '/u.txt' }, expect: { status: 200, headers: { 'cache-status': /^edge; hit/ } } },
      { request: { path: '/_edge/purge', method: 'POST', admin: true, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ urls: ['/u.txt'] }) }, expect: { status: 200, json: { purged: 1 } } },
      { request: { path: '/u.txt' }, expect: { status: 200, body: 'u', headers: { 'cache-status': /^edge; fwd=uri-miss; stored/ } }, originCount: { '/u.txt': 2 } },
    ],
  },
  {
    name: 'purge by tag reaches pulled and pushed entries with the tag, and only those',
    origin: {
      '/red.txt': { headers: { 'cache-control': 'max-age=60', 'cache-tag': 'red' }, body: 'red' },
      '/blue.txt': { headers: { 'cache-control': 'max-age=60', 'cache-tag': 'blue' }, body: 'blue' },
      '/pushed-red.txt': { headers: { 'cache-control': 'max-age=60' }, body: 'from the origin' },
    },
    options: { adminToken: CASE_ADMIN_TOKEN },
    steps: [
      { request: { path: '/red.txt' }, expect: { status: 200, body: 'red' } },
      { request: { path: '/blue.txt' }, expect: { status: 200, body: 'blue' } },
      { request: { path: '/_edge/push/pushed-red.txt', method: 'PUT', admin: true, headers: { 'cache-tag': 'red' }, body: 'pushed' }, expect: { status: 201 } },
      { request: { path: '/_edge/purge', method: 'POST', admin: true, body: JSON.stringify({ tags: ['red'] }) }, expect: { status: 200, json: { purged: 2 } } },
      { request: { path: '/red.txt' }, expect: { status: 200, body: 'red', headers: { 'cache-status': /^edge; fwd=uri-miss/ } } },
      { request: { path: '/blue.txt' }, expect: { status: 200, body: 'blue', headers: { 'cache-status': /^edge; hit/ } } },
      { request: { path: '/pushed-red.txt' }, expect: { status: 200, body: 'from the origin' }, originCount: { '/red.txt': 2, '/blue.txt': 1, '/pushed-red.txt': 1 } },
    ],
  },
  {
    name: 'purge by prefix covers every host and the pushed object',
    origin: { '/docs/a.html': { headers: { 'cache-control': 'max-age=60' }, body: 'a' }, '/other.html': { headers: { 'cache-control': 'max-age=60' }, body: 'o' } },
    options: { adminToken: CASE_ADMIN_TOKEN },
    steps: [
      { request: { path: '/docs/a.html' }, expect: { status: 200 } },
      { request: { path: '/other.html' }, expect: { status: 200 } },
      { request: { path: '/_edge/push/docs/b.html', method: 'PUT', admin: true, body: 'b' }, expect: { status: 201 } },
      { request: { path: '/_edge/purge', method: 'POST', admin: true, body: JSON.stringify({ prefixes: ['/docs/'] }) }, expect: { status: 200, json: { purged: 2 } } },
      { request: { path: '/other.html' }, expect: { status: 200, headers: { 'cache-status': /^edge; hit/ } } },
      { request: { path: '/docs/a.html' }, expect: { status: 200, headers: { 'cache-status': /^edge; fwd=uri-miss/ } }, originCount: { '/docs/a.html': 2 } },
    ],
  },
  {
    name: 'the admin API wants the bearer token',
    origin: {},
    options: { adminToken: CASE_ADMIN_TOKEN },
    steps: [
      {
        request: { path: '/_edge/push/x.txt', method: 'PUT', body: 'x' },
        expect: { status: 401, json: { error: 'EDGE_UNAUTHORIZED' }, headers: { 'www-authenticate': /^Bearer realm="edge-admin"/ } },
      },
      {
        request: { path: '/_edge/purge', method: 'POST', headers: { authorization: 'Bearer wrong-token-0123456789' }, body: '{"all":true}' },
        expect: { status: 401, json: { error: 'EDGE_UNAUTHORIZED' }, headers: { 'www-authenticate': /invalid_token/ } },
      },
      { request: { path: '/_edge/objects' }, expect: { status: 401, json: { error: 'EDGE_UNAUTHORIZED' } } },
      { request: { path: '/x.txt' }, expect: { status: 404 }, originCount: { '/x.txt': 1 } },
    ],
  },
  {
    name: 'the admin API is off without a token',
    origin: {},
    steps: [{ request: { path: '/_edge/purge', method: 'POST', body: '{"all":true}' }, expect: { status: 404, json: { error: 'EDGE_ADMIN_DISABLED' } } }],
  },
  {
    name: 'bad admin parameters are 400 JSON errors',
    origin: {},
    options: { adminToken: CASE_ADMIN_TOKEN },
    steps: [
      { request: { path: '/_edge/purge', method: 'POST', admin: true, body: '{"tags":' }, expect: { status: 400, json: { error: 'EDGE_BAD_REQUEST' }, body: /Malformed JSON/ } },
      { request: { path: '/_edge/purge', method: 'POST', admin: true, body: '{"tags":["a"],"urls":["/b"]}' }, expect: { status: 400, json: { error: 'EDGE_BAD_REQUEST' }, body: /exactly one of/ } },
      { request: { path: '/_edge/objects?limit=0', admin: true }, expect: { status: 400, json: { error: 'EDGE_BAD_REQUEST' }, body: /limit/ } },
      { request: { path: '/_edge/push/a//b.txt', method: 'PUT', admin: true, body: 'x' }, expect: { status: 400, json: { error: 'EDGE_BAD_KEY' } } },
    ],
  },
  {
    name: 'an unreachable origin is a 502 JSON error with Cache-Status',
    origin: {},
    options: { origin: 'http://127.0.0.1:1' },
    steps: [
      {
        request: { path: '/down.txt' },
        expect: { status: 502, json: { error: 'EDGE_ORIGIN_UNREACHABLE' }, headers: { 'cache-status': 'edge; fwd=miss; detail=EDGE_ORIGIN_UNREACHABLE', 'content-type': /^application\/json/ } },
      },
    ],
  },
  {
    name: 'health answers under /_edge/ and the rest of /_edge/ is not forwarded',
    origin: {},
    steps: [
      { request: { path: '/_edge/health' }, expect: { status: 200, json: { status: 'ok', name: 'edge' } } },
      { request: { path: '/_edge/nope' }, expect: { status: 404, json: { error: 'EDGE_NOT_FOUND' } }, originCount: { '/_edge/nope': 0 } },
    ],
  },
];

function headerMatches(actual: string | null, expected: string | RegExp | null, label: string): void {
  if (expected === null) expect(actual, label).toBeNull();
  else if (typeof expected === 'string') expect(actual, label).toBe(expected);
  else expect(actual ?? '', label).toMatch(expected);
}

async function waitForOrigin(origin: TestOrigin, counts: Record<string, number>, settle: () => Promise<void>): Promise<void> {
  await settle();
  const deadline = Date.now() + 5000;
  for (;;) {
    const pending = Object.entries(counts).filter(([path, n]) => origin.count(path) < n);
    if (pending.length === 0) return;
    if (Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  for (const [path, n] of Object.entries(counts)) expect(origin.count(path), `origin requests for ${path}`).toBe(n);
}

/** Sends one step's request and checks the answer. */
async function checkAnswer(step: CaseStep, label: string, edge: EdgeUnderTest): Promise<void> {
  const { request } = step;
  const headers: Record<string, string> = { ...request.headers };
  if (request.admin) headers.authorization = `Bearer ${CASE_ADMIN_TOKEN}`;
  const response = await edge.fetch(request.path, { method: request.method ?? 'GET', headers, body: request.body as BodyInit | undefined });
  const bytes = new Uint8Array(await response.arrayBuffer());
  const text = new TextDecoder().decode(bytes);
  expect(response.status, `${label}: status (body ${text.slice(0, 300)})`).toBe(step.expect.status);
  for (const [name, value] of Object.entries(step.expect.headers ?? {})) headerMatches(response.headers.get(name), value, `${label}: ${name}`);
  if (step.expect.body !== undefined) {
    if (typeof step.expect.body === 'string') expect(text, `${label}: body`).toBe(step.expect.body);
    else expect(text, `${label}: body`).toMatch(step.expect.body);
  }
  if (step.expect.bytes) {
    expect(bytes.byteLength, `${label}: body length`).toBe(step.expect.bytes.byteLength);
    expect(Buffer.compare(Buffer.from(bytes), Buffer.from(step.expect.bytes)), `${label}: body bytes`).toBe(0);
  }
  if (step.expect.json) expect(JSON.parse(text), `${label}: JSON body`).toMatchObject(step.expect.json);
}

/** Runs one case's steps against an edge whose origin is already scripted. */
export async function runBehaviourCase(testCase: BehaviourCase, edge: EdgeUnderTest): Promise<void> {
  for (const [i, step] of testCase.steps.entries()) {
    const label = `step ${i + 1}: ${step.request.method ?? 'GET'} ${step.request.path}`;
    if (step.poll) {
      const deadline = Date.now() + 5000;
      for (;;) {
        try {
          await checkAnswer(step, label, edge);
          break;
        } catch (error) {
          if (Date.now() > deadline) throw error;
          await new Promise((resolve) => setTimeout(resolve, 25));
        }
      }
    } else {
      await checkAnswer(step, label, edge);
    }
    if (step.eventually) await waitForOrigin(edge.origin, step.eventually, edge.settle);
    else await edge.settle();
    for (const [path, n] of Object.entries(step.originCount ?? {})) expect(edge.origin.count(path), `${label}: origin requests for ${path}`).toBe(n);
    if (step.originSaw) {
      const seen = edge.origin.requests.filter((r) => r.path === step.originSaw!.path).at(-1);
      expect(seen, `${label}: origin request for ${step.originSaw.path}`).toBeDefined();
      for (const [name, value] of Object.entries(step.originSaw.headers)) {
        const actual = seen!.headers[name];
        headerMatches(Array.isArray(actual) ? actual.join(', ') : (actual ?? null), value, `${label}: origin saw ${name}`);
      }
    }
  }
}

/** Scripts the case's origin routes on a fresh origin. */
export function scriptOrigin(origin: TestOrigin, testCase: BehaviourCase): void {
  for (const [path, spec] of Object.entries(testCase.origin)) origin.set(path, spec);
}
