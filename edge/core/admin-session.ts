/**
 * Who may call the admin API: a holder of the admin token, either as
 * `Authorization: Bearer <token>` (scripts, `edge push`, scrapers) or
 * through the status page's session cookie.
 *
 * The page asks for the token once: `POST /_edge/login` checks it and sets
 * an HttpOnly, SameSite=Strict cookie holding `<id>.<expiry>.<mac>`, where
 * the mac is an HMAC-SHA256 of id and expiry under a key derived from the
 * admin token. Nothing is kept server-side, so every cluster worker (and a
 * restarted node) accepts the cookie, and changing the token ends every
 * session. A request authenticated by the cookie that changes anything
 * (any method but GET and HEAD) must also carry `X-Edge-CSRF`, the
 * session's CSRF token (an HMAC of the session id under the same key),
 * which the page gets from the login answer or `GET /_edge/session`: a
 * cross-site page can neither read it nor set the header without a CORS
 * preflight that the node never grants. Bearer-token calls need none (no
 * browser sends that header by itself).
 *
 * All comparisons are constant-time (XOR over equal-length digests).
 * Runtime-agnostic: Web Crypto only.
 */
import { createBearerCheck } from './bearer-token.js';
import { EdgeError } from './errors.js';

/** The session cookie's name. */
export const SESSION_COOKIE = 'edge_admin_session';
/** The header carrying the CSRF token on cookie-authenticated changes. */
export const CSRF_HEADER = 'x-edge-csrf';
/** A session lasts this long from sign-in (the cookie itself ends with the browser session). @default 12 h */
export const SESSION_LIFETIME_MS = 12 * 60 * 60 * 1000;

/** What the check needs from a request. */
export interface AdminCredentials {
  method: string;
  authorization?: string;
  cookie?: string;
  csrf?: string;
}

export interface AdminSession {
  csrf: string;
  /** ms since epoch. */
  expiresAt: number;
}

export interface AdminAuth {
  /** Resolves when the request may use the admin API; otherwise throws 401 (no or a bad credential) or 403 (a cookie change without its CSRF token). */
  check(credentials: AdminCredentials, what?: string): Promise<void>;
  /** Check a token typed into the page; resolves with the `Set-Cookie` value and the session's CSRF token, or throws 401. */
  login(token: string, secure: boolean): Promise<{ setCookie: string } & AdminSession>;
  /** The session a `Cookie` header carries, if valid and unexpired. */
  session(cookie: string | undefined): Promise<AdminSession | undefined>;
  /** A `Set-Cookie` value that ends the session in the browser. */
  logoutCookie(secure: boolean): string;
}

const encoder = new TextEncoder();

function base64url(bytes: Uint8Array): string {
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromBase64url(text: string): Uint8Array | undefined {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) return undefined;
  try {
    return Uint8Array.from(atob(text.replace(/-/g, '+').replace(/_/g, '/')), (ch) => ch.charCodeAt(0));
  } catch {
    return undefined;
  }
}

/** Equal-length byte strings compared without an early exit. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

const sha256 = async (text: string) => new Uint8Array(await crypto.subtle.digest('SHA-256', encoder.encode(text)));

/** The value of cookie `name` in a `Cookie` header. */
function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

const SESSION_VALUE = /^([A-Za-z0-9_-]{22})\.(\d{1,15})\.([A-Za-z0-9_-]{43})$/;

export function createAdminAuth(token: string, options: { now: () => number }): AdminAuth {
  const { now } = options;
  const tokenDigest = sha256(token);
  // A key of its own for sessions, so a cookie reveals nothing usable as the token.
  const sessionKey = crypto.subtle
    .importKey('raw', encoder.encode(token), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
    .then((tokenKey) => crypto.subtle.sign('HMAC', tokenKey, encoder.encode('edge admin session v1')))
    .then((derived) => crypto.subtle.importKey('raw', derived, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']));
  const mac = async (text: string) => new Uint8Array(await crypto.subtle.sign('HMAC', await sessionKey, encoder.encode(text)));
  const csrfOf = async (id: string) => base64url(await mac(`csrf.${id}`));
  const bearerChecks = new Map<string, (header: string | undefined) => Promise<void>>();
  const cookieFlags = (secure: boolean) => `Path=/_edge/; HttpOnly; SameSite=Strict${secure ? '; Secure' : ''}`;

  const session = async (cookie: string | undefined): Promise<AdminSession | undefined> => {
    const value = cookieValue(cookie, SESSION_COOKIE);
    const parts = value === undefined ? null : SESSION_VALUE.exec(value);
    if (!parts) return undefined;
    const [, id, expiry, given] = parts as unknown as [string, string, string, string];
    const expected = await mac(`${id}.${expiry}`);
    if (!sameBytes(fromBase64url(given) ?? new Uint8Array(0), expected)) return undefined;
    const expiresAt = Number(expiry);
    if (expiresAt <= now()) return undefined;
    return { csrf: await csrfOf(id), expiresAt };
  };

  return {
    async check(credentials, what = 'The admin API') {
      if (credentials.authorization !== undefined || credentials.cookie === undefined || cookieValue(credentials.cookie, SESSION_COOKIE) === undefined) {
        let bearer = bearerChecks.get(what);
        if (!bearer) bearerChecks.set(what, (bearer = createBearerCheck(token, what)));
        return bearer(credentials.authorization);
      }
      const current = await session(credentials.cookie);
      if (!current) {
        throw new EdgeError('EDGE_UNAUTHORIZED', 'The status page session is invalid or has expired: sign in again with the admin token.');
      }
      if (credentials.method === 'GET' || credentials.method === 'HEAD') return;
      const given = encoder.encode(credentials.csrf ?? '');
      if (!sameBytes(given, encoder.encode(current.csrf))) {
        throw new EdgeError('EDGE_FORBIDDEN', `A change made with the status page's session cookie needs its CSRF token in the ${CSRF_HEADER} header.`);
      }
    },
    async login(given, secure) {
      if (!sameBytes(await sha256(given), await tokenDigest)) {
        throw new EdgeError('EDGE_UNAUTHORIZED', 'The admin token is wrong.');
      }
      const id = base64url(crypto.getRandomValues(new Uint8Array(16)));
      const expiresAt = now() + SESSION_LIFETIME_MS;
      const value = `${id}.${expiresAt}.${base64url(await mac(`${id}.${expiresAt}`))}`;
      return { setCookie: `${SESSION_COOKIE}=${value}; ${cookieFlags(secure)}`, csrf: await csrfOf(id), expiresAt };
    },
    session,
    logoutCookie: (secure) => `${SESSION_COOKIE}=; Max-Age=0; ${cookieFlags(secure)}`,
  };
}
