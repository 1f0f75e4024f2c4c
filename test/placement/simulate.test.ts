import * as assert from "node:assert/strict";
import { firstFitHost } from "../../services/placement/policies/first-fit.js";
import type { Policy } from "../../services/placement/policies/policy.js";
import { seededRng } from "../../services/placement/policies/random.js";
import { makePolicy } from "../../services/placement/policies/registry.js";
import { HP_PROLIANT_G4, HP_PROLIANT_G5 } from "../../services/placement/power/spec-power.js";
import { CLOUDSIM_COST, POSTCOPY_COST } from "../../services/placement/sim/cost-model.js";
import { simulateDay } from "../../services/placement/sim/simulate.js";
import { utilizationAt } from "../../services/placement/sim/trace-demand.js";
import type { DayTraces } from "../../services/placement/traces/trace.js";
import { test } from "../helpers/uvu.js";

const constant = (u: number) => new Float64Array(288).fill(u);

/** A synthetic day: smooth random walks, some VMs going idle (demand 0 ends a VM, as in CloudSim). */
function synthetic(n: number, seed: number): DayTraces {
  const rng = seededRng(seed);
  const vms = [...Array(n).keys()].map((i) => {
    const s = new Float64Array(288);
    let u = rng();
    for (let k = 0; k < 288; k++) {
      u = Math.min(1, Math.max(0.01, u + (rng() - 0.5) * 0.3));
      s[k] = Math.round(u * 100) / 100;
    }
    return { name: `vm${i}`, samples: s };
  });
  return { day: "synthetic", vms };
}

test("utilisation is exact at samples and linear in between", () => {
  const s = new Float64Array([0.2, 0.4, 0.1]);
  assert.equal(utilizationAt(s, 300, 300), 0.4);
  assert.ok(Math.abs(utilizationAt(s, 450, 300) - 0.25) < 1e-12);
  assert.ok(
    Math.abs(utilizationAt(s, 600.1, 300) - 0.1 * (1 - 0.1 / 300)) < 1e-12,
    "after the last sample comes 0",
  );
});

test("one constant VM: energy by hand (power at its load × 85,800 s; the first span has no prior load)", () => {
  const day: DayTraces = { day: "d", vms: [{ name: "a", samples: constant(0.5) }] };
  const m = simulateDay(day, makePolicy("dvfs", { cost: CLOUDSIM_COST }), { hosts: 2 });
  // type-0 VM (2500 MIPS) does not fit a G4 core, so it runs on host 1 (G5, 5320 MIPS)
  const expected = (HP_PROLIANT_G5.power(1250 / 5320) * 85_800) / 3_600_000;
  // (the last instant, 86,100.1 s, already leans 0.1/300 towards the zero after the last sample)
  assert.ok(Math.abs(m.energy_kwh - expected) < 1e-6, `${m.energy_kwh} vs ${expected}`);
  assert.equal(m.migrations, 0);
  assert.equal(m.slatah, 0);
  // host 0 never ran anything: CloudSim counts it as one shutdown
  assert.equal(m.host_shutdowns, 1);
});

test("non-power-aware: every host at full power for the whole accounted time", () => {
  const day: DayTraces = { day: "d", vms: [{ name: "a", samples: constant(0.1) }] };
  const m = simulateDay(day, makePolicy("npa", { cost: CLOUDSIM_COST }), { hosts: 2 });
  assert.ok(Math.abs(m.energy_kwh - ((117 + 135) * 86_100.1) / 3_600_000) < 1e-6);
});

test("a VM whose demand drops to zero ends (CloudSim's completed VMs) and its host switches off", () => {
  const s = constant(0.5);
  s.fill(0, 100);
  const day: DayTraces = { day: "d", vms: [{ name: "a", samples: s }] };
  const m = simulateDay(day, makePolicy("dvfs", { cost: CLOUDSIM_COST }), { hosts: 2 });
  const full = (HP_PROLIANT_G5.power(1250 / 5320) * 85_800) / 3_600_000;
  assert.ok(m.energy_kwh < full * 0.4, `${m.energy_kwh}`);
  assert.equal(m.host_shutdowns, 2);
});

test("consolidation migrates, saves energy against DVFS, and SLAV = SLATAH × PDM", () => {
  const day = synthetic(40, 3);
  const dvfs = simulateDay(day, makePolicy("dvfs", { cost: CLOUDSIM_COST }), { hosts: 40 });
  const thr = simulateDay(day, makePolicy("THR-MMT-0.8", { cost: CLOUDSIM_COST }), { hosts: 40 });
  assert.ok(thr.migrations > 0);
  assert.ok(thr.energy_kwh < dvfs.energy_kwh, `${thr.energy_kwh} < ${dvfs.energy_kwh}`);
  assert.ok(thr.pdm > 0 && thr.slatah > 0);
  assert.ok(Math.abs(thr.slav - thr.slatah * thr.pdm) < 1e-15);
  assert.ok(Math.abs(thr.esv - thr.energy_kwh * thr.slav) < 1e-12);
});

