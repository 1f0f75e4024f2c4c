// `vmhop demo --report FILE`: what the demo measured around its migration (the guest's heartbeat
// gaps, the correspondent's silences, the checks) beside the control-plane's record, as the
// report page's measurements (pure).
import type { ReportMeasurements } from "../../services/control-plane/report/render.js";
import type { WholeVmResult } from "./whole-vm-run.js";

export interface DemoSetting {
  delay: number;
  rate: number;
  diskMib: number;
  memoryMib: number;
}

const yes = (v: boolean | null) => (v === null ? "skipped" : v ? "yes" : "NO");

/** What the run verified, as summary rows (the demo's printed summary and its page share them). */
export function checkRows(r: WholeVmResult): [string, string][] {
  return [
    ["TCP stream survived", yes(r.tcp_survived)],
    ["memory verified", yes(r.memory_verified)],
    [
      "disk verified",
      `${yes(r.disk_verified)} (${r.disk.same} blocks as at switch-over, ${r.disk.rewritten} rewritten since)`,
    ],
    ["address verified", yes(r.address_verified)],
    ["source disk unchanged", yes(r.source_disk_unchanged)],
  ];
}

export function demoMeasurements(r: WholeVmResult, w: DemoSetting): ReportMeasurements {
  const silences: NonNullable<ReportMeasurements["silences"]> = [];
  for (const [probe, s] of [
    ["IPv6 ping", r.pings?.ipv6],
    ["IPv4 ping", r.pings?.ipv4],
  ] as const)
    if (s?.gapStartMs) silences.push({ probe, startUnixMs: s.gapStartMs, ms: s.silenceMs });
  return {
    requestedUnixMs: r.requested_unix_ms,
    heartbeatGaps: r.heartbeat_gaps.map((g) => ({ startUnixMs: g.start_unix_ms, ms: g.ms })),
    heartbeatEveryMs: 100,
    silences,
    subtitle:
      `vmhop demo: ${w.memoryMib} MiB guest with a ${w.diskMib} MiB disk across an emulated WAN ` +
      `(${w.delay} ms one way, ${w.rate} Mbit/s per direction)`,
    summary: [
      [
        "correspondent's gap",
        r.address_gap_ms === null
          ? `n/a (${r.address_skipped ?? "no probe"})`
          : `${r.address_gap_ms} ms longer than its 20 ms ping spacing`,
      ],
      ...checkRows(r),
      [
        "guest heartbeats",
        `${r.guest.heartbeats} seen, ${r.guest.counter_breaks} counter breaks, ${r.guest.errors.length} errors`,
      ],
    ],
  };
}
