// Where a planned move goes when its destination host did not wake: the awake host (not going
// to sleep, not the VM's source) with the least room left that still takes the VM's demand now
// under the packing target, counting the plan's other moves; when none has room, apply.ts wakes
// a spare sleeping host (spareHosts: the most efficient first) and asks again (pure).
import { HOST_TYPES } from "../sim/setup.js";
import type { LoadSnapshot } from "./load.js";
import type { PlanRecord } from "./plans.js";

/** The packing target the fallback keeps under (vmhop's under the CloudSim cost model). */
export const FALLBACK_FILL = 0.8;

export interface Fallback {
  vm_id: string;
  /** The new destination, or undefined: the move is dropped (the VM stays). */
  to_host_id?: string;
}

/**
 * For each move to a host in `failed`: its new destination. `awake`: hosts that are up now
 * (the snapshot's awake hosts plus those woken for the plan).
 */
export function fallbacks(
  plan: Pick<PlanRecord, "moves" | "hosts_to_sleep">,
  load: LoadSnapshot,
  awake: ReadonlySet<string>,
  failed: ReadonlySet<string>,
): Fallback[] {
  const { snapshot, hostIds, vmIds } = load;
  const demand = new Map(snapshot.vms.map((v, i) => [vmIds[i], v.reqMips]));
  // Demand on each host once the plan's moves that still stand are carried out.
  const used = new Map<string, number>(hostIds.map((h) => [h, 0]));
  const at = new Map(snapshot.vms.map((v, i) => [vmIds[i], hostIds[v.host]]));
  for (const m of plan.moves) if (!failed.has(m.to_host_id)) at.set(m.vm_id, m.to_host_id);
  for (const [vm, h] of at) if (!failed.has(h)) used.set(h, (used.get(h) ?? 0) + (demand.get(vm) ?? 0));
  const capacity = new Map(
    snapshot.hosts.map((h, i) => [hostIds[i], HOST_TYPES[h.type].cores * HOST_TYPES[h.type].mipsPerCore]),
  );
  const sleeping = new Set(plan.hosts_to_sleep);
  const out: Fallback[] = [];
  for (const m of plan.moves) {
    if (!failed.has(m.to_host_id)) continue;
    const need = demand.get(m.vm_id) ?? Number.POSITIVE_INFINITY;
    let best: string | undefined;
    let bestRoom = Number.POSITIVE_INFINITY;
    for (const h of hostIds) {
      if (!awake.has(h) || failed.has(h) || sleeping.has(h) || h === m.from_host_id) continue;
      const room = (capacity.get(h) ?? 0) * FALLBACK_FILL - (used.get(h) ?? 0) - need;
      if (room >= 0 && room < bestRoom) [best, bestRoom] = [h, room];
    }
    if (best) used.set(best, (used.get(best) ?? 0) + need);
    out.push({ vm_id: m.vm_id, to_host_id: best });
  }
  return out;
}

/**
 * Sleeping hosts that could be woken instead, most MIPS per peak watt first (as the policy
 * wakes): not already tried (`tried`), not going to sleep.
 */
export function spareHosts(
  plan: Pick<PlanRecord, "hosts_to_sleep">,
  load: LoadSnapshot,
  tried: ReadonlySet<string>,
): string[] {
  const sleeping = new Set(plan.hosts_to_sleep);
  const perWatt = (type: number) => {
    const t = HOST_TYPES[type];
    return (t.cores * t.mipsPerCore) / t.power.maxPower;
  };
  return load.snapshot.hosts
    .map((h, i) => ({ id: load.hostIds[i], h }))
    .filter(({ id, h }) => h.asleep && !tried.has(id) && !sleeping.has(id))
    .sort((a, b) => perWatt(b.h.type) - perWatt(a.h.type))
    .map(({ id }) => id);
}
