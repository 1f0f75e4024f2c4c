// Which blocks of the disk are local: one bit per block, set once (a block never becomes
// missing again). Tracks the byte range changed since the last persist so saving it is
// cheap, and counts set bits so progress is O(1).
import { BitSet } from "./bit-set.js";

export class BlockBitmap {
  readonly bits: Uint8Array;
  private readonly set_: BitSet;
  private _local = 0;
  /** Byte range of `bits` changed since takeDirty(): [dirtyLo, dirtyHi). */
  private dirtyLo = Number.POSITIVE_INFINITY;
  private dirtyHi = 0;

  constructor(
    readonly blocks: number,
    bits?: Uint8Array,
  ) {
    const bytes = Math.ceil(blocks / 8);
    if (bits && bits.length !== bytes) throw new Error(`bitmap of ${bits.length} bytes for ${blocks} blocks`);
    this.set_ = new BitSet(blocks, bits);
    this.bits = this.set_.bytes;
    // Bits past the last block are ignored: clear them so counting stays exact.
    if (blocks % 8 !== 0 && bytes > 0) this.bits[bytes - 1] &= (1 << (blocks % 8)) - 1;
    for (const b of this.bits) this._local += popcount8(b);
  }

  get local(): number {
    return this._local;
  }

  get complete(): boolean {
    return this._local === this.blocks;
  }

  has(block: number): boolean {
    return this.set_.has(block);
  }

  /** True when every block of [first, last] is local. */
  hasAll(first: number, last: number): boolean {
    return this.set_.allSet(first, last);
  }

  set(block: number): void {
    if (!this.set_.set(block)) return;
    this._local++;
    const i = block >>> 3;
    if (i < this.dirtyLo) this.dirtyLo = i;
    if (i + 1 > this.dirtyHi) this.dirtyHi = i + 1;
  }

  setRange(first: number, count: number): void {
    for (let b = first; b < first + count; b++) this.set(b);
  }

  /** First missing block at or after `from`, or -1. Skips full bytes quickly. */
  nextMissing(from: number): number {
    let b = from;
    while (b < this.blocks) {
      if ((b & 7) === 0 && this.bits[b >>> 3] === 0xff) {
        b += 8;
        continue;
      }
      if (!this.has(b)) return b;
      b++;
    }
    return -1;
  }

  /** The changed byte range (a copy) since the last call, or null; resets it. */
  takeDirty(): { byteOffset: number; bytes: Uint8Array } | null {
    if (this.dirtyHi === 0) return null;
    const lo = this.dirtyLo;
    const out = { byteOffset: lo, bytes: this.bits.slice(lo, this.dirtyHi) };
    this.dirtyLo = Number.POSITIVE_INFINITY;
    this.dirtyHi = 0;
    return out;
  }

  /** Puts back a range taken by takeDirty() whose save failed. */
  markDirty(byteOffset: number, length: number): void {
    this.dirtyLo = Math.min(this.dirtyLo, byteOffset);
    this.dirtyHi = Math.max(this.dirtyHi, byteOffset + length);
  }
}

function popcount8(b: number): number {
  let n = 0;
  for (let x = b; x; x &= x - 1) n++;
  return n;
}
