// Which disk an upstream serves, checked the same way wherever a proxy takes an upstream on:
// at open over an existing cache (a restart: against the bitmap's header), on every
// reconnect, and on a re-point to another replica. A disk is its size, the bitmap's block
// size and an identity: by default a content fingerprint of the upstream taken when the
// cache was created, or a name the caller gives (ProxyOptions.identity). A given name cannot
// be checked against the upstream's content: then only the size is (the caller vouches for
// the rest), at a restart as on a reconnect.
import { createHash } from "node:crypto";

export interface DiskIdentity {
  size: number;
  blockSize: number;
  identity: string;
}

export type ReadFn = (offset: number, length: number) => Promise<Buffer>;

/** The upstream holds another disk than the one the proxy serves. */
export class UpstreamIdentityError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UpstreamIdentityError";
  }
}

/** A content fingerprint (as opposed to a name the caller gave), of either scheme below. */
export function isFingerprint(identity: string): boolean {
  return identity.startsWith(SAMPLED) || identity.startsWith(BLOCKS);
}

/** Bytes read at each end of the disk for a fingerprint. */
export const FINGERPRINT_SAMPLE = 4096;
/** The fingerprint taken now: the disk's size and 4 KiB at each end. */
const SAMPLED = "sha256s:";
/** The first scheme, still checked for caches created with it: whole blocks at each end. */
const BLOCKS = "sha256:";

/**
 * Identifies an upstream disk by content: SHA-256 over its size and 4 KiB at each end, where
 * the identifying structures are (partition table and GPT header with the disk's GUID, a file
 * system's superblock at 1 KiB, the backup GPT header in the last sector). A restart,
 * reconnect or re-point against a different disk then fails instead of mixing disks. Both
 * reads are asked at once, and both fit a fresh TCP connection's first window: one round trip
 * on a WAN (whole 64 KiB blocks took four, in slow start, on the proxy's critical path).
 */
export function fingerprint(read: ReadFn, size: number): Promise<string> {
  return digest(SAMPLED, read, size, FINGERPRINT_SAMPLE);
}

async function digest(scheme: string, read: ReadFn, size: number, sample: number): Promise<string> {
  const first = Math.min(sample, size);
  const lastAt = Math.max(0, size - sample);
  const [head, tail] = await Promise.all([
    first > 0 ? read(0, first) : undefined,
    lastAt > 0 ? read(lastAt, size - lastAt) : undefined,
  ]);
  const h = createHash("sha256");
  h.update(String(size));
  if (head) h.update(head);
  if (tail) h.update(tail);
  return `${scheme}${h.digest("hex").slice(0, 32)}`;
}

/**
 * The identity of the disk `read` reaches, as `expect` (the disk the proxy serves) names
 * disks: its fingerprint when `expect` is a fingerprint, else the caller's name (which
 * cannot be derived from the upstream, so it is taken as given).
 */
export async function identityOf(
  read: ReadFn,
  size: number,
  blockSize: number,
  expectIdentity: string,
): Promise<string> {
  if (expectIdentity.startsWith(SAMPLED)) return fingerprint(read, size);
  if (expectIdentity.startsWith(BLOCKS)) return digest(BLOCKS, read, size, blockSize);
  return expectIdentity;
}

export interface Mismatch {
  field: keyof DiskIdentity;
  /** What the disk the proxy serves has. */
  want: string | number;
  /** What was found. */
  got: string | number;
}

/** The first way `got` differs from the disk `want` (size, block size, identity), or undefined. */
export function mismatch(want: Partial<DiskIdentity>, got: DiskIdentity): Mismatch | undefined {
  for (const field of ["size", "blockSize", "identity"] as const) {
    const w = want[field];
    if (w !== undefined && w !== got[field]) return { field, want: w, got: got[field] };
  }
  return undefined;
}

/**
 * Refuses (UpstreamIdentityError) an upstream at `url` that does not serve the disk `want`:
 * another size, or another fingerprint. The check of a restart (bitmap header against the
 * upstream), made on a live connection.
 */
export async function checkUpstream(
  url: string,
  up: { size: number; read: ReadFn },
  want: DiskIdentity,
): Promise<void> {
  if (up.size !== want.size)
    throw new UpstreamIdentityError(
      `refusing upstream ${url}: its size ${up.size} differs from the disk's ${want.size}`,
    );
  const identity = await identityOf(up.read, up.size, want.blockSize, want.identity);
  const m = mismatch(want, { size: up.size, blockSize: want.blockSize, identity });
  if (m)
    throw new UpstreamIdentityError(
      `refusing upstream ${url}: it holds a different disk (fingerprint ${m.got}, expected ${m.want})`,
    );
}
