/**
 * The status page's files: its HTML, script and styles (kept as plain files
 * in `status-page/` beside this module, copied to `dist/` by `npm run
 * build`), and uPlot's script and styles read from the installed `uplot`
 * package (no CDN, no network). Each is read once, on first use.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { StatusAsset } from '../core/status-page.js';

const require = createRequire(import.meta.url);

const FILES: Record<string, { path: () => string; type: string }> = {
  'index.html': { path: () => fileURLToPath(new URL('./status-page/index.html', import.meta.url)), type: 'text/html; charset=utf-8' },
  'status.js': { path: () => fileURLToPath(new URL('./status-page/status.js', import.meta.url)), type: 'text/javascript; charset=utf-8' },
  'status.css': { path: () => fileURLToPath(new URL('./status-page/status.css', import.meta.url)), type: 'text/css; charset=utf-8' },
  'uplot.js': { path: () => require.resolve('uplot/dist/uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  'uplot.css': { path: () => require.resolve('uplot/dist/uPlot.min.css'), type: 'text/css; charset=utf-8' },
};

/** The page's files by name, each read on first use and then kept. */
export function createStatusAssets(): (name: string) => Promise<StatusAsset | undefined> {
  const loaded = new Map<string, Promise<StatusAsset>>();
  return (name) => {
    const file = Object.hasOwn(FILES, name) ? FILES[name] : undefined;
    if (!file) return Promise.resolve(undefined);
    let asset = loaded.get(name);
    if (!asset) {
      asset = readFile(file.path(), 'utf8').then((body) => ({ type: file.type, body }));
      // A failed read is tried again next time rather than kept.
      asset.catch(() => loaded.delete(name));
      loaded.set(name, asset);
    }
    return asset;
  };
}
