// A continuous ping: `count` echo requests `intervalMs` apart, replies collected until
// `waitMs` after the last one. Blocking (poll), so it runs in its own probe process.
import { performance } from "node:perf_hooks";
import type { PingRecord } from "./analysis.js";
import { IcmpEchoSocket } from "./icmp-socket.js";

export interface PingOptions {
  target: string;
  count: number;
  intervalMs: number;
  /** How long to wait for late replies after the last request; default 1000 ms. */
  waitMs?: number;
}

export function checkPingOptions(o: PingOptions): void {
  if (!Number.isInteger(o.count) || o.count < 1 || o.count > 65_536)
    throw new RangeError(`ping count must be 1..65536, got ${o.count}`);
  if (!(o.intervalMs >= 1 && o.intervalMs <= 10_000))
    throw new RangeError(`ping interval must be 1..10000 ms, got ${o.intervalMs}`);
}

const nowMs = () => performance.timeOrigin + performance.now();

export function ping(o: PingOptions, onStart?: () => void): PingRecord[] {
  checkPingOptions(o);
  const sock = new IcmpEchoSocket(o.target);
  const records: PingRecord[] = [];
  let pending = 0;
  const waitMs = o.waitMs ?? 1000;
  try {
    onStart?.();
    const t0 = nowMs();
    let next = 0;
    let end = Number.POSITIVE_INFINITY;
    for (;;) {
      const now = nowMs();
      if (next < o.count && now >= t0 + next * o.intervalMs) {
        records.push({ seq: next, sentAtMs: nowMs() });
        sock.send(next & 0xffff);
        next++;
        pending++;
        if (next === o.count) end = nowMs() + waitMs;
        continue;
      }
      if (next === o.count && (now >= end || pending === 0)) break;
      const until = next < o.count ? t0 + next * o.intervalMs : end;
      const reply = sock.receive(Math.max(0, until - now));
      if (reply) {
        const at = nowMs();
        const r = records.find((x) => (x.seq & 0xffff) === reply.seq && x.recvAtMs === undefined);
        if (r) {
          r.recvAtMs = at;
          pending--;
        }
      }
    }
  } finally {
    sock.close();
  }
  return records;
}
