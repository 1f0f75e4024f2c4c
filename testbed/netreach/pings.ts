// Pings from a bed's correspondent to the VM's home addresses: to one address, to both at once,
// or to both around something done to the bed (a move, a replug), the measurement the netreach
// tests, the demo and the handover benchmark share.
import { setTimeout as sleep } from "node:timers/promises";
import { type PingRecord, type PingSummary, summarisePings } from "../../services/netreach/probe/analysis.js";
import { type NetreachBed, VM } from "./bed.js";
import { type PingOptions, type ProbeProcess, startPing } from "./probe-process.js";

/** A ping from the correspondent to `to`. */
export function pingFromCn(bed: NetreachBed, to: string, count: number, opts?: PingOptions) {
  return startPing(bed.ns.cn, to, count, opts);
}

/** Pings to the VM's IPv6 and IPv4 home address at once, in that order. */
export function pingHome(bed: NetreachBed, count: number, opts?: PingOptions): ProbeProcess<PingRecord[]>[] {
  return [VM.homeIpv6[0], VM.homeIpv4[0]].map((to) => pingFromCn(bed, to, count, opts));
}

/**
 * Runs `act` while both home addresses are pinged: the pings are sending `leadMs` before it;
 * once they have ended the bed settles (the old site drops its forwarding pointer).
 */
export async function underPing<T>(
  bed: NetreachBed,
  act: () => Promise<T>,
  o: { count: number; leadMs: number } & PingOptions,
): Promise<{ result: T; v6: PingSummary; v4: PingSummary }> {
  const { count, leadMs, ...opts } = o;
  const probes = pingHome(bed, count, opts);
  await Promise.all(probes.map((p) => p.ready));
  await sleep(leadMs);
  const result = await act();
  const [v6, v4] = await Promise.all(probes.map(async (p) => summarisePings(await p.result)));
  await bed.settle();
  return { result, v6, v4 };
}
