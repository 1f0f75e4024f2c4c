// The simulator against CloudSim's own figures (../shared/data/planetlab/README.md), one day.
import * as assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { makePolicy } from "../../services/placement/policies/registry.js";
import { CLOUDSIM_COST } from "../../services/placement/sim/cost-model.js";
import { simulateDay } from "../../services/placement/sim/simulate.js";
import { loadDay } from "../../services/placement/traces/load.js";
import { gateData } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";

// The shared data sits beside the checkout; VMHOP_PLANETLAB points elsewhere (a clone in /tmp).
const DATA =
  process.env.VMHOP_PLANETLAB ?? new URL("../../../shared/data/planetlab", import.meta.url).pathname;
const haveData = existsSync(`${DATA}/20110306.tsv`);
const t = gateData(
  test,
  haveData ? null : `no traces in ${DATA} (set VMHOP_PLANETLAB)`,
  "cloudsim agreement",
);

const within = (got: number, want: number, tol: number, what: string) =>
  assert.ok(Math.abs(got - want) <= tol * want, `${what}: ${got} vs CloudSim ${want} (±${tol * 100} %)`);

t("20110306: DVFS energy to the hundredth, THR-MMT-0.8 energy and migrations within 2 %", () => {
  const day = loadDay(DATA, "20110306");
  const dvfs = simulateDay(day, makePolicy("dvfs", { cost: CLOUDSIM_COST }));
  assert.equal(dvfs.energy_kwh.toFixed(2), "625.53");
  const thr = simulateDay(day, makePolicy("THR-MMT-0.8", { cost: CLOUDSIM_COST }));
  within(thr.energy_kwh, 144.74, 0.02, "energy");
  within(thr.migrations, 20908, 0.02, "migrations");
  within(thr.slatah, 0.0513, 0.1, "SLATAH");
});

test.run();
