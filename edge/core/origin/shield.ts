/**
 * The edge's way to its origin shields: each cache key goes to one shield,
 * chosen by rendezvous (highest-random-weight) hashing, so every object
 * lives on one shield and the origin sees one fetch per object however
 * many edges miss at once. A shield that fails (connection errors, or its
 * health check) is skipped and its keys move to the next-highest shield,
 * or to the origin itself when no shield is healthy. Adding or removing a
 * shield only moves the keys that belong to it.
 */
import { EdgeError, isEdgeError } from '../errors.js';
import type { OriginClient, OriginRequest } from './types.js';

export interface ShieldOriginOptions {
  /** One client per shield, in a stable order (the shield's URL is its identity). */
  shields: OriginClient[];
  /** Where requests go when no shield is healthy. */
  origin: OriginClient;
  /** Health-check interval, ms; 0 disables active checks. @default 5000 */
  healthInterval?: number;
  /** Consecutive failures that mark a shield down. @default 1 */
  unhealthyThreshold?: number;
}

interface ShieldState {
  client: OriginClient;
  healthy: boolean;
  failures: number;
  lastError?: string;
  requests: number;
}

/** FNV-1a 32-bit: stable, fast, evenly spread; not a security boundary. */
function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  // Final avalanche (murmur3 fmix32) so similar keys do not get similar weights.
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

/** Shields in rendezvous order for a key: highest weight first. */
export function rendezvousOrder<T>(items: readonly T[], key: string, labelOf: (item: T) => string): T[] {
  return items
    .map((item) => ({ item, weight: fnv1a(`${labelOf(item)}\u0000${key}`) }))
    .sort((a, b) => b.weight - a.weight)
    .map((weighted) => weighted.item);
}

export class ShieldOriginClient implements OriginClient {
  readonly label: string;
  private readonly shields: ShieldState[];
  private readonly origin: OriginClient;
  private readonly unhealthyThreshold: number;
  private timer?: ReturnType<typeof setInterval>;

  constructor(options: ShieldOriginOptions) {
    if (options.shields.length === 0) throw new TypeError('ShieldOriginClient: shields must name at least one shield');
    this.shields = options.shields.map((client) => ({ client, healthy: true, failures: 0, requests: 0 }));
    this.origin = options.origin;
    this.unhealthyThreshold = options.unhealthyThreshold ?? 1;
    this.label = `shields(${this.shields.map((s) => s.client.label).join(', ')}) -> ${options.origin.label}`;
    const interval = options.healthInterval ?? 5000;
    if (interval > 0) {
      this.timer = setInterval(() => void this.checkHealth(), interval);
      (this.timer as { unref?: () => void }).unref?.();
    }
  }

  /** The shield a key belongs to right now (for tests and diagnostics). */
  shieldFor(key: string): string | undefined {
    const healthy = this.shields.filter((s) => s.healthy);
    return rendezvousOrder(healthy, key, (s) => s.client.label)[0]?.client.label;
  }

  async fetch(request: OriginRequest): Promise<Response> {
    const key = request.cacheKey ?? request.pathAndQuery;
    const order = rendezvousOrder(
      this.shields.filter((s) => s.healthy),
      key,
      (s) => s.client.label,
    );
    // Only requests without a body can be replayed on the next shield.
    const replayable = !request.body;
    for (const shield of order) {
      try {
        shield.requests++;
        const response = await shield.client.fetch(request);
        shield.failures = 0;
        return response;
      } catch (error) {
        if (!isEdgeError(error) || error.code !== 'EDGE_ORIGIN_UNREACHABLE') throw error;
        this.recordFailure(shield, error);
        if (!replayable) throw error;
      }
    }
    return this.origin.fetch(request);
  }

  private recordFailure(shield: ShieldState, error: unknown): void {
    shield.failures++;
    shield.lastError = error instanceof Error ? error.message : String(error);
    if (shield.failures >= this.unhealthyThreshold) shield.healthy = false;
  }

  /** Ask each shield's `/_edge/health`; a shield comes back after one good answer. */
  async checkHealth(): Promise<void> {
    await Promise.all(
      this.shields.map(async (shield) => {
        try {
          const response = await shield.client.fetch({ method: 'GET', pathAndQuery: '/_edge/health', headers: new Headers() });
          await response.body?.cancel();
          if (response.status === 200) {
            shield.healthy = true;
            shield.failures = 0;
          } else {
            this.recordFailure(shield, new EdgeError('EDGE_ORIGIN_BAD_RESPONSE', `health check answered ${response.status}`));
          }
        } catch (error) {
          this.recordFailure(shield, error);
        }
      }),
    );
  }

  status() {
    return this.shields.map((shield) => ({
      shield: shield.client.label,
      healthy: shield.healthy,
      consecutiveFailures: shield.failures,
      lastError: shield.lastError,
      requests: shield.requests,
    }));
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await Promise.all([...this.shields.map((s) => s.client.close?.()), this.origin.close?.()]);
  }
}
