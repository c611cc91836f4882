/**
 * The admin API under /_edge/: push, delete, purge, list. Off unless an
 * admin token is configured; then every call carries
 * `Authorization: Bearer <token>`.
 *
 * | route                         | does                                                        |
 * | ----------------------------- | ----------------------------------------------------------- |
 * | `PUT /_edge/push/<path>`      | stores the body as the object served at `<path>` (201)       |
 * | `POST /_edge/push-urls`       | a presigned upload URL: one PUT without the token (`access/presigned.ts`) |
 * | `DELETE /_edge/push/<path>`   | removes it (204, 404 if absent)                              |
 * | `POST /_edge/purge`           | `{urls}`, `{prefixes}`, `{tags}` or `{all}`, optional `soft` |
 * | `GET /_edge/objects`          | lists stored objects, paginated                              |
 * | `GET /_edge/origins`          | origin, shield and fleet-peer health                         |
 *
 * With `--peers`, a purge is also sent to every other node of the fleet,
 * shields before edges (`fleet-purge.ts`).
 *
 * Models: the Cloudflare purge API (URL, prefix, tag, everything), Fastly
 * surrogate keys and soft purge (mark stale instead of deleting).
 */
import type { Context, Hono } from 'hono';
import { z } from 'zod';
import { keyPath, keysOfPathPrefix, MAX_KEY_LENGTH, parseCacheKey, pushedKey, type PulledCacheKey } from './cache-key.js';
import type { AdminAuth } from './admin-session.js';
import { credentials } from './status-page.js';
import { UploadSigner, UsedNonces, uploadNonce, uploadRefused, type UploadGrant, type UploadNonces } from './access/presigned.js';
import { parseSigningKeys } from './access/signing.js';
import { EdgeError, isEdgeError } from './errors.js';
import { AppliedPurges, FleetPurge, fleetPeers, parsePeers, PURGE_ID, PURGE_ID_HEADER, type FleetPeer, type PeerResult } from './fleet-purge.js';
import { splitList } from './headers.js';
import { parseSize, type EdgeOptions } from './options.js';
import { parseCacheControl, type PolicyFactory } from './policy.js';
import type { PullCache } from './pull.js';
import { keysMatcher, type PurgeMatcher, type PurgeScope } from './purge-log.js';
import { parseDuration } from './routes.js';
import type { CacheEntryMeta, CacheStore } from './store/types.js';

/** Incremental hash: `update` per chunk, `digest` once at the end (hex; Workers' `crypto.DigestStream` gives it asynchronously). */
export interface ContentHasher {
  update(chunk: Uint8Array): void;
  digest(): string | Promise<string>;
}

export interface AdminDeps {
  options: EdgeOptions;
  store: CacheStore;
  pull: PullCache;
  policies: PolicyFactory;
  now: () => number;
  createHasher?: () => ContentHasher;
  waitUntil: (promise: Promise<unknown>) => void;
  /** Health of origin pool members and shields, for `GET /_edge/origins`. */
  originStatus?: () => unknown;
  /** The fleet's other nodes now (Node: re-read from the `--peers @file`); else `--peers` as a list. */
  peers?: () => readonly FleetPeer[];
  /** Aborted when the node closes: stops purge replays to peers. */
  signal?: AbortSignal;
  /** Bearer token or status page session (`admin-session.ts`); undefined without an admin token. */
  auth?: AdminAuth;
  /** Told of every purge applied here (the status page's recent purges). */
  onPurge?: (event: PurgeEvent) => void;
  /** Used presigned-upload nonces. @default this process's own set */
  uploadNonces?: UploadNonces;
}

/** A purge applied on this node, as the status page lists it. */
export interface PurgeEvent {
  /** ms since epoch. */
  at: number;
  kind: 'urls' | 'prefixes' | 'tags' | 'all';
  /** The first targets named (at most 10). */
  targets: string[];
  soft: boolean;
  /** Entries purged on this node. */
  purged: number;
}

/** Purge state shared by the routes of one node. */
interface PurgeState {
  /** Ids applied here, for idempotent copies and retries. */
  applied: AppliedPurges;
  /** Sends purges to the fleet; undefined without `--peers`. */
  fleet?: FleetPurge;
}

function createFleet(deps: AdminDeps, token: string): FleetPurge | undefined {
  const { options } = deps;
  let listed = deps.peers;
  if (!listed) {
    if (options.peers === undefined) return undefined;
    if (options.peers.startsWith('@')) {
      throw new TypeError(`--peers ${options.peers}: a peers file needs an adapter that reads files (Node); give the peers as a comma-separated list here.`);
    }
    const { peers } = parsePeers(options.peers, 'list');
    listed = () => peers;
  }
  const source = listed;
  // Recomputed only when the adapter hands over a new list, or a reload new shields.
  let last: readonly FleetPeer[] | undefined;
  let lastShields: readonly string[] | undefined;
  let merged: FleetPeer[] = [];
  return new FleetPurge({
    token,
    peers: () => {
      const now = source();
      const shields = deps.options.shield ?? [];
      if (now !== last || shields !== lastShields) {
        last = now;
        lastShields = shields;
        merged = fleetPeers(shields, now);
      }
      return merged;
    },
    concurrency: options.peerConcurrency,
    queue: options.peerQueue,
    outbox: options.peerOutbox,
    retryMs: options.peerRetry,
    timeoutMs: options.peerTimeout,
    now: deps.now,
    signal: deps.signal,
  });
}

const PUSH_PREFIX = '/_edge/push';

/**
 * Longest pushed path. The pull path skips the cache (pushed lookup
 * included) when the request's primary key, `<path> <scheme>://<host>`,
 * exceeds MAX_KEY_LENGTH; this leaves room for the scheme and a long host,
 * so every accepted push can also be served.
 */
export const MAX_PUSH_PATH_LENGTH = MAX_KEY_LENGTH - 300;

/** Purge request bodies are small JSON documents; anything bigger is a mistake. */
const MAX_PURGE_BODY = 1024 * 1024;
/** Per list in one purge request (Cloudflare allows 30-100; a deploy may need more). */
const MAX_PURGE_ITEMS = 1000;
const MAX_TAG_LENGTH = 1024;
const MAX_TAGS_PER_OBJECT = 128;
const DEFAULT_LIST_LIMIT = 100;
const MAX_LIST_LIMIT = 1000;
/**
 * Up to this many purged keys, derived entries (image variants) are found
 * with one indexed `list({ sourceKey })` per key; beyond it, one scan of
 * the whole store is cheaper than a scan per key on unindexed tiers.
 */
