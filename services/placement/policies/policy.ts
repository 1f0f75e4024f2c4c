// The one interface every placement policy implements. A policy reads a Cluster (hosts, VMs,
// their current demand and history) and returns moves; it may edit the cluster tentatively
// while planning but must leave it as found. The simulator and a live service both call it.
import type { Cluster, Host, Vm } from "../sim/cluster.js";
import type { CostModel } from "../sim/cost-model.js";

export interface Move {
  vm: Vm;
  to: Host;
}

export interface PlanContext {
  /** Simulated (or wall-clock) seconds. */
  now: number;
  cost: CostModel;
  /** Seconds between planning rounds. */
  interval: number;
}

export interface Policy {
  readonly name: string;
  /** Host for a VM being started (its req is its full MIPS); undefined when none fits. */
  initialHost(c: Cluster, vm: Vm): Host | undefined;
  /** Migrations to start now; absent for policies that never migrate. */
  plan?(c: Cluster, ctx: PlanContext): Move[];
  /** Non-power-aware baseline: every host draws its maximum power all day. */
  readonly alwaysOnAtMaxPower?: boolean;
}
