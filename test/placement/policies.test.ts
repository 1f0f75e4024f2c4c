// Each policy's decisions on small hand-made clusters.
import * as assert from "node:assert/strict";
import { BeloglazovPolicy } from "../../services/placement/policies/beloglazov.js";
import { iqrDetector, lrDetector, thr } from "../../services/placement/policies/detectors.js";
import { DVFS } from "../../services/placement/policies/first-fit.js";
import type { PlanContext } from "../../services/placement/policies/policy.js";
import { seededRng } from "../../services/placement/policies/random.js";
import { listPolicies, makePolicy } from "../../services/placement/policies/registry.js";
import { MC, MMT, MU, RS, type VmSelector } from "../../services/placement/policies/selection.js";
import { Cluster, type Vm } from "../../services/placement/sim/cluster.js";
import { CLOUDSIM_COST } from "../../services/placement/sim/cost-model.js";
import { test } from "../helpers/uvu.js";
import { cluster, host, vm } from "./cluster-fixture.js";

const ctx: PlanContext = { now: 300.1, cost: CLOUDSIM_COST, interval: 300 };
const policy = (thrV: number, sel: VmSelector = MMT) =>
  new BeloglazovPolicy(
    { name: "t", detector: thr(thrV), selector: sel },
    { cost: CLOUDSIM_COST, interval: 300 },
  );
const moves = (c: Cluster, p: BeloglazovPolicy) => p.plan(c, ctx).map((m) => [m.vm.id, m.to.id]);

test("THR: an overloaded host sheds its smallest-RAM VM to the host whose power rises least", () => {
  // PABFD compares P(after) with P(now), and an empty host's P(now) is its idle power, so
  // the idle G4 (+8.9 W for 1000 MIPS) beats the loaded G5 (+10.4 W).
  // host 1 (G5, 5320 MIPS) at (2000 + 1800 + 1000) / 5320 = 90 % > 80 %
  const a = vm(0, 2500, 2000, 1740);
  const b = vm(1, 2000, 1800, 1740);
  const small = vm(2, 1000, 1000, 613);
  const other = vm(3, 2500, 2000, 870); // host 3 (G5) at 38 %: the flatter part of its curve
  const c = cluster(4, [
    [a, 1],
    [b, 1],
    [small, 1],
    [other, 3],
  ]);
  const before = c.hosts.map((h) => [...h.vms]);
  const m = moves(c, policy(0.8));
  assert.deepEqual(m[0], [2, 0]);
  // the plan leaves the cluster as it found it
  assert.deepEqual(
    c.hosts.map((h) => h.vms),
    before,
  );
});

test("no overload, no underload worth emptying: no moves when nothing fits elsewhere", () => {
  const c = cluster(2, [[vm(0, 2500, 2400), 1]]);
  assert.deepEqual(moves(c, policy(0.8)), []);
});

test("underload: the least-utilised host is emptied when all its VMs fit elsewhere", () => {
  const c = cluster(4, [
    [vm(0, 2500, 2000), 1],
    [vm(1, 500, 300), 3],
  ]);
  assert.deepEqual(moves(c, policy(0.8)), [[1, 1]]);
});

test("underload: nothing moves if one of the host's VMs fits nowhere", () => {
  // host 3 holds 2 VMs; host 1 can take only one of them below 80 %
  const c = cluster(4, [
    [vm(0, 2500, 2500), 1],
    [vm(1, 2500, 1500), 3],
    [vm(2, 2500, 1500), 3],
  ]);
  const m = moves(c, policy(0.8));
  assert.ok(!m.some(([id]) => id === 1 || id === 2), JSON.stringify(m));
});

test("selection policies pick as defined", () => {
  const h = host(1);
  const c = new Cluster([h], []);
  const big = vm(0, 2000, 1800, 1740, [0.9, 0.8, 0.7, 0.6, 0.5]);
  const idle = vm(1, 1000, 100, 1740, [0.1, 0.2, 0.3, 0.4, 0.5]);
  const smallRam = vm(2, 2500, 2000, 613, [0.8, 0.8, 0.1, 0.8, 0.2]);
  for (const v of [big, idle, smallRam]) c.place(h, v);
  const rng = seededRng(1);
  assert.equal(MMT.pick(c, h, rng), smallRam);
  assert.equal(MU.pick(c, h, rng), idle);
  assert.ok([big, idle, smallRam].includes(MC.pick(c, h, rng) as Vm));
  // RS: same seed, same sequence
  const r1 = seededRng(7);
  const r2 = seededRng(7);
  const s1 = [...Array(10)].map(() => RS.pick(c, h, r1)?.id);
  const s2 = [...Array(10)].map(() => RS.pick(c, h, r2)?.id);
  assert.deepEqual(s1, s2);
  assert.ok(new Set(s1).size > 1, "random selection varies");
  // a VM already migrating is never selected
  big.dest = 5;
  idle.dest = 5;
  smallRam.dest = 5;
  assert.equal(MMT.pick(c, h, rng), undefined);
});

test("IQR and LR fall back to THR 0.7 without enough history, then use it", () => {
  const h = host(1);
  const c = new Cluster([h], []);
  const v = vm(0, 2500, 0.75 * 5320, 870, [0.5, 0.5]);
  c.place(h, v);
  const dctx = { interval: 300, migrationS: () => 14 };
  assert.equal(iqrDetector(1.5).overloaded(c, h, dctx), true); // 75 % > 70 %
  assert.equal(lrDetector(1.2).overloaded(c, h, dctx), true);
  // 12 flat samples: IQR 0, threshold 1 -> 75 % is fine
  v.history = Array(12).fill((0.75 * 5320) / 2500);
  assert.equal(iqrDetector(1.5).overloaded(c, h, dctx), false);
  // rising trend: LR predicts beyond 100 % within one migration interval
  v.history = [...Array(12).keys()].map((i) => ((0.95 - i * 0.05) * 5320) / 2500);
  assert.equal(lrDetector(1.2).overloaded(c, h, dctx), true);
  // flat at 75 %: 0.75 × 1.2 = 0.9 < 1
  v.history = Array(12).fill((0.75 * 5320) / 2500);
  assert.equal(lrDetector(1.2).overloaded(c, h, dctx), false);
});

test("DVFS baseline: first host that fits, never migrates", () => {
  const c = cluster(3, []);
  // 2500 MIPS does not fit a G4 core (1860), so host 1
  assert.equal(DVFS.initialHost(c, vm(0, 2500, 2500))?.id, 1);
  assert.equal(DVFS.initialHost(c, vm(1, 1000, 1000))?.id, 0);
  assert.equal(DVFS.plan, undefined);
});

test("registry: every listed policy builds; unknown names are refused", () => {
  for (const p of listPolicies()) assert.ok(makePolicy(p.name, { cost: CLOUDSIM_COST }).name.length > 0);
  assert.equal(makePolicy("thr-mmt-0.8", { cost: CLOUDSIM_COST }).name, "THR-MMT-0.8");
  assert.throws(() => makePolicy("THR-XX-0.8", { cost: CLOUDSIM_COST }), /unknown policy/);
  assert.throws(() => makePolicy("best", { cost: CLOUDSIM_COST }), /unknown policy/);
});

test.run();
