// Cluster state with CloudSim's host semantics (VmSchedulerTimeSharedOverSubscription, RAM/BW
// provisioners, a migrating VM listed on both hosts). Policies read and tentatively edit it;
// the simulator owns time. Allocation is computed from the host's VM list on demand (hosts
// hold at most ~10 VMs because of bandwidth), so tentative edits cannot leave stale caches.
import type { PowerModel } from "../power/spec-power.js";

export interface Vm {
  readonly id: number;
  readonly name: string;
  readonly mips: number;
  readonly ramMb: number;
  readonly bwKbps: number;
  /** Host that runs it (the source while migrating); -1 before placement or after it ended. */
  host: number;
  /** Destination while migrating, else -1. */
  dest: number;
  /** Requested MIPS at the last update (uncapped). */
  req: number;
  /** Utilisation samples at scheduling instants, newest first, at most HISTORY_LENGTH. */
  history: number[];
  alive: boolean;
  /**
   * Started VMs ask for no RAM or bandwidth from the provisioners: CloudSim's PlanetLab
   * workload models RAM and bandwidth use as zero (UtilizationModelNull), so only the start
   * is constrained by them. Migration time still uses the full RAM.
   */
  started: boolean;
}

export interface Host {
  readonly id: number;
  readonly peMips: number;
  readonly totalMips: number;
  readonly ramMb: number;
  readonly bwKbps: number;
  readonly power: PowerModel;
  /** VMs listed on the host in CloudSim's order; includes VMs migrating in. */
  vms: Vm[];
  ramUsed: number;
  bwUsed: number;
  /** Allocated MIPS at the last update (CloudSim's utilizationMips). */
  utilMips: number;
  /** VMs migrating in (usually to stay; a VM re-planned in the same round can be inbound to two hosts). */
  inbound: Set<Vm>;
}

export const HISTORY_LENGTH = 30;
/** Share of a migrating VM's MIPS the source still gives it. */
export const MIGRATION_SOURCE_SHARE = 0.9;
/** Share of a migrating VM's MIPS reserved on the destination. */
export const MIGRATION_DEST_SHARE = 0.1;

export const ramDemand = (vm: Vm) => (vm.started ? 0 : vm.ramMb);
export const bwDemand = (vm: Vm) => (vm.started ? 0 : vm.bwKbps);

export const inMigration = (vm: Vm) => vm.dest >= 0;
export const migratingIn = (h: Host, vm: Vm) => h.inbound.has(vm);
const migratingOut = (h: Host, vm: Vm) => vm.dest >= 0 && vm.host === h.id;

export class Cluster {
  constructor(
    readonly hosts: Host[],
    readonly vms: Vm[],
  ) {}

  /** CPU utilisation of the last update, clamped like CloudSim (1 < u < 1.01 counts as 1). */
  utilization(h: Host): number {
    const u = h.utilMips / h.totalMips;
    return u > 1 && u < 1.01 ? 1 : u;
  }

  /** Scheduler demand: each VM capped at one core, migrating-in VMs count 10 %. */
  private demand(h: Host): number {
    let sum = 0;
    for (const vm of h.vms) {
      const c = Math.min(vm.req, h.peMips);
      sum += migratingIn(h, vm) ? c * MIGRATION_DEST_SHARE : c;
    }
    return sum;
  }

  /** MIPS the scheduler gives vm on h (scaled down, floored, when the host is oversubscribed). */
  allocated(h: Host, vm: Vm, demand = this.demand(h)): number {
    const c = Math.min(vm.req, h.peMips);
    if (demand <= h.totalMips) {
      if (migratingOut(h, vm)) return c * MIGRATION_SOURCE_SHARE;
      if (migratingIn(h, vm)) return c * MIGRATION_DEST_SHARE;
      return c;
    }
    const scale = h.totalMips / demand;
    if (migratingOut(h, vm)) return Math.floor(c * scale * MIGRATION_SOURCE_SHARE);
    if (migratingIn(h, vm)) return Math.floor(c * MIGRATION_DEST_SHARE * scale);
    return Math.floor(c * scale);
  }

