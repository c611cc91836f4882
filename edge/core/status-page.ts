/**
 * The status page (`GET /_edge/`) and its data (`GET /_edge/stats`), behind
 * the admin token like the rest of the admin API (off without one).
 *
 * | route                     | does                                                          |
 * | ------------------------- | ------------------------------------------------------------- |
 * | `GET /_edge/`             | the page (HTML, strict Content-Security-Policy, no inline script) |
 * | `GET /_edge/assets/<file>`| its script and styles, and uPlot's, from the installed package |
 * | `POST /_edge/login`       | `{"token"}` → session cookie and `{"csrf","expiresAt"}`       |
 * | `GET /_edge/session`      | `{"signedIn":true,"csrf","expiresAt"}`, or `{"signedIn":false}` |
 * | `POST /_edge/logout`      | clears the cookie                                             |
 * | `GET /_edge/stats`        | the figures (JSON; bearer token or session cookie)            |
 *
 * The page shell and its files hold no figures, so they are served without
 * a credential; everything they show comes from authenticated calls.
 * Sessions and CSRF: `admin-session.ts`. The files and the figures come from
 * the runtime (`StatusPageSource`); Workers has none, so there the routes
 * answer 404.
 */
import type { Context, Hono } from 'hono';
import type { AdminAuth } from './admin-session.js';
import { CSRF_HEADER } from './admin-session.js';
import { EdgeError } from './errors.js';

/** One file of the page. */
export interface StatusAsset {
  /** Content-Type. */
  type: string;
  body: string;
}

/** What the runtime supplies for the page (Node: `edge/node/status-assets.ts` and the stats recorder). */
export interface StatusPageSource {
  /** The figures for `GET /_edge/stats` (Node, cluster mode: every worker's, summed by the primary). */
  stats(): Promise<unknown> | unknown;
  /** A file of the page by name (`index.html`, `status.js`, `status.css`, `uplot.js`, `uplot.css`), or undefined. */
  asset(name: string): Promise<StatusAsset | undefined> | StatusAsset | undefined;
}

/**
 * The page's Content-Security-Policy: scripts and styles from the node only
 * (no inline script or style element), data from the node only, no framing.
 * uPlot sizes its canvas through the CSSOM, which `style-src` does not govern.
 */
export const STATUS_PAGE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const ROUTES = ['/_edge', '/_edge/', '/_edge/assets/*', '/_edge/login', '/_edge/logout', '/_edge/session', '/_edge/stats'];

/** Login bodies are one short JSON object. */
const MAX_LOGIN_BODY = 4096;

export function mountStatusPage(app: Hono, deps: { auth: AdminAuth | undefined; source: StatusPageSource | undefined }): void {
  const { auth, source } = deps;
  if (!auth) {
    const disabled = () => {
      throw new EdgeError('EDGE_ADMIN_DISABLED', 'The admin API is disabled: start the node with --admin-token (EDGE_ADMIN_TOKEN) to enable it.');
    };
    for (const route of ROUTES) app.all(route, disabled);
    return;
  }
  if (!source) {
    const absent = () => {
      throw new EdgeError('EDGE_NOT_FOUND', 'The status page and /_edge/stats are served by the Node runtime only.');
    };
    for (const route of ROUTES) app.all(route, absent);
    return;
  }

  const secure = (c: Context) => new URL(c.req.url).protocol === 'https:';
  const noStore = { 'cache-control': 'no-store' };

  app.get('/_edge', (c) => c.redirect('/_edge/', 308));
  app.get('/_edge/', async (c) => {
    const page = (await source.asset('index.html'))!;
    return c.body(page.body, 200, {
      'content-type': page.type,
      'content-security-policy': STATUS_PAGE_CSP,
      'x-content-type-options': 'nosniff',
      'x-frame-options': 'DENY',
      'referrer-policy': 'no-referrer',
      ...noStore,
    });
  });
  app.get('/_edge/assets/:name', async (c) => {
    const asset = await source.asset(c.req.param('name'));
    if (!asset || c.req.param('name') === 'index.html') throw new EdgeError('EDGE_NOT_FOUND', 'No such file of the status page.');
    // Revalidated on each load: a new version of the node brings new files at the same names.
    return c.body(asset.body, 200, { 'content-type': asset.type, 'x-content-type-options': 'nosniff', 'cache-control': 'no-cache' });
  });

  app.post('/_edge/login', async (c) => {
    const type = c.req.header('content-type')?.split(';')[0]!.trim().toLowerCase();
    // JSON only: a cross-site HTML form cannot send it, so no one can sign a browser in to a session of theirs.
    if (type !== 'application/json') throw new EdgeError('EDGE_UNSUPPORTED_MEDIA_TYPE', 'POST /_edge/login takes application/json: {"token": "<admin token>"}.');
    const text = await readLimited(c.req.raw.body, MAX_LOGIN_BODY);
    let token: unknown;
    try {
      token = (JSON.parse(text) as { token?: unknown } | null)?.token;
    } catch {
      token = undefined;
    }
    if (typeof token !== 'string' || token === '') throw new EdgeError('EDGE_BAD_REQUEST', 'POST /_edge/login takes {"token": "<admin token>"}.');
    const { setCookie, csrf, expiresAt } = await auth.login(token, secure(c));
    return c.json({ csrf, expiresAt }, 200, { 'set-cookie': setCookie, ...noStore });
  });
  app.post('/_edge/logout', (c) => c.body(null, 204, { 'set-cookie': auth.logoutCookie(secure(c)), ...noStore }));
  app.get('/_edge/session', async (c) => {
    // 200 either way: the page asks on every load, and a 401 would show as an error in the browser's console.
    const session = await auth.session(c.req.header('cookie'));
    return c.json(session ? { signedIn: true, ...session } : { signedIn: false }, 200, noStore);
  });
  app.get('/_edge/stats', async (c) => {
    await auth.check(credentials(c), 'GET /_edge/stats');
    return c.json(await source.stats(), 200, noStore);
  });

  const notAllowed = (allow: string) => () => {
    throw new EdgeError('EDGE_METHOD_NOT_ALLOWED', `Use ${allow} here.`, { headers: { allow } });
  };
  app.all('/_edge/', notAllowed('GET'));
  app.all('/_edge/assets/*', notAllowed('GET'));
  app.all('/_edge/login', notAllowed('POST'));
  app.all('/_edge/logout', notAllowed('POST'));
  app.all('/_edge/session', notAllowed('GET'));
  app.all('/_edge/stats', notAllowed('GET'));
}

/** The request's credentials for `AdminAuth.check`. */
export function credentials(c: Context): { method: string; authorization?: string; cookie?: string; csrf?: string } {
  return { method: c.req.method, authorization: c.req.header('authorization'), cookie: c.req.header('cookie'), csrf: c.req.header(CSRF_HEADER) };
}

async function readLimited(body: ReadableStream<Uint8Array> | null, limit: number): Promise<string> {
  if (!body) return '';
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let text = '';
  let size = 0;
  for (;;) {
    let result: ReadableStreamReadResult<Uint8Array>;
    try {
      result = await reader.read();
    } catch (error) {
      throw new EdgeError('EDGE_BAD_REQUEST', 'The request body was interrupted.', { cause: error });
    }
    if (result.done) return text + decoder.decode();
    size += result.value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      throw new EdgeError('EDGE_PAYLOAD_TOO_LARGE', `The request body is larger than ${limit} bytes.`);
    }
    text += decoder.decode(result.value, { stream: true });
  }
}
