/**
 * Issue 15, the status page in a real browser (Debian's Chromium through
 * playwright-core): sign in with the admin token once, see the charts and
 * figures, make traffic and see the figures follow it, purge from the form
 * and check the object is really gone (the next request is a miss), look an
 * object up in the list, fit a phone's width, and all of it without a
 * console error or a failed request. `UPDATE_SCREENSHOT=1` writes the
 * README's screenshot (laptop-size viewport).
 */
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const TOKEN = 'browser-test-token-0123456789abcdef';
const CHROMIUM = '/usr/bin/chromium';
const SCREENSHOT = 'test/screenshots/status-page.png';

let t: TestEdge;
let userDataDir: string;
let context: BrowserContext;
let page: Page;
const consoleErrors: string[] = [];
const failedRequests: string[] = [];

beforeAll(async () => {
  t = await startTestEdge({ adminToken: TOKEN });
  userDataDir = await mkdtemp(join(tmpdir(), 'edge-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (message) => {
    if (message.type() === 'error' || message.type() === 'warning') consoleErrors.push(`${message.type()}: ${message.text()}`);
  });
  page.on('pageerror', (error) => consoleErrors.push(`pageerror: ${error.message}`));
  page.on('requestfailed', (request) => failedRequests.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`));
  page.on('response', (response) => {
    if (response.status() >= 400) failedRequests.push(`${response.request().method()} ${response.url()}: ${response.status()}`);
  });
}, 60_000);

afterAll(async () => {
  await context?.close();
  await t?.close();
  if (userDataDir) await rm(userDataDir, { recursive: true, force: true });
});

/** The text of an element, polled until `accept` holds (the page refreshes every second here). */
async function waitForText(selector: string, accept: (text: string) => boolean): Promise<string> {
  let last = '';
  await expect
    .poll(
      async () => {
        last = (await page.locator(selector).first().textContent()) ?? '';
        return accept(last);
      },
      { timeout: 20_000, interval: 100 },
    )
    .toBe(true);
  return last;
}

const figure = (id: string) => page.locator(`#${id}`).getAttribute('data-value');

describe('status page in Chromium', () => {
  it('signs in once, draws the charts and figures, follows traffic, purges from the form, lists objects, fits a phone', async () => {
    // Poll every second instead of every five, so the test waits less for each figure.
    await page.goto(`${t.edge.url}/_edge/?every=1`);
    await page.locator('#login').waitFor({ state: 'visible' });
    expect(await page.locator('#dashboard').isHidden()).toBe(true);

    await page.locator('#token').fill(TOKEN);
    await page.locator('#login-form button[type=submit]').click();
    await page.locator('#dashboard').waitFor({ state: 'visible' });
    // The session cookie: HttpOnly, SameSite=Strict, for /_edge/ only; the token itself is not kept.
    const cookies = await context.cookies(`${t.edge.url}/_edge/`);
    expect(cookies).toHaveLength(1);
    expect(cookies[0]).toMatchObject({ name: 'edge_admin_session', httpOnly: true, sameSite: 'Strict', path: '/_edge/' });
    expect(cookies[0]!.value).not.toContain(TOKEN);
    expect(await page.evaluate(() => document.cookie)).toBe('');

    // Charts (uPlot draws on canvas) and figures, before any traffic.
    await expect.poll(() => figure('fig-requests'), { timeout: 20_000 }).toBe('0');
    expect(await page.locator('#chart-requests canvas').count()).toBeGreaterThan(0);
    expect(await page.locator('#chart-bytes canvas').count()).toBeGreaterThan(0);
    expect(await page.locator('#tiers .tier').count()).toBe(2);

    // Traffic over 10 minutes of the node's clock, one step per 5 s point: a stylesheet missed once and
    // then hit, a script every fourth step, an API answer that is never stored (a miss each time).
    const css = 'body { color: #123; }\n'.repeat(200);
    const js = 'console.log(1);\n'.repeat(100);
    const api = '{"now":1}';
    t.origin.set('/assets/site.css', { headers: { 'cache-control': 'max-age=86400', 'content-type': 'text/css' }, body: css });
    t.origin.set('/assets/app.js', { headers: { 'cache-control': 'max-age=86400', 'content-type': 'text/javascript' }, body: js });
    t.origin.set('/api/now', { headers: { 'cache-control': 'no-store' }, body: api });
    // Identity, so bytes served are the origin's bytes (no compression on the way out).
    const identity = { headers: { 'accept-encoding': 'identity' } };
    const made = { requests: 0, hits: 0, misses: 0, served: 0, fetched: 0, css: 0 };
    const request = async (path: string, body: string) => {
      await (await t.get(path, identity)).text();
      made.requests++;
      made.served += body.length;
      if (path === '/assets/site.css') made.css++;
    };
    let jsSeen = false;
    for (let step = 0; step < 120; step++) {
      // 0 to 4 requests a step, rising and falling (a wave makes a readable chart for the README).
      for (let n = 0; n < 2 + Math.round(2 * Math.sin(step / 6)); n++) {
        const first = made.css === 0;
        await request('/assets/site.css', css);
        if (first) (made.misses++, (made.fetched += css.length));
        else made.hits++;
      }
      if (step % 4 === 0) {
        await request('/assets/app.js', js);
        if (!jsSeen) (made.misses++, (made.fetched += js.length), (jsSeen = true));
        else made.hits++;
      }
      if (step % 10 === 0) {
        await request('/api/now', api);
        made.misses++;
        made.fetched += api.length;
      }
      t.clock.advance(5000);
    }
    await t.settle();

    await expect.poll(() => figure('fig-requests'), { timeout: 20_000 }).toBe(String(made.requests));
    await expect.poll(async () => Number(await figure('fig-hit')).toFixed(6), { timeout: 20_000 }).toBe((made.hits / (made.hits + made.misses)).toFixed(6));
    expect(Number(await figure('fig-offload')).toFixed(6)).toBe((1 - made.fetched / made.served).toFixed(6));
    await waitForText('#top-requests tr:first-child td.url', (text) => text === '/assets/site.css');
    await waitForText('#top-requests tr:first-child td.num', (text) => text === String(made.css));
    await waitForText('#top-misses tr:first-child td.url', (text) => text === '/api/now');
    await waitForText('#tiers [data-tier=memory] .head', (text) => text.includes('2 entries'));

    // The object list finds the stylesheet by prefix.
    await page.locator('#objects-prefix').fill('/assets/');
    await page.locator('#objects-form button[type=submit]').click();
    await waitForText('#objects', (text) => text.includes('/assets/site.css'));

    if (process.env.UPDATE_SCREENSHOT === '1') {
      await mkdir('test/screenshots', { recursive: true });
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: SCREENSHOT });
    }

    // Purge from the form.
    await page.locator('#purge-kind').selectOption('urls');
    await page.locator('#purge-targets').fill('/assets/site.css');
    await page.locator('#purge-form button[type=submit]').click();
    await waitForText('#purge-result', (text) => text === 'Purged 1 entry.');
    await waitForText('#purges', (text) => text.includes('purge of urls /assets/site.css, 1 entries'));
    await waitForText('#objects', (text) => !text.includes('/assets/site.css') && text.includes('/assets/app.js'));
    // Really purged: the next request goes to the origin.
    const after = await t.get('/assets/site.css');
    expect(after.headers.get('cache-status')).toMatch(/fwd=uri-miss/);
    await after.text();
    expect(t.origin.count('/assets/site.css')).toBe(2);
    await expect.poll(() => figure('fig-requests'), { timeout: 20_000 }).toBe(String(made.requests + 1));

    // A reload keeps the session: no second sign-in.
    await page.reload();
    await page.locator('#dashboard').waitFor({ state: 'visible' });
    expect(await page.locator('#login').isHidden()).toBe(true);

    // A phone's width: one column, nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await expect
      .poll(() => page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), { timeout: 10_000 })
      .toBe(true);

    // Signing out drops the cookie; the page asks for the token again.
    await page.locator('#logout').click();
    await page.locator('#login').waitFor({ state: 'visible' });
    expect(await context.cookies(`${t.edge.url}/_edge/`)).toEqual([]);

    expect(consoleErrors).toEqual([]);
    expect(failedRequests).toEqual([]);
  }, 120_000);
});
