// Recycles large I/O buffers. A fresh 256 KiB Buffer is a fresh mmap: page faults and
// kernel zeroing on every request, which at GB/s costs more than the copy itself.
// Only buffers this pool handed out are taken back, so releasing a foreign one is harmless.

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private readonly issued = new WeakSet<Buffer>(); // weak: unreleased buffers just get collected
  private freeBytes = 0;
  /** Buffers allocated fresh vs handed out again (for tuning and tests). */
  readonly counts = { fresh: 0, reused: 0 };

  constructor(
    /** Most bytes kept idle in the pool. */
    private readonly maxFreeBytes = 64 << 20,
    /** Smaller buffers come from Node's own slab allocator instead. */
    private readonly minSize = 16 << 10,
  ) {}

  /** An uninitialised buffer of exactly n bytes. */
  readonly alloc = (n: number): Buffer => {
    if (n < this.minSize) return Buffer.allocUnsafe(n);
    const reused = this.free.get(n)?.pop();
    if (reused) {
      this.freeBytes -= n;
      this.counts.reused++;
    } else this.counts.fresh++;
    const b = reused ?? Buffer.allocUnsafeSlow(n);
    this.issued.add(b);
    return b;
  };

  /** Gives a buffer back once nothing refers to it any more. */
  release(b: Buffer): void {
    if (!this.issued.delete(b)) return;
    if (this.freeBytes + b.length > this.maxFreeBytes) return;
    const list = this.free.get(b.length);
    if (list) list.push(b);
    else this.free.set(b.length, [b]);
    this.freeBytes += b.length;
  }

  get idleBytes(): number {
    return this.freeBytes;
  }
}
