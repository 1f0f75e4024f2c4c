// VM selection for overloaded hosts (CloudSim PowerVmSelectionPolicy*): which listed VM,
// not already migrating, to take off next.
import { type Cluster, type Host, inMigration, type Vm } from "../sim/cluster.js";
import type { Rng } from "./random.js";
import { rSquared } from "./stats.js";

export interface VmSelector {
  readonly name: string;
  pick(c: Cluster, h: Host, rng: Rng): Vm | undefined;
}

const migratable = (h: Host) => h.vms.filter((vm) => !inMigration(vm));

function argMin(vms: Vm[], metric: (vm: Vm) => number): Vm | undefined {
  let best: Vm | undefined;
  let min = Number.POSITIVE_INFINITY;
  for (const vm of vms) {
    const m = metric(vm);
    if (m < min) {
      min = m;
      best = vm;
    }
  }
  return best;
}

/** Minimum migration time: least RAM (first listed on ties). */
export const MMT: VmSelector = { name: "MMT", pick: (_c, h) => argMin(migratable(h), (vm) => vm.ramMb) };

/** Minimum utilisation: least current demand relative to the VM's size. */
export const MU: VmSelector = {
  name: "MU",
  pick: (_c, h) => argMin(migratable(h), (vm) => vm.req / vm.mips),
};

/** Random selection (seeded). */
export const RS: VmSelector = {
  name: "RS",
  pick(_c, h, rng) {
    const vms = migratable(h);
    return vms.length ? vms[Math.floor(rng() * vms.length)] : undefined;
  },
};

/** Maximum correlation: the VM whose history the others' histories explain best (R²); MMT when too little history. */
export const MC: VmSelector = {
  name: "MC",
  pick(c, h, rng) {
    const vms = migratable(h);
    if (vms.length < 2) return MMT.pick(c, h, rng);
    const m = Math.min(...vms.map((vm) => vm.history.length));
    const data = vms.map((vm) => vm.history.slice(0, m));
    const r2 = data.map((y, i) =>
      rSquared(
        y,
        data.filter((_, j) => j !== i),
      ),
    );
    if (r2.some((r) => Number.isNaN(r))) return MMT.pick(c, h, rng);
    let best = 0;
    for (let i = 1; i < r2.length; i++) if (r2[i] > r2[best]) best = i;
    return vms[best];
  },
};

export const SELECTORS: Record<string, VmSelector> = { MMT, MC, RS, MU };
