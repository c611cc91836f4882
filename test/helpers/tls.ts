/**
 * Certificates made in the test, with the system's `openssl`: a test CA
 * and server certificates it issues, each with a chosen serial number, so
 * a test can tell which certificate a connection got. Nothing is committed;
 * everything lives in a temporary directory the caller removes.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestCa {
  certPath: string;
  keyPath: string;
  /** PEM, for a client's `ca`. */
  pem: string;
}

export interface TestCertificate {
  certPath: string;
  keyPath: string;
  cert: string;
  key: string;
  /** Upper-case hex, as `getPeerCertificate().serialNumber` gives it. */
  serialNumber: string;
  fingerprint256: string;
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    const { stderr, code } = error as { stderr?: Buffer; code?: string };
    if (code === 'ENOENT') throw new Error('these tests make their certificates with openssl: install it (apt-get install openssl)');
    throw new Error(`openssl ${args.join(' ')}: ${stderr?.toString() ?? String(error)}`);
  }
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A CA that signs server certificates (`name` names its files in `dir`). */
export function createTestCa(dir: string, name = 'ca'): TestCa {
  const certPath = join(dir, `${name}.pem`);
  const keyPath = join(dir, `${name}.key`);
  openssl(
    ['req', '-x509', ...EC_KEY, '-keyout', keyPath, '-out', certPath, '-days', '30', '-subj', `/CN=Edge Test CA ${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    dir,
  );
  return { certPath, keyPath, pem: readFileSync(certPath, 'utf8') };
}

/**
 * A server certificate for `hosts` (DNS names and IP addresses), signed by
 * `ca`, with serial `serial` (hex digits). Written to `<name>.pem` and
 * `<name>.key` in `dir`.
 */
export function issueCertificate(dir: string, ca: TestCa, options: { name: string; serial: string; hosts?: string[]; days?: number }): TestCertificate {
  const hosts = options.hosts ?? ['localhost', '127.0.0.1'];
  const certPath = join(dir, `${options.name}.pem`);
  const keyPath = join(dir, `${options.name}.key`);
  const csrPath = join(dir, `${options.name}.csr`);
  const extPath = join(dir, `${options.name}.ext`);
  const san = hosts.map((host) => (/^[\d.]+$|:/.test(host) ? `IP:${host}` : `DNS:${host}`)).join(',');
  writeFileSync(extPath, `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n`);
  openssl(['req', '-new', ...EC_KEY, '-keyout', keyPath, '-out', csrPath, '-subj', `/CN=${hosts[0]}`], dir);
  openssl(
    ['x509', '-req', '-in', csrPath, '-CA', ca.certPath, '-CAkey', ca.keyPath, '-set_serial', `0x${options.serial}`, '-days', String(options.days ?? 30), '-extfile', extPath, '-out', certPath],
    dir,
  );
  const cert = readFileSync(certPath, 'utf8');
  const x509 = new X509Certificate(cert);
  return { certPath, keyPath, cert, key: readFileSync(keyPath, 'utf8'), serialNumber: x509.serialNumber, fingerprint256: x509.fingerprint256 };
}
