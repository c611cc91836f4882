/**
 * Presigned-upload nonces shared by the workers of a cluster (issue 16): a
 * presigned URL allows one PUT on the whole node, whichever worker takes
 * it. The primary keeps the one `UsedNonces` set (bounded, each nonce kept
 * until its URL expires); a worker asks it to claim a nonce before the
 * upload and to release it when the upload stored nothing.
 *
 * Kept in the primary rather than in LMDB: claims are rare (one per
 * upload), the set is small, and the primary already answers every worker.
 * Like a single process, a restart forgets them.
 *
 * A claim the primary cannot answer is refused (503): letting it through
 * could admit the URL twice.
 */
import { UsedNonces, type UploadNonces } from '../core/access/presigned.js';
import { EdgeError } from '../core/errors.js';
import type { PrimaryBus, WorkerBus } from './cluster-bus.js';

type ClaimReply = 'claimed' | 'used' | 'full';

/** The primary's side: answer `nonce-claim` and `nonce-release` from one set. */
export function serveUploadNonces(bus: PrimaryBus, nonces = new UsedNonces()): UsedNonces {
  bus.handle('nonce-claim', (payload): ClaimReply => {
    const { nonce, expires, nowSeconds } = payload as { nonce: string; expires: number; nowSeconds: number };
    try {
      return nonces.claim(nonce, expires, nowSeconds) ? 'claimed' : 'used';
    } catch {
      return 'full';
    }
  });
  bus.handle('nonce-release', (payload) => {
    nonces.release((payload as { nonce: string }).nonce);
    return null;
  });
  return nonces;
}

const overloaded = (why: string) => new EdgeError('EDGE_OVERLOADED', `Presigned uploads cannot be checked now (${why}); try again later.`, { headers: { 'retry-after': '60' } });

/** A worker's side: the primary's set. */
export class ClusterUploadNonces implements UploadNonces {
  constructor(private readonly bus: WorkerBus) {}

  async claim(nonce: string, expires: number, nowSeconds: number): Promise<boolean> {
    let reply: ClaimReply;
    try {
      reply = await this.bus.request<ClaimReply>('nonce-claim', { nonce, expires, nowSeconds });
    } catch {
      throw overloaded('the cluster primary did not answer');
    }
    if (reply === 'full') throw overloaded('too many are in use on this node');
    return reply === 'claimed';
  }

  release(nonce: string): void {
    this.bus.request('nonce-release', { nonce }).catch(() => {});
  }
}
