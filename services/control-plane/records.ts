// The control-plane's durable records in the shared Store (layout in README.md) and the
// compare-and-set updates that keep them consistent across racing requests and restarts.
import type { Store } from "../common/store/index.js";
import type { PowerConfig } from "../power/driver.js";
import type { FaultLatencyRecord } from "./fault-latency.js";
import { countTransition } from "./metrics.js";
import { type NetworkEvent, type NetworkRecord, nextNetwork, type VmAddresses } from "./network-states.js";
import { appendSample, type ProgressSampleRecord, sampleOf } from "./progress-history.js";
import { type MigrationEvent, type MigrationState, next } from "./states.js";

export const KEYS = {
  host: (id: string) => `control:host:${id}`,
  hostPrefix: "control:host:",
  vm: (id: string) => `control:vm:${id}`,
  vmPrefix: "control:vm:",
  migration: (id: string) => `control:migration:${id}`,
  migrationPrefix: "control:migration:",
  /** request_id → migration_id (MigrateVm idempotency). */
  request: (id: string) => `control:request:${id}`,
  /**
   * Counter behind fencing tokens: each claim's token is above every token issued before, for
   * any VM, so a VM deleted and created again under its id never meets its old tokens (the
   * page-servers and block-servers it visited keep the highest they saw).
   */
  fenceSeq: "control:fence-seq",
  /** Host liveness as the leader's checks see it (host-liveness.ts), with a TTL. */
  liveness: (id: string) => `control:liveness:${id}`,
  livenessPrefix: "control:liveness:",
  /** Replicas: the leader lease (leader-lease.ts), `{holder, generation, since_unix_ms}` with a TTL. */
  leader: "control:leader",
  /** Pub/sub: one JSON MigrationRecord per transition. */
  migrations: "control:migrations",
} as const;

export interface HostRecord {
  host_id: string;
  site: string;
  page_server_address: string;
  block_server_address: string;
  block_nbd_address: string;
  cpus: number;
  memory_mib: number;
  asleep: boolean;
  /** How the host is switched on and off (absent: `asleep` is bookkeeping only). */
  power?: PowerConfig;
  /** What the control-plane last did or saw (absent: never powered; `asleep` tells). */
  power_state?: HostPowerState;
  /** Why the last power action failed ("" when it did not). */
  power_error?: string;
  /** When power_state last changed (epoch ms). */
  power_changed_unix_ms?: number;
  /** The last power actions, oldest first (at most POWER_ACTIONS_KEPT). */
  power_actions?: PowerActionRecord[];
}

/** on/off as switched; waking/stopping while the driver works; failed: the last action failed (power_error). */
export type HostPowerState = "on" | "off" | "waking" | "stopping" | "failed";

export interface PowerActionRecord {
  time_unix_ms: number;
  action: "on" | "off" | "status";
  /** on/off: the state reached; status: what the driver said. */
  result: string;
  error: string;
}

export const POWER_ACTIONS_KEPT = 20;

/** The page-server VmSpec, as its JSON form (gen VmSpec.toJSON). */
export type SpecJson = Record<string, unknown>;

export interface VmRecord {
  vm_id: string;
  spec: SpecJson;
  host_id: string;
  /** Set while a migration holds the VM: the one-migration-per-VM lock. */
  migration_id: string;
  /** Raised when a migration claims the VM; the VM only moves for the claim holding it. */
  fencing_token: number;
  /** Its home addresses (absent: none); netreach keeps them reachable wherever it runs. */
  network?: VmAddresses;
  /** The export (this name, on the block-server its disk URL names) CreateVm made: DeleteVm removes it. */
  disk_export?: string;
  /** While DeleteVm runs: the hosts whose page-servers it stops the VM on. */
  deleting_on?: string[];
}

/** VmRecord.migration_id while CreateVm sets the VM up / DeleteVm tears it down: no migration may start. */
export const HOLD_CREATE = "create";
export const HOLD_DELETE = "delete";

export interface MigrationRecord {
  migration_id: string;
  request_id: string;
  vm_id: string;
  source_host_id: string;
  destination_host_id: string;
  /** MigrationMode enum number of page.proto. */
  mode: number;
  state: MigrationState;
  fencing_token: number;
  error: string;
  bytes_sent: number;
  downtime_ms: number;
  created_unix_ms: number;
  updated_unix_ms: number;
  /** StorageMode enum number of control.proto (LAZY or SHARED; absent in older records: SHARED). */
  storage?: number;
  /** LAZY storage: the disk's relocation. */
  disk?: DiskRecord;
  /** When each state was entered (epoch ms): the timeline. */
  entered_unix_ms?: Partial<Record<MigrationState, number>>;
  /** The VM's address moving with it (absent in older records). */
  network?: NetworkRecord;
  /** The memory stream's progress beside bytes_sent (absent in older records). */
  memory?: MemoryRecord;
  /**
   * The W3C traceparent of the migration's span (migration-trace.ts): a resumed migration
   * continues its trace. Absent in older records or when tracing is off.
   */
  trace_parent?: string;
  /** Memory and disk progress over time, bounded (progress-history.ts; absent in older records). */
  progress?: ProgressSampleRecord[];
  /** A host that went down after the switch-over: what was lost with it (host-down.ts). */
  lost?: string;
  /**
   * Replicas: the leader generation driving it (absent: none yet, or one process without a
   * lease). A newer leader takes it over by raising this; an older one's transitions are refused.
   */
  driver_generation?: number;
  /**
   * Replicas: each leader generation that took it over from another, with when and in which
   * state (the record of who drove it, and where a restarted or new leader resumed it).
   */
  takeovers?: Array<{
    generation: number;
    from_generation: number;
    fencing_token: number;
    unix_ms: number;
    /** The state it was resumed in (absent in older records). */
    state?: MigrationState;
  }>;
}

