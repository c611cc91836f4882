/**
 * `npx edge sign <url> --expires 1h [--key-id k] [--key <keys>]`: print a
 * signed URL (README "Access control"). `--cookie <prefix>` prints a signed
 * access cookie value for the prefix instead (`--ip` binds it to a client).
 *
 * The key comes from `--key`, else `--url-signing-key` / EDGE_URL_SIGNING_KEY
 * / a `--config` file, as the node reads it; `--ignore-query-params` too, so
 * the signature covers what the node checks. Exit 0 with the URL on stdout,
 * 2 with one line on stderr for a bad argument.
 */
import { parseArgs } from 'node:util';
import { parseDuration } from '../core/options.js';
import { signCookie, signUrl } from '../core/access/signing.js';
import { collectOptionInput } from './run-node.js';

export interface SignIo {
  out?: (line: string) => void;
  err?: (line: string) => void;
  env?: NodeJS.ProcessEnv;
  /** @default Date.now */
  now?: () => number;
}

const USAGE = 'usage: edge sign <url> --expires <duration|unix-seconds> [--key-id <kid>] [--key <key or kid=key,...>] [--cookie <prefix> [--ip <addr>]]';

export async function runSign(argv: string[], io: SignIo = {}): Promise<number> {
  const out = io.out ?? ((line) => process.stdout.write(line + '\n'));
  const err = io.err ?? ((line) => process.stderr.write(line + '\n'));
  const env = io.env ?? process.env;
  const now = io.now ?? Date.now;
  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        expires: { type: 'string' },
        'key-id': { type: 'string' },
        key: { type: 'string' },
        cookie: { type: 'string' },
        ip: { type: 'string' },
        config: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (error) {
    err(`edge sign: ${(error as Error).message}`);
    err(USAGE);
    return 2;
  }
  if (values.help) {
    out(USAGE);
    return 0;
  }
  const cookiePrefix = values.cookie as string | undefined;
  if ((cookiePrefix === undefined && positionals.length !== 1) || (cookiePrefix !== undefined && positionals.length > 0)) {
    err(`edge sign: ${cookiePrefix === undefined ? 'give exactly one URL' : '--cookie takes the prefix; give no URL'}`);
    err(USAGE);
    return 2;
  }
  const expiresText = values.expires as string | undefined;
  if (expiresText === undefined) {
    err('edge sign: --expires is required (a duration such as 1h, or Unix seconds)');
    return 2;
  }
  // Ten digits or more reads as an absolute Unix time; anything else as a duration from now.
  const absolute = /^\d{10,}$/.test(expiresText) ? Number(expiresText) : undefined;
  const duration = absolute === undefined ? parseDuration(expiresText) : undefined;
  if (absolute === undefined && (duration === undefined || duration < 1000)) {
    err(`edge sign: --expires: got ${JSON.stringify(expiresText)}: expected a duration such as 30m, 1h, 7d, or Unix seconds`);
    return 2;
  }
  const expires = absolute ?? Math.floor((now() + duration!) / 1000);

  let input: Record<string, unknown>;
  try {
    input = collectOptionInput(values.config ? ['--config', values.config as string] : [], env);
  } catch (error) {
    err(`edge sign: ${(error as Error).message}`);
    return 2;
  }
  const key = (values.key as string | undefined) ?? (input.urlSigningKey as string | undefined);
  if (!key) {
    err('edge sign: no key: give --key, or set --url-signing-key (EDGE_URL_SIGNING_KEY) in the environment or a --config file');
    return 2;
  }
  const ignore = input.ignoreQueryParams;
  const ignoreQueryParams = Array.isArray(ignore) ? (ignore as string[]) : typeof ignore === 'string' ? ignore.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
  try {
    if (cookiePrefix !== undefined) {
      out(await signCookie({ p: cookiePrefix, e: expires, ...(values.ip ? { ip: values.ip as string } : {}) }, key, values['key-id'] as string | undefined));
    } else {
      out(await signUrl(positionals[0]!, { key, keyId: values['key-id'] as string | undefined, expires, ignoreQueryParams }));
    }
  } catch (error) {
    err(`edge sign: ${(error as Error).message}`);
    return 2;
  }
  return 0;
}
