// How long a migration degrades its VM. CloudSim: the whole RAM crosses at half the host
// bandwidth (the other half is left for the VMs' own traffic) while the VM runs at 90 %.
// Post-copy: the VM switches to the destination after the device state crosses; the
// degraded phase is the time to pull its working set on demand, not its whole RAM.
import type { Host, Vm } from "./cluster.js";

export interface CostModel {
  readonly name: "cloudsim" | "postcopy";
  /** Seconds during which the VM is degraded and listed on both hosts. */
  durationS(vm: Vm, dest: Host): number;
}

/** MB/s available to a migration: half the host bandwidth (kbit/s → MB/s as CloudSim: /8000). */
const migrationMBps = (h: Host) => h.bwKbps / (2 * 8000);

export const CLOUDSIM_COST: CostModel = {
  name: "cloudsim",
  durationS: (vm, dest) => vm.ramMb / migrationMBps(dest),
};

/** Switch-over (device state and a few pages) measured well under a second on the test bed. */
export const POSTCOPY_SWITCH_S = 0.5;
/** Fraction of RAM a PlanetLab-like guest touches soon after switch-over (pulled on fault). */
export const POSTCOPY_HOT_FRACTION = 0.1;

export const POSTCOPY_COST: CostModel = {
  name: "postcopy",
  durationS: (vm, dest) => POSTCOPY_SWITCH_S + (vm.ramMb * POSTCOPY_HOT_FRACTION) / migrationMBps(dest),
};

export function costModelByName(name: string): CostModel {
  if (name === "cloudsim") return CLOUDSIM_COST;
  if (name === "postcopy") return POSTCOPY_COST;
  throw new Error(`unknown cost model ${JSON.stringify(name)} (cloudsim | postcopy)`);
}
