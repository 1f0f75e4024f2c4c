// Which blocks the upstream says read as zeroes (base:allocation NBD_STATE_ZERO), so the
// proxy never fetches them: they become local holes. Learned from the start of the disk,
// one block-status reply at a time, in the background; until a range is learned its blocks
// are fetched as usual, so the map only ever saves work. Only whole blocks inside a zero
// extent count (a block half zero must still be fetched).
import type { Extent } from "../export/backend.js";
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from "../nbd/protocol/constants.js";
import { BlockBitmap } from "./block-bitmap.js";

/** Block status of [offset, offset+length), or undefined when the upstream cannot say. */
export type StatusSource = (offset: number, length: number) => Promise<Extent[] | undefined>;

/** Largest range asked about at once (servers may answer for less). */
const ASK_BYTES = 1 << 30;

export class ZeroMap {
  private readonly zero: BlockBitmap;
  /** Bytes from 0 whose status is known. */
  learnedTo = 0;

  constructor(
    readonly size: number,
    readonly blockSize: number,
  ) {
    this.zero = new BlockBitmap(Math.ceil(size / blockSize));
  }

  has(block: number): boolean {
    return this.zero.has(block);
  }

  get zeroBlocks(): number {
    return this.zero.local;
  }

  /**
   * Records the extents of a reply for [offset, …): pure bookkeeping. Returns the end of
   * what they covered (the next offset to ask about).
   */
  record(offset: number, extents: Extent[]): number {
    const bs = this.blockSize;
    let at = offset;
    for (const e of extents) {
      if (e.length <= 0) break;
      const end = Math.min(this.size, at + e.length);
      if (e.flags & NBD_STATE_ZERO) {
        const first = Math.ceil(at / bs);
        // The disk's last block may be short: it counts when the extent reaches the end.
        const last = end === this.size ? Math.ceil(end / bs) - 1 : Math.floor(end / bs) - 1;
        for (let b = first; b <= last; b++) this.zero.set(b);
      }
      at = end;
      if (at >= this.size) break;
    }
    return at;
  }

  /**
   * Block status of [offset, end) from what was learned (end <= learnedTo): blocks known to
   * read as zeroes are a hole, the rest data. Answers a client's block status for blocks
   * not yet local without a round trip upstream. At most `max` extents (the answer may
   * then end before `end`).
   */
  extents(offset: number, end: number, max = Infinity): Extent[] {
    const bs = this.blockSize;
    const out: Extent[] = [];
    for (let at = offset; at < end; ) {
      const b = Math.floor(at / bs);
      const flags = this.zero.has(b) ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0;
      const next = Math.min(end, (b + 1) * bs);
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += next - at;
      else if (out.length < max) out.push({ length: next - at, flags });
      else break;
      at = next;
    }
    return out;
  }

  /**
   * Learns the disk on from `learnedTo`: up to `replies` replies, or until the end, or the
   * first reply that says nothing (the upstream has no block status, or is away: the rest
   * is simply fetched). `stop()` ends it early.
   */
  async learn(status: StatusSource, stop: () => boolean = () => false, replies = Infinity): Promise<void> {
    for (let n = 0; n < replies && this.learnedTo < this.size && !stop(); n++) {
      const ext = await status(this.learnedTo, Math.min(ASK_BYTES, this.size - this.learnedTo));
      if (!ext || ext.length === 0) return;
      const next = this.record(this.learnedTo, ext);
      if (next <= this.learnedTo) return;
      this.learnedTo = next;
    }
  }
}
