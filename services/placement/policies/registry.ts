// Policy names → policies. Beloglazov's combinations are DETECTOR-SELECTOR-PARAMETER, e.g.
// THR-MMT-0.8, IQR-MC-1.5, LR-MMT-1.2 (case-insensitive), plus the baselines and vmhop.
import type { CostModel } from "../sim/cost-model.js";
import { INTERVAL_S } from "../sim/setup.js";
import { BeloglazovPolicy } from "./beloglazov.js";
import { type Detector, iqrDetector, lrDetector, madDetector, thr } from "./detectors.js";
import { DVFS, NON_POWER_AWARE } from "./first-fit.js";
import { GaPolicy } from "./ga.js";
import type { Policy } from "./policy.js";
import { SELECTORS } from "./selection.js";
import { VmhopPolicy } from "./vmhop.js";

export const DEFAULT_POLICY = "vmhop";

const DETECTORS: Record<string, (p: number) => Detector> = {
  THR: thr,
  IQR: iqrDetector,
  MAD: madDetector,
  LR: (p) => lrDetector(p, "LR"),
  LRR: (p) => lrDetector(p, "LRR"),
};

/** The parameters of Beloglazov & Buyya's CloudSim examples. */
const STANDARD_PARAMS: Record<string, number> = { THR: 0.8, IQR: 1.5, MAD: 2.5, LR: 1.2, LRR: 1.2 };

export interface PolicyInfo {
  name: string;
  describe: string;
}

export function listPolicies(): PolicyInfo[] {
  const out: PolicyInfo[] = [
    { name: "vmhop", describe: "vmhop: cost-aware consolidation (default)" },
    { name: "npa", describe: "non-power-aware: first fit, every host on at full power" },
    { name: "dvfs", describe: "DVFS: first fit, no migrations, idle hosts off" },
    { name: "ga", describe: "genetic-algorithm packing (power + migration price), seeded" },
  ];
  for (const [d, p] of Object.entries(STANDARD_PARAMS))
    for (const s of Object.keys(SELECTORS))
      out.push({
        name: `${d}-${s}-${p}`,
        describe: `Beloglazov: ${d} detector (parameter ${p}), ${s} selection, PABFD`,
      });
  return out;
}

export interface PolicyOptions {
  cost: CostModel;
  seed?: number;
}

export function makePolicy(name: string, opts: PolicyOptions): Policy {
  const lower = name.toLowerCase();
  if (lower === "npa" || lower === "non-power-aware") return NON_POWER_AWARE;
  if (lower === "dvfs") return DVFS;
  if (lower === "ga") return new GaPolicy({ cost: opts.cost, interval: INTERVAL_S, seed: opts.seed });
  if (lower === "vmhop") return new VmhopPolicy({ cost: opts.cost, interval: INTERVAL_S, seed: opts.seed });
  const m = /^([a-z]+)-([a-z]+)-([0-9]+(?:\.[0-9]+)?)$/i.exec(name);
  const det = m && DETECTORS[m[1].toUpperCase()];
  const sel = m && SELECTORS[m[2].toUpperCase()];
  if (!m || !det || !sel)
    throw new Error(
      `unknown policy ${JSON.stringify(name)}; see 'vmhop placement policies' (e.g. THR-MMT-0.8, LR-MMT-1.2)`,
    );
  const canonical = `${m[1].toUpperCase()}-${m[2].toUpperCase()}-${m[3]}`;
  return new BeloglazovPolicy(
    { name: canonical, detector: det(Number(m[3])), selector: sel, seed: opts.seed },
    { cost: opts.cost, interval: INTERVAL_S },
  );
}
