// `npm run bench -- handover [--quick] [--runs N] [--delays 0,5,15] [--dataplanes srv6,vxlan]`:
// per data plane (default: every one this kernel offers), the gap a correspondent
// sees while the VM moves between two sites, for break-before-make, make-before-break,
// make-before-break with a forwarding pointer and make-before-break with the anchor bicasting,
// IPv6 and IPv4 at once, against the one-way WAN delay. A continuous ping (10 ms spacing)
// measures it: `silence_ms` is the largest time between two consecutive replies; `gap_ms` is
// that minus the send spacing, i.e. how much longer than usual the correspondent waited (a
// silence always contains one spacing, so the raw silence of a move whose packets are only
// delayed by a forwarding pointer's one-way detour is one-way + 10). Issue 5's goal, at most one
// one-way delay plus 10 ms, is checked both ways: on gap_ms, and on the raw silence (the stricter
// reading, as the hand measurements were taken). The reference ("replug") is
// the floor of the test bed itself: the port unplugged and plugged back into the same site, with
// nothing to re-point. With a delay, every router link is VXLAN through the project's userspace
// delay relay and the binding update is delayed as much.

import { chooseDataplane, probeKernel } from "../services/netreach/dataplane/probe.js";
import { DATAPLANES, type DataplaneKind, isDataplaneKind } from "../services/netreach/dataplane/tunnel.js";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../testbed/netns.js";
import { type HandoverMode, NetreachBed } from "../testbed/netreach/bed.js";
import { underPing } from "../testbed/netreach/pings.js";
import {
  type BenchCase,
  flagValue,
  hasFlag,
  type Metrics,
  printTable,
  summarise,
  writeResults,
} from "./lib/report.js";

const BASE = "nr-bh-";
const INTERVAL_MS = 10;

type Case = HandoverMode | "replug";

async function oneRun(bed: NetreachBed, c: Case, oneWayMs: number): Promise<Metrics[]> {
  const count = Math.ceil((1500 + 8 * oneWayMs) / INTERVAL_MS);
  const act = async () => {
    if (c === "replug") await bed.replug();
    else await bed.move(bed.at === 0 ? 1 : 0, c);
  };
  const { v6, v4 } = await underPing(bed, act, {
    count,
    leadMs: 500 + 2 * oneWayMs,
    intervalMs: INTERVAL_MS,
    waitMs: 500 + 4 * oneWayMs,
  });
  return [v6, v4].map((s) => ({
    gap_ms: s.gapMs,
    silence_ms: s.silenceMs,
    lost: s.lost,
    one_way_ms: oneWayMs,
    rtt_ms: s.rttMedianMs,
  }));
}

const verdict = (ms: number, c: BenchCase) =>
  ms <= (c.metrics.one_way_ms as number) + 10 ? "met" : "missed";

export async function main(args: string[]): Promise<void> {
  const quick = hasFlag(args, "--quick");
  const runs = Number(flagValue(args, "--runs") ?? (quick ? 3 : 5));
  const delays = (flagValue(args, "--delays") ?? (quick ? "0,15" : "0,5,15,30")).split(",").map(Number);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a positive integer`);
  if (delays.some((d) => !(d >= 0 && d <= 200))) throw new Error(`--delays must be ms in 0..200`);
  const support = await probeKernel();
  const asked = flagValue(args, "--dataplanes")?.split(",");
  if (asked?.some((k) => !isDataplaneKind(k))) throw new Error(`--dataplanes takes ${DATAPLANES.join(",")}`);
  const dataplanes = (asked as DataplaneKind[] | undefined) ?? DATAPLANES.filter((k) => support[k] === null);
  for (const k of dataplanes) chooseDataplane(k, support); // one line naming what is missing
  if (dataplanes.length === 0) chooseDataplane("auto", support);
  for (const k of DATAPLANES)
    if (!dataplanes.includes(k) && support[k]) console.log(`data plane ${k} not measured: ${support[k]}`);
  const cases: Case[] = ["replug", "bbm", "mbb", "mbb-fp", "mbb-bicast"];
  const out: BenchCase[] = [];
  for (const dataplane of dataplanes)
    for (const d of delays) {
      await destroyStaleNetns(BASE);
      // 0 ms: plain veth; otherwise every router link is VXLAN through the delay relay.
      const bed = await NetreachBed.create({
        prefix: uniqueNetnsPrefix(BASE),
        sites: 2,
        wanDelayMs: d > 0 ? d : undefined,
        dataplane,
      });
      try {
        await bed.place(0);
        for (const c of cases) {
          const v6: Metrics[] = [];
          const v4: Metrics[] = [];
          for (let r = 0; r < runs; r++) {
            const [m6, m4] = await oneRun(bed, c, d);
            v6.push(m6);
            v4.push(m4);
          }
          const subject = c === "replug" ? "replug-floor" : "vmhop";
          out.push(
            summarise(`${c}/ipv6/${d}ms/${dataplane}`, subject, v6),
            summarise(`${c}/ipv4/${d}ms/${dataplane}`, subject, v4),
          );
        }
      } finally {
        await bed.destroy();
      }
    }
  const floor = new Map(
    out
      .filter((c) => c.subject === "replug-floor")
      .map((c) => [c.case.replace("replug/", ""), c.metrics.gap_ms]),
  );
  printTable(
    out.map((c) => {
      const f = floor.get(c.case.replace(/^[^/]+\//, "")) as number;
      const gap = c.metrics.gap_ms as number;
      return {
        case: c.case,
        subject: c.subject,
        gap_ms: gap,
        "min..max": `${Number(c.min?.gap_ms).toFixed(1)}..${Number(c.max?.gap_ms).toFixed(1)}`,
        silence_ms: c.metrics.silence_ms as number,
        lost: c.metrics.lost as number,
        over_floor_ms: gap - f,
        // Issue 5's goal for the make-before-break modes: at most one one-way delay (the physical
        // floor) plus 10 ms; "gap" on gap_ms, "silence" on the raw silence (the stricter reading).
        goal: /^mbb-(fp|bicast)\//.test(c.case)
          ? `gap ${verdict(gap, c)}, silence ${verdict(c.metrics.silence_ms as number, c)}`
          : "",
        rtt_ms: c.metrics.rtt_ms as number,
      };
    }),
  );
  console.log(`wrote ${writeResults("handover", out, { interval_ms: INTERVAL_MS })}`);
}
