/**
 * Issue 13 from the command line: `npx edge --tls-cert ... --tls-key ...`
 * serves HTTPS, SIGHUP re-reads the certificate (one line on stderr), and a
 * certificate that cannot be used stops the start with one line naming the
 * option.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type PeerCertificate } from 'node:tls';
import { Agent, fetch as undiciFetch } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestOrigin, type TestOrigin } from './helpers/origin.js';
import { createTestCa, issueCertificate } from './helpers/tls.js';

const CLI = ['--import', 'tsx', 'edge/node/cli.ts'];

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-https-cli-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** stderr so far, and a wait for a line matching a pattern. */
function watchStderr(child: ChildProcess) {
  let text = '';
  const waiters: { pattern: RegExp; resolve: (match: RegExpExecArray) => void }[] = [];
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    text += chunk;
    for (const waiter of [...waiters]) {
      const match = waiter.pattern.exec(text);
      if (match) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(match);
      }
    }
  });
  return {
    get text() {
      return text;
    },
    waitFor(pattern: RegExp): Promise<RegExpExecArray> {
      const match = pattern.exec(text);
      if (match) return Promise.resolve(match);
      return new Promise((resolve, reject) => {
        waiters.push({ pattern, resolve });
        child.once('exit', (code) => reject(new Error(`edge exited ${code} before ${pattern}: ${text}`)));
      });
    },
  };
}

function peerSerial(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername: 'localhost', ca }, () => {
      const certificate: PeerCertificate = socket.getPeerCertificate();
      socket.end();
      resolve(certificate.serialNumber);
    });
    socket.on('error', reject);
  });
}

describe('npx edge with TLS', () => {
  let origin: TestOrigin;

  it('serves HTTPS (HTTP/2 and HTTP/1.1), reloads the certificate on SIGHUP, and redirects plain HTTP', async () => {
    origin = await startTestOrigin();
    cleanups.push(() => origin.close());
    origin.set('/page', { headers: { 'cache-control': 'max-age=60' }, body: 'over tls' });
    const dir = await tempDir();
    const ca = createTestCa(dir);
    const first = issueCertificate(dir, ca, { name: 'first', serial: '1001' });
    const second = issueCertificate(dir, ca, { name: 'second', serial: '2002' });
    const certPath = join(dir, 'cert.pem');
    const keyPath = join(dir, 'key.pem');
    writeFileSync(certPath, first.cert);
    writeFileSync(keyPath, first.key);
    const child = spawn(
      process.execPath,
      [...CLI, '--origin', origin.url, '--port', '0', '--host', '127.0.0.1', '--data-dir', join(dir, 'data'), '--log-level', 'silent', '--http-redirect-port', '0'],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, EDGE_TLS_CERT: certPath, EDGE_TLS_KEY: keyPath } },
    );
    cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await new Promise((resolve) => child.once('exit', resolve));
      }
    });
    const stderr = watchStderr(child);
    const [, url, port] = await stderr.waitFor(/listening on (https:\/\/127\.0\.0\.1:(\d+)) \(HTTP\/2 and HTTP\/1\.1\)/);
    const [, redirectPort] = await stderr.waitFor(/redirecting http:\/\/127\.0\.0\.1:(\d+) to https/);

    const agent = new Agent({ allowH2: true, connect: { ca: ca.pem, servername: 'localhost' } });
    cleanups.push(() => agent.close());
    const res = await undiciFetch(`${url}/page`, { dispatcher: agent });
    expect([res.status, await res.text()]).toEqual([200, 'over tls']);
    expect(origin.requests[0]!.headers['x-forwarded-proto']).toBe('https');
    expect(await peerSerial(Number(port), ca.pem)).toBe('1001');

    // Renewed files, then SIGHUP (before the file watch's one-second quiet time is over).
    writeFileSync(certPath, second.cert);
    writeFileSync(keyPath, second.key);
    child.kill('SIGHUP');
    await stderr.waitFor(/edge: TLS certificate reloaded \(SIGHUP\): serial 2002, CN=localhost, expires \S+, sha256 [0-9A-F:]+\n/);
    expect(await peerSerial(Number(port), ca.pem)).toBe('2002');
    // The process is still serving (SIGHUP did not stop it).
    expect((await undiciFetch(`${url}/page`, { dispatcher: agent })).status).toBe(200);

    const redirected = await fetch(`http://127.0.0.1:${redirectPort}/page`, { redirect: 'manual' });
    expect(redirected.status).toBe(308);
    expect(redirected.headers.get('location')).toBe(`https://127.0.0.1:${port}/page`);

    child.kill('SIGTERM');
    const code = await new Promise((resolve) => child.once('exit', resolve));
    expect(code).toBe(0);
    expect(stderr.text).not.toMatch(/NOT reloaded/);
  });

  it('stops at start-up with one line naming the option when the key does not match', async () => {
    const dir = await tempDir();
    const ca = createTestCa(dir);
    const a = issueCertificate(dir, ca, { name: 'a', serial: '0a' });
    const b = issueCertificate(dir, ca, { name: 'b', serial: '0b' });
    const run = spawnSync(process.execPath, [...CLI, '--origin', 'http://127.0.0.1:9', '--data-dir', join(dir, 'data'), '--tls-cert', a.certPath, '--tls-key', b.keyPath], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(new RegExp(`^edge: --tls-key \\(EDGE_TLS_KEY\\): got "${b.keyPath.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}": does not match the certificate in .*a\\.pem \\(serial 0A\\)\\n$`));
  });

  it('stops when only one of --tls-cert and --tls-key is given, or a file is missing', async () => {
    const dir = await tempDir();
    const half = spawnSync(process.execPath, [...CLI, '--origin', 'http://127.0.0.1:9', '--data-dir', join(dir, 'data'), '--tls-cert', join(dir, 'x.pem')], { encoding: 'utf8', timeout: 20_000 });
    expect(half.status).toBe(2);
    expect(half.stderr).toMatch(/--tls-key \(EDGE_TLS_KEY\): got nothing: required with --tls-cert/);
    const missing = spawnSync(process.execPath, [...CLI, '--origin', 'http://127.0.0.1:9', '--data-dir', join(dir, 'data'), '--tls-cert', join(dir, 'x.pem'), '--tls-key', join(dir, 'x.key')], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/--tls-cert \(EDGE_TLS_CERT\): got ".*x\.pem": cannot read it \(ENOENT\)/);
  });
});
