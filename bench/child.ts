/**
 * One benchmark server per child process, so the load generator (the
 * parent) and the server under test run on different cores.
 *   bare <bytes>                    plain node:http serving <bytes> bytes
 *   edge <originUrl> <memorySize>   an edge node in front of <originUrl>
 * Prints `{"url": ...}` on stdout once listening.
 */
import { createServer } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { startEdgeServer } from '../edge/node/server.js';

const [kind, arg1, arg2] = process.argv.slice(2);

if (kind === 'bare') {
  const body = Buffer.alloc(Number(arg1), 'a');
  const server = createServer((req, res) => {
    // The same bytes and the same cache headers the origin gives the edge.
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': body.length,
      'cache-control': 'public, max-age=3600',
      etag: '"bench"',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  server.keepAliveTimeout = 65_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address() as { port: number };
    console.log(JSON.stringify({ url: `http://127.0.0.1:${address.port}` }));
  });
} else if (kind === 'edge') {
  const dataDir = mkdtempSync(join(tmpdir(), 'edge-bench-'));
  const options = resolveEdgeOptions({ origin: arg1, port: 0, host: '127.0.0.1', dataDir, memorySize: arg2, diskSize: '2GB' });
  // The access log stays on (one line per request, as in production), written to /dev/null.
  const logger = pino({ level: 'info' }, pino.destination({ dest: '/dev/null', sync: false }));
  const server = await startEdgeServer(options, { logger });
  console.log(JSON.stringify({ url: server.url }));
} else {
  console.error('usage: child.ts bare <bytes> | edge <originUrl> <memorySize>');
  process.exit(2);
}