const DERIVED_LOOKUP_PER_KEY = 32;

/** Host placeholder for turning a purge path into a Request the pull path can describe. */
const PURGE_BASE = 'http://purge.invalid';

export function mountAdminApi(app: Hono, deps: AdminDeps): void {
  const disabled = () => {
    throw new EdgeError('EDGE_ADMIN_DISABLED', 'The admin API is disabled: start the node with --admin-token (EDGE_ADMIN_TOKEN) to enable it.');
  };
  const token = deps.options.adminToken;
  const adminAuth = deps.auth;
  if (!token || !adminAuth) {
    app.all('/_edge/push', disabled);
    app.all('/_edge/push/*', disabled);
    app.all('/_edge/push-urls', disabled);
    app.all('/_edge/purge', disabled);
    app.all('/_edge/objects', disabled);
    app.all('/_edge/origins', disabled);
    return;
  }

  const authorize = async (c: Context) => {
    try {
      await adminAuth.check(credentials(c));
    } catch (error) {
      throw closingIfBodyUnread(c, error);
    }
  };
  const auth = async (c: Context, next: () => Promise<void>) => {
    // A presigned upload carries its own authority: push() checks its token.
    if (!isPresignedPut(c)) await authorize(c);
    await next();
  };
  // Follows --url-signing-key when a reload changes it (the admin token is fixed).
  let signer: { key: string | undefined; signer: UploadSigner } | undefined;
  const uploads: UploadState = {
    get signer() {
      const key = deps.options.urlSigningKey;
      if (!signer || signer.key !== key) signer = { key, signer: new UploadSigner(key ? parseSigningKeys(key).map((k) => k.secret) : [token]) };
      return signer.signer;
    },
    nonces: deps.uploadNonces ?? new UsedNonces(),
  };

  // URL parsing resolves `..` and `%2e%2e` before routing, so a traversal
  // such as /_edge/push/a/../../x arrives as /x and would reach the pull
  // path as an ordinary PUT. The raw request target still shows it.
  app.use('*', async (c, next) => {
    const incoming = rawIncomingUrl(c);
    if (incoming !== undefined && incoming.includes(PUSH_PREFIX + '/')) {
      if (rawTargetPath(c).startsWith(PUSH_PREFIX + '/') && !new URL(c.req.url).pathname.startsWith(PUSH_PREFIX + '/')) {
        await authorize(c);
        throw closingIfBodyUnread(c, badKey('the path climbs out of /_edge/push/ with dot segments (.. or %2e%2e)'));
      }
    }
    await next();
  });

  for (const path of [PUSH_PREFIX, `${PUSH_PREFIX}/*`, '/_edge/push-urls', '/_edge/purge', '/_edge/objects', '/_edge/origins']) app.use(path, auth);
  const purges: PurgeState = { applied: new AppliedPurges(), fleet: createFleet(deps, token) };

  app.put(PUSH_PREFIX, (c) => Promise.reject(closingIfBodyUnread(c, badKey('empty path: use PUT /_edge/push/<path>, e.g. /_edge/push/assets/app.css'))));
  app.put(`${PUSH_PREFIX}/*`, (c) => push(c, deps, isPresignedPut(c) ? uploads : undefined));
  app.post('/_edge/push-urls', (c) => createUploadUrl(c, deps, uploads));
  app.delete(PUSH_PREFIX, () => Promise.reject(badKey('empty path: use DELETE /_edge/push/<path>')));
  app.delete(`${PUSH_PREFIX}/*`, (c) => unpush(c, deps));
  app.post('/_edge/purge', (c) => purge(c, deps, purges));
  app.get('/_edge/objects', (c) => listObjects(c, deps));
  app.get('/_edge/origins', (c) =>
    c.json({ origin: deps.options.origin ?? null, status: deps.originStatus?.() ?? null, shields: deps.options.shield ?? [], peers: purges.fleet?.status() ?? [] }),
  );

  const notAllowed = (allow: string) => () => {
    throw new EdgeError('EDGE_METHOD_NOT_ALLOWED', `Use ${allow} here.`, { headers: { allow } });
  };
  app.all(PUSH_PREFIX, notAllowed('PUT, DELETE'));
  app.all(`${PUSH_PREFIX}/*`, notAllowed('PUT, DELETE'));
  app.all('/_edge/push-urls', notAllowed('POST'));
  app.all('/_edge/purge', notAllowed('POST'));
  app.all('/_edge/objects', notAllowed('GET'));
  app.all('/_edge/origins', notAllowed('GET'));
}

// ---------------------------------------------------------------------------
// Authentication


// ---------------------------------------------------------------------------
// Push keys

/** `IncomingMessage.url` on Node (`@hono/node-server` bindings); undefined elsewhere. */
function rawIncomingUrl(c: Context): string | undefined {
  const url = (c.env as { incoming?: { url?: unknown } } | undefined)?.incoming?.url;
  return typeof url === 'string' ? url : undefined;
}

/**
 * An error answered before the request body was read: ask for the
 * connection to close, so the server does not read (and discard) a body of
 * up to --max-upload-size just to keep the connection alive.
 */
function closingIfBodyUnread(c: Context, error: unknown): unknown {
  const length = c.req.header('content-length');
  const hasBody = (length !== undefined && length.trim() !== '0') || c.req.header('transfer-encoding') !== undefined;
  if (hasBody && isEdgeError(error)) error.headers.connection = 'close';
  return error;
}

function badKey(problem: string): EdgeError {
  return new EdgeError('EDGE_BAD_KEY', `Bad push path: ${problem}.`);
}

/**
 * The request target as the client sent it, without the query. On Node,
 * `@hono/node-server` keeps the raw `IncomingMessage` in `c.env.incoming`;
 * elsewhere (Workers) the runtime hands over an already-normalised URL, in
 * which dot segments are resolved: the path stays confined, but the 400
 * for a traversal attempt cannot be given.
 */
