/**
 * Cloudflare's zone purge API (`POST /zones/{zone_id}/purge_cache`), the
 * global half of a purge on Workers: it reaches every Cloudflare location,
 * where `cache.delete()` reaches only the one running the Worker.
 *
 * One request takes one kind of selector (`files`, `tags`, `prefixes`,
 * `hosts` or `purge_everything`) and at most 100 items (the API's "max
 * operations per request" on every plan), so larger purges are split.
 * Requests are counted against the account's purge rate limit (Free: 5 a
 * minute, bursts of 25; Pro 5/s; Business 10/s; Enterprise 50/s), and each
 * is one subrequest of the Worker.
 */

/** One request body of the purge API. */
export type ZonePurgePayload =
  | { files: string[] }
  | { tags: string[] }
  | { prefixes: string[] }
  | { hosts: string[] }
  | { purge_everything: true };

/** Options for {@link ZonePurgeClient}. */
export interface ZonePurgeClientOptions {
  /** The zone the Worker's routes are on (`CLOUDFLARE_ZONE_ID`). */
  zoneId: string;
  /** An API token with the Cache Purge permission on the zone (`CLOUDFLARE_API_TOKEN`, a secret). */
  token: string;
  /** @default 'https://api.cloudflare.com/client/v4' (`CLOUDFLARE_API_BASE`; tests point it at a local server) */
  baseUrl?: string;
  /** @default 10000 */
  timeoutMs?: number;
  /** @default globalThis.fetch */
  fetch?: (input: string, init: RequestInit) => Promise<Response>;
}

/** What the API said to one request. */
export interface ZonePurgeResult {
  status: number;
  /** The purge's id (`result.id`), when it succeeded. */
  id?: string;
  errors?: { code?: number; message?: string }[];
}

/** The API's item limit per request. */
export const MAX_ZONE_PURGE_ITEMS = 100;

export class ZonePurgeClient {
  readonly #zoneId: string;
  readonly #token: string;
  readonly #base: string;
  readonly #timeoutMs: number;
  readonly #fetch: (input: string, init: RequestInit) => Promise<Response>;

  constructor(options: ZonePurgeClientOptions) {
    if (!/^[A-Za-z0-9]{1,64}$/.test(options.zoneId ?? '')) throw new TypeError(`ZonePurgeClient: zoneId must be the zone's id (32 hex digits), got ${JSON.stringify(options.zoneId)}`);
    if (!options.token) throw new TypeError('ZonePurgeClient: token is required');
    this.#zoneId = options.zoneId;
    this.#token = options.token;
    this.#base = (options.baseUrl ?? 'https://api.cloudflare.com/client/v4').replace(/\/+$/, '');
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#fetch = options.fetch ?? ((input, init) => fetch(input, init));
  }

  /** Sends each payload in turn (the rate limit is per account; bursts gain nothing); never throws. */
  async purge(payloads: ZonePurgePayload[]): Promise<ZonePurgeResult[]> {
    const results: ZonePurgeResult[] = [];
    for (const payload of payloads) results.push(await this.#send(payload));
    return results;
  }

  async #send(payload: ZonePurgePayload): Promise<ZonePurgeResult> {
    try {
      const response = await this.#fetch(`${this.#base}/zones/${this.#zoneId}/purge_cache`, {
        method: 'POST',
        headers: { authorization: `Bearer ${this.#token}`, 'content-type': 'application/json' },
        body: JSON.stringify(payload),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
      const answer = (await response.json().catch(() => ({}))) as { success?: boolean; result?: { id?: string }; errors?: { code?: number; message?: string }[] };
      const result: ZonePurgeResult = { status: response.status };
      if (answer.result?.id) result.id = answer.result.id;
      if (!response.ok || answer.success === false) result.errors = answer.errors?.length ? answer.errors : [{ message: `HTTP ${response.status}` }];
      return result;
    } catch (error) {
      return { status: 502, errors: [{ message: `the purge API could not be reached: ${(error as Error)?.message ?? String(error)}` }] };
    }
  }
}

/** Split a list selector into requests of at most {@link MAX_ZONE_PURGE_ITEMS} items. */
export function chunked(kind: 'files' | 'tags' | 'prefixes' | 'hosts', items: string[]): ZonePurgePayload[] {
  const unique = [...new Set(items)];
  const out: ZonePurgePayload[] = [];
  for (let i = 0; i < unique.length; i += MAX_ZONE_PURGE_ITEMS) out.push({ [kind]: unique.slice(i, i + MAX_ZONE_PURGE_ITEMS) } as ZonePurgePayload);
  return out;
}
