/**
 * Deny rules (`--deny`, a JSON array, or `deny` in the config file): each
 * rule names conditions (method, path pattern, header value, client CIDR);
 * a request meeting every condition of any rule is answered 403 before
 * anything else is looked at. Patterns are globs: `*` matches any run of
 * characters, `/` included (`/wp-admin*`, `*.php`).
 */
import { z } from 'zod';
import { inCidr, parseCidr, parseIp, type Cidr } from './ip.js';

const oneOrMany = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).transform((v) => (Array.isArray(v) ? v : [v]));

export const denyRuleSchema = z
  .object({
    /** Methods, e.g. `["TRACE", "DELETE"]`. */
    method: oneOrMany.transform((methods) => methods.map((m) => m.toUpperCase())).optional(),
    /** Path globs on the request path as sent (percent-encoded), e.g. `/admin*`, `*.php`. */
    path: oneOrMany.optional(),
    /** A request header whose value matches the glob, e.g. `{ "name": "user-agent", "value": "*BadBot*" }`. */
    header: z.object({ name: z.string().min(1).transform((h) => h.toLowerCase()), value: z.string() }).strict().optional(),
    /** Client address ranges, e.g. `["203.0.113.0/24", "2001:db8::/32"]` (the client as `--trusted-proxies` reads it). */
    cidr: oneOrMany
      .refine((ranges) => ranges.every((r) => parseCidr(r) !== undefined), { message: 'expected CIDR ranges such as 203.0.113.0/24 or 2001:db8::/32' })
      .optional(),
  })
  .strict()
  .refine((rule) => rule.method || rule.path || rule.header || rule.cidr, { message: 'a deny rule needs at least one of method, path, header, cidr' });

/** A JSON array of rules, as a string (flag, variable) or already parsed (config file). One transform, so each problem keeps its message. */
export const denyRulesSchema = z.union([z.string(), z.array(z.unknown())]).transform((input, ctx) => {
  let parsed: unknown = input;
  if (typeof input === 'string') {
    try {
      parsed = JSON.parse(input);
    } catch {
      parsed = undefined;
    }
    if (!Array.isArray(parsed)) {
      ctx.addIssue({ code: 'custom', message: 'expected a JSON array of rules, e.g. [{"path":"*.php"},{"cidr":"203.0.113.0/24"}]' });
      return z.NEVER;
    }
  }
  const result = z.array(denyRuleSchema).safeParse(parsed);
  if (!result.success) {
    for (const issue of result.error.issues) ctx.addIssue({ code: 'custom', message: `rule ${issue.path.join('.')}: ${issue.message}` });
    return z.NEVER;
  }
  return result.data;
});

export type DenyRule = z.output<typeof denyRuleSchema>;

/** A glob (`*` = any run) as an anchored regular expression. */
export function globToRegExp(glob: string): RegExp {
  return new RegExp('^' + glob.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$', 's');
}

interface CompiledRule {
  methods?: ReadonlySet<string>;
  paths?: RegExp[];
  header?: { name: string; value: RegExp };
  cidrs?: Cidr[];
}

export type DenyMatcher = (method: string, pathname: string, headers: Record<string, string>, clientIp: string | undefined) => number | undefined;

/** The index of the first rule the request meets, or undefined. */
export function compileDenyRules(rules: readonly DenyRule[]): DenyMatcher | undefined {
  if (rules.length === 0) return undefined;
  const compiled: CompiledRule[] = rules.map((rule) => ({
    ...(rule.method ? { methods: new Set(rule.method) } : {}),
    ...(rule.path ? { paths: rule.path.map(globToRegExp) } : {}),
    ...(rule.header ? { header: { name: rule.header.name, value: globToRegExp(rule.header.value) } } : {}),
    ...(rule.cidr ? { cidrs: rule.cidr.map((c) => parseCidr(c)!) } : {}),
  }));
  return (method, pathname, headers, clientIp) => {
    let ip: bigint | undefined | null = null;
    for (let i = 0; i < compiled.length; i++) {
      const rule = compiled[i]!;
      if (rule.methods && !rule.methods.has(method)) continue;
      if (rule.paths && !rule.paths.some((re) => re.test(pathname))) continue;
      if (rule.header) {
        const value = headers[rule.header.name];
        if (value === undefined || !rule.header.value.test(value)) continue;
      }
      if (rule.cidrs) {
        if (ip === null) ip = clientIp === undefined ? undefined : parseIp(clientIp);
        if (ip === undefined || !rule.cidrs.some((c) => inCidr(ip as bigint, c))) continue;
      }
      return i;
    }
    return undefined;
  };
}