function rawTargetPath(c: Context): string {
  let target = rawIncomingUrl(c) ?? new URL(c.req.url).pathname;
  if (!target.startsWith('/')) {
    // absolute-form (`PUT http://host/_edge/push/x HTTP/1.1`, RFC 9112 3.2.2)
    const authority = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i.exec(target);
    target = authority ? target.slice(authority[0].length) || '/' : target;
  }
  const end = target.search(/[?#]/);
  return end === -1 ? target : target.slice(0, end);
}

/**
 * The path a push or delete names, validated on the raw target and
 * returned in the form the pull path sees for a GET of it (`URL.pathname`).
 *
 * Refused: dot segments (`..`, `.`, any case of `%2e`), NUL (raw or `%00`),
 * backslashes (raw or `%5c`: some servers read them as `/`), `%2f` (an
 * encoded slash makes `/a%2fb` and `/a/b` different keys for what most
 * clients treat as one path), empty segments, control characters,
 * malformed or non-UTF-8 escapes, a query string (a pushed object answers
 * every query of its path), the reserved `/_edge/` space, and paths longer
 * than {@link MAX_PUSH_PATH_LENGTH}.
 */
function pushPath(c: Context, presigned = false): string {
  const url = new URL(c.req.url);
  const raw = rawTargetPath(c);
  // Routing decodes the path, so /_edge/%70ush/x lands here too; the key is cut from the literal spelling only.
  if (!raw.startsWith(PUSH_PREFIX + '/')) throw badKey('spell the route /_edge/push/ literally, without escapes');
  // A presigned upload's URL carries exactly one query parameter, its token.
  const onlyToken = presigned && [...url.searchParams.keys()].join() === 'upload';
  if (c.req.url.includes('?') && !onlyToken) {
    throw badKey('a query string: a pushed object answers every query string of its path, so push the path alone');
  }
  return checkedPushPath(raw.slice(PUSH_PREFIX.length), url.pathname.slice(PUSH_PREFIX.length));
}

/** {@link pushPath} on a path as sent (`rawPath`) and as the URL parser leaves it (`path`). */
function checkedPushPath(rawPath: string, path: string): string {
  if (rawPath === '/') throw badKey('empty path: use /_edge/push/<path>, e.g. /_edge/push/assets/app.css');
  if (rawPath.includes('\0') || /%00/.test(rawPath)) throw badKey('NUL byte');
  if (rawPath.includes('\\') || /%5c/i.test(rawPath)) throw badKey('backslash (raw or %5C)');
  if (/%2f/i.test(rawPath)) throw badKey('encoded slash (%2F) inside a segment: use a literal /');
  if (/%(?![0-9a-fA-F]{2})/.test(rawPath)) throw badKey('malformed percent-encoding');

  const segments = rawPath.slice(1).split('/');
  segments.forEach((segment, i) => {
    let decoded: string;
    try {
      decoded = decodeURIComponent(segment);
    } catch {
      throw badKey(`segment "${segment}" is not valid UTF-8 once decoded`);
    }
    if (decoded === '.' || decoded === '..') throw badKey(`dot segment "${segment}" (path traversal)`);
    if (segment === '' && i < segments.length - 1) throw badKey('empty segment (//)');
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f]/.test(decoded)) throw badKey('control character');
  });

  const decodedPath = decodeURIComponent(path);
  // Routing matches decoded paths: /%5Fedge/x would be answered by the node's own routes, never by the object.
  if (decodedPath === '/_edge' || decodedPath.startsWith('/_edge/')) throw badKey('/_edge/ is reserved for the node itself');
  if (path.length > MAX_PUSH_PATH_LENGTH) {
    throw badKey(`${path.length} characters long; the limit is ${MAX_PUSH_PATH_LENGTH} (cache keys hold at most ${MAX_KEY_LENGTH} with scheme and host)`);
  }
  return path;
}

// ---------------------------------------------------------------------------
// PUT /_edge/push/<path>

/**
 * Stored headers of a pushed object. Cache-Control is what browsers get.
 * Targeted fields (Edge-Cache-Control, CDN-Cache-Control; RFC 9213) are
 * kept, so a deploy can give browsers `no-cache` and the edge a year. When
 * the field that governs the edge (the first targeted field present, else
 * Cache-Control) names no max-age / s-maxage, `max-age=<pushTtl>` is
 * appended to it.
 */
function pushHeaders(c: Context, options: EdgeOptions, now: number): Record<string, string> {
  const headers: Record<string, string> = {};
  headers['content-type'] = c.req.header('content-type') || 'application/octet-stream';
  // A body pushed compressed keeps its coding: sent as is to clients that take it, decoded or re-coded for others.
  const encoding = c.req.header('content-encoding')?.trim().toLowerCase();
  if (encoding && encoding !== 'identity') headers['content-encoding'] = encoding;
  headers['cache-control'] = c.req.header('cache-control')?.trim() || `public, max-age=${options.pushTtl}`;
  let governing = 'cache-control';
  for (const field of [options.targetedCacheControl, 'cdn-cache-control']) {
    const value = c.req.header(field)?.trim();
    if (!value) continue;
    headers[field] = value;
    if (governing === 'cache-control') governing = field;
  }
  const cc = parseCacheControl(headers[governing]);
  if (!cc.has('max-age') && !cc.has('s-maxage')) headers[governing] = `${headers[governing]}, max-age=${options.pushTtl}`;
  const date = new Date(now).toUTCString();
  headers.date = date;
  headers['last-modified'] = date;
  return headers;
}

function pushTags(c: Context): string[] {
  const tags = [...new Set(splitList(c.req.header('cache-tag')))];
  if (tags.length > MAX_TAGS_PER_OBJECT) {
    throw new EdgeError('EDGE_BAD_REQUEST', `Cache-Tag lists ${tags.length} tags; at most ${MAX_TAGS_PER_OBJECT} are allowed.`);
  }
  const long = tags.find((tag) => tag.length > MAX_TAG_LENGTH);
  if (long) throw new EdgeError('EDGE_BAD_REQUEST', `Cache-Tag "${long.slice(0, 40)}..." is longer than ${MAX_TAG_LENGTH} characters.`);
  return tags;
}

function tooLarge(limit: number, detail: string, what = '--max-upload-size'): EdgeError {
  return new EdgeError('EDGE_PAYLOAD_TOO_LARGE', `The upload is larger than ${what} (${limit} bytes)${detail}; nothing was stored.`, {
    // The rest of the body is not read: close instead of draining it for keep-alive.
    headers: { connection: 'close' },
  });
}

