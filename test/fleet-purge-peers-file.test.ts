/**
 * `--peers @file` (issue 11): the list is read at start-up, re-read when the
 * file changes and on SIGHUP (`reloadPeers()`), and a bad edit keeps the
 * previous list. Also the `--peers` syntax errors, naming the flag.
 */
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { parsePeers } from '../edge/core/fleet-purge.js';
import { EdgeOptionsError, resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer, type EdgeServer } from '../edge/node/server.js';
import { startTestOrigin } from './helpers/origin.js';

const TOKEN = 'p'.repeat(32);
const AUTH = { authorization: `Bearer ${TOKEN}` };

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'edge-peers-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function startNode(input: Record<string, unknown>): Promise<EdgeServer> {
  const origin = await startTestOrigin();
  cleanups.push(() => origin.close());
  const options = resolveEdgeOptions({ host: '127.0.0.1', logLevel: 'silent', adminToken: TOKEN, origin: origin.url, port: 0, dataDir: await tempDir(), ...input });
  const node = await startEdgeServer(options, { logger: false });
  cleanups.push(() => node.close());
  return node;
}

/** A peer that counts the purge copies it applied. */
async function startPeer(): Promise<{ node: EdgeServer; purges: () => number }> {
  const node = await startNode({});
  let purges = 0;
  node.server.on('request', (req: { url?: string; headers: Record<string, unknown> }) => {
    if (req.url === '/_edge/purge' && req.headers['edge-purge-id']) purges++;
  });
  return { node, purges: () => purges };
}

async function purge(node: EdgeServer): Promise<{ peers: { url: string; role: string; status: number }[] }> {
  const res = await fetch(`${node.url}/_edge/purge`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/json' }, body: '{"all":true}' });
  expect(res.status).toBe(200);
  return res.json();
}

async function listed(node: EdgeServer): Promise<string[]> {
  const res = await fetch(`${node.url}/_edge/origins`, { headers: AUTH });
  return ((await res.json()) as { peers: { url: string; role: string }[] }).peers.map((peer) => `${peer.role} ${peer.url}`);
}

describe('--peers @file', () => {
  it('is read at start-up, re-read when it changes and on reloadPeers (SIGHUP)', async () => {
    const [b, c] = [await startPeer(), await startPeer()];
    const dir = await tempDir();
    const file = join(dir, 'peers');
    await writeFile(file, `# the fleet\n\n${b.node.url}   # edge B\n`);
    const a = await startNode({ peers: `@${file}` });
    expect(await listed(a)).toEqual([`edge ${b.node.url}`]);
    expect((await purge(a)).peers).toEqual([{ url: b.node.url, role: 'edge', status: 200, purged: 0 }]);
    expect(b.purges()).toBe(1);

    // An editor's save: a new file renamed over the old one. fs.watch picks it up.
    await writeFile(join(dir, 'peers.tmp'), `shield=${c.node.url}/\n${b.node.url}\n`);
    await rename(join(dir, 'peers.tmp'), file);
    await vi.waitFor(async () => expect(await listed(a)).toEqual([`shield ${c.node.url}`, `edge ${b.node.url}`]), { timeout: 10_000 });
    expect((await purge(a)).peers.map((peer) => peer.url)).toEqual([c.node.url, b.node.url]);

    // A bad edit keeps the previous list.
    await writeFile(file, `ftp://nowhere\n`);
    a.reloadPeers();
    expect(await listed(a)).toEqual([`shield ${c.node.url}`, `edge ${b.node.url}`]);

    // SIGHUP (reloadPeers) reads it now, whatever the watcher does.
    await writeFile(file, `edge=${c.node.url}\n`);
    a.reloadPeers();
    expect(await listed(a)).toEqual([`edge ${c.node.url}`]);
    expect((await purge(a)).peers).toEqual([{ url: c.node.url, role: 'edge', status: 200, purged: 0 }]);
    expect(b.purges()).toBe(2);
    expect(c.purges()).toBe(2);
  });

  it('a file that cannot be read or parsed stops the start, naming --peers', async () => {
    const dir = await tempDir();
    await expect(startNode({ peers: `@${join(dir, 'missing')}` })).rejects.toThrow(/^--peers \(EDGE_PEERS\): cannot read .*missing: ENOENT/);
    await writeFile(join(dir, 'bad'), 'http://ok:1\nproxy=http://x:2\n');
    await expect(startNode({ peers: `@${join(dir, 'bad')}` })).rejects.toThrow(/--peers \(EDGE_PEERS\): .*bad: line 2: unknown role "proxy"/);
  });
});

describe('--peers syntax', () => {
  it('parses [shield=|edge=]url entries; shield wins for a URL listed twice', () => {
    expect(parsePeers('http://e1:8080, shield=http://s1:8090/ ,edge=https://e2/admin/,shield=http://e1:8080', 'list')).toEqual({
      peers: [
        { url: 'http://e1:8080', role: 'shield' },
        { url: 'http://s1:8090', role: 'shield' },
        { url: 'https://e2/admin', role: 'edge' },
      ],
      problems: [],
    });
  });

  it('refuses what is not a peer, one line naming the option', () => {
    for (const [value, problem] of [
      ['ftp://x', 'entry 1: "ftp://x" is not an http(s) URL'],
      ['http://ok:1,cache=http://x:2', 'entry 2: unknown role "cache"'],
      ['http://u:p@x:1', 'carries credentials'],
      ['edge', 'is not an absolute http(s) URL'],
      ['@', 'expected a file after @'],
    ]) {
      try {
        resolveEdgeOptions({ peers: value });
        expect.unreachable(value);
      } catch (error) {
        expect((error as EdgeOptionsError).problems).toEqual([expect.stringContaining(`--peers (EDGE_PEERS): got ${JSON.stringify(value)}: `)]);
        expect((error as EdgeOptionsError).problems[0]).toContain(problem);
      }
    }
  });
});
