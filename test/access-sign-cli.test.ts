/**
 * `edge sign`: the printed URL (and cookie) is accepted by a node with the
 * same key; bad arguments are one line and exit 2.
 */
import { spawnSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { runSign } from '../edge/node/sign-cli.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const KEYS = 'new=signing-key-0123456789abcdef,old=older-key-fedcba9876543210';

const edges: TestEdge[] = [];
afterEach(async () => {
  for (const edge of edges.splice(0)) await edge.close();
});

async function sign(args: string[], env: NodeJS.ProcessEnv = { EDGE_URL_SIGNING_KEY: KEYS }, now?: () => number) {
  const out: string[] = [];
  const err: string[] = [];
  const code = await runSign(args, { out: (l) => out.push(l), err: (l) => err.push(l), env, now });
  return { code, out, err };
}

describe('edge sign', () => {
  it('prints a signed URL the node accepts until it expires, with the key chosen by --key-id', async () => {
    const edge = await startTestEdge({ signedPaths: '/private/', urlSigningKey: KEYS });
    edges.push(edge);
    edge.origin.set('/private/report.pdf', { body: 'pdf' });
    const { code, out } = await sign([`${edge.edge.url}/private/report.pdf?lang=en`, '--expires', '1h', '--key-id', 'old'], undefined, edge.clock.now);
    expect(code).toBe(0);
    expect(out[0]).toMatch(/[?&]kid=old/);
    const res = await edge.get(out[0]!.slice(edge.edge.url.length));
    expect(res.status).toBe(200);
    edge.clock.advance(3_601_000);
    expect((await edge.get(out[0]!.slice(edge.edge.url.length))).status).toBe(403);
  });

  it('prints an access cookie for a prefix', async () => {
    const edge = await startTestEdge({ signedPaths: '/video/', urlSigningKey: KEYS });
    edges.push(edge);
    edge.origin.set('/video/7/a.ts', { body: 'a' });
    const { code, out } = await sign(['--cookie', '/video/7/', '--expires', '10m'], undefined, edge.clock.now);
    expect(code).toBe(0);
    expect((await edge.get('/video/7/a.ts', { headers: { cookie: `Edge-Access=${out[0]}` } })).status).toBe(200);
  });

  it('refuses bad arguments with one line and exit 2', async () => {
    expect((await sign(['/a'])).code).toBe(2);
    expect((await sign(['/a', '--expires', 'soon'])).err[0]).toContain('--expires');
    expect((await sign(['/a', '--expires', '1h'], {})).err[0]).toContain('no key');
    expect((await sign(['/a', '--expires', '1h', '--key-id', 'nope'])).err[0]).toContain('nope');
  });

  it('runs as `edge sign` from the command line', () => {
    const result = spawnSync(process.execPath, ['--import', 'tsx', 'edge/node/cli.ts', 'sign', '/private/a?x=1', '--expires', '1h'], {
      encoding: 'utf8',
      env: { ...process.env, EDGE_URL_SIGNING_KEY: KEYS },
      timeout: 20_000,
    });
    expect(result.status).toBe(0);
    expect(result.stdout.trim()).toMatch(/^\/private\/a\?x=1&expires=\d+&kid=new&sig=[\w-]{43}$/);
  });
});
