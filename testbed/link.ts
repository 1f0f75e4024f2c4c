// One direction of an emulated WAN link: a FIFO bottleneck that serialises bytes at a set
// rate, then a fixed propagation delay. All connections of a relay share it, as they
// would share a real link. Time is passed in (ms, performance.now()) so it is pure.
export interface LinkParams {
  /** One-way propagation delay, ms. */
  delayMs: number;
  /** Bottleneck rate in bits per second; 0 or Infinity = unlimited. */
  rateBitsPerSecond?: number;
}

export class Link {
  readonly delayMs: number;
  readonly bytesPerMs: number;
  /** When the bottleneck finishes sending what is already queued. */
  private freeAt = 0;

  constructor(p: LinkParams) {
    checkLinkParams(p);
    this.delayMs = p.delayMs;
    const rate = p.rateBitsPerSecond ?? 0;
    this.bytesPerMs = rate > 0 && Number.isFinite(rate) ? rate / 8 / 1000 : Number.POSITIVE_INFINITY;
  }

  /** Time at which `bytes` handed to the link at `now` have fully arrived at the far end. */
  schedule(bytes: number, now: number): number {
    const start = Math.max(now, this.freeAt);
    this.freeAt = start + bytes / this.bytesPerMs;
    return this.freeAt + this.delayMs;
  }

  /** Bytes the link holds in flight at full rate: what a sender needs buffered to fill it. */
  bandwidthDelayBytes(): number {
    return Number.isFinite(this.bytesPerMs)
      ? Math.ceil(this.bytesPerMs * this.delayMs)
      : Number.POSITIVE_INFINITY;
  }
}

export function checkLinkParams(p: LinkParams): void {
  if (!Number.isFinite(p.delayMs) || p.delayMs < 0)
    throw new Error(`delay must be a number of ms >= 0, got ${p.delayMs}`);
  const r = p.rateBitsPerSecond;
  if (r !== undefined && (Number.isNaN(r) || r < 0))
    throw new Error(`rate must be a number of bits/s >= 0 (0 = unlimited), got ${r}`);
}
