// A fixed-size set of bits over a Uint8Array (bit i is bit i&7 of byte i>>3): per-block
// flags of a disk at 2 MiB per TiB (64 KiB blocks), where a byte per block would take 16.

export class BitSet {
  readonly bytes: Uint8Array;

  constructor(
    readonly size: number,
    bytes?: Uint8Array,
  ) {
    if (!Number.isInteger(size) || size < 0 || size > 2 ** 32)
      throw new Error(`${size} blocks: at most 2^32 (use a larger block size)`);
    const n = Math.ceil(size / 8);
    if (bytes && bytes.length !== n) throw new Error(`bit set of ${bytes.length} bytes for ${size} bits`);
    this.bytes = bytes ?? new Uint8Array(n);
  }

  has(i: number): boolean {
    return (this.bytes[i >>> 3] & (1 << (i & 7))) !== 0;
  }

  /** Sets bit i; true if it was clear. */
  set(i: number): boolean {
    const k = i >>> 3;
    const m = 1 << (i & 7);
    if (this.bytes[k] & m) return false;
    this.bytes[k] |= m;
    return true;
  }

  /** Sets or clears bits [first, first+count), whole bytes at a time in the middle. */
  fill(value: boolean, first: number, count: number): void {
    let i = first;
    const end = first + count;
    for (; i < end && (i & 7) !== 0; i++) this.put(i, value);
    const byteEnd = end - (end % 8);
    if (i < byteEnd) {
      this.bytes.fill(value ? 0xff : 0, i >>> 3, byteEnd / 8);
      i = byteEnd;
    }
    for (; i < end; i++) this.put(i, value);
  }

  /** True when every bit of [first, last] is set. */
  allSet(first: number, last: number): boolean {
    for (let i = first; i <= last; i++) {
      if ((i & 7) === 0 && i + 7 <= last) {
        if (this.bytes[i >>> 3] !== 0xff) return false;
        i += 7;
      } else if (!this.has(i)) return false;
    }
    return true;
  }

  private put(i: number, value: boolean): void {
    if (value) this.bytes[i >>> 3] |= 1 << (i & 7);
    else this.bytes[i >>> 3] &= ~(1 << (i & 7));
  }
}
