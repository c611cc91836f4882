/**
 * API keys: a JSON file (`--api-keys-file`) of named keys, each with
 * optional limits. The runtime reads the file (Node re-reads it when it
 * changes, see `edge/node/api-keys-file.ts`) and hands the list to the core
 * through `EdgeAppDeps.apiKeys()`.
 *
 * @example
 * { "keys": [ { "name": "partner-a", "key": "3f5c...", "rateLimit": "1000/1m" } ] }
 */
import { z } from 'zod';
import { parseRateLimit, RATE_LIMIT_HINT, type RateLimit } from './rate-limit.js';

export const apiKeySchema = z
  .object({
    /** Who the key belongs to: the rate-limit partition and the log name. */
    name: z.string().regex(/^[A-Za-z0-9._@-]{1,64}$/, 'must be a token of 1-64 letters, digits, . _ @ -'),
    /** The secret the client sends; at least 16 characters. */
    key: z.string().min(16, 'must be at least 16 characters').regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces'),
    /** This key's own limit, instead of the route's or `--rate-limit`. */
    rateLimit: z
      .string()
      .transform((value, ctx) => parseRateLimit(value) ?? (ctx.addIssue({ code: 'custom', message: RATE_LIMIT_HINT }), z.NEVER))
      .optional(),
  })
  .strict();

/** `{ "keys": [...] }`, or the bare array. */
export const apiKeysFileSchema = z.object({ keys: z.array(apiKeySchema) }).strict();

export interface ApiKey {
  name: string;
  key: string;
  rateLimit?: RateLimit;
}

/** Parse the file's text; throws an Error whose message lists the problems. */
export function parseApiKeys(text: string): ApiKey[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new Error(`not JSON: ${(error as Error).message}`);
  }
  const result = apiKeysFileSchema.safeParse(Array.isArray(json) ? { keys: json } : json);
  if (!result.success) throw new Error(result.error.issues.map((issue) => `${issue.path.join('.') || 'file'}: ${issue.message}`).join('; '));
  const seen = new Set<string>();
  for (const key of result.data.keys) {
    if (seen.has(key.key)) throw new Error(`key of "${key.name}" is listed twice`);
    seen.add(key.key);
  }
  return result.data.keys;
}
