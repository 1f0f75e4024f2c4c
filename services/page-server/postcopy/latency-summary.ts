// A bounded summary of latencies for a migration's record: count, max, and quantiles from
// logarithmic buckets 5 % wide (so p50/p99 are within 5 % whatever the count), 0.01 ms-100 s.
// Pure.

const MIN_MS = 0.01;
const GROWTH = 1.05;
const BUCKETS = Math.ceil(Math.log(1e7) / Math.log(GROWTH)) + 1; // 0.01 ms × 1.05^i up to 100 s

export interface LatencyFigures {
  count: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

export class LatencySummary {
  private readonly counts = new Uint32Array(BUCKETS);
  count = 0;
  maxMs = 0;

  add(ms: number): void {
    const i = ms <= MIN_MS ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log(ms / MIN_MS) / Math.log(GROWTH)));
    this.counts[i]!++;
    this.count++;
    if (ms > this.maxMs) this.maxMs = ms;
  }

  /** The upper bound of the bucket holding the q-th latency (never above the max seen). */
  quantileMs(q: number): number {
    if (this.count === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.count));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return Math.min(this.maxMs, MIN_MS * GROWTH ** i);
    }
    return this.maxMs;
  }

  figures(): LatencyFigures {
    return {
      count: this.count,
      p50Ms: this.quantileMs(0.5),
      p99Ms: this.quantileMs(0.99),
      maxMs: this.maxMs,
    };
  }
}
