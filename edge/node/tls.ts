/**
 * The node's TLS certificate: read from PEM files (`--tls-cert`, `--tls-key`,
 * optionally `--tls-ca` for the chain), checked before use, and read again
 * when the files change (fs.watch, debounced) or when asked (SIGHUP), so a
 * renewal by certbot, cert-manager or a secret mount takes effect without a
 * restart. The server swaps its secure context (`setSecureContext`): new
 * handshakes get the new certificate, open connections keep theirs.
 *
 * A new certificate that cannot be used is refused and the one in use stays:
 * a file that cannot be read, is not PEM, a key that does not match the
 * certificate, a chain without the certificate's issuer, or a certificate
 * already expired. (A renewal that writes the certificate and the key one
 * after the other is seen once, after both, thanks to the debounce; if the
 * first read still sees half of it, the refusal is followed by a success
 * when the second file lands.)
 *
 * Watching: each file's directory (certbot swaps symlinks in `live/`,
 * Kubernetes swaps a `..data` symlink; an editor or `mv` replaces the
 * file's inode) and each file itself (an in-place write to a symlink's
 * target in another directory). Events only schedule a read; the bytes
 * decide: unchanged files are not reloaded and not logged.
 */
import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import { createSecureContext, rootCertificates, type ConnectionOptions } from 'node:tls';
import { optionFlag } from '../core/options.js';

/** The PEM files the certificate comes from. */
export interface TlsFiles {
  /** The certificate, optionally followed by its chain (`fullchain.pem`). */
  cert: string;
  /** The private key (not encrypted). */
  key: string;
  /** Intermediate certificates sent after `cert` (`chain.pem`), when `cert` holds the leaf only. */
  ca?: string;
}

/** A certificate that passed the checks, ready for `createSecureServer()` / `setSecureContext()`. */
export interface TlsCertificate {
  /** The secure-context options: `cert` holds the certificate and the chain, in order. */
  context: { cert: Buffer; key: Buffer };
  /** Hex, as OpenSSL prints it. */
  serialNumber: string;
  /** `AB:CD:...`, as `X509Certificate.fingerprint256` and `getPeerCertificate()` give it. */
  fingerprint256: string;
  subject: string;
  validTo: Date;
  /** SHA-256 over the files' bytes: tells a change from a touch. */
  digest: string;
}

/** Which file a problem is about, by option name. */
export type TlsFileOption = 'tlsCert' | 'tlsKey' | 'tlsCa' | 'originCa';

/** A certificate that cannot be used. Matched on `code`, like every error of the node. */
export class TlsCertificateError extends Error {
  readonly code = 'EDGE_TLS_CERTIFICATE';
  constructor(
    readonly option: TlsFileOption,
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${path}: ${reason}`);
    this.name = 'TlsCertificateError';
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function readPem(option: TlsFileOption, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    throw new TlsCertificateError(option, path, `cannot read it (${code ?? message})`);
  }
}

function certificatesIn(option: TlsFileOption, path: string, pem: Buffer): X509Certificate[] {
  const blocks = pem.toString('latin1').match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new TlsCertificateError(option, path, 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)');
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (error) {
      throw new TlsCertificateError(option, path, `certificate ${i + 1} cannot be parsed (${(error as Error).message})`);
    }
  });
}

/**
 * Read and check the files. Throws `TlsCertificateError` naming the file
 * and the reason. An expired certificate is returned (a node may have to
 * start with one); `isExpired()` tells.
 */
export function loadTlsCertificate(files: TlsFiles): TlsCertificate {
  const certPem = readPem('tlsCert', files.cert);
  const keyPem = readPem('tlsKey', files.key);
  const caPem = files.ca === undefined ? undefined : readPem('tlsCa', files.ca);
  const [leaf, ...chain] = certificatesIn('tlsCert', files.cert, certPem);
  if (caPem) chain.push(...certificatesIn('tlsCa', files.ca!, caPem));

  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (error) {
    throw new TlsCertificateError('tlsKey', files.key, `not a usable PEM private key (${(error as Error).message}); encrypted keys are not supported`);
  }
  if (!leaf!.checkPrivateKey(key)) {
    throw new TlsCertificateError('tlsKey', files.key, `does not match the certificate in ${files.cert} (serial ${leaf!.serialNumber})`);
  }
  // A chain that does not hold the issuer is a leftover (an intermediate
  // that changed at renewal): clients that lack it would fail.
  if (chain.length > 0 && !chain.some((ca) => leaf!.checkIssued(ca))) {
    throw new TlsCertificateError(files.ca ? 'tlsCa' : 'tlsCert', files.ca ?? files.cert, `the chain does not hold the certificate's issuer (${leaf!.issuer.replace(/\n/g, ', ')})`);
  }
  // The chain is sent in `cert`, after the leaf: `ca` would only set the CAs trusted for client certificates.
  const cert = caPem ? Buffer.concat([certPem, Buffer.from('\n'), caPem]) : certPem;
  try {
    createSecureContext({ cert, key: keyPem });
  } catch (error) {
    throw new TlsCertificateError('tlsCert', files.cert, `OpenSSL refuses it (${(error as Error).message})`);
  }
  const digest = createHash('sha256').update(certPem).update('\0').update(keyPem).update('\0').update(caPem ?? '').digest('hex');
  return {
    context: { cert, key: keyPem },
    serialNumber: leaf!.serialNumber,
    fingerprint256: leaf!.fingerprint256,
    subject: leaf!.subject.replace(/\n/g, ', '),
    validTo: new Date(leaf!.validTo),
    digest,
  };
}

