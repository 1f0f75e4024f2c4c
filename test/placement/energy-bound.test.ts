// The clairvoyant energy bound: hand-computed cases, and below every policy on a real day.
import * as assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { makePolicy } from "../../services/placement/policies/registry.js";
import { HP_PROLIANT_G4, HP_PROLIANT_G5, specPowerModel } from "../../services/placement/power/spec-power.js";
import { CLOUDSIM_COST } from "../../services/placement/sim/cost-model.js";
import {
  dataCentrePools,
  dayEnergyBound,
  energyBound,
  envelope,
  fillOrder,
  powerBound,
  requestedMips,
  schedulingInstants,
} from "../../services/placement/sim/energy-bound.js";
import { simulateDay } from "../../services/placement/sim/simulate.js";
import { loadDay } from "../../services/placement/traces/load.js";
import { gateData } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";

const close = (got: number, want: number, what: string) =>
  assert.ok(Math.abs(got - want) < 1e-9 * Math.max(1, Math.abs(want)), `${what}: ${got}, want ${want}`);

const G4 = { mips: 3720, power: HP_PROLIANT_G4 };
const G5 = { mips: 5320, power: HP_PROLIANT_G5 };
/** Flat to half load, then steep: its envelope has two segments (0.2 then 0.3 W/MIPS at 1000 MIPS). */
const KINKED = specPowerModel("kinked", [50, 60, 70, 80, 90, 100, 130, 160, 190, 220, 250]);

test("envelope: a SPECpower host is best at full load; a kinked curve gives two segments", () => {
  // G5: 135 W / 5320 MIPS at 100 % beats every partial load (idle 93.7 W counts when on).
  const g5 = envelope(G5.mips, G5.power);
  assert.equal(g5.length, 1);
  close(g5[0].wattsPerMips, 135 / 5320, "G5 W/MIPS");
  close(g5[0].mips, 5320, "G5 span");
  const k = envelope(1000, KINKED);
  assert.equal(k.length, 2);
  close(k[0].wattsPerMips, 100 / 500, "first segment: off → 50 % (100 W)");
  close(k[0].mips, 500, "first span");
  close(k[1].wattsPerMips, 150 / 500, "second segment: 50 % → 100 % (+150 W)");
});

test("one host model: fractional hosts at the best point, then the steeper stretch", () => {
  const order = fillOrder([{ count: 2, mips: 1000, power: KINKED }]);
  // 600 MIPS: 1.2 hosts' worth at 0.2 W/MIPS (real packings: 130 W on one host, 160 W on two).
  close(powerBound(order, 600).watts, 120, "600 MIPS");
  // 1500 MIPS: both hosts' first halves (1000 × 0.2), then 500 at 0.3 — one full + one half host.
  close(powerBound(order, 1500).watts, 350, "1500 MIPS");
  const g5 = fillOrder([{ count: 3, ...G5 }]);
  close(powerBound(g5, 2660).watts, 67.5, "half a G5's MIPS: half its full power");
  close(powerBound(g5, 3 * 5320).watts, 405, "three full G5s");
});

test("two host models: the more efficient model fills first", () => {
  const order = fillOrder([
    { count: 1, ...G4 },
    { count: 1, ...G5 },
  ]);
  close(order[0].wattsPerMips, 135 / 5320, "G5 first");
  close(order[1].wattsPerMips, 117 / 3720, "then G4");
  close(powerBound(order, 5320).watts, 135, "one G5's worth");
  // 5320 on the G5, 1860 on the G4 at 117/3720 W per MIPS.
  close(powerBound(order, 7180).watts, 135 + 58.5, "G5 full + half a G4");
  assert.equal(powerBound(order, 7180).unservedMips, 0);
});

test("demand beyond capacity: every host at full power, the rest reported unserved", () => {
  const order = fillOrder([
    { count: 1, ...G4 },
    { count: 1, ...G5 },
  ]);
  const b = powerBound(order, 10_000);
  close(b.watts, 117 + 135, "both hosts at full power");
  close(b.unservedMips, 10_000 - 9040, "unserved");
});

