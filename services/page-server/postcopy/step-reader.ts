// The incremental reading both QEMU stream codecs share: a parser asks for the next `n`
// bytes (handed over whole, held across chunks in a small fixed buffer) or to skip `n`
// (page data: never copied nor held), and is fed chunks of any size. Memory is bounded by
// MAX_HELD whatever the stream does.

/** The most a parser may ask to hold at once (QEMU's idstrs and names are ≤ 256 bytes). */
export const MAX_HELD = 1024;

/** A stream that is not what the codec expects; the observer stops at the first one. */
export class QemuStreamError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QemuStreamError";
  }
}

export abstract class StepReader {
  private readonly held = Buffer.alloc(MAX_HELD);
  private have = 0;
  private want: number;
  private skipping = 0;
  /** Bytes consumed so far (for error messages). */
  offset = 0;

  constructor(first: number) {
    this.want = first;
  }

  /**
   * Called with exactly the bytes asked for; returns how many the next step gets
   * (1..MAX_HELD), read after any skip() it asked for.
   */
  protected abstract step(b: Buffer): number;

  private next(n: number): void {
    if (!(n >= 1 && n <= MAX_HELD))
      throw new QemuStreamError(`cannot read ${n} bytes at once at offset ${this.offset}`);
    this.want = n;
  }

  /** Skips `n` bytes before the next step. */
  protected skip(n: number): void {
    this.skipping += n;
  }

  push(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.skipping > 0) {
        const n = Math.min(this.skipping, chunk.length - at);
        this.skipping -= n;
        at += n;
        this.offset += n;
        continue;
      }
      const want = this.want;
      if (this.have === 0 && chunk.length - at >= want) {
        // Whole in this chunk: no copy.
        const b = chunk.subarray(at, at + want);
        at += want;
        this.offset += want;
        this.next(this.step(b));
        continue;
      }
      const n = Math.min(want - this.have, chunk.length - at);
      chunk.copy(this.held, this.have, at, at + n);
      this.have += n;
      at += n;
      this.offset += n;
      if (this.have < want) break;
      this.have = 0;
      this.next(this.step(this.held.subarray(0, want)));
    }
  }
}

/** A be64 as a number (QEMU's RAM offsets and sizes stay far below 2^53). */
export function be64(b: Buffer, at = 0): number {
  return b.readUInt32BE(at) * 0x1_0000_0000 + b.readUInt32BE(at + 4);
}
