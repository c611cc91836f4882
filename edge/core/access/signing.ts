/**
 * Signed URLs and signed cookies: one scheme for private objects and image
 * variants. A URL signature is the image scheme (`image/params.ts`): a
 * base64url HMAC-SHA256 over the pathname, a newline and every other query
 * parameter sorted (`--ignore-query-params` excepted), carried as `sig`.
 * Private URLs always carry `expires` (Unix seconds), covered like any
 * other parameter, and may carry `kid`, which selects one of several keys
 * (rotation). A signed cookie grants a whole path prefix (HLS/DASH
 * segments): `<base64url(JSON {p, e, ip?, k?})>.<base64url(HMAC of the first part)>`.
 *
 * Runtime-agnostic: Web Crypto only, so Node and Workers check alike.
 */
import { compileParamMatcher } from '../cache-key.js';
import { IMAGE_SIGNATURE_PARAM, signImagePath, verifyImageSignature } from '../image/params.js';

/** Query parameters that belong to the signature, never to the object: neither keyed nor forwarded. */
export const SIGNATURE_PARAMS: readonly string[] = [IMAGE_SIGNATURE_PARAM, 'expires', 'kid'];

/** @default the schema's `--ignore-query-params` default */
export const DEFAULT_IGNORED_PARAMS: readonly string[] = ['utm_*', 'fbclid', 'gclid'];

/** One signing key; `id` is what a `kid` parameter names. */
export interface SigningKey {
  id?: string;
  secret: string;
}

const KEY_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const MIN_SECRET = 16;

/**
 * `--url-signing-key`: one secret, or `kid=secret` pairs, comma-separated
 * (the first key signs by default; any listed key verifies). A secret may
 * end in base64 padding (`=`): only `id=` followed by 16+ characters reads as a pair.
 * @throws TypeError naming the problem.
 * @example parseSigningKeys('2026a=0123456789abcdef0123,2025b=fedcba9876543210fedc')
 */
export function parseSigningKeys(value: string): SigningKey[] {
  const keys: SigningKey[] = [];
  for (const part of value.split(',').map((p) => p.trim()).filter(Boolean)) {
    const eq = part.indexOf('=');
    const id = eq > 0 ? part.slice(0, eq) : '';
    const rest = eq > 0 ? part.slice(eq + 1) : '';
    const key = KEY_ID.test(id) && rest.length >= MIN_SECRET ? { id, secret: rest } : { secret: part };
    if (key.secret.length < MIN_SECRET) throw new TypeError(`a key is ${key.secret.length} characters; use at least ${MIN_SECRET} random characters (e.g. openssl rand -hex 32)`);
    if (key.id !== undefined && keys.some((k) => k.id === key.id)) throw new TypeError(`key id "${key.id}" is listed twice`);
    keys.push(key);
  }
  if (keys.length === 0) throw new TypeError('expected a key, or kid=key pairs separated by commas');
  return keys;
}

/** The key a `kid` names, or without one the first key; undefined for an unknown id. */
export function selectKey(keys: readonly SigningKey[], kid: string | null | undefined): SigningKey | undefined {
  if (kid === null || kid === undefined) return keys[0];
  return keys.find((key) => key.id === kid);
}

export interface SignUrlOptions {
  /** `--url-signing-key`: a secret, `kid=secret` pairs, or parsed keys. */
  key: string | readonly SigningKey[];
  /** Which key signs (its id goes into `kid`). @default the first key */
  keyId?: string;
  /** Expiry as Unix seconds, or a `Date`. */
  expires: number | Date;
  /** The node's `--ignore-query-params`: not covered. @default [utm_*, fbclid, gclid] */
  ignoreQueryParams?: readonly string[];
}

/**
 * Sign a URL (absolute, or a path with its query): sets `expires`, `kid`
 * (for a key with an id) and `sig`, replacing any earlier ones. The same
 * signature is accepted on `--signed-paths` and by `--image-signing-key`
 * when that is the same secret.
 * @example await signUrl('https://cdn.example.com/video/a.mp4', { key, expires: Math.floor(Date.now() / 1000) + 3600 })
 */
export async function signUrl(url: string, options: SignUrlOptions): Promise<string> {
  const keys = typeof options.key === 'string' ? parseSigningKeys(options.key) : options.key;
  const key = options.keyId === undefined ? keys[0] : keys.find((k) => k.id === options.keyId);
  if (!key) throw new TypeError(`no signing key has the id "${options.keyId}"`);
  const relative = !/^[a-z][a-z0-9+.-]*:/i.test(url);
  const parsed = new URL(url, 'http://relative.invalid');
  const expires = options.expires instanceof Date ? Math.floor(options.expires.getTime() / 1000) : Math.floor(options.expires);
  for (const name of SIGNATURE_PARAMS) parsed.searchParams.delete(name);
  parsed.searchParams.set('expires', String(expires));
  if (key.id !== undefined) parsed.searchParams.set('kid', key.id);
  const ignore = compileParamMatcher([...(options.ignoreQueryParams ?? DEFAULT_IGNORED_PARAMS)]);
  parsed.searchParams.set(IMAGE_SIGNATURE_PARAM, await signImagePath(key.secret, parsed.pathname, parsed.searchParams, ignore));
  return relative ? parsed.pathname + parsed.search : parsed.href;
}

/** Why a signed URL or cookie was refused (the 403's `reason`). */
export type SignatureProblem = 'missing' | 'expired' | 'unknown-key' | 'bad-signature' | 'wrong-prefix' | 'wrong-ip';

