// Bytes on the emulated WAN, counted where they enter it: the sum of what each site namespace
// transmits on its WAN links (`w<k>`, one per peer router; see testbed/netreach/bed.ts). Each
// byte crossing between two sites is counted once, at its sender, whatever carried it (QEMU's
// migration stream, an NBD upstream, a mirror job, control messages). Read synchronously from
// /proc/PID/net/dev of a process living in each namespace, so a progress callback can take a
// reading at the very moment it sees a phase change.
import { readFileSync } from "node:fs";
import type { SitesBed } from "./bed.js";

export interface DevCounters {
  rxBytes: number;
  txBytes: number;
}

/** The per-device byte counters of a /proc/net/dev text. Pure; malformed lines are an error. */
export function parseNetDev(text: string): Map<string, DevCounters> {
  const out = new Map<string, DevCounters>();
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    // The two header lines have `|` and no device name before a colon.
    if (colon < 0 || line.includes("|")) continue;
    const dev = line.slice(0, colon).trim();
    const f = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .map(Number);
    if (!dev || f.length < 16 || f.some((v) => !Number.isSafeInteger(v) || v < 0))
      throw new Error(`not a /proc/net/dev line: ${JSON.stringify(line)}`);
    out.set(dev, { rxBytes: f[0], txBytes: f[8] });
  }
  return out;
}

/** A WAN link device of the namespace bed (`w0` to the anchor, `w<k>` to site k). */
export function isWanDevice(name: string): boolean {
  return /^w\d+$/.test(name);
}

/** Bytes transmitted on WAN links, per the counters of one namespace. Pure. */
export function wanTxBytes(devs: Map<string, DevCounters>): number {
  let sum = 0;
  for (const [dev, c] of devs) if (isWanDevice(dev)) sum += c.txBytes;
  return sum;
}

/** Reads the WAN transmit counters of the namespaces the given processes live in. */
export class WanMeter {
  /** `pids`: one live process per namespace to count (its /proc/PID/net/dev is the namespace's). */
  constructor(private readonly pids: number[]) {
    if (pids.length === 0) throw new Error("a WAN meter needs at least one namespace");
  }

  /** Total bytes the namespaces have sent into the WAN so far (counters only grow). */
  read(): number {
    let sum = 0;
    for (const pid of this.pids) {
      let text: string;
      try {
        text = readFileSync(`/proc/${pid}/net/dev`, "utf8");
      } catch (err) {
        throw new Error(`WAN meter: process ${pid} is gone (${(err as Error).message})`);
      }
      sum += wanTxBytes(parseNetDev(text));
    }
    return sum;
  }
}

/** A meter over every site of a bed, through each site's block-server process. */
export function wanMeterOf(bed: SitesBed): WanMeter {
  return new WanMeter(
    bed.sites.map((s) => {
      const pid = s.block.child.pid;
      if (pid === undefined) throw new Error(`${s.site} block-server has no pid`);
      return pid;
    }),
  );
}
