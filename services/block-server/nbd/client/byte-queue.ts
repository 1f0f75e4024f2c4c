// A FIFO of received socket chunks. Reads copy at most once (when a message spans chunks),
// so a multi-MiB READ reply costs one concat, not one per chunk.

export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes already consumed from chunks[0]
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** The first `n` bytes (n <= length) without consuming them. A view when possible. */
  peek(n: number): Buffer {
    if (n > this.length) throw new RangeError(`peek ${n} > ${this.length} queued`);
    const first = this.chunks[0];
    if (first && first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    for (let i = 0; at < n; i++) {
      const c = this.chunks[i];
      const from = i === 0 ? this.head : 0;
      const len = Math.min(c.length - from, n - at);
      c.copy(out, at, from, from + len);
      at += len;
    }
    return out;
  }

  /** Consumes `n` bytes and returns them. */
  take(n: number): Buffer {
    const out = this.peek(n);
    this.skip(n);
    return out;
  }

  /** Consumes `n` bytes straight into `dest` at `at` (no intermediate buffer). */
  takeInto(dest: Buffer, at: number, n: number): void {
    if (n > this.length) throw new RangeError(`take ${n} > ${this.length} queued`);
    let done = 0;
    while (done < n) {
      const c = this.chunks[0];
      const len = Math.min(c.length - this.head, n - done);
      c.copy(dest, at + done, this.head, this.head + len);
      done += len;
      this.skip(len);
    }
  }

  skip(n: number): void {
    if (n > this.length) throw new RangeError(`skip ${n} > ${this.length} queued`);
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[0];
      const left = c.length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }
}
