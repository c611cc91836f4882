/**
 * A route's `access` settings (config file, `origins.routes[].access`):
 * what a request matching the route must show before any cache or origin
 * work. Kept apart from `routes.ts` so the access modules own their rules;
 * this module imports nothing from `routes.ts`.
 */
import { z } from 'zod';
import { parseRateLimit, RATE_LIMIT_HINT } from './rate-limit.js';

export const rateLimitSchema = z.string().transform((value, ctx) => parseRateLimit(value) ?? (ctx.addIssue({ code: 'custom', message: RATE_LIMIT_HINT }), z.NEVER));

export const routeAccessSchema = z
  .object({
    /** Only signed URLs (or a signed cookie for the path) are served, as under `--signed-paths`. @default false */
    signed: z.boolean().default(false),
    /** An API key (`--api-key-header`, from `--api-keys-file`) is required; missing or unknown is 401. @default false */
    apiKey: z.boolean().default(false),
    /** Requests per window for each client (or API key) on this route, e.g. `20/1s`; replaces `--rate-limit`. `"off"` exempts the route. */
    rateLimit: z.union([z.literal('off'), rateLimitSchema]).optional(),
    /** Whether answers from the cache count against the limit. @default true */
    rateLimitHits: z.boolean().default(true),
  })
  .strict();

export type RouteAccess = z.output<typeof routeAccessSchema>;
