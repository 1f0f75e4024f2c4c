// The page-server's Prometheus metrics, read at scrape time from its migration records: what
// QEMU's query-migrate reports (RAM bytes sent and remaining, post-copy page requests = the
// faults the destination sent back, the destination's postcopy-blocktime) and the bytes the
// page-server's channel carried. Series are per migration while it runs and for the last
// RETAIN_FINISHED that ended (a scrape after the end sees the final figures), then removed.
// QEMU 7.2 reports fault totals only; the per-fault latency histogram is observed as faults
// are answered, by the destination's relay (postcopy/observer.ts), so it needs the relay path.
import { Histogram } from "prom-client";
import { registry } from "../common/metrics/registry.js";
import { KeyedSeries, type Labels, sampledCounter, sampledGauge } from "../common/metrics/series.js";
import { isFinalPhase } from "./migration/phase.js";
import type { MigrationRecord } from "./migration/record.js";

export const RETAIN_FINISHED = 8;

let source: (() => MigrationRecord[]) | undefined;
/** Ids of ended migrations still shown, oldest first. */
let finished: string[] = [];

/** The migrations whose series a scrape shows: running ones, and the last few ended. */
export function shownMigrations(all: MigrationRecord[]): MigrationRecord[] {
  for (const r of all)
    if (isFinalPhase(r.phase) && !finished.includes(r.id)) {
      finished.push(r.id);
      if (finished.length > RETAIN_FINISHED) finished.shift();
    }
  const known = new Set(all.map((r) => r.id));
  finished = finished.filter((id) => known.has(id));
  return all.filter((r) => !isFinalPhase(r.phase) || finished.includes(r.id));
}

/** The shown migrations' rows for one metric. */
function rows(fn: (r: MigrationRecord, l: Labels) => [Labels, number][]): [Labels, number][] {
  if (!source) return [];
  return shownMigrations(source()).flatMap((r) => fn(r, { migration: r.id, vm: r.vmId, role: r.role }));
}

const BY_MIGRATION = ["migration", "vm", "role"];

sampledCounter(
  {
    name: "vmhop_page_memory_sent_bytes_total",
    help: "RAM bytes QEMU sent for the migration (query-migrate ram.transferred; source)",
    labelNames: BY_MIGRATION,
  },
  () => rows((r, l) => (r.role === "source" ? [[l, r.progress?.bytesTransferred ?? 0]] : [])),
);

sampledGauge(
  {
    name: "vmhop_page_memory_remaining_bytes",
    help: "RAM bytes QEMU still has to send (query-migrate ram.remaining; source)",
    labelNames: BY_MIGRATION,
  },
  () => rows((r, l) => (r.role === "source" ? [[l, r.progress?.bytesRemaining ?? 0]] : [])),
);

sampledCounter(
  {
    name: "vmhop_page_postcopy_faults_total",
    help: "Post-copy page requests: pages the destination's vCPUs faulted on and asked for (query-migrate ram.postcopy-requests; source)",
    labelNames: BY_MIGRATION,
  },
  () => rows((r, l) => (r.role === "source" ? [[l, r.progress?.postcopyRequests ?? 0]] : [])),
);

sampledGauge(
  {
    name: "vmhop_page_postcopy_blocktime_seconds",
    help: "Total time the destination's vCPUs waited for post-copy pages (query-migrate postcopy-blocktime; destination)",
    labelNames: BY_MIGRATION,
  },
  () =>
    rows((r, l) => {
      const ms = r.progress?.postcopyBlocktimeMs;
      return r.role === "destination" && ms !== undefined ? [[l, ms / 1000]] : [];
    }),
);

sampledGauge(
  {
    name: "vmhop_page_migration_downtime_seconds",
    help: "The VM's downtime QEMU reported for the migration (source, once known)",
    labelNames: BY_MIGRATION,
  },
  () =>
    rows((r, l) => {
      const ms = r.progress?.downtimeMs;
      return r.role === "source" && ms !== undefined ? [[l, ms / 1000]] : [];
    }),
);

sampledCounter(
  {
    name: "vmhop_page_channel_bytes_total",
    help: "Bytes the page-server's migration channel carried (source; 0 when the stream was handed to QEMU), by direction and layer (stream: QEMU's bytes, wire: after compression)",
    labelNames: [...BY_MIGRATION, "direction", "layer"],
  },
  () =>
    rows((r, l) => {
      if (r.role !== "source") return [];
      const c = r.channelBytes;
      return [
        [{ ...l, direction: "forward", layer: "stream" }, c.forward],
        [{ ...l, direction: "backward", layer: "stream" }, c.backward],
        [{ ...l, direction: "forward", layer: "wire" }, c.wireForward],
        [{ ...l, direction: "backward", layer: "wire" }, c.wireBackward],
      ];
    }),
);

sampledGauge(
  {
    name: "vmhop_page_migrations",
    help: "Migrations this page-server knows, by role and phase",
    labelNames: ["role", "phase"],
  },
  () => {
    const by = new Map<string, { role: string; phase: string; n: number }>();
    for (const r of source?.() ?? []) {
      const k = `${r.role}/${r.phase}`;
      const row = by.get(k) ?? { role: r.role, phase: r.phase, n: 0 };
      row.n++;
      by.set(k, row);
    }
    return [...by.values()].map((r) => [{ role: r.role, phase: r.phase }, r.n] as const);
  },
);

sampledCounter(
  {
    name: "vmhop_page_postcopy_faults_untimed_total",
    help: "Post-copy faults the destination's relay saw but did not time, by reason: in_flight (the page had already passed the relay, queued on its way into QEMU, when asked for), unanswered (its page never came, or too many waited)",
    labelNames: [...BY_MIGRATION, "reason"],
  },
  () =>
    rows((r, l) => {
      const f = r.role === "destination" && r.channelPath === "relay" ? r.faultTiming?.figures() : undefined;
      if (!f) return [];
      return [
        [{ ...l, reason: "in_flight" }, f.inFlight],
        [{ ...l, reason: "unanswered" }, f.waiting + f.dropped],
      ];
    }),
);

const faultSeconds: Histogram = new Histogram({
  name: "vmhop_page_postcopy_fault_latency_seconds",
  help: "Post-copy faults, each from the destination QEMU's page request to its page passing the destination page-server on its way in (destination; relay path only: a stream handed to QEMU is not seen, nor a fault whose page had already passed when asked for, nor faults after a post-copy recovery)",
  labelNames: BY_MIGRATION,
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
  collect() {
    const live = new Set(source ? shownMigrations(source()).map((r) => r.id) : []);
    faultKeys.prune((id) => live.has(id));
  },
});
const faultKeys = new KeyedSeries("migration", faultSeconds);

/** The fault-latency observer for an incoming migration's record (postcopy/observer.ts). */
export function faultLatencyObserver(r: Pick<MigrationRecord, "id" | "vmId" | "role">): (ms: number) => void {
  const labels = { migration: r.id, vm: r.vmId, role: r.role };
  return (ms) => {
    faultKeys.seen(labels);
    faultSeconds.observe(labels, ms / 1000);
  };
}

/** Serves these migrations on /metrics; returns the unbinding. */
export function bindPageMetrics(list: () => MigrationRecord[]): () => void {
  source = list;
  return () => {
    if (source === list) source = undefined;
  };
}
