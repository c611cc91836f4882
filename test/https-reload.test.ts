/**
 * Issue 13: certificates are re-read when their files change (or on
 * SIGHUP, see https-cli.test.ts) without dropping connections: requests in
 * flight complete, open connections keep working with the certificate
 * they shook hands with, new connections get the new one. A certificate
 * that cannot be used is refused with one log line and the old one stays.
 */
import { renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { connect as http2Connect, type ClientHttp2Session } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type PeerCertificate } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { describeTlsReload, type TlsReloadEvent } from '../edge/node/tls.js';
import { createTestClock, type TestClock } from './helpers/clock.js';
import { createGate, startTestOrigin, type TestOrigin } from './helpers/origin.js';
import { createTestCa, issueCertificate, type TestCa, type TestCertificate } from './helpers/tls.js';

interface Node {
  edge: EdgeServer;
  origin: TestOrigin;
  ca: TestCa;
  dir: string;
  clock: TestClock;
  /** Where the node reads its certificate and key. */
  certPath: string;
  keyPath: string;
  /** The next reload event. */
  nextEvent(): Promise<TlsReloadEvent>;
  events: TlsReloadEvent[];
}

const nodes: Node[] = [];
const sessions: ClientHttp2Session[] = [];
afterEach(async () => {
  for (const session of sessions.splice(0)) session.destroy();
  for (const node of nodes.splice(0)) {
    await node.edge.close();
    await node.origin.close();
    await rm(node.dir, { recursive: true, force: true });
  }
});

/** A node whose certificate files live at live/cert.pem and live/key.pem (copies, or symlinks into archive/ as certbot makes them). */
async function startNode(layout: 'files' | 'symlinks' = 'files'): Promise<Node & { first: TestCertificate }> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-reload-'));
  const ca = createTestCa(dir);
  await mkdir(join(dir, 'live'));
  await mkdir(join(dir, 'archive'));
  const first = issueCertificate(join(dir, 'archive'), ca, { name: 'cert1', serial: '1001' });
  const certPath = join(dir, 'live', 'cert.pem');
  const keyPath = join(dir, 'live', 'key.pem');
  if (layout === 'symlinks') {
    await symlink('../archive/cert1.pem', certPath);
    await symlink('../archive/cert1.key', keyPath);
  } else {
    await writeFile(certPath, first.cert);
    await writeFile(keyPath, first.key);
  }
  const origin = await startTestOrigin();
  const clock = createTestClock(Date.now());
  const events: TlsReloadEvent[] = [];
  const waiting: ((event: TlsReloadEvent) => void)[] = [];
  const options = resolveEdgeOptions({ origin: origin.url, port: 0, host: '127.0.0.1', dataDir: join(dir, 'data'), tlsCert: certPath, tlsKey: keyPath });
  const edge = await startEdgeServer(options, {
    now: clock.now,
    logger: false,
    tlsReloadDebounceMs: 20,
    onTlsReload: (event) => {
      events.push(event);
      waiting.shift()?.(event);
    },
  });
  const node = { edge, origin, ca, dir, clock, certPath, keyPath, events, first, nextEvent: () => new Promise<TlsReloadEvent>((resolve) => waiting.push(resolve)) };
  nodes.push(node);
  return node;
}

/** The certificate a new TLS connection gets, offering `alpn`. */
function peerCertificate(node: Node, alpn = 'h2'): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port: node.edge.port, servername: 'localhost', ca: node.ca.pem, ALPNProtocols: [alpn] }, () => {
      const certificate = socket.getPeerCertificate();
      socket.end();
      resolve(certificate);
    });
    socket.on('error', reject);
  });
}

async function session(node: Node): Promise<ClientHttp2Session> {
  const client = http2Connect(`https://localhost:${node.edge.port}`, { ca: node.ca.pem });
  sessions.push(client);
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  return client;
}

function get(client: ClientHttp2Session, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const stream = client.request({ ':path': path });
    let status = 0;
    let body = '';
    stream.setEncoding('utf8');
    stream.on('response', (headers) => (status = Number(headers[':status'])));
    stream.on('data', (chunk: string) => (body += chunk));
    stream.on('end', () => resolve({ status, body }));
    stream.on('error', reject);
  });
}

const servedSerial = (client: ClientHttp2Session) => (client.socket as unknown as { getPeerCertificate(): PeerCertificate }).getPeerCertificate().serialNumber;

