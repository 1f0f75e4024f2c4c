// The control-plane's Prometheus metrics, from the migration records' transitions: how long
// each phase (state) lasted, and how migrations ended. Counted by the replica that made the
// transition, so replicas' figures add up. No per-migration labels: cardinality stays fixed.
import { Counter, Histogram } from "prom-client";
import { registry } from "../common/metrics/registry.js";
import type { MigrationRecord } from "./records.js";
import { isFinal, type MigrationState } from "./states.js";

const phaseSeconds = new Histogram({
  name: "vmhop_migration_phase_duration_seconds",
  help: "How long a migration spent in a phase (its state before a transition), by phase and the state it went to",
  labelNames: ["phase", "to"],
  buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
  registers: [registry],
});

const migrations = new Counter({
  name: "vmhop_migrations_total",
  help: "Migrations that ended, by outcome (done, failed, cancelled)",
  labelNames: ["outcome"],
  registers: [registry],
});

const transitions = new Counter({
  name: "vmhop_migration_transitions_total",
  help: "Migration state transitions made, by the state entered",
  labelNames: ["state"],
  registers: [registry],
});

const totalSeconds = new Histogram({
  name: "vmhop_migration_duration_seconds",
  help: "From MigrateVm to the migration's end, by outcome",
  labelNames: ["outcome"],
  buckets: [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
  registers: [registry],
});

/** Counts one persisted transition of `rec` out of state `from`. */
export function countTransition(from: MigrationState, rec: MigrationRecord): void {
  const at = rec.entered_unix_ms ?? {};
  const to = rec.state;
  transitions.inc({ state: to });
  const began = at[from];
  const now = at[to] ?? rec.updated_unix_ms;
  if (began !== undefined) phaseSeconds.observe({ phase: from, to }, Math.max(0, now - began) / 1000);
  if (!isFinal(to)) return;
  migrations.inc({ outcome: to });
  const start = at.pending ?? rec.created_unix_ms;
  totalSeconds.observe({ outcome: to }, Math.max(0, now - start) / 1000);
}
