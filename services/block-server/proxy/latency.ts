// Latency summary for status: p50/p99 over the most recent samples (a ring), plus the
// all-time max and count.

export interface LatencySummary {
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  count: number;
}

export class LatencyRecorder {
  private readonly ring: Float64Array;
  private next = 0;
  private filled = 0;
  private max = 0;
  private count = 0;

  constructor(window = 2048) {
    this.ring = new Float64Array(window);
  }

  record(ms: number): void {
    this.ring[this.next] = ms;
    this.next = (this.next + 1) % this.ring.length;
    if (this.filled < this.ring.length) this.filled++;
    if (ms > this.max) this.max = ms;
    this.count++;
  }

  summary(): LatencySummary {
    if (this.filled === 0) return { p50Ms: 0, p99Ms: 0, maxMs: 0, count: 0 };
    const s = Array.from(this.ring.subarray(0, this.filled)).sort((a, b) => a - b);
    const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
    return { p50Ms: q(0.5), p99Ms: q(0.99), maxMs: this.max, count: this.count };
  }
}
