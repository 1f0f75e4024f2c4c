// Load records in the Store: ReportLoad validates and writes them; planning reads them
// back as a plain-data ClusterSnapshot (the simulator's input format).

import type { ReportLoadRequest } from "../../../gen/vmhop/v1/placement.js";
import { ServiceError } from "../../common/errors.js";
import type { Store } from "../../common/store/index.js";
import { HISTORY_LENGTH } from "../sim/cluster.js";
import { HOST_TYPES } from "../sim/setup.js";
import type { ClusterSnapshot } from "../sim/snapshot.js";
import { type HostRecord, KEYS, type VmRecord } from "./keys.js";

/** Bad input; field names the offending request field, e.g. "vms[2].cpu_utilization". */
export class LoadError extends ServiceError {
  constructor(
    readonly field: string,
    problem: string,
  ) {
    super("invalid", `${field} ${problem}`);
    this.name = "LoadError";
  }
}

const hostModel = (name: string) => HOST_TYPES.findIndex((t) => t.name === name);

function check(ok: boolean, field: string, problem: string): void {
  if (!ok) throw new LoadError(field, problem);
}

/** Refuses the whole report if any record is bad, so a report is recorded all or nothing. */
export function validateReport(req: ReportLoadRequest): void {
  check(req.hosts.length + req.vms.length > 0, "hosts", "and vms are both empty: nothing to report");
  req.hosts.forEach((h, i) => {
    const f = `hosts[${i}]`;
    check(h.hostId !== "", `${f}.host_id`, "is required");
    const t = HOST_TYPES[hostModel(h.model)];
    check(
      t !== undefined,
      `${f}.model`,
      `must be one of ${HOST_TYPES.map((x) => x.name).join(", ")}, got ${JSON.stringify(h.model)}`,
    );
    const cap = t.cores * t.mipsPerCore;
    check(
      h.cpuCapacityMips === 0 || h.cpuCapacityMips === cap,
      `${f}.cpu_capacity_mips`,
      `must be 0 or ${cap} for model ${t.name}, got ${h.cpuCapacityMips}`,
    );
    check(h.cpuUtilization >= 0 && h.cpuUtilization <= 1, `${f}.cpu_utilization`, "must be in [0, 1]");
  });
  req.vms.forEach((v, i) => {
    const f = `vms[${i}]`;
    check(v.vmId !== "", `${f}.vm_id`, "is required");
    check(v.hostId !== "", `${f}.host_id`, "is required");
    check(v.cpuRequestedMips > 0, `${f}.cpu_requested_mips`, `must be > 0, got ${v.cpuRequestedMips}`);
    check(v.memoryMib > 0, `${f}.memory_mib`, "must be > 0");
    check(
      v.cpuUtilization >= 0 && v.cpuUtilization <= 1,
      `${f}.cpu_utilization`,
      `must be in [0, 1], got ${v.cpuUtilization}`,
    );
    check(v.dirtyRateMibPerS >= 0, `${f}.dirty_rate_mib_per_s`, "must be >= 0");
    check(v.migratingToHostId !== v.hostId, `${f}.migrating_to_host_id`, "must differ from host_id");
  });
  const seen = new Set<string>();
  req.vms.forEach((v, i) => {
    check(!seen.has(v.vmId), `vms[${i}].vm_id`, `${JSON.stringify(v.vmId)} is reported twice`);
    seen.add(v.vmId);
  });
}

/** Writes the report; each VM's new sample goes in front of its stored ones (atomic per VM). */
export async function recordLoad(
  store: Store,
  req: ReportLoadRequest,
  opts: { ttlMs: number; nowMs?: number },
): Promise<void> {
  validateReport(req);
  const t = req.timeUnixMs || (opts.nowMs ?? Date.now());
  const ttl = { ttlMs: opts.ttlMs };
  await Promise.all([
    ...req.hosts.map((h) => {
      const rec: HostRecord = {
        host_id: h.hostId,
        model: h.model,
        cpu_utilization: h.cpuUtilization,
        asleep: h.asleep,
        time_unix_ms: t,
      };
      return store.set(KEYS.host(h.hostId), JSON.stringify(rec), ttl);
    }),
    ...req.vms.map(async (v) => {
      const key = KEYS.vm(v.vmId);
      // Compare-and-set so concurrent reporters (or host agents writing directly) never lose a sample.
      for (;;) {
        const cur = await store.get(key);
        const old = cur ? (JSON.parse(cur) as VmRecord) : undefined;
        const rec: VmRecord = {
          vm_id: v.vmId,
          host_id: v.hostId,
          migrating_to_host_id: v.migratingToHostId || undefined,
          mips: v.cpuRequestedMips,
          memory_mib: v.memoryMib,
          dirty_rate_mib_per_s: v.dirtyRateMibPerS,
          samples: [v.cpuUtilization, ...(old?.samples ?? [])].slice(0, HISTORY_LENGTH),
          time_unix_ms: t,
        };
        if (await store.compareAndSet(key, cur, JSON.stringify(rec), ttl)) return;
      }
    }),
  ]);
}

export interface LoadSnapshot {
  snapshot: ClusterSnapshot;
  /** Snapshot index → Store id. */
  hostIds: string[];
  vmIds: string[];
  warnings: string[];
}

function parse<T>(key: string, value: string, warnings: string[]): T | undefined {
  try {
    return JSON.parse(value) as T;
  } catch {
    warnings.push(`${key}: not JSON, ignored`);
    return undefined;
  }
}

/** Reads every load record; records that cannot be planned with are left out with a warning. */
export async function readSnapshot(store: Store): Promise<LoadSnapshot> {
  const warnings: string[] = [];
  const hostIds: string[] = [];
  const hosts: ClusterSnapshot["hosts"] = [];
  const index = new Map<string, number>();
  for (const [key, value] of await store.scan(KEYS.hostPrefix)) {
    const h = parse<HostRecord>(key, value, warnings);
    if (!h) continue;
    const type = hostModel(h.model);
    if (type < 0) {
      warnings.push(`${key}: unknown model ${JSON.stringify(h.model)}, host ignored`);
      continue;
    }
    index.set(h.host_id, hosts.length);
    hosts.push({ id: hosts.length, type, asleep: h.asleep });
    hostIds.push(h.host_id);
  }
  const vmIds: string[] = [];
  const vms: ClusterSnapshot["vms"] = [];
  for (const [key, value] of await store.scan(KEYS.vmPrefix)) {
    const v = parse<VmRecord>(key, value, warnings);
    if (!v) continue;
    const host = index.get(v.host_id);
    if (host === undefined) {
      warnings.push(`VM ${v.vm_id}: host ${v.host_id} has not reported, VM left out`);
      continue;
    }
    let dest = v.migrating_to_host_id ? index.get(v.migrating_to_host_id) : undefined;
    if (v.migrating_to_host_id && dest === undefined) {
      warnings.push(`VM ${v.vm_id}: migration target ${v.migrating_to_host_id} has not reported, ignored`);
      dest = undefined;
    }
    const samples = Array.isArray(v.samples) ? v.samples : [];
    vms.push({
      id: vms.length,
      name: v.vm_id,
      mips: v.mips,
      ramMb: v.memory_mib,
      host,
      dest,
      reqMips: (samples[0] ?? 0) * v.mips,
      history: samples,
    });
    vmIds.push(v.vm_id);
  }
  return { snapshot: { hosts, vms }, hostIds, vmIds, warnings };
}