/**
 * The bytes pushed objects may take (--push-disk-share of --disk-size), in
 * stores that hold them against their budget; undefined when no budget
 * applies: with --evict-pushed, pushed objects give way under pressure
 * like pulled ones, so they cannot crowd pulled objects out.
 */
function pushBudget({ options, store }: AdminDeps): number | undefined {
  if (options.evictPushed || !store.pushedBytes) return undefined;
  return Math.floor(options.diskSize * options.pushDiskShare);
}

function insufficientStorage(deps: AdminDeps, budget: number, size: number, detail: string): EdgeError {
  const { pushDiskShare } = deps.options;
  return new EdgeError(
    'EDGE_INSUFFICIENT_STORAGE',
    `The ${size}-byte object does not fit the space for pushed objects (--push-disk-share ${pushDiskShare} of --disk-size: ${budget} bytes)${detail}; ` +
      'nothing was stored and the previous version, if any, is still served. Delete pushed objects, or raise --push-disk-share or --disk-size.',
  );
}

async function push(c: Context, deps: AdminDeps, uploads?: UploadState): Promise<Response> {
  let claimed: string | undefined;
  try {
    if (!uploads) return await storePush(c, deps);
    const path = pushPath(c, true);
    const grant = await uploads.signer.verify(new URL(c.req.url).searchParams.get('upload') ?? '');
    if (!grant) throw uploadRefused('bad-signature');
    const nowSeconds = Math.floor(deps.now() / 1000);
    if (grant.e <= nowSeconds) throw uploadRefused('expired');
    if (grant.p !== path) throw uploadRefused('wrong-path');
    if (!(await uploads.nonces.claim(grant.n, grant.e, nowSeconds))) throw uploadRefused('used');
    claimed = grant.n;
    const response = await storePush(c, deps, grant);
    claimed = undefined;
    return response;
  } catch (error) {
    // Nothing was stored: the URL may be tried again (until it expires).
    if (claimed !== undefined) uploads?.nonces.release(claimed);
    throw closingIfBodyUnread(c, error);
  }
}

/** The media type of a Content-Type value, lower case, without parameters. */
function mediaType(value: string | undefined): string | undefined {
  const type = value?.split(';')[0]!.trim().toLowerCase();
  return type || undefined;
}

async function storePush(c: Context, deps: AdminDeps, grant?: UploadGrant): Promise<Response> {
  const { options, store, policies, now } = deps;
  const path = pushPath(c, grant !== undefined);
  const key = pushedKey(path);
  const grantLimit = grant?.m !== undefined && grant.m < options.maxUploadSize;
  const limit = grantLimit ? grant.m! : options.maxUploadSize;
  const limitName = grantLimit ? 'the upload URL\'s maxSize' : '--max-upload-size';

  const lengthHeader = c.req.header('content-length');
  let declared: number | undefined;
  if (lengthHeader !== undefined) {
    if (!/^\d+$/.test(lengthHeader.trim())) throw new EdgeError('EDGE_BAD_REQUEST', `Content-Length "${lengthHeader}" is not a number.`);
    declared = Number(lengthHeader.trim());
    if (declared > limit) throw tooLarge(limit, `: Content-Length is ${declared}`, limitName);
  }
  const budget = pushBudget(deps);
  // Refused before the body is read when it could never fit; otherwise the commit decides, knowing what it replaces.
  if (budget !== undefined && declared !== undefined && declared > budget) throw insufficientStorage(deps, budget, declared, '');

  const tags = grant ? (grant.g ?? []) : pushTags(c);
  const headers = pushHeaders(c, options, now());
  if (grant?.t !== undefined) {
    const sent = mediaType(c.req.header('content-type'));
    // Without a Content-Type the URL's type is the object's.
    if (sent === undefined) headers['content-type'] = grant.t;
    else if (sent !== grant.t) {
      throw new EdgeError('EDGE_UNSUPPORTED_MEDIA_TYPE', `The upload URL is for ${grant.t}, not ${sent}; nothing was stored.`);
    }
  }
  // Checked before reading the body: an object that is never fresh would never be served.
  const provisional = policies.fromResponse({ url: path, method: 'GET', headers: {} }, { status: 200, headers });
  if (!provisional.storable() || provisional.freshnessLifetime() <= 0) {
    throw new EdgeError(
      'EDGE_BAD_REQUEST',
      `Cache-Control "${headers['cache-control']}" gives the pushed object no freshness at the edge, so it would never be served; ` +
        `send a max-age, or keep it for browsers and give the edge its own with ${options.targetedCacheControl} / CDN-Cache-Control.`,
    );
  }

  const hasher = deps.createHasher?.();
  const writer = store.createWriter(key, '', declared);
  let size = 0;
  try {
    const body = c.req.raw.body;
    if (body) {
      const reader = body.getReader();
      for (;;) {
        let result: ReadableStreamReadResult<Uint8Array>;
        try {
          result = await reader.read();
        } catch (error) {
          throw new EdgeError('EDGE_BAD_REQUEST', 'The upload was interrupted; nothing was stored.', { cause: error });
        }
        if (result.done) break;
        size += result.value.byteLength;
        if (size > limit) {
          reader.releaseLock();
          throw tooLarge(limit, '', limitName);
        }
        hasher?.update(result.value);
        // A writer that streams to remote storage (R2) asks us to wait: the upload is read no faster than it is stored.
        const accepted = writer.write(result.value);
        if (accepted) await accepted;
      }
    }
    if (declared !== undefined && size !== declared) {
      throw new EdgeError('EDGE_BAD_REQUEST', `The upload ended after ${size} of ${declared} bytes; nothing was stored.`);
    }
    if (c.req.raw.signal?.aborted) throw new EdgeError('EDGE_BAD_REQUEST', 'The upload was interrupted; nothing was stored.');
  } catch (error) {
    await writer.abort().catch(() => {});
    throw error;
  }

  // Without a streaming hash on this runtime, a unique ETag still changes with every push.
  headers.etag = `"${hasher ? await hasher.digest() : crypto.randomUUID()}"`;
  const policy = policies.fromResponse({ url: path, method: 'GET', headers: {} }, { status: 200, headers });
  const meta: CacheEntryMeta = {
    key,
    variant: '',
    status: 200,
    headers,
    policy: policy.toObject(),
    size,
    tags,
    storedAt: now(),
    expiresAt: policy.usefulUntil(0, 0),
    pushed: true,
  };
  let stored: boolean;
  try {
    // The budget is checked in the store's write transaction: concurrent pushes cannot overshoot it together.
    stored = await writer.commit(meta, { maxPushedBytes: budget });
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'EDGE_INSUFFICIENT_STORAGE' || budget === undefined) throw error;
    const pushed = store.pushedBytes?.() ?? 0;
    throw insufficientStorage(deps, budget, size, `; pushed objects already take ${pushed} of them`);
  }
  if (!stored) {
    throw new EdgeError('EDGE_PAYLOAD_TOO_LARGE', `The cache declined the ${size}-byte object (larger than the store's budget); nothing was stored.`);
  }
  deps.pull.pushedPaths.add(path);
  // Image variants were made from the previous version.
  await deleteDerived(store, new Set([key]));
  return c.json({ key, path, size, etag: headers.etag }, 201);
}