/**
 * TLS options for connections to https:// origins and shields that also
 * trust the CA certificates in `path` (`--origin-ca`): one secure context
 * built once, with Node's root certificates and the file's (an explicit
 * `ca` replaces the roots, so they are listed too: public origins in the
 * same pool keep working).
 */
export function loadOriginTls(path: string): ConnectionOptions {
  const pem = readPem('originCa', path);
  const certificates = certificatesIn('originCa', path, pem);
  try {
    return { secureContext: createSecureContext({ ca: [...rootCertificates, ...certificates.map((c) => c.toString())] }) };
  } catch (error) {
    throw new TlsCertificateError('originCa', path, `OpenSSL refuses it (${(error as Error).message})`);
  }
}

export function isExpired(certificate: TlsCertificate, now: number = Date.now()): boolean {
  return certificate.validTo.getTime() <= now;
}

/** One reload attempt, as reported to `onReload`. */
export interface TlsReloadEvent {
  /** What asked: a file change, a signal (SIGHUP) or a caller. */
  trigger: 'watch' | 'signal' | 'manual';
  /** `reloaded`: the new certificate is in use; `unchanged`: same bytes; `refused`: the old one stays. */
  outcome: 'reloaded' | 'unchanged' | 'refused';
  /** The certificate in use after the attempt. */
  certificate: TlsCertificate;
  /** Why a new certificate was refused. */
  reason?: string;
}

export interface TlsReloaderOptions {
  files: TlsFiles;
  /** The certificate the server started with. */
  initial: TlsCertificate;
  /** Put a checked certificate in use (the server's `setSecureContext`). */
  apply: (certificate: TlsCertificate) => void;
  /**
   * Told of every attempt except the silent ones: a file event that found
   * the same bytes, or the same refused bytes again.
   */
  onReload?: (event: TlsReloadEvent) => void;
  /** Quiet time after the last file event before reading. @default 1000 */
  debounceMs?: number;
  /** Watch the files. @default true */
  watch?: boolean;
  now?: () => number;
}