/**
 * Check a signed URL's query: exactly one `sig` that matches under the key
 * `kid` selects, and an `expires` in the future (`nowSeconds`). Returns
 * undefined when it passes.
 */
export async function verifySignedUrl(
  keys: readonly SigningKey[],
  pathname: string,
  params: URLSearchParams,
  nowSeconds: number,
  ignore?: (name: string) => boolean,
): Promise<SignatureProblem | undefined> {
  if (!params.has(IMAGE_SIGNATURE_PARAM)) return 'missing';
  const expires = params.getAll('expires');
  if (expires.length !== 1 || !/^\d{1,12}$/.test(expires[0]!)) return 'bad-signature';
  const kids = params.getAll('kid');
  if (kids.length > 1) return 'bad-signature';
  const key = selectKey(keys, kids[0]);
  if (!key) return 'unknown-key';
  // The signature before the clock: a forged URL learns nothing about expiry.
  if (!(await verifyImageSignature(key.secret, pathname, params, ignore))) return 'bad-signature';
  return Number(expires[0]) <= nowSeconds ? 'expired' : undefined;
}

// ---------------------------------------------------------------------------
// Signed cookies

/** What a signed cookie grants. */
export interface CookieGrant {
  /** Path prefix, e.g. `/video/123/`. */
  p: string;
  /** Expiry, Unix seconds. */
  e: number;
  /** Client IP the grant is bound to (as the node sees it, `--trusted-proxies` respected). */
  ip?: string;
  /** Key id, for rotation. */
  k?: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function base64url(bytes: Uint8Array): string {
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromBase64url(text: string): Uint8Array<ArrayBuffer> | undefined {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) return undefined;
  try {
    return Uint8Array.from(atob(text.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}

const cryptoKeys = new Map<string, Promise<CryptoKey>>();
function hmacKey(secret: string): Promise<CryptoKey> {
  let key = cryptoKeys.get(secret);
  if (!key) {
    key = crypto.subtle.importKey('raw', encoder.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
    if (cryptoKeys.size >= 16) cryptoKeys.clear();
    cryptoKeys.set(secret, key);
  }
  return key;
}

/**
 * The value of a signed cookie (`Edge-Access=<value>`). Set it with `Path=/`
 * (or the prefix), `Secure`, `HttpOnly` and an `Expires` no later than `e`.
 * @example `Edge-Access=${await signCookie({ p: '/video/123/', e: now + 3600 }, key)}; Path=/; Secure; HttpOnly`
 */
export async function signCookie(grant: Omit<CookieGrant, 'k'>, key: string | readonly SigningKey[], keyId?: string): Promise<string> {
  const keys = typeof key === 'string' ? parseSigningKeys(key) : key;
  const signing = keyId === undefined ? keys[0] : keys.find((k) => k.id === keyId);
  if (!signing) throw new TypeError(`no signing key has the id "${keyId}"`);
  if (!grant.p.startsWith('/')) throw new TypeError('the cookie prefix must start with /');
  const body: CookieGrant = { p: grant.p, e: Math.floor(grant.e), ...(grant.ip ? { ip: grant.ip } : {}), ...(signing.id !== undefined ? { k: signing.id } : {}) };
  const payload = base64url(encoder.encode(JSON.stringify(body)));
  const mac = await crypto.subtle.sign('HMAC', await hmacKey(signing.secret), encoder.encode(payload));
  return `${payload}.${base64url(new Uint8Array(mac))}`;
}

/**
 * Check a signed cookie's value for a request path and client IP; undefined when it grants the path.
 * The prefix matches literally (percent-encoded, as the URL parser leaves the path).
 */
export async function verifyCookie(
  keys: readonly SigningKey[],
  value: string,
  pathname: string,
  clientIp: string | undefined,
  nowSeconds: number,
): Promise<SignatureProblem | undefined> {
  const dot = value.indexOf('.');
  if (dot <= 0) return 'bad-signature';
  const payload = value.slice(0, dot);
  const sig = fromBase64url(value.slice(dot + 1));
  const json = fromBase64url(payload);
  if (!sig || sig.length !== 32 || !json) return 'bad-signature';
  let grant: Partial<CookieGrant>;
  try {
    grant = JSON.parse(decoder.decode(json)) as Partial<CookieGrant>;
  } catch {
    return 'bad-signature';
  }
  if (typeof grant !== 'object' || grant === null || typeof grant.p !== 'string' || typeof grant.e !== 'number') return 'bad-signature';
  const key = selectKey(keys, typeof grant.k === 'string' ? grant.k : undefined);
  if (!key) return 'unknown-key';
  if (!(await crypto.subtle.verify('HMAC', await hmacKey(key.secret), sig, encoder.encode(payload)))) return 'bad-signature';
  if (grant.e <= nowSeconds) return 'expired';
  if (!grant.p.startsWith('/') || !pathname.startsWith(grant.p)) return 'wrong-prefix';
  if (grant.ip !== undefined && grant.ip !== clientIp) return 'wrong-ip';
  return undefined;
}

/** One cookie's value from a `Cookie` field, or undefined. */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** The `Cookie` field without one cookie; undefined when nothing is left. */
export function withoutCookie(header: string, name: string): string | undefined {
  const kept = header
    .split(';')
    .map((part) => part.trim())
    .filter((part) => part !== '' && part.slice(0, Math.max(part.indexOf('='), 0)).trim() !== name);
  return kept.length > 0 ? kept.join('; ') : undefined;
}
