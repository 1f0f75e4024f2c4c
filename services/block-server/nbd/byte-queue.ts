// Received bytes not yet parsed, as a list of chunks (no concatenation per 'data' event).
// Shared by the server and the client: a message spanning chunks costs one copy at most.

export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes already used from chunks[0]
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** A contiguous view of the first `n` bytes (n <= length); merges chunks only when needed. */
  peek(n: number): Buffer {
    if (n > this.length) throw new RangeError(`peek ${n} > ${this.length} queued`);
    const first = this.chunks[0];
    if (n === 0) return Buffer.alloc(0);
    if (first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const merged = Buffer.allocUnsafe(n);
    let at = 0;
    let i = 0;
    let from = this.head;
    while (at < n) {
      const c = this.chunks[i];
      const k = Math.min(c.length - from, n - at);
      c.copy(merged, at, from, from + k);
      at += k;
      if (from + k === c.length) {
        i++;
        from = 0;
      } else from += k;
    }
    // Replace the merged prefix so the next peek is cheap.
    const rest = this.chunks.slice(i);
    if (from > 0) rest[0] = rest[0].subarray(from);
    this.chunks = [merged, ...rest];
    this.head = 0;
    return merged;
  }

  /** Drops `n` bytes (n <= length). */
  skip(n: number): void {
    if (n > this.length) throw new RangeError(`skip ${n} > ${this.length} queued`);
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[0];
      const avail = c.length - this.head;
      if (n < avail) {
        this.head += n;
        return;
      }
      n -= avail;
      this.chunks.shift();
      this.head = 0;
    }
  }

  /** Consumes `n` bytes and returns them (a view when they sit in one chunk). */
  take(n: number): Buffer {
    const out = this.peek(n);
    this.skip(n);
    return out;
  }

  /** Consumes exactly `n` bytes straight into `dest` at `at` (no intermediate buffer). */
  takeInto(dest: Buffer, at: number, n: number): void {
    if (n > this.length) throw new RangeError(`take ${n} > ${this.length} queued`);
    let done = 0;
    while (done < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length - this.head, n - done);
      c.copy(dest, at + done, this.head, this.head + k);
      done += k;
      this.skip(k);
    }
  }

  /** Removes up to `n` bytes and returns them as views of the received chunks (no copy). */
  takeChunks(n: number): Buffer[] {
    const out: Buffer[] = [];
    while (n > 0 && this.chunks.length > 0) {
      const c = this.chunks[0];
      const k = Math.min(c.length - this.head, n);
      out.push(c.subarray(this.head, this.head + k));
      n -= k;
      this.skip(k);
    }
    return out;
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.length = 0;
  }
}