export interface MemoryRecord {
  bytes_remaining: number;
  pages_requested_on_fault: number;
  /** Pages the source sent ahead of the destination's first faults (the virtio rings); absent in older records. */
  pages_sent_ahead?: number;
  /** Known once the destination resumed the VM over a relayed channel. */
  bytes_before_resume?: number;
  /** When the destination resumed the VM (epoch ms), known at completion. */
  resumed_unix_ms?: number;
  /** Post-copy over the relay: the faults the destination timed, known at completion. */
  fault_latency?: FaultLatencyRecord;
  /** The destination's QEMU was a warm one (started before the request), known at completion. */
  destination_warm_qemu?: boolean;
  /** Post-copy recoveries the source made (its stream broke, resumed on a new channel). */
  recoveries?: number;
}

export interface DiskRecord {
  /** The destination block-server's proxy export (the same name as the source's). */
  destination_export: string;
  /** The source export's NBD URL (the proxy's upstream). */
  source_url: string;
  blocks_total: number;
  blocks_local: number;
  bytes_fetched_on_demand: number;
  bytes_fetched_background: number;
  promoted: boolean;
}

export class ConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConflictError";
  }
}

export async function readJson<T>(store: Store, key: string): Promise<{ value: T; raw: string } | null> {
  const raw = await store.get(key);
  return raw === null ? null : { value: JSON.parse(raw) as T, raw };
}

export async function scanJson<T>(store: Store, prefix: string): Promise<T[]> {
  return (await store.scan(prefix)).map(([, v]) => JSON.parse(v) as T);
}

/**
 * Read-modify-write with compare-and-set, retried while others write between: `fn` returns
 * the new value, or throws to refuse. Returns the value written.
 */
export async function update<T>(store: Store, key: string, fn: (cur: T | null) => T): Promise<T> {
  for (;;) {
    const cur = await readJson<T>(store, key);
    const value = fn(cur?.value ?? null);
    if (await store.compareAndSet(key, cur?.raw ?? null, JSON.stringify(value))) return value;
  }
}

/**
 * One persisted transition of a migration's state machine (table in states.ts); `patch`
 * fields land with it. Throws TransitionError when the record's state has no such edge (e.g.
 * it was cancelled meanwhile), so a stale driver step never overwrites a newer state.
 */
export type ProgressPatch = Partial<Pick<MigrationRecord, "bytes_sent" | "downtime_ms" | "disk" | "memory">>;

export async function transition(
  store: Store,
  migrationId: string,
  event: MigrationEvent,
  patch: ProgressPatch & Partial<Pick<MigrationRecord, "error">> = {},
  /** Throws to refuse the transition on the current record (a deposed leader's driver). */
  guard?: (cur: MigrationRecord) => void,
): Promise<MigrationRecord> {
  let from: MigrationState | undefined;
  const rec = await update<MigrationRecord>(store, KEYS.migration(migrationId), (cur) => {
    if (!cur) throw new ConflictError(`migration ${migrationId} vanished from the store`);
    guard?.(cur);
    const state = next(cur.state, event);
    from = cur.state;
    const now = Date.now();
    return withSample(
      {
        ...cur,
        ...patch,
        state,
        updated_unix_ms: now,
        entered_unix_ms: { ...cur.entered_unix_ms, [state]: now },
      },
      patch,
      now,
    );
  });
  countTransition(from!, rec);
  await store.publish(KEYS.migrations, JSON.stringify(rec));
  return rec;
}

/** Progress counters only (no state change). */
export async function recordProgress(store: Store, migrationId: string, patch: ProgressPatch): Promise<void> {
  const rec = await update<MigrationRecord>(store, KEYS.migration(migrationId), (cur) => {
    if (!cur) throw new ConflictError(`migration ${migrationId} vanished from the store`);
    const now = Date.now();
    return withSample({ ...cur, ...patch, updated_unix_ms: now }, patch, now);
  });
  await store.publish(KEYS.migrations, JSON.stringify(rec));
}

/** `m` with a progress sample appended when `patch` carried progress (the history `vmhop report` draws). */
function withSample(m: MigrationRecord, patch: ProgressPatch, now: number): MigrationRecord {
  if (patch.bytes_sent === undefined && !patch.memory && !patch.disk) return m;
  return { ...m, progress: appendSample(m.progress, sampleOf(m, now)) };
}

/**
 * One persisted step of a migration's address part (table in network-states.ts), `reason` with
 * it. Throws NetworkTransitionError when the recorded state has no such edge.
 */
export async function networkStep(
  store: Store,
  migrationId: string,
  event: NetworkEvent,
  reason?: string,
): Promise<MigrationRecord> {
  const rec = await update<MigrationRecord>(store, KEYS.migration(migrationId), (cur) => {
    if (!cur?.network) throw new ConflictError(`migration ${migrationId} has no network part`);
    const state = nextNetwork(cur.network.state, event);
    const now = Date.now();
    return {
      ...cur,
      updated_unix_ms: now,
      network: {
        ...cur.network,
        state,
        ...(reason !== undefined ? { reason } : {}),
        entered_unix_ms: { ...cur.network.entered_unix_ms, [state]: now },
      },
    };
  });
  await store.publish(KEYS.migrations, JSON.stringify(rec));
  return rec;
}
