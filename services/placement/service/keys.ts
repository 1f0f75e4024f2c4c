// The Store layout of the placement service (documented in ../README.md). Host agents may
// write the load records themselves instead of calling ReportLoad; the control-plane reads
// accepted plans and listens on the decisions channel.
export const KEYS = {
  host: (id: string) => `placement:host:${id}`,
  hostPrefix: "placement:host:",
  vm: (id: string) => `placement:vm:${id}`,
  vmPrefix: "placement:vm:",
  plan: (id: string) => `placement:plan:${id}`,
  planPrefix: "placement:plan:",
  /** Counter behind plan ids (p-1, p-2, …): unique across restarts with Redis. */
  planSeq: "placement:plan-seq",
  /** Id of the newest accepted plan. */
  accepted: "placement:accepted",
  /** Pub/sub channel: one JSON PlanRecord per computed or accepted plan. */
  decisions: "placement:decisions",
} as const;

/** `placement:host:<host_id>`: the host's latest report. */
export interface HostRecord {
  host_id: string;
  /** A HOST_TYPES name: "G4" or "G5". */
  model: string;
  cpu_utilization: number;
  asleep: boolean;
  time_unix_ms: number;
}

/** `placement:vm:<vm_id>`: the VM's latest report plus its utilisation samples, newest first. */
export interface VmRecord {
  vm_id: string;
  host_id: string;
  /** Set while migrating. */
  migrating_to_host_id?: string;
  mips: number;
  memory_mib: number;
  dirty_rate_mib_per_s: number;
  /** Fractions of mips, newest first, at most HISTORY_LENGTH; [0] is now. */
  samples: number[];
  time_unix_ms: number;
}