test("determinism: the same seed gives the same day, random selection included", () => {
  const day = synthetic(40, 5);
  const run = (seed: number) => {
    const { plan_ms_p99: _, ...m } = simulateDay(
      day,
      makePolicy("THR-RS-0.8", { cost: CLOUDSIM_COST, seed }),
      { hosts: 40 },
    );
    return m;
  };
  assert.deepEqual(run(11), run(11));
  const v = (seed: number) => {
    const { plan_ms_p99: _, ...m } = simulateDay(day, makePolicy("vmhop", { cost: CLOUDSIM_COST, seed }), {
      hosts: 40,
    });
    return m;
  };
  assert.deepEqual(v(1), v(1));
});

test("post-copy cost model shortens the degraded phase: less PDM than CloudSim's model", () => {
  const day = synthetic(40, 3);
  const a = simulateDay(day, makePolicy("THR-MMT-0.8", { cost: CLOUDSIM_COST }), {
    hosts: 40,
    cost: CLOUDSIM_COST,
  });
  const b = simulateDay(day, makePolicy("THR-MMT-0.8", { cost: POSTCOPY_COST }), {
    hosts: 40,
    cost: POSTCOPY_COST,
  });
  assert.ok(b.pdm < a.pdm, `${b.pdm} < ${a.pdm}`);
});

test("a policy that moves a VM to a host without room is an error, not a silent skip", () => {
  const evil: Policy = {
    name: "evil",
    initialHost: firstFitHost,
    plan: (c) => {
      const vm = c.vms.find((v) => v.host >= 0);
      return vm ? [{ vm, to: { ...c.hosts[0], ramMb: -1 } }] : [];
    },
  };
  assert.throws(() => simulateDay(synthetic(4, 1), evil, { hosts: 4 }), /without room/);
});

test("one migration by hand: energy, SLATAH and PDM follow CloudSim's accounting", () => {
  // one 2500-MIPS / 870-MB VM at a constant 40 % (1000 MIPS) starts on host 1 (G5; a G4 core
  // is too small for it) and is moved to host 3 at the first round (300.1 s)
  const day: DayTraces = { day: "d", vms: [{ name: "a", samples: constant(0.4) }] };
  const mover: Policy = {
    name: "mover",
    initialHost: firstFitHost,
    plan: (c, ctx) => (ctx.now < 400 ? [{ vm: c.vms[0], to: c.hosts[3] }] : []),
  };
  const m = simulateDay(day, mover, { hosts: 4 });
  const d = 870 / (1_000_000 / 16_000); // 13.92 s at half of 1 Gbit/s
  const t0 = 300.1;
  const end = 86_100.1;
  const P = (mips: number) => HP_PROLIANT_G5.power(mips / 5320);
  const last = 2500 * utilizationAt(constant(0.4), end, 300);
  const joules =
    P(1000) * d + // source until the copy completes
    P(100) * d + // destination reserves 10 % meanwhile
    P(1000) * (end - 300 - (t0 + d)) + // destination afterwards
    ((P(1000) + P(last)) / 2) * 300; // last span leans towards the zero after the day
  assert.equal(m.migrations, 1);
  assert.ok(Math.abs(m.energy_kwh - joules / 3.6e6) < 1e-9, `${m.energy_kwh} vs ${joules / 3.6e6}`);
  // the destination counts as violating while the VM copies (100 of 1000 MIPS given)
  assert.ok(Math.abs(m.slatah - d / (d + (end - t0))) < 1e-12, `${m.slatah}`);
  // the VM is short 10 % (100 MIPS) for d seconds, out of 1000 MIPS over 85,800 s
  assert.ok(Math.abs(m.pdm - (100 * d) / (1000 * (end - t0))) < 1e-12, `${m.pdm}`);
});

test("a VM no host can start is left out, as in CloudSim, and the day still runs", () => {
  // one G4 host: a 2500-MIPS VM does not fit its 1860-MIPS cores; the 500-MIPS one does
  const day: DayTraces = {
    day: "d",
    vms: [
      { name: "big", samples: constant(0.5) },
      { name: "b", samples: constant(0.5) },
      { name: "c", samples: constant(0.5) },
      { name: "small", samples: constant(0.5) },
    ],
  };
  const m = simulateDay(day, makePolicy("dvfs", { cost: CLOUDSIM_COST }), { hosts: 1 });
  // types by position: 2500, 2000, 1000, 500 MIPS; 1000 and 500 fit (RAM 1740 + 613 ≤ 4096)
  const watts = HP_PROLIANT_G4.power((500 + 250) / 3720);
  assert.ok(Math.abs(m.energy_kwh - (watts * 85_800) / 3.6e6) < 1e-4, `${m.energy_kwh}`);
});

test.run();
