// The guest workload's heartbeat line and what the host learns from a stream of them.
// Times are the host's: the guest clock stops while the VM is paused or being moved.

export interface Heartbeat {
  counter: number;
  verifyOk: number;
  memErrors: number;
  passes: number;
  diskOk: number;
  diskErrors: number;
}

const FIELDS = ["counter", "verifyOk", "memErrors", "passes", "diskOk", "diskErrors"] as const;

/** `HB <counter> <verify_ok> <mem_errors> <passes> <disk_ok> <disk_errors>`, else null. */
export function parseHeartbeat(line: string): Heartbeat | null {
  const m = /^HB((?: \d+){6})\s*$/.exec(line.trim());
  if (!m) return null;
  const nums = m[1].trim().split(" ").map(Number);
  const hb = {} as Record<(typeof FIELDS)[number], number>;
  FIELDS.forEach((f, i) => {
    hb[f] = nums[i];
  });
  return hb;
}

export interface HeartbeatStats {
  count: number;
  last?: Heartbeat;
  lastAtMs?: number;
  /** Largest host-side gap between consecutive heartbeats. */
  maxGapMs: number;
  /** Times the counter did not advance by exactly one (lost or repeated heartbeats). */
  counterBreaks: number;
  /** ERR lines the workload printed. */
  errorLines: number;
}

/** Folds heartbeats (with host timestamps) into stats. */
export class HeartbeatTracker {
  stats: HeartbeatStats = { count: 0, maxGapMs: 0, counterBreaks: 0, errorLines: 0 };

  /** Starts gap measurement afresh (e.g. after the VM was deliberately paused). */
  resetGap(): void {
    this.stats.lastAtMs = undefined;
  }

  observe(hb: Heartbeat, atMs: number): void {
    const s = this.stats;
    if (s.last && hb.counter !== s.last.counter + 1) s.counterBreaks++;
    if (s.lastAtMs !== undefined) s.maxGapMs = Math.max(s.maxGapMs, atMs - s.lastAtMs);
    s.last = hb;
    s.lastAtMs = atMs;
    s.count++;
  }

  observeLine(line: string): void {
    if (line.startsWith("ERR ")) this.stats.errorLines++;
  }
}
