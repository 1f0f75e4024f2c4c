// QEMU's query-migrate answer as a typed progress record, and which statuses are final. Pure.

export type QemuMigrationStatus =
  | "none"
  | "setup"
  | "cancelling"
  | "cancelled"
  | "active"
  | "postcopy-active"
  | "postcopy-paused"
  | "postcopy-recover"
  | "completed"
  | "failed"
  | "colo"
  | "pre-switchover"
  | "device"
  | "wait-unplug";

export interface MigrationProgress {
  status: QemuMigrationStatus;
  totalMs?: number;
  downtimeMs?: number;
  setupMs?: number;
  /** RAM bytes sent so far (QEMU's ram.transferred). */
  bytesTransferred: number;
  bytesRemaining: number;
  /** Bytes sent before the switch-over (pre-copy phase), during it, and in post-copy. */
  precopyBytes: number;
  downtimeBytes: number;
  postcopyBytes: number;
  dirtySyncCount: number;
  dirtyPagesRate: number;
  postcopyRequests: number;
  /** Destination only, with the postcopy-blocktime capability: total vCPU stall in ms. */
  postcopyBlocktimeMs?: number;
  errorDesc?: string;
}

const final: QemuMigrationStatus[] = ["completed", "failed", "cancelled"];

export function isFinal(s: QemuMigrationStatus): boolean {
  return final.includes(s);
}

function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}
function opt(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

export function parseMigrationInfo(raw: unknown): MigrationProgress {
  const r = (typeof raw === "object" && raw !== null ? raw : {}) as Record<string, unknown>;
  const ram = (typeof r.ram === "object" && r.ram !== null ? r.ram : {}) as Record<string, unknown>;
  return {
    status: (typeof r.status === "string" ? r.status : "none") as QemuMigrationStatus,
    totalMs: opt(r["total-time"]),
    downtimeMs: opt(r.downtime),
    setupMs: opt(r["setup-time"]),
    bytesTransferred: num(ram.transferred),
    bytesRemaining: num(ram.remaining),
    precopyBytes: num(ram["precopy-bytes"]),
    downtimeBytes: num(ram["downtime-bytes"]),
    postcopyBytes: num(ram["postcopy-bytes"]),
    dirtySyncCount: num(ram["dirty-sync-count"]),
    dirtyPagesRate: num(ram["dirty-pages-rate"]),
    postcopyRequests: num(ram["postcopy-requests"]),
    postcopyBlocktimeMs: opt(r["postcopy-blocktime"]),
    errorDesc: typeof r["error-desc"] === "string" ? r["error-desc"] : undefined,
  };
}
