// The CloudSim PlanetLab data-centre (../shared/data/planetlab/README.md): host and VM types.
import { HP_PROLIANT_G4, HP_PROLIANT_G5, type PowerModel } from "../power/spec-power.js";
import type { Host } from "./cluster.js";

export interface HostType {
  name: string;
  cores: number;
  mipsPerCore: number;
  ramMb: number;
  /** kbit/s, as CloudSim stores it. */
  bwKbps: number;
  power: PowerModel;
}

export interface VmType {
  mips: number;
  ramMb: number;
  bwKbps: number;
}

export const HOST_TYPES: readonly HostType[] = [
  { name: "G4", cores: 2, mipsPerCore: 1860, ramMb: 4096, bwKbps: 1_000_000, power: HP_PROLIANT_G4 },
  { name: "G5", cores: 2, mipsPerCore: 2660, ramMb: 4096, bwKbps: 1_000_000, power: HP_PROLIANT_G5 },
];

export const VM_TYPES: readonly VmType[] = [
  { mips: 2500, ramMb: 870, bwKbps: 100_000 },
  { mips: 2000, ramMb: 1740, bwKbps: 100_000 },
  { mips: 1000, ramMb: 1740, bwKbps: 100_000 },
  { mips: 500, ramMb: 613, bwKbps: 100_000 },
];

export const DEFAULT_HOSTS = 800;
export const INTERVAL_S = 300;
export const DAY_S = 86_400;

/** Host i has type i mod 2. */
export function hostTypeOf(i: number): HostType {
  return HOST_TYPES[i % HOST_TYPES.length];
}

/** VM i of n has type floor(i / ceil(n / 4)). */
export function vmTypeOf(i: number, n: number): VmType {
  return VM_TYPES[Math.floor(i / Math.ceil(n / VM_TYPES.length))];
}

/** An empty, switched-off host of type t. */
export function newHost(id: number, t: HostType): Host {
  return {
    id,
    peMips: t.mipsPerCore,
    totalMips: t.cores * t.mipsPerCore,
    ramMb: t.ramMb,
    bwKbps: t.bwKbps,
    power: t.power,
    vms: [],
    ramUsed: 0,
    bwUsed: 0,
    utilMips: 0,
    inbound: new Set(),
  };
}