test("zero demand costs nothing; bad input is refused", () => {
  const order = fillOrder(dataCentrePools(800));
  assert.deepEqual(powerBound(order, 0), { watts: 0, unservedMips: 0 });
  assert.deepEqual(energyBound(new Float64Array(287), dataCentrePools(800)), {
    energy_kwh: 0,
    peak_mips: 0,
    unserved_mips_s: 0,
  });
  assert.throws(() => powerBound(order, -1), /demand must be ≥ 0/);
  assert.throws(() => powerBound(order, Number.NaN), /demand must be ≥ 0/);
  assert.throws(() => fillOrder([{ count: 1.5, ...G5 }]), /whole number/);
  assert.throws(() => envelope(0, HP_PROLIANT_G5), /capacity must be positive/);
});

test("energy: trapezoids between instants, the first span free as in the simulator", () => {
  // Two G5s; demand 5320, 5320, 0 MIPS: spans (135 + 135)/2 and (135 + 0)/2 W over 300 s.
  const e = energyBound([5320, 5320, 0], [{ count: 2, ...G5 }]);
  close(e.energy_kwh, ((135 + 67.5) * 300) / 3_600_000, "energy");
  assert.equal(e.peak_mips, 5320);
  // 800 hosts: 400 of each model.
  assert.deepEqual(
    dataCentrePools(800).map((p) => [p.count, p.mips]),
    [
      [400, 3720],
      [400, 5320],
    ],
  );
});

test("requested MIPS: VM type × interpolated sample, and a VM ends once its demand is 0", () => {
  // Four VMs → one of each type (2500, 2000, 1000, 500 MIPS). VM 3 is idle from sample 3 on.
  const s = (f: (k: number) => number) => Float64Array.from({ length: 288 }, (_, k) => f(k));
  const day = {
    day: "hand",
    vms: [
      { name: "a", samples: s(() => 0.5) },
      { name: "b", samples: s(() => 0.25) },
      { name: "c", samples: s(() => 1) },
      { name: "d", samples: s((k) => (k === 3 || k === 4 ? 0 : 1)) },
    ],
  };
  const t = schedulingInstants();
  assert.equal(t.length, 287);
  close(t[0], 300.1, "first instant");
  const d = requestedMips(day, t);
  // Instant 1 (300.1 s): d between samples 1 and 2 → 500. Instant 3 (900.1 s): 0, so it ends
  // and stays off though its samples come back to 1 from sample 5.
  close(d[0], 1250 + 500 + 1000 + 500, "instant 1");
  close(d[2], 1250 + 500 + 1000, "instant 3");
  close(d[10], 1250 + 500 + 1000, "later");
});

// The shared data sits beside the checkout; VMHOP_PLANETLAB points elsewhere.
const DATA =
  process.env.VMHOP_PLANETLAB ?? new URL("../../../shared/data/planetlab", import.meta.url).pathname;
const haveData = existsSync(`${DATA}/20110306.tsv`);
const t = gateData(test, haveData ? null : `no traces in ${DATA} (set VMHOP_PLANETLAB)`, "energy bound");

t(
  "20110306: the bound is below the frugal policies' energy, and the requested MIPS are the simulator's",
  () => {
    const day = loadDay(DATA, "20110306");
    const bound = dayEnergyBound(day);
    assert.equal(bound.unserved_mips_s, 0);
    assert.ok(bound.energy_kwh > 50, `bound ${bound.energy_kwh} kWh`);
    // What the policy sees at each instant is what the bound serves.
    const want = requestedMips(day);
    const seen: number[] = [];
    const vmhop = makePolicy("vmhop", { cost: CLOUDSIM_COST });
    const plan = vmhop.plan?.bind(vmhop);
    assert.ok(plan);
    vmhop.plan = (c, ctx) => {
      seen.push(c.vms.reduce((s, vm) => s + (vm.alive && vm.host >= 0 ? vm.req : 0), 0));
      return plan(c, ctx);
    };
    const energies: Record<string, number> = { vmhop: simulateDay(day, vmhop).energy_kwh };
    assert.equal(seen.length, want.length);
    for (const [k, x] of seen.entries()) close(x, want[k], `instant ${k + 1}`);
    // The frugal ones (the bench checks every policy on every day).
    for (const name of ["dvfs", "THR-MMT-0.8", "LR-MMT-1.2"])
      energies[name] = simulateDay(day, makePolicy(name, { cost: CLOUDSIM_COST })).energy_kwh;
    for (const [name, e] of Object.entries(energies))
      assert.ok(bound.energy_kwh <= e, `${name}: ${e} kWh below the bound ${bound.energy_kwh} kWh`);
  },
);

test.run();
