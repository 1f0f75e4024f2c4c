// CloudSim's PowerVmAllocationPolicySimple: the first host that fits, no migrations. With
// CloudSim's accounting it is the DVFS baseline (idle hosts off, power follows load); the
// non-power-aware baseline keeps every host on at full power.
import type { Cluster, Host, Vm } from "../sim/cluster.js";
import type { Policy } from "./policy.js";

export function firstFitHost(c: Cluster, vm: Vm): Host | undefined {
  return c.hosts.find((h) => c.isSuitable(h, vm));
}

export const DVFS: Policy = { name: "dvfs", initialHost: firstFitHost };
export const NON_POWER_AWARE: Policy = { name: "npa", initialHost: firstFitHost, alwaysOnAtMaxPower: true };
