// When a compressing channel deflates: always ("on"), or ("auto") only while the link is the
// bottleneck (the wire pushes back) and slow enough that deflate (level 1, ~200+ MB/s a core here) outruns it. On
// loopback the wire drains faster than that, so auto sends plain frames and costs no CPU.
// Auto also deflates a connection's first YOUNG_BYTES: a fresh TCP connection is in slow start,
// so its window, not the link's rate, paces them (a post-copy switch-over's ~100 KB device
// state took four round trips plain on a 50 ms link; deflated, about a tenth, it fits the first).
export type Compression = "off" | "on" | "auto";

/** Rate measurement window. */
export const WINDOW_MS = 100;
/** Links draining slower than this (bytes/s, ~800 Mbit/s) are worth compressing for. */
export const SLOW_LINK_BYTES_PER_SEC = 100e6;
/** A connection's first bytes (on the wire), deflated by auto whatever the link: TCP's slow start. */
export const YOUNG_BYTES = 1 << 20;

/**
 * Measures how fast the wire drains in windows where it pushed back (a write found its
 * buffer full): then the link, not QEMU, sets the pace, and the drain rate is the link's.
 * Fed the socket's counters, time passed in, so it is pure. (Looking at the queue alone
 * does not work: the sender resumes only once the queue is empty.)
 */
export class DrainMeter {
  /** Drain rate of the last window with push-back (bytes/s); undefined when not link-bound. */
  rate: number | undefined;
  private windowStart: number | undefined;
  private drainedAtStart = 0;
  private pushBack = false;
  /** Bytes handed to the wire so far (the last sample's). */
  written = 0;

  /** The wire refused more (write returned false). */
  pushedBack(): void {
    this.pushBack = true;
  }

  /** `written`: bytes handed to the socket so far; `queued`: of those, not yet in the kernel. */
  sample(written: number, queued: number, nowMs: number): void {
    this.written = written;
    const drained = written - queued;
    if (this.windowStart === undefined) {
      this.windowStart = nowMs;
      this.drainedAtStart = drained;
      return;
    }
    if (nowMs - this.windowStart < WINDOW_MS) return;
    this.rate = this.pushBack
      ? ((drained - this.drainedAtStart) * 1000) / (nowMs - this.windowStart)
      : undefined;
    this.windowStart = nowMs;
    this.drainedAtStart = drained;
    this.pushBack = false;
  }
}

export function shouldDeflate(mode: Compression, meter: DrainMeter): boolean {
  if (mode !== "auto") return mode === "on";
  if (meter.written < YOUNG_BYTES) return true;
  return meter.rate !== undefined && meter.rate < SLOW_LINK_BYTES_PER_SEC;
}
