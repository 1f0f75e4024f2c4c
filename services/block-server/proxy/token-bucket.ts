// Token bucket for the background copy's rate limit (bytes per second). take() may run the
// bucket into debt (a request larger than the burst still goes through) and waits until the
// debt is paid back, so the long-run rate holds. The rate can change at any time; 0 means
// unlimited. The clock and timer are injectable for tests.

export interface Clock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

export const realClock: Clock = {
  now: () => performance.now(),
  sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
};

export class TokenBucket {
  private tokens: number;
  private at: number;
  private rate: number;

  constructor(
    bytesPerSecond: number,
    /** Bucket size: how far above the rate a burst may go. Default: 100 ms worth, at least 4 MiB. */
    private readonly burstBytes?: number,
    private readonly clock: Clock = realClock,
  ) {
    this.rate = checkRate(bytesPerSecond);
    this.at = clock.now();
    this.tokens = this.capacity();
  }

  get bytesPerSecond(): number {
    return this.rate;
  }

  setRate(bytesPerSecond: number): void {
    this.refill();
    this.rate = checkRate(bytesPerSecond);
    this.tokens = Math.min(this.tokens, this.capacity());
  }

  private capacity(): number {
    return this.burstBytes ?? Math.max(4 << 20, this.rate / 10);
  }

  private refill(): void {
    const t = this.clock.now();
    if (this.rate > 0)
      this.tokens = Math.min(this.capacity(), this.tokens + ((t - this.at) * this.rate) / 1000);
    this.at = t;
  }

  /** Takes `bytes`, waiting while the bucket is in debt. Re-checks after a rate change. */
  async take(bytes: number): Promise<void> {
    for (;;) {
      if (this.rate === 0) return;
      this.refill();
      if (this.tokens >= 0) {
        this.tokens -= bytes;
        return;
      }
      // Wait for the debt to clear, at most 1 s at a time so a rate change is noticed.
      await this.clock.sleep(Math.min(1000, Math.ceil((-this.tokens * 1000) / this.rate)));
    }
  }

  /** Gives back bytes taken but not used. */
  refund(bytes: number): void {
    if (this.rate > 0) this.tokens = Math.min(this.capacity(), this.tokens + bytes);
  }
}

function checkRate(r: number): number {
  if (!Number.isFinite(r) || r < 0)
    throw new Error(`rate limit must be >= 0 bytes/s (0 = unlimited), got ${r}`);
  return r;
}
