// The post-copy fault latency the destination page-server timed (its WatchMigration), as the
// migration record keeps it (snake_case JSON) and back. Pure.
import type { FaultLatency } from "../../gen/vmhop/v1/page.js";

export interface FaultLatencyRecord {
  timed: number;
  requested: number;
  in_flight: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
  /** Why the timing stopped early, if it did. */
  stopped?: string;
}

export function faultLatencyRecord(f: FaultLatency | undefined): FaultLatencyRecord | undefined {
  if (!f) return undefined;
  return {
    timed: f.timed,
    requested: f.requested,
    in_flight: f.inFlight,
    p50_ms: f.p50Ms,
    p99_ms: f.p99Ms,
    max_ms: f.maxMs,
    ...(f.stopped ? { stopped: f.stopped } : {}),
  };
}

export function faultLatencyToProto(r: FaultLatencyRecord | undefined): FaultLatency | undefined {
  if (!r) return undefined;
  return {
    timed: r.timed,
    requested: r.requested,
    inFlight: r.in_flight,
    p50Ms: r.p50_ms,
    p99Ms: r.p99_ms,
    maxMs: r.max_ms,
    stopped: r.stopped ?? "",
  };
}
