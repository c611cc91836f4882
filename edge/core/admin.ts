/**
 * The admin API under /_edge/: push, delete, purge, list. Off unless an
 * admin token is configured.
 */
import type { Hono } from 'hono';
import type { ContentHasher } from './app.js';
import { EdgeError } from './errors.js';
import type { EdgeOptions } from './options.js';
import type { PolicyFactory } from './policy.js';
import type { PullCache } from './pull.js';
import type { CacheStore } from './store/types.js';

export interface AdminDeps {
  options: EdgeOptions;
  store: CacheStore;
  pull: PullCache;
  policies: PolicyFactory;
  now: () => number;
  createHasher?: () => ContentHasher;
  waitUntil: (promise: Promise<unknown>) => void;
}

export function mountAdminApi(app: Hono, deps: AdminDeps): void {
  const disabled = () => {
    throw new EdgeError('EDGE_ADMIN_DISABLED', 'The admin API is disabled: start the node with --admin-token (EDGE_ADMIN_TOKEN) to enable it.');
  };
  if (!deps.options.adminToken) {
    app.all('/_edge/push/*', disabled);
    app.all('/_edge/purge', disabled);
    app.all('/_edge/objects', disabled);
  }
}