/** Keeps the server's certificate equal to the files, as long as they hold a usable one. */
export class TlsCertificateReloader {
  readonly #options: TlsReloaderOptions;
  #current: TlsCertificate;
  /** The bytes (or read failure) last refused, so a file event does not log the same refusal twice. */
  #lastRefused: string | undefined;
  readonly #directoryWatchers: FSWatcher[] = [];
  #fileWatchers: FSWatcher[] = [];
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: TlsReloaderOptions) {
    this.#options = options;
    this.#current = options.initial;
    if (options.watch ?? true) this.#watch();
  }

  /** The certificate in use. */
  get current(): TlsCertificate {
    return this.#current;
  }

  /** Read the files now; put the certificate in use if it is new and usable. */
  reload(trigger: TlsReloadEvent['trigger'] = 'manual'): TlsReloadEvent {
    const quiet = trigger === 'watch';
    let next: TlsCertificate;
    try {
      next = loadTlsCertificate(this.#options.files);
    } catch (error) {
      const reason = error instanceof TlsCertificateError ? `${optionFlag(error.option)} ${error.message}` : (error as Error).message;
      return this.#refuse(trigger, reason, reason, quiet);
    }
    if (next.digest === this.#current.digest) {
      this.#lastRefused = undefined;
      return this.#report({ trigger, outcome: 'unchanged', certificate: this.#current }, quiet);
    }
    if (isExpired(next, (this.#options.now ?? Date.now)())) {
      return this.#refuse(trigger, `the new certificate (serial ${next.serialNumber}) expired on ${next.validTo.toISOString()}`, next.digest, quiet);
    }
    try {
      this.#options.apply(next);
    } catch (error) {
      return this.#refuse(trigger, `the server refused it (${(error as Error).message})`, next.digest, quiet);
    }
    this.#current = next;
    this.#lastRefused = undefined;
    return this.#report({ trigger, outcome: 'reloaded', certificate: next }, false);
  }

  /** Stop watching. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    for (const watcher of [...this.#directoryWatchers, ...this.#fileWatchers]) watcher.close();
    this.#fileWatchers = [];
  }

  #refuse(trigger: TlsReloadEvent['trigger'], reason: string, fingerprint: string, quiet: boolean): TlsReloadEvent {
    const repeated = this.#lastRefused === fingerprint;
    this.#lastRefused = fingerprint;
    return this.#report({ trigger, outcome: 'refused', certificate: this.#current, reason }, quiet && repeated);
  }

  #report(event: TlsReloadEvent, silent: boolean): TlsReloadEvent {
    if (!silent || event.outcome === 'reloaded') this.#options.onReload?.(event);
    return event;
  }

  #watch(): void {
    const { files } = this.#options;
    const paths = [files.cert, files.key, ...(files.ca ? [files.ca] : [])];
    const names = new Set(paths.map((path) => basename(path)));
    const schedule = () => {
      if (this.#closed) return;
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => {
        if (this.#closed) return;
        this.reload('watch');
        // A replaced file is a new inode: watch the one there now.
        this.#watchFiles(paths, schedule);
      }, this.#options.debounceMs ?? 1000);
      this.#timer.unref();
    };
    for (const directory of new Set(paths.map((path) => dirname(path)))) {
      const watcher = tryWatch(directory, (name) => {
        // The files themselves, and Kubernetes' `..data` swaps; not every other file of /etc/ssl.
        if (name === null || names.has(name) || name.startsWith('..')) schedule();
      });
      if (watcher) this.#directoryWatchers.push(watcher);
    }
    this.#watchFiles(paths, schedule);
  }

  #watchFiles(paths: string[], schedule: () => void): void {
    for (const watcher of this.#fileWatchers) watcher.close();
    this.#fileWatchers = paths.map((path) => tryWatch(path, () => schedule())).filter((w): w is FSWatcher => w !== undefined);
  }
}

/** fs.watch that never keeps the process alive and never throws (a missing file is read, and refused, when asked). */
function tryWatch(path: string, onEvent: (name: string | null) => void): FSWatcher | undefined {
  try {
    const watcher = watch(path, { persistent: false }, (_event, name) => onEvent(name === null ? null : String(name)));
    watcher.on('error', () => watcher.close());
    return watcher;
  } catch {
    return undefined;
  }
}

/** One log line for a reload event. */
export function describeTlsReload(event: TlsReloadEvent): string {
  const { certificate: c } = event;
  const current = `serial ${c.serialNumber}, ${c.subject}, expires ${c.validTo.toISOString()}, sha256 ${c.fingerprint256}`;
  const by = event.trigger === 'signal' ? ' (SIGHUP)' : event.trigger === 'watch' ? ' (files changed)' : '';
  if (event.outcome === 'reloaded') return `TLS certificate reloaded${by}: ${current}`;
  if (event.outcome === 'unchanged') return `TLS certificate unchanged${by}: ${current}`;
  return `TLS certificate NOT reloaded${by}: ${event.reason}; still serving ${current}`;
}
