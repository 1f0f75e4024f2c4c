// QEMU migration status → the phase vmhop reports. Pure.
import type { QemuMigrationStatus } from "./status.js";

export type Phase =
  | "setup"
  | "precopy"
  | "switchover"
  | "postcopy"
  | "completed"
  | "failed"
  | "cancelled"
  | "paused";

const table: Record<QemuMigrationStatus, Phase> = {
  none: "setup",
  setup: "setup",
  "wait-unplug": "setup",
  active: "precopy",
  "pre-switchover": "switchover",
  device: "switchover",
  "postcopy-active": "postcopy",
  "postcopy-paused": "paused",
  "postcopy-recover": "paused",
  completed: "completed",
  failed: "failed",
  cancelling: "cancelled",
  cancelled: "cancelled",
  colo: "completed",
};

export function phaseOf(status: QemuMigrationStatus): Phase {
  return table[status] ?? "setup";
}

export function isFinalPhase(p: Phase): boolean {
  return p === "completed" || p === "failed" || p === "cancelled";
}
