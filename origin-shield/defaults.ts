/**
 * What makes a node a shield: the same options as an edge, other defaults.
 * A larger disk tier, longer collapsing (one origin fetch serves every
 * edge), no image transforms (edges transform; the shield keeps
 * originals), and its own name in Cache-Status and Via.
 */
export const SHIELD_DEFAULTS = {
  name: 'shield',
  port: 8090,
  dataDir: './.shield-data',
  diskSize: '20GB',
  memorySize: '512MB',
  images: false,
  collapseTimeout: '30s',
  // Edges behind the shield obey CDN-Cache-Control and need the tags for their own purges.
  forwardCdnHeaders: true,
  // Edges on this machine may pass the client's X-Forwarded-*; list your edges' addresses.
  trustedProxies: '127.0.0.1,::1',
};