  availableMips(h: Host): number {
    const d = this.demand(h);
    return d <= h.totalMips ? h.totalMips - d : 0;
  }

  /** CloudSim's getUtilizationOfCpuMips: allocated MIPS, counting migrating-in VMs at 100 %. */
  potentialMips(h: Host): number {
    const d = this.demand(h);
    let sum = 0;
    for (const vm of h.vms) {
      const a = this.allocated(h, vm, d);
      if (migratingIn(h, vm)) sum += (a * MIGRATION_SOURCE_SHARE) / MIGRATION_DEST_SHARE;
      sum += a;
    }
    return sum;
  }

  /** Sum of requested MIPS of every VM listed on h (what threshold detectors compare). */
  requestedMips(h: Host): number {
    let sum = 0;
    for (const vm of h.vms) sum += vm.req;
    return sum;
  }

  isSuitable(h: Host, vm: Vm): boolean {
    return (
      h.peMips >= vm.req &&
      this.availableMips(h) >= vm.req &&
      h.ramMb - h.ramUsed >= ramDemand(vm) &&
      h.bwKbps - h.bwUsed >= bwDemand(vm)
    );
  }

  /** Tentatively lists vm on h (CloudSim's vmCreate); false when RAM or bandwidth lack. */
  place(h: Host, vm: Vm): boolean {
    if (h.ramMb - h.ramUsed < ramDemand(vm) || h.bwKbps - h.bwUsed < bwDemand(vm)) return false;
    h.vms.push(vm);
    h.ramUsed += ramDemand(vm);
    h.bwUsed += bwDemand(vm);
    return true;
  }

  /** Removes vm from h's list (CloudSim's vmDestroy). */
  remove(h: Host, vm: Vm): void {
    const i = h.vms.indexOf(vm);
    if (i < 0) return;
    h.vms.splice(i, 1);
    h.ramUsed -= ramDemand(vm);
    h.bwUsed -= bwDemand(vm);
  }

  /** Host utilisation history (CloudSim's PowerHostUtilizationHistory): VM histories weighted by MIPS, zero tail trimmed. */
  hostHistory(h: Host, extra?: Vm): number[] {
    const out = new Array<number>(HISTORY_LENGTH).fill(0);
    const add = (vm: Vm) => {
      for (let i = 0; i < vm.history.length; i++) out[i] += (vm.history[i] * vm.mips) / h.totalMips;
    };
    for (const vm of h.vms) add(vm);
    if (extra) add(extra);
    return out.slice(0, countNonZeroBeginning(out));
  }

  /** Marks every placed VM started: from now on they hold no RAM or bandwidth reservation. */
  startAll(): void {
    for (const vm of this.vms) vm.started = true;
    for (const h of this.hosts) {
      h.ramUsed = 0;
      h.bwUsed = 0;
    }
  }

  /** Saves every host's list so tentative edits can be undone (CloudSim's save/restoreAllocation). */
  snapshot(): () => void {
    const saved = this.hosts.map((h) => ({ vms: [...h.vms], ram: h.ramUsed, bw: h.bwUsed }));
    return () => {
      this.hosts.forEach((h, i) => {
        // Restored order as CloudSim rebuilds it: migrating-in VMs first, then the others.
        const s = saved[i].vms;
        h.vms = [...s.filter((v) => migratingIn(h, v)), ...s.filter((v) => !migratingIn(h, v))];
        h.ramUsed = saved[i].ram;
        h.bwUsed = saved[i].bw;
      });
    };
  }
}

/** CloudSim's MathUtil.countNonZeroBeginning: index of the last non-zero value + 1, and 1 when all are zero. */
export function countNonZeroBeginning(data: readonly number[]): number {
  let i = data.length - 1;
  while (i >= 0) {
    if (data[i--] !== 0) break;
  }
  return i + 2;
}
