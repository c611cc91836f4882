/**
 * Presigned uploads (issue 16): `POST /_edge/push-urls` hands out a URL
 * that lets its holder `PUT` one object, once, without the admin token.
 *
 * The token (`?upload=<token>`) is `<base64url(JSON {p, e, m?, t?, g?, n})>.<base64url(HMAC-SHA256)>`:
 * `p` the pushed path (as `URL.pathname` spells it), `e` the expiry (Unix
 * seconds), `m` the largest body in bytes, `t` the required content type,
 * `g` the tags, `n` a random nonce. The HMAC key is derived from the first
 * `--url-signing-key` when that is set, else from the admin token
 * (HMAC(secret, "edge presigned upload v1")); with several signing keys, a
 * token made with any of them verifies (rotation).
 *
 * Used nonces are kept in memory until their token expires, behind
 * {@link UploadNonces}: one process keeps its own {@link UsedNonces}; in
 * Node's cluster mode the primary keeps the one set every worker asks
 * (`edge/node/cluster-nonces.ts`), so a URL used through one worker is
 * refused by every other. A restart forgets them.
 *
 * Runtime-agnostic: Web Crypto only.
 */
import { EdgeError } from '../errors.js';

/** What a presigned upload grants. */
export interface UploadGrant {
  /** Path, as `URL.pathname` spells it (without `/_edge/push`). */
  p: string;
  /** Expiry, Unix seconds. */
  e: number;
  /** Largest body, bytes. */
  m?: number;
  /** Required content type (media type, no parameters). */
  t?: string;
  /** Tags the object is stored with. */
  g?: string[];
  /** Random nonce: the token is accepted once. */
  n: string;
}

/** Why an upload token was refused (the 403's `reason`). */
export type UploadProblem = 'bad-signature' | 'expired' | 'wrong-path' | 'used';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const DERIVATION_LABEL = 'edge presigned upload v1';

function base64url(bytes: Uint8Array): string {
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromBase64url(text: string): Uint8Array<ArrayBuffer> | undefined {
  if (!/^[A-Za-z0-9_-]+$/.test(text)) return undefined;
  try {
    return Uint8Array.from(atob(text.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}

async function deriveKey(secret: string): Promise<CryptoKey> {
  const base = await crypto.subtle.importKey('raw', encoder.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const derived = await crypto.subtle.sign('HMAC', base, encoder.encode(DERIVATION_LABEL));
  return crypto.subtle.importKey('raw', derived, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
}

/** Signs and checks upload tokens with keys derived from `secrets` (the first signs, any verifies). */
export class UploadSigner {
  private readonly keys: Promise<CryptoKey[]>;

  constructor(secrets: readonly string[]) {
    if (secrets.length === 0) throw new TypeError('UploadSigner needs at least one secret');
    this.keys = Promise.all(secrets.map(deriveKey));
  }

  async sign(grant: UploadGrant): Promise<string> {
    const payload = base64url(encoder.encode(JSON.stringify(grant)));
    const [key] = await this.keys;
    const mac = await crypto.subtle.sign('HMAC', key!, encoder.encode(payload));
    return `${payload}.${base64url(new Uint8Array(mac))}`;
  }

  /** The grant of a well-signed token, or undefined (the signature is checked before anything in the payload is read). */
  async verify(token: string): Promise<UploadGrant | undefined> {
    const dot = token.indexOf('.');
    if (dot <= 0) return undefined;
    const payload = token.slice(0, dot);
    const sig = fromBase64url(token.slice(dot + 1));
    const json = fromBase64url(payload);
    if (!sig || sig.length !== 32 || !json) return undefined;
    let ok = false;
    for (const key of await this.keys) {
      if (await crypto.subtle.verify('HMAC', key, sig, encoder.encode(payload))) {
        ok = true;
        break;
      }
    }
    if (!ok) return undefined;
    let grant: Partial<UploadGrant>;
    try {
      grant = JSON.parse(decoder.decode(json)) as Partial<UploadGrant>;
    } catch {
      return undefined;
    }
    if (typeof grant !== 'object' || grant === null || typeof grant.p !== 'string' || typeof grant.e !== 'number' || typeof grant.n !== 'string') {
      return undefined;
    }
    return grant as UploadGrant;
  }
}

/** A fresh random nonce (128 bits, base64url). */
export function uploadNonce(): string {
  return base64url(crypto.getRandomValues(new Uint8Array(16)));
}

/** Where used nonces are kept: this process, or a cluster's primary (asked over IPC). */
export interface UploadNonces {
  /** Marks `nonce` used; false when it already was. Rejects (or throws) EDGE_OVERLOADED when no more can be kept. */
  claim(nonce: string, expires: number, nowSeconds: number): boolean | Promise<boolean>;
  /** Gives a nonce back (the upload failed and stored nothing): the URL may be tried again until it expires. */
  release(nonce: string): void;
}

/**
 * Nonces of tokens in use or used, each kept until its token expires.
 * Bounded: when full of unexpired nonces, new uploads are refused (503)
 * rather than forgetting one, which would let its URL be used again.
 */
export class UsedNonces implements UploadNonces {
  /** nonce -> expiry (Unix seconds); insertion order is roughly expiry order. */
  private readonly entries = new Map<string, number>();

  constructor(private readonly max: number = 100_000) {}

  get size(): number {
    return this.entries.size;
  }

  /** Marks `nonce` used; false when it already was. @throws EDGE_OVERLOADED when the set is full. */
  claim(nonce: string, expires: number, nowSeconds: number): boolean {
    const known = this.entries.get(nonce);
    if (known !== undefined && known > nowSeconds) return false;
    if (this.entries.size >= this.max) this.prune(nowSeconds);
    if (this.entries.size >= this.max) {
      throw new EdgeError('EDGE_OVERLOADED', 'Too many presigned uploads are in use on this node; try again later.', { headers: { 'retry-after': '60' } });
    }
    this.entries.set(nonce, expires);
    return true;
  }

  /** Gives a nonce back (the upload failed and stored nothing): the URL may be tried again until it expires. */
  release(nonce: string): void {
    this.entries.delete(nonce);
  }

  private prune(nowSeconds: number): void {
    for (const [nonce, expires] of this.entries) if (expires <= nowSeconds) this.entries.delete(nonce);
  }
}

export function uploadRefused(reason: UploadProblem): EdgeError {
  const messages: Record<UploadProblem, string> = {
    'bad-signature': 'The upload URL is not valid (its token was altered or not made by this node).',
    expired: 'The upload URL has expired; ask for a new one.',
    'wrong-path': 'The upload URL was made for another path.',
    used: 'The upload URL was already used; ask for a new one.',
  };
  return new EdgeError('EDGE_FORBIDDEN', messages[reason], { details: { reason } });
}