describe('certificate reload', () => {
  it('picks up renewed files: the request in flight completes, the open connection stays, new connections get the new certificate', async () => {
    const node = await startNode();
    const second = issueCertificate(join(node.dir, 'archive'), node.ca, { name: 'cert2', serial: '2002' });
    const gate = createGate();
    node.origin.set('/slow', { body: 'finished', gate });
    node.origin.set('/after', { body: 'after' });
    const arrived = createGate();
    node.edge.server.on('request', () => arrived.arrive());

    const old = await session(node);
    expect(servedSerial(old)).toBe('1001');
    const inFlight = get(old, '/slow');
    await arrived.arrivals(1);

    // A renewal writes both files; the debounce reads them once (synchronous writes: no event is handled in between).
    const reloaded = node.nextEvent();
    writeFileSync(node.certPath, second.cert);
    writeFileSync(node.keyPath, second.key);
    const event = await reloaded;
    expect(event).toMatchObject({ trigger: 'watch', outcome: 'reloaded', certificate: { serialNumber: '2002', fingerprint256: second.fingerprint256 } });
    expect(describeTlsReload(event)).toMatch(/^TLS certificate reloaded \(files changed\): serial 2002, .*sha256 /);

    const fresh = await peerCertificate(node);
    expect([fresh.serialNumber, fresh.fingerprint256]).toEqual(['2002', second.fingerprint256]);
    expect((await peerCertificate(node, 'http/1.1')).serialNumber).toBe('2002');
    const newSession = await session(node);
    expect(newSession.alpnProtocol).toBe('h2');
    expect(servedSerial(newSession)).toBe('2002');

    gate.open();
    expect(await inFlight).toEqual({ status: 200, body: 'finished' });
    // The connection opened before the reload still serves, with the certificate it shook hands with.
    expect(await get(old, '/after')).toEqual({ status: 200, body: 'after' });
    expect(servedSerial(old)).toBe('1001');
    expect(node.edge.tls!.certificate().serialNumber).toBe('2002');
    expect(node.events).toHaveLength(1);
  });

  it('follows certbot-style symlink swaps in live/', async () => {
    const node = await startNode('symlinks');
    issueCertificate(join(node.dir, 'archive'), node.ca, { name: 'cert2', serial: '2002' });
    const reloaded = node.nextEvent();
    // certbot: a new link under a temporary name, renamed over the old one.
    for (const [link, target] of [
      [node.certPath, '../archive/cert2.pem'],
      [node.keyPath, '../archive/cert2.key'],
    ] as const) {
      symlinkSync(target, `${link}.tmp`);
      renameSync(`${link}.tmp`, link);
    }
    expect((await reloaded).certificate.serialNumber).toBe('2002');
    expect((await peerCertificate(node)).serialNumber).toBe('2002');
  });

  it('refuses a key that does not match, keeps the old certificate, and logs the refusal once', async () => {
    const node = await startNode();
    const other = issueCertificate(join(node.dir, 'archive'), node.ca, { name: 'other', serial: '3003' });
    const refused = node.nextEvent();
    writeFileSync(node.keyPath, other.key);
    const event = await refused;
    expect(event).toMatchObject({ trigger: 'watch', outcome: 'refused', certificate: { serialNumber: '1001' } });
    expect(event.reason).toMatch(/^--tls-key .*key\.pem: does not match the certificate/);
    expect(describeTlsReload(event)).toMatch(/^TLS certificate NOT reloaded \(files changed\): --tls-key .* still serving serial 1001/);
    expect((await peerCertificate(node)).serialNumber).toBe('1001');

    // The same bad bytes again (a touch): not logged a second time. The matching pair then goes through.
    const next = node.nextEvent();
    writeFileSync(node.keyPath, other.key);
    writeFileSync(node.certPath, other.cert);
    expect(await next).toMatchObject({ outcome: 'reloaded', certificate: { serialNumber: '3003' } });
    expect(node.events.map((e) => e.outcome)).toEqual(['refused', 'reloaded']);
  });

  it('refuses files that are not a certificate, and a certificate already expired', async () => {
    const node = await startNode();
    const garbage = node.nextEvent();
    writeFileSync(node.certPath, 'not a certificate');
    expect((await garbage).reason).toMatch(/^--tls-cert .*cert\.pem: holds no PEM certificate/);
    expect((await peerCertificate(node)).serialNumber).toBe('1001');

    // Valid for 30 days; the node's clock says 60 days from now.
    const stale = issueCertificate(join(node.dir, 'archive'), node.ca, { name: 'stale', serial: '4004', days: 30 });
    node.clock.advance(60 * 86_400_000);
    const expired = node.nextEvent();
    writeFileSync(node.keyPath, stale.key);
    writeFileSync(node.certPath, stale.cert);
    const event = await expired;
    expect(event.outcome).toBe('refused');
    expect(event.reason).toMatch(/serial 4004\) expired on /);
    expect((await peerCertificate(node)).serialNumber).toBe('1001');
  });

  it('reloads when asked (what SIGHUP does) and says when nothing changed', async () => {
    const node = await startNode();
    expect(node.edge.tls!.reload('signal')).toMatchObject({ trigger: 'signal', outcome: 'unchanged', certificate: { serialNumber: '1001' } });
    expect(node.events.map((e) => e.outcome)).toEqual(['unchanged']);
  });
});
