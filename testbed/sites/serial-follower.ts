// Follows the test guest's serial logs at every site a VM runs (one file per page-server), and
// folds their heartbeats, timestamped on arrival, into one tracker: a VM that moved keeps one
// counter across its logs, so a break in it or a long silence shows the move's cost to the guest.
import { closeSync, existsSync, openSync, readSync, statSync } from "node:fs";
import { splitLines } from "../../services/page-server/lines.js";
import { type Heartbeat, HeartbeatTracker, parseHeartbeat } from "../../services/page-server/vm/heartbeat.js";

export interface FollowedHeartbeat extends Heartbeat {
  /** Host time of arrival (ms since the epoch) and the log it came from. */
  atMs: number;
  path: string;
}

export class SerialFollower {
  readonly tracker = new HeartbeatTracker();
  readonly beats: FollowedHeartbeat[] = [];
  /** ERR lines the workload printed (memory or disk check failures). */
  readonly errors: string[] = [];
  /** Per log: how far it was read, an unfinished line, and the file's inode (a log replaced is read from its start). */
  private readonly files = new Map<string, { offset: number; rest: Buffer; ino?: number }>();
  private timer?: NodeJS.Timeout;

  /** Polls every `everyMs` (the arrival time's resolution). */
  constructor(private readonly everyMs = 10) {}

  /** Starts following a log (it may not exist yet), from its current end unless `fromStart`. */
  follow(path: string, fromStart = false): void {
    if (this.files.has(path)) return;
    const st = existsSync(path) ? statSync(path) : undefined;
    this.files.set(path, { offset: !fromStart && st ? st.size : 0, rest: Buffer.alloc(0), ino: st?.ino });
    this.timer ??= setInterval(() => this.poll(), this.everyMs);
  }

  /** Reads what arrived since the last poll (also called by the timer). */
  poll(): void {
    const now = performance.timeOrigin + performance.now();
    for (const [path, f] of this.files) {
      if (!existsSync(path)) continue;
      // Another file renamed over the log (a page-server taking a warm QEMU moves its log into
      // the VM's folder): its lines are new, from its start.
      const ino = statSync(path).ino;
      if (f.ino !== undefined && ino !== f.ino) {
        f.offset = 0;
        f.rest = Buffer.alloc(0);
      }
      f.ino = ino;
      const fd = openSync(path, "r");
      try {
        const buf = Buffer.alloc(1 << 16);
        for (
          let n = readSync(fd, buf, 0, buf.length, f.offset);
          n > 0;
          n = readSync(fd, buf, 0, buf.length, f.offset)
        ) {
          f.offset += n;
          const { lines, rest } = splitLines(Buffer.concat([f.rest, buf.subarray(0, n)]));
          f.rest = Buffer.from(rest);
          for (const line of lines) {
            this.tracker.observeLine(line);
            if (line.startsWith("ERR ")) this.errors.push(line);
            const hb = parseHeartbeat(line);
            if (!hb) continue;
            this.tracker.observe(hb, now);
            this.beats.push({ ...hb, atMs: now, path });
          }
        }
      } finally {
        closeSync(fd);
      }
    }
  }

  /** Waits until a heartbeat satisfies `pred` (polling), or fails after `ms`. */
  async waitFor(
    what: string,
    pred: (hb: FollowedHeartbeat) => boolean,
    ms: number,
  ): Promise<FollowedHeartbeat> {
    const end = Date.now() + ms;
    let seen = 0;
    for (;;) {
      this.poll();
      for (; seen < this.beats.length; seen++) if (pred(this.beats[seen])) return this.beats[seen];
      if (Date.now() > end)
        throw new Error(`${what}: not within ${ms} ms (${this.beats.length} heartbeats seen)`);
      await new Promise((r) => setTimeout(r, this.everyMs));
    }
  }

  /** The largest host-side gap between consecutive heartbeats (any log) arriving from `fromMs` on. */
  maxGapSince(fromMs: number): number {
    return this.gapsSince(fromMs, 0).reduce((m, g) => Math.max(m, g.ms), 0);
  }

  /** Every host-side gap longer than `longerThanMs` between consecutive heartbeats (any log) from `fromMs` on. */
  gapsSince(fromMs: number, longerThanMs: number): { startMs: number; ms: number }[] {
    const beats = this.beats.filter((h) => h.atMs >= fromMs);
    const gaps: { startMs: number; ms: number }[] = [];
    for (let i = 1; i < beats.length; i++) {
      const ms = beats[i].atMs - beats[i - 1].atMs;
      if (ms > longerThanMs) gaps.push({ startMs: beats[i - 1].atMs, ms });
    }
    return gaps;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.poll();
  }
}