// ---------------------------------------------------------------------------
// POST /_edge/push-urls (presigned uploads)

/** Signing key and used nonces of this node's presigned uploads (one set per process, or the cluster's). */
interface UploadState {
  signer: UploadSigner;
  nonces: UploadNonces;
}

/** Longest life of a presigned upload URL (its nonce is remembered that long). */
const MAX_UPLOAD_URL_SECONDS = 7 * 86_400;
const MAX_UPLOAD_URL_BODY = 64 * 1024;

/** A PUT that rides an upload URL: an `upload` parameter and no Authorization header. */
function isPresignedPut(c: Context): boolean {
  return c.req.method === 'PUT' && c.req.header('authorization') === undefined && new URL(c.req.url).searchParams.has('upload');
}

const uploadUrlSchema = z
  .object({
    path: z.string().min(2).max(MAX_PUSH_PATH_LENGTH).startsWith('/', 'expected a path starting with /'),
    expiresIn: z.union([z.number(), z.string()]).transform((value, ctx) => {
      const ms = parseDuration(value);
      if (ms === undefined || ms < 1000 || ms > MAX_UPLOAD_URL_SECONDS * 1000) {
        ctx.addIssue({ code: 'custom', message: 'expected a duration from 1s to 7d, such as 10m or 1h (a bare number is seconds)' });
        return z.NEVER;
      }
      return Math.ceil(ms / 1000);
    }),
    maxSize: z
      .union([z.number(), z.string()])
      .transform((value, ctx) => {
        const bytes = parseSize(value);
        if (bytes === undefined || bytes < 1) {
          ctx.addIssue({ code: 'custom', message: 'expected a size such as 50MB (bytes, or with KB/MB/GB)' });
          return z.NEVER;
        }
        return bytes;
      })
      .optional(),
    contentType: z
      .string()
      .regex(/^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+$/i, 'expected a media type such as video/mp4')
      .transform((t) => t.toLowerCase())
      .optional(),
    tags: z.array(z.string().min(1).max(MAX_TAG_LENGTH)).max(MAX_TAGS_PER_OBJECT).optional(),
  })
  .strict();

async function createUploadUrl(c: Context, deps: AdminDeps, uploads: UploadState): Promise<Response> {
  const text = await readLimitedText(c.req.raw.body, MAX_UPLOAD_URL_BODY);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new EdgeError('EDGE_BAD_REQUEST', `Malformed JSON in the upload URL request: ${(error as Error).message}.`);
  }
  const result = uploadUrlSchema.safeParse(json);
  if (!result.success) {
    throw new EdgeError('EDGE_BAD_REQUEST', `Bad upload URL request: ${result.error.issues.map((issue) => describeIssue(issue, 'path, expiresIn, maxSize, contentType, tags')).join('; ')}.`);
  }
  const request = result.data;
  if (/[?#]/.test(request.path)) throw badKey('a query string or fragment: a pushed object answers every query string of its path');
  const path = checkedPushPath(request.path, new URL(PURGE_BASE + PUSH_PREFIX + request.path).pathname.slice(PUSH_PREFIX.length));
  const expires = Math.floor(deps.now() / 1000) + request.expiresIn;
  const grant: UploadGrant = {
    p: path,
    e: expires,
    ...(request.maxSize !== undefined ? { m: request.maxSize } : {}),
    ...(request.contentType !== undefined ? { t: request.contentType } : {}),
    ...(request.tags !== undefined ? { g: [...new Set(request.tags)] } : {}),
    n: uploadNonce(),
  };
  const token = await uploads.signer.sign(grant);
  return c.json({ url: `${PUSH_PREFIX}${path}?upload=${token}`, expires });
}

// ---------------------------------------------------------------------------
// DELETE /_edge/push/<path>

async function unpush(c: Context, deps: AdminDeps): Promise<Response> {
  const path = pushPath(c);
  const key = pushedKey(path);
  // Pushed objects have no Vary: one variant, ''.
  const removed = await deps.store.delete(key, '');
  deps.pull.pushedPaths.delete(path);
  await deleteDerived(deps.store, new Set([key]));
  if (removed === 0) throw new EdgeError('EDGE_NOT_FOUND', `Nothing is pushed at ${path}.`);
  return c.body(null, 204);
}

// ---------------------------------------------------------------------------
// POST /_edge/purge

const purgeList = (max: number) => z.array(z.string().min(1).max(max)).min(1).max(MAX_PURGE_ITEMS);

const PURGE_SELECTORS = ['urls', 'prefixes', 'tags', 'all'] as const;

const purgeSchema = z
  .object({
    /** Paths (`/a/b.css?v=1`: every host) or absolute URLs (that host only). */
    urls: purgeList(MAX_KEY_LENGTH * 2).optional(),
    /** Path prefixes (`/assets/`: every host) or absolute URL prefixes (that host only). */
    prefixes: purgeList(MAX_KEY_LENGTH * 2).optional(),
    /** Surrogate keys, from `Cache-Tag` / `Surrogate-Key` or the push API. */
    tags: purgeList(MAX_TAG_LENGTH).optional(),
    /** Everything, pushed objects included. */
    all: z.literal(true).optional(),
    /** Mark as stale (revalidate on next use) instead of deleting. @default false */
    soft: z.boolean().optional(),
    /**
     * Send this purge on. With `--peers`: to the whole fleet, shields first
     * (default true; false purges this node only). Without: to the origin
     * shields (`--shield`), with the same admin token (default false).
     */
    forward: z.boolean().optional(),
  })
  .strict()
  .superRefine((value, ctx) => {
    const given = PURGE_SELECTORS.filter((name) => value[name] !== undefined);
    if (given.length !== 1) {
      ctx.addIssue({
        code: 'custom',
        message: `give exactly one of "urls", "prefixes", "tags" or "all"${given.length > 1 ? ` (got ${given.map((n) => `"${n}"`).join(', ')})` : ''}`,
      });
    }
  });

type PurgeRequest = z.output<typeof purgeSchema>;

function describeIssue(issue: z.core.$ZodIssue, allowed = 'urls, prefixes, tags, all, soft, forward'): string {
  if (issue.code === 'unrecognized_keys') {
    return `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')} (allowed: ${allowed})`;
  }
  const where = issue.path.length > 0 ? issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p))).join('.').replace(/\.\[/g, '[') + ': ' : '';
  return where + issue.message;
}

