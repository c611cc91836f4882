/**
 * Client addresses: the one the node acts on (the socket peer, or from a
 * trusted proxy the nearest untrusted X-Forwarded-For member), and CIDR
 * matching for deny rules. IPv4 and IPv6 (an IPv4-mapped IPv6 address
 * matches IPv4 ranges).
 */

/** The address as a 128-bit number (IPv4 mapped into ::ffff:0:0/96), or undefined. */
export function parseIp(text: string): bigint | undefined {
  let value = text.trim();
  if (value.startsWith('[') && value.endsWith(']')) value = value.slice(1, -1);
  const zone = value.indexOf('%');
  if (zone !== -1) value = value.slice(0, zone);
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(value);
  if (v4) {
    const parts = v4.slice(1).map(Number);
    if (parts.some((p) => p > 255)) return undefined;
    return 0xffff00000000n + BigInt(((parts[0]! << 24) >>> 0) + (parts[1]! << 16) + (parts[2]! << 8) + parts[3]!);
  }
  if (!value.includes(':')) return undefined;
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two groups.
  const tail = /(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/.exec(value);
  if (tail) {
    const n = parseIp(tail[1]!);
    if (n === undefined) return undefined;
    const low = Number(n & 0xffffffffn);
    value = value.slice(0, -tail[1]!.length) + `${(low >>> 16).toString(16)}:${(low & 0xffff).toString(16)}`;
  }
  const halves = value.split('::');
  if (halves.length > 2) return undefined;
  const head = halves[0] ? halves[0].split(':') : [];
  const rest = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  const missing = 8 - head.length - rest.length;
  if ((halves.length === 1 && missing !== 0) || missing < 0) return undefined;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...rest];
  let out = 0n;
  for (const group of groups) {
    if (!/^[0-9a-f]{1,4}$/i.test(group)) return undefined;
    out = (out << 16n) + BigInt(parseInt(group, 16));
  }
  return out;
}

/** A parsed `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128). */
export interface Cidr {
  base: bigint;
  mask: bigint;
}

const ALL = (1n << 128n) - 1n;

export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/');
  const address = slash === -1 ? text : text.slice(0, slash);
  const base = parseIp(address);
  if (base === undefined) return undefined;
  const isV4 = !address.includes(':');
  const max = isV4 ? 32 : 128;
  const bits = slash === -1 ? max : Number(text.slice(slash + 1));
  if (!Number.isInteger(bits) || bits < 0 || bits > max || (slash !== -1 && !/^\d{1,3}$/.test(text.slice(slash + 1)))) return undefined;
  const prefix = BigInt(isV4 ? 96 + bits : bits);
  const mask = prefix === 0n ? 0n : (ALL << (128n - prefix)) & ALL;
  return { base: base & mask, mask };
}

export function inCidr(ip: bigint, cidr: Cidr): boolean {
  return (ip & cidr.mask) === cidr.base;
}

/**
 * The client the node acts on. From a trusted peer, X-Forwarded-For is read
 * from the right: the first member that is not itself a trusted proxy (all
 * trusted: the leftmost). Otherwise the socket peer; forwarded fields from
 * anyone else are ignored (they are the client's to invent).
 */
export function effectiveClientIp(peer: string | undefined, trusted: ReadonlySet<string>, forwardedFor: string | undefined): string | undefined {
  if (peer === undefined || !trusted.has(peer) || forwardedFor === undefined) return peer;
  const members = forwardedFor.split(',').map((m) => m.trim()).filter(Boolean);
  for (let i = members.length - 1; i >= 0; i--) if (!trusted.has(members[i]!)) return members[i];
  return members[0] ?? peer;
}
