// Beloglazov's overload detectors (CloudSim PowerVmAllocationPolicyMigration*). Each looks at
// the VMs currently listed on the host (tentative edits included), with `extra` as a VM
// being considered for the host.
import { type Cluster, countNonZeroBeginning, type Host, type Vm } from "../sim/cluster.js";
import { iqr, linearFit, mad } from "./stats.js";

export interface Detector {
  readonly name: string;
  overloaded(
    c: Cluster,
    h: Host,
    ctx: { interval: number; migrationS: (vm: Vm, h: Host) => number },
  ): boolean;
}

/** Static threshold on requested / capacity. */
export function thr(threshold: number): Detector {
  return {
    name: `THR-${threshold}`,
    overloaded: (c, h) => c.requestedMips(h) / h.totalMips > threshold,
  };
}

/** Threshold used before a host has enough history (CloudSim's PlanetLab runner). */
const FALLBACK = thr(0.7);
/** Samples of host history IQR and MAD need; LR needs REGRESSION_LENGTH. */
const MIN_HISTORY = 12;
const REGRESSION_LENGTH = 10;

function adaptive(name: string, spread: (xs: number[]) => number, s: number): Detector {
  return {
    name: `${name}-${s}`,
    overloaded(c, h, ctx) {
      const hist = c.hostHistory(h);
      if (countNonZeroBeginning(hist) < MIN_HISTORY) return FALLBACK.overloaded(c, h, ctx);
      return c.requestedMips(h) / h.totalMips > 1 - s * spread(hist);
    },
  };
}

export const iqrDetector = (s: number) => adaptive("IQR", iqr, s);
export const madDetector = (s: number) => adaptive("MAD", mad, s);

/**
 * Local regression over the last 10 samples, predicting as many intervals ahead as the
 * slowest migration off this host takes. CloudSim 3.0.3's LR and LRR both reduce to this
 * unweighted fit (its tricube weights never trigger the weighted branch).
 */
export function lrDetector(s: number, name = "LR"): Detector {
  return {
    name: `${name}-${s}`,
    overloaded(c, h, ctx) {
      const hist = c.hostHistory(h);
      if (hist.length < REGRESSION_LENGTH) return FALLBACK.overloaded(c, h, ctx);
      const y = hist.slice(0, REGRESSION_LENGTH).reverse();
      const [a, b] = linearFit(y);
      let maxS = 0;
      for (const vm of h.vms) maxS = Math.max(maxS, ctx.migrationS(vm, h));
      const ahead = Math.ceil(maxS / ctx.interval);
      return (a + b * (REGRESSION_LENGTH + ahead)) * s >= 1;
    },
  };
}