async function readLimitedText(body: ReadableStream<Uint8Array> | null, limit: number): Promise<string> {
  if (!body) return '';
  const reader = body.getReader();
  const decoder = new TextDecoder('utf-8', { fatal: true });
  let text = '';
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > limit) {
        reader.releaseLock();
        throw new EdgeError('EDGE_PAYLOAD_TOO_LARGE', `A purge request body may be at most ${limit} bytes; split the purge.`, {
          headers: { connection: 'close' },
        });
      }
      text += decoder.decode(value, { stream: true });
    }
    return text + decoder.decode();
  } catch (error) {
    if (isEdgeError(error)) throw error;
    throw new EdgeError('EDGE_BAD_REQUEST', 'The purge request body is not UTF-8 text, or was interrupted.', { cause: error });
  }
}

async function parsePurge(c: Context): Promise<PurgeRequest> {
  const text = await readLimitedText(c.req.raw.body, MAX_PURGE_BODY);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new EdgeError('EDGE_BAD_REQUEST', `Malformed JSON in the purge request: ${(error as Error).message}.`);
  }
  const result = purgeSchema.safeParse(json);
  if (!result.success) {
    throw new EdgeError('EDGE_BAD_REQUEST', `Bad purge request: ${result.error.issues.map((issue) => describeIssue(issue)).join('; ')}.`);
  }
  return result.data;
}

/** A purge target: a path matched on every host, or an absolute URL matched on its host only. */
interface PurgeTarget {
  /** Normalised path-and-query (URLs) or path prefix (prefixes), as primary keys begin. */
  path: string;
  pathname: string;
  /** The key of an absolute URL (its scheme and host select); undefined for paths, which match every host. */
  site?: PulledCacheKey;
}

