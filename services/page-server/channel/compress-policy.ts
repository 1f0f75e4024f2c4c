// When a compressing channel deflates: always ("on"), or ("auto") only while the link is the
// bottleneck and slow enough that deflate (level 1, ~200+ MB/s a core here) outruns it. On
// loopback the wire drains faster than that, so auto sends plain frames and costs no CPU.
export type Compression = "off" | "on" | "auto";

/** Bytes queued towards the wire above which the link, not QEMU, sets the pace. */
export const BACKLOG_BYTES = 256 << 10;
/** Links draining slower than this (bytes/s, ~800 Mbit/s) are worth compressing for. */
export const SLOW_LINK_BYTES_PER_SEC = 100e6;
/** Rate measurement window. */
export const WINDOW_MS = 100;

/**
 * Measures how fast the wire drains while it is backlogged: the link rate, when the link is
 * the bottleneck. Fed the socket's counters, time passed in, so it is pure.
 */
export class DrainMeter {
  /** Last measured drain rate while backlogged (bytes/s); undefined when not link-bound. */
  rate: number | undefined;
  private windowStart = 0;
  private drainedAtStart = 0;
  private backloggedThroughout = true;

  /** `written`: bytes handed to the socket so far; `queued`: of those, not yet in the kernel. */
  sample(written: number, queued: number, nowMs: number): void {
    const drained = written - queued;
    if (queued < BACKLOG_BYTES) {
      this.backloggedThroughout = false;
      this.rate = undefined;
    }
    if (nowMs - this.windowStart < WINDOW_MS) return;
    if (this.backloggedThroughout && this.windowStart > 0)
      this.rate = ((drained - this.drainedAtStart) * 1000) / (nowMs - this.windowStart);
    this.windowStart = nowMs;
    this.drainedAtStart = drained;
    this.backloggedThroughout = queued >= BACKLOG_BYTES;
  }
}

export function shouldDeflate(mode: Compression, meter: DrainMeter): boolean {
  if (mode !== "auto") return mode === "on";
  return meter.rate !== undefined && meter.rate < SLOW_LINK_BYTES_PER_SEC;
}
