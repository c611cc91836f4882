/**
 * Deny rules (README "Access control"): method, path glob, header value or
 * client CIDR; 403 JSON before signatures, keys, limits, cache or origin.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { resolveEdgeOptions } from '../edge/core/options.js';
import { compileDenyRules } from '../edge/core/access/deny.js';
import { inCidr, parseCidr, parseIp } from '../edge/core/access/ip.js';
import { startTestEdge, type TestEdge } from './helpers/edge.js';

const edges: TestEdge[] = [];
afterEach(async () => {
  for (const edge of edges.splice(0)) await edge.close();
});

const RULES = [
  { method: 'TRACE' },
  { path: ['*.php', '/wp-admin*'] },
  { header: { name: 'User-Agent', value: '*BadBot*' } },
  { cidr: ['203.0.113.0/24', '2001:db8::/32'] },
  { method: 'POST', path: '/static/*' },
];

describe('deny rules', () => {
  it('answers 403 JSON before anything else, and lets other requests through', async () => {
    const edge = await startTestEdge({ deny: JSON.stringify(RULES), trustedProxies: '127.0.0.1', rateLimit: '1/1m', signedPaths: '/private/', urlSigningKey: 'signing-key-0123456789abcdef' });
    edges.push(edge);
    edge.origin.set('/static/a.css', { headers: { 'cache-control': 'max-age=600' }, body: 'a' });
    const denied = async (path: string, init: RequestInit = {}) => {
      const res = await edge.get(path, init);
      expect(res.status, `${init.method ?? 'GET'} ${path}`).toBe(403);
      expect((await res.json()).error).toBe('EDGE_FORBIDDEN');
    };
    await denied('/index.php');
    await denied('/wp-admin/setup');
    await denied('/static/a.css', { headers: { 'user-agent': 'Mozilla BadBot/1.0' } });
    await denied('/static/a.css', { headers: { 'x-forwarded-for': '203.0.113.50' } });
    await denied('/static/a.css', { headers: { 'x-forwarded-for': '2001:db8:1::7' } });
    await denied('/static/a.css', { method: 'POST', body: 'x' });
    // Deny before signatures: a protected path answers the deny rule, not the signature check.
    await denied('/private/x.php');
    expect(edge.origin.count()).toBe(0);
    // Refusals are not counted by the limiter (1/1m): this is the client's first counted request.
    const ok = await edge.get('/static/a.css', { headers: { 'x-forwarded-for': '198.51.100.1' } });
    expect(ok.status).toBe(200);
    // A cached object is refused too (the fast path checks).
    await edge.settle();
    await denied('/static/a.css', { headers: { 'x-forwarded-for': '203.0.113.9' } });
  });

  it('validates rules at start-up, naming the option', () => {
    expect(() => resolveEdgeOptions({ deny: '[{"cidr":"300.0.0.0/8"}]' })).toThrow(/--deny \(EDGE_DENY\).*CIDR/);
    expect(() => resolveEdgeOptions({ deny: '[{}]' })).toThrow(/--deny.*at least one/);
    expect(() => resolveEdgeOptions({ deny: 'nope' })).toThrow(/--deny.*JSON array/);
    expect(resolveEdgeOptions({ deny: [{ method: ['get'] }] }).deny).toEqual([{ method: ['GET'] }]);
  });

  it('matches CIDR ranges for IPv4, IPv6 and IPv4-mapped addresses', () => {
    const v4 = parseCidr('10.1.0.0/16')!;
    expect(inCidr(parseIp('10.1.200.3')!, v4)).toBe(true);
    expect(inCidr(parseIp('10.2.0.1')!, v4)).toBe(false);
    expect(inCidr(parseIp('::ffff:10.1.2.3')!, v4)).toBe(true);
    const v6 = parseCidr('2001:db8::/32')!;
    expect(inCidr(parseIp('2001:db8:ffff::1')!, v6)).toBe(true);
    expect(inCidr(parseIp('2001:db9::1')!, v6)).toBe(false);
    expect(parseCidr('10.0.0.0/33')).toBeUndefined();
    const match = compileDenyRules([{ cidr: ['0.0.0.0/0'] }])!;
    expect(match('GET', '/', {}, '192.0.2.1')).toBe(0);
    expect(match('GET', '/', {}, undefined)).toBeUndefined();
  });
});