function parsePurgeTarget(value: string, field: string, index: number, pull: PullCache, isPrefix: boolean): PurgeTarget {
  const problem = (what: string) => new EdgeError('EDGE_BAD_REQUEST', `Bad purge request: ${field}[${index}]: ${what}.`);
  let url: URL;
  let absolute: boolean;
  if (value.startsWith('/')) {
    absolute = false;
    // Concatenated, not resolved against a base: `//a` stays a path instead of becoming a host.
    url = new URL(PURGE_BASE + value);
  } else {
    absolute = true;
    try {
      url = new URL(value);
    } catch {
      throw problem(`"${value}" is neither a path starting with / nor an absolute URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw problem(`"${value}" is not an http(s) URL`);
    if (url.username || url.password) throw problem(`"${value}" carries credentials`);
  }
  // The same key the pull path computes: ignored parameters dropped, parameters sorted, host normalised.
  const { cacheKey } = pull.describe(url.href, undefined, {});
  // A prefix is matched as typed (after URL normalisation of the path); its query, if any, is not reordered.
  const path = isPrefix ? url.pathname + (value.includes('?') ? '?' + url.search.slice(1) : '') : cacheKey.path;
  if (!absolute) return { path, pathname: url.pathname };
  return { path, pathname: url.pathname, site: cacheKey };
}

/** Same scheme and host (whatever keyed request headers the entry has). */
function sameSite(key: PulledCacheKey, site: PulledCacheKey): boolean {
  return key.scheme === site.scheme && key.host === site.host;
}

const storageKey = (meta: CacheEntryMeta) => `${meta.key}\u0000${meta.variant}`;

/** Every entry a purge request selects (derived image variants are added later). */
async function selectForPurge(request: PurgeRequest, deps: AdminDeps): Promise<Map<string, CacheEntryMeta>> {
  const { store, pull } = deps;
  const selected = new Map<string, CacheEntryMeta>();
  const add = (meta: CacheEntryMeta) => selected.set(storageKey(meta), meta);

  if (request.all) {
    for await (const meta of store.list()) add(meta);
  } else if (request.tags) {
    for (const tag of new Set(request.tags)) for await (const meta of store.list({ tag })) add(meta);
  } else if (request.urls) {
    const targets = request.urls.map((value, i) => parsePurgeTarget(value, 'urls', i, pull, false));
    for (const target of targets) {
      // Every key of exactly this path and query: each host, each set of keyed
      // request headers, and what was derived from them (image variants,
      // codings, slices), found here too so that a variant whose source was
      // evicted still goes with its URL.
      for await (const meta of store.list({ prefix: keysOfPathPrefix(target.path) })) {
        const key = parseCacheKey(meta.key);
        if (!key || key.kind !== 'pulled' || key.path !== target.path) continue;
        if (target.site && !sameSite(key, target.site)) continue;
        add(meta);
      }
      // The pushed object answers this URL whatever its host or query: it goes too.
      for (const entry of await store.get(pushedKey(target.pathname))) add(entry.meta);
    }
  } else if (request.prefixes) {
    const targets = request.prefixes.map((value, i) => parsePurgeTarget(value, 'prefixes', i, pull, true));
    for (const target of targets) {
      for await (const meta of store.list({ prefix: target.path })) {
        const key = parseCacheKey(meta.key);
        if (target.site && key?.kind === 'pulled' && !sameSite(key, target.site)) continue;
        add(meta);
      }
    }
  }
  return selected;
}


/** Entries derived from any of `sources` (image variants). */
async function findDerived(store: CacheStore, sources: Set<string>): Promise<CacheEntryMeta[]> {
  const found: CacheEntryMeta[] = [];
  if (sources.size === 0) return found;
  if (sources.size <= DERIVED_LOOKUP_PER_KEY) {
    for (const sourceKey of sources) for await (const meta of store.list({ sourceKey })) found.push(meta);
  } else {
    for await (const meta of store.list()) if (meta.sourceKey !== undefined && sources.has(meta.sourceKey)) found.push(meta);
  }
  return found;
}

async function deleteDerived(store: CacheStore, sources: Set<string>): Promise<number> {
  let removed = 0;
  for (const meta of await findDerived(store, sources)) removed += await store.delete(meta.key, meta.variant);
  return removed;
}

/** What another process needs to select what this purge selects. */
function purgeScopeOf(request: PurgeRequest): Extract<PurgeScope, { kind: 'request' }>['request'] {
  const { urls, prefixes, tags, all } = request;
  return { ...(urls ? { urls } : {}), ...(prefixes ? { prefixes } : {}), ...(tags ? { tags } : {}), ...(all ? { all } : {}) };
}

/** A purge recorded by another process sharing the store, as a matcher for this one's fills in flight. */
export function sharedPurgeMatcher(scope: PurgeScope, pull: PullCache): PurgeMatcher {
  return scope.kind === 'keys' ? keysMatcher(scope.keys) : purgeMatcher(scope.request, pull);
}

/** What a purge selects, as a predicate on keys and tags, for fills in flight (derived entries with their source). */
function purgeMatcher(request: Pick<PurgeRequest, 'urls' | 'prefixes' | 'tags' | 'all'>, pull: PullCache): PurgeMatcher {
  if (request.all) return () => true;
  if (request.tags) {
    const tags = new Set(request.tags);
    return (_key, entryTags) => entryTags.some((tag) => tags.has(tag));
  }
  if (request.urls) {
    const targets = request.urls.map((value, i) => parsePurgeTarget(value, 'urls', i, pull, false));
    return (text) => {
      const key = parseCacheKey(text);
      if (!key) return false;
      return targets.some((target) =>
        key.kind === 'pushed' ? key.path === target.pathname : key.path === target.path && (!target.site || sameSite(key, target.site)),
      );
    };
  }
  const targets = (request.prefixes ?? []).map((value, i) => parsePurgeTarget(value, 'prefixes', i, pull, true));
  return (text) => {
    const key = parseCacheKey(text);
    return !!key && targets.some((target) => key.path.startsWith(target.path) && (!target.site || key.kind === 'pushed' || sameSite(key, target.site)));
  };
}

/** Apply a purge to this node's store; resolves with the number of entries purged. */
async function applyPurge(request: PurgeRequest, deps: AdminDeps): Promise<number> {
  const { store, pull } = deps;
  // First, in this process and every other one sharing the store (cluster
  // workers), so that a fill landing while the purge runs is not stored
  // either (or, after a soft purge, is stored invalidated).
  await pull.purges.recordEverywhere(purgeMatcher(request, pull), { kind: 'request', request: purgeScopeOf(request) }, request.soft === true);
  const selected = await selectForPurge(request, deps);
  if (!request.all) {
    const sources = new Set([...selected.values()].map((meta) => meta.key));
    for (const meta of await findDerived(store, sources)) selected.set(storageKey(meta), meta);
  }

  let purged = 0;
  if (request.soft) {
    // The pull path treats `invalidated` as must-revalidate: the next
    // request asks the origin conditionally and a 304 makes it fresh again.
    for (const meta of selected.values()) {
      if (await store.updateMeta({ ...meta, invalidated: true })) purged++;
    }
  } else {
    // Exactly the variants selected: a purge by tag leaves a key's untagged variants alone.
    for (const meta of selected.values()) {
      purged += await store.delete(meta.key, meta.variant);
      const key = parseCacheKey(meta.key);
      if (key?.kind === 'pushed' && !key.derived) pull.pushedPaths.delete(key.path);
    }
    if (request.all) pull.pushedPaths.clear();
  }
  return purged;
}

/**
 * `POST /_edge/purge`. An `Edge-Purge-Id` already applied here is answered
 * `duplicate` without purging or sending anything again. With `--peers`
 * (and unless `"forward": false`), the purge is admitted into every peer's
 * queue first (503 when one is full: nothing purged), applied here, then
 * sent to the shields and, once they answered, to the edges.
 */
async function purge(c: Context, deps: AdminDeps, state: PurgeState): Promise<Response> {
  const given = c.req.header(PURGE_ID_HEADER);
  if (given !== undefined && !PURGE_ID.test(given)) {
    throw new EdgeError('EDGE_BAD_REQUEST', `${PURGE_ID_HEADER}: expected 1 to 128 letters, digits or . : @ + = - _ characters.`);
  }
  const request = await parsePurge(c);
  const fleet = request.forward !== false ? state.fleet : undefined;
  const id = given ?? (fleet ? crypto.randomUUID() : undefined);
  if (id !== undefined) {
    const earlier = state.applied.get(id);
    if (earlier) return c.json({ purged: await earlier, id, duplicate: true });
  }
  // Before anything is purged: a refused purge can simply be sent again.
  const ticket = fleet?.admit();
  const work = applyPurge(request, deps);
  if (id !== undefined) state.applied.set(id, work);
  let purged: number;
  try {
    purged = await work;
  } catch (error) {
    ticket?.cancel();
    throw error;
  }
  if (deps.onPurge) {
    const kind = request.all ? 'all' : request.tags ? 'tags' : request.urls ? 'urls' : 'prefixes';
    deps.onPurge({ at: deps.now(), kind, targets: (request.tags ?? request.urls ?? request.prefixes ?? []).slice(0, 10), soft: Boolean(request.soft), purged });
  }
  if (fleet && ticket) {
    const { forward: _forward, ...body } = request;
    const peers = await fleet.send(ticket, { id: id!, body });
    return c.json({ purged, id, peers: peers.map(publicResult) });
  }
  const answer: Record<string, unknown> = { purged };
  if (given !== undefined) answer.id = given;
  if (request.forward && !state.fleet) answer.shields = await forwardPurge(request, deps, id);
  return c.json(answer);
}

/** A peer result in the answer: `url, role, status, purged` first, then what applies. */
function publicResult(result: PeerResult): PeerResult {
  const { url, role, status, purged, ...rest } = result;
  return { url, role, status, ...(purged === undefined ? {} : { purged }), ...rest };
}

/**
 * Repeat a purge at every shield, so one call clears both tiers (`"forward":
 * true` without `--peers`). Paths and prefixes match every host there too;
 * shields share the admin token. No queue or replay: see fleet-purge.ts.
 */
async function forwardPurge(
  request: PurgeRequest,
  deps: AdminDeps,
  id: string = crypto.randomUUID(),
): Promise<{ shield: string; status: number; purged?: number; error?: string }[]> {
  // A copy is applied where it lands and never sent on (the shield may have --peers of its own).
  const body = { ...request, forward: false };
  return Promise.all(
    (deps.options.shield ?? []).map(async (shield) => {
      try {
        const response = await fetch(new URL('/_edge/purge', shield), {
          method: 'POST',
          headers: { authorization: `Bearer ${deps.options.adminToken}`, 'content-type': 'application/json', [PURGE_ID_HEADER]: id },
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(deps.options.originTimeout),
        });
        const answer = (await response.json().catch(() => ({}))) as { purged?: number; error?: string };
        return { shield, status: response.status, purged: answer.purged, error: answer.error };
      } catch (error) {
        return { shield, status: 502, error: (error as Error).message };
      }
    }),
  );
}

// ---------------------------------------------------------------------------
// GET /_edge/objects

function encodeCursor(value: string): string {
  let binary = '';
  for (const byte of new TextEncoder().encode(value)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function decodeCursor(cursor: string): string {
  if (!/^[A-Za-z0-9_-]+$/.test(cursor)) throw new EdgeError('EDGE_BAD_REQUEST', 'cursor: not a cursor returned by this endpoint.');
  try {
    const binary = atob(cursor.replace(/-/g, '+').replace(/_/g, '/'));
    return new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(binary, (ch) => ch.charCodeAt(0)));
  } catch {
    throw new EdgeError('EDGE_BAD_REQUEST', 'cursor: not a cursor returned by this endpoint.');
  }
}

function isoDate(ms: number): string | null {
  const date = new Date(ms);
  return Number.isFinite(date.getTime()) ? date.toISOString() : null;
}

/**
 * One page of entries in storage-key order, after `cursor`. The store
 * contract has no "start after", so each page scans the prefix and keeps
 * the `limit + 1` smallest keys (stores that list in key order, like the
 * disk tier, make that a cheap range scan).
 */
async function listObjects(c: Context, deps: AdminDeps): Promise<Response> {
  const prefix = c.req.query('prefix') ?? '';
  const limitParam = c.req.query('limit');
  let limit = DEFAULT_LIST_LIMIT;
  if (limitParam !== undefined) {
    if (!/^\d+$/.test(limitParam) || Number(limitParam) < 1 || Number(limitParam) > MAX_LIST_LIMIT) {
      throw new EdgeError('EDGE_BAD_REQUEST', `limit: expected a whole number from 1 to ${MAX_LIST_LIMIT}, got "${limitParam}".`);
    }
    limit = Number(limitParam);
  }
  const pushedParam = c.req.query('pushed');
  if (pushedParam !== undefined && pushedParam !== 'true' && pushedParam !== 'false') {
    throw new EdgeError('EDGE_BAD_REQUEST', `pushed: expected true or false, got "${pushedParam}".`);
  }
  const cursorParam = c.req.query('cursor');
  const after = cursorParam ? decodeCursor(cursorParam) : undefined;

  // Sorted ascending, at most limit + 1 long (the extra one says whether there is a next page).
  const page: [string, CacheEntryMeta][] = [];
  const filter = { prefix: prefix || undefined, pushed: pushedParam === undefined ? undefined : pushedParam === 'true' };
  // A sliced object is listed once, as its record with the bytes its pieces hold (README "Range slicing").
  const pieceBytes = new Map<string, number>();
  for await (const meta of deps.store.list(filter)) {
    if (meta.sourceKey !== undefined && meta.key.includes('#slice:') && isPiece(meta.key)) {
      pieceBytes.set(meta.sourceKey, (pieceBytes.get(meta.sourceKey) ?? 0) + meta.size);
      continue;
    }
    const position = storageKey(meta);
    if (after !== undefined && position <= after) continue;
    if (page.length > limit && position >= page[page.length - 1]![0]) continue;
    let lo = 0;
    let hi = page.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (page[mid]![0] < position) lo = mid + 1;
      else hi = mid;
    }
    if (page[lo]?.[0] === position) continue;
    page.splice(lo, 0, [position, meta]);
    if (page.length > limit + 1) page.pop();
  }
  const more = page.length > limit;
  if (more) page.pop();
  const objects = page.map(([, meta]) => {
    const listed = listedObject(meta);
    return meta.sliced ? { ...listed, size: pieceBytes.get(meta.sourceKey ?? '') ?? 0 } : listed;
  });
  return c.json({ objects, next: more ? encodeCursor(page[page.length - 1]![0]) : null });
}

/** One entry as `GET /_edge/objects` shows it (the Workers listing uses it too). */
export function listedObject(meta: CacheEntryMeta) {
  return {
    key: meta.key,
    path: parseCacheKey(meta.key)?.path ?? keyPath(meta.key),
    variant: meta.variant,
    size: meta.size,
    status: meta.status,
    contentType: meta.headers['content-type'] ?? null,
    etag: meta.headers.etag ?? null,
    tags: meta.tags,
    pushed: Boolean(meta.pushed),
    invalidated: Boolean(meta.invalidated),
    storedAt: isoDate(meta.storedAt),
    expiresAt: isoDate(meta.expiresAt),
    ...(meta.sliced ? { sliced: meta.sliced } : {}),
  };
}

/** A piece of a sliced object (`<key>#slice:<n>`), as opposed to its record. */
function isPiece(key: string): boolean {
  const derived = parseCacheKey(key)?.derived;
  return derived?.kind === 'slice' && derived.piece !== undefined;
}
