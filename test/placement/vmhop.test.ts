// vmhop's policy decisions on small hand-made clusters.
import * as assert from "node:assert/strict";
import type { PlanContext } from "../../services/placement/policies/policy.js";
import { FILL_BY_COST_MODEL, VmhopPolicy } from "../../services/placement/policies/vmhop.js";
import type { Cluster, Vm } from "../../services/placement/sim/cluster.js";
import { CLOUDSIM_COST, POSTCOPY_COST } from "../../services/placement/sim/cost-model.js";
import { test } from "../helpers/uvu.js";
import { vm as baseVm, cluster } from "./cluster-fixture.js";

/** A VM with a flat history at its current demand, so the forecast equals the demand. */
const vm = (id: number, mips: number, req: number, ramMb = 870): Vm =>
  baseVm(id, mips, req, ramMb, Array(12).fill(req / mips));

/** A VM with a flat history at its current demand, so the forecast equals the demand. */

const ctx: PlanContext = { now: 3600.1, cost: CLOUDSIM_COST, interval: 300 };
const plan = (c: Cluster, opts: Partial<ConstructorParameters<typeof VmhopPolicy>[0]> = {}) =>
  new VmhopPolicy({ cost: CLOUDSIM_COST, interval: 300, ...opts })
    .plan(c, ctx)
    .map((m) => [m.vm.id, m.to.id]);

test("overload: sheds the cheapest VM that clears the excess, to a running host with room", () => {
  // host 1 (G5, 5320): 2400 + 2000 + 1000 = 5400 > capacity; goal 0.8 × 5320 = 4256, excess 1144
  const c = cluster(6, [
    [vm(0, 2500, 2400, 870), 1],
    [vm(1, 2000, 2000, 1740), 1],
    [vm(2, 1000, 1000, 1740), 1], // does not clear the excess
    [vm(3, 2500, 1000, 870), 3], // host 3 running with room
  ]);
  const m = plan(c);
  // vm 1 (2000 MIPS × 1740 MB) costs more than vm 0 (2400 × 870); vm 0 goes to the running host 3
  assert.deepEqual(m[0], [0, 3]);
  assert.ok(!m.some(([, to]) => to === 5), "no idle host woken while a running one fits");
});

test("overload with no running host able to take it: wakes the most efficient idle host (G5)", () => {
  const c = cluster(4, [
    [vm(0, 2500, 2500), 1],
    [vm(1, 2500, 2500), 1],
    [vm(2, 500, 400), 1],
  ]);
  const m = plan(c);
  assert.equal(m.length, 1);
  // host 3 is a G5 (135 W / 5320 MIPS beats 117 W / 3720)
  assert.equal(m[0][1], 3);
});

test("consolidation: a lightly used host is emptied into a running one, not into an idle one", () => {
  const c = cluster(6, [
    [vm(0, 2500, 2000), 1],
    [vm(1, 1000, 300), 3],
    [vm(2, 500, 200), 3],
  ]);
  assert.deepEqual(plan(c).sort(), [
    [1, 1],
    [2, 1],
  ]);
});

test("consolidation refuses when one VM would not fit under the packing target", () => {
  const c = cluster(4, [
    [vm(0, 2500, 2500), 1],
    [vm(1, 2500, 1500), 3],
    [vm(2, 500, 300), 3],
  ]);
  // host 1 at 2500 can take 1756 more (0.8 × 5320); 1500 + 300 does not fit, so nothing moves
  assert.deepEqual(plan(c), []);
});

test("the forecast uses recent peaks: a VM that spiked is planned at its high quantile", () => {
  const p = new VmhopPolicy({ cost: CLOUDSIM_COST, interval: 300 });
  const v = vm(0, 1000, 100);
  v.history = [0.1, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1];
  assert.equal(p.forecast(v), 900);
  v.history = [];
  assert.equal(p.forecast(v), 100);
});

test("cheaper migrations pack tighter", () => {
  assert.ok(FILL_BY_COST_MODEL.postcopy > FILL_BY_COST_MODEL.cloudsim);
  // 0.85 × 5320 = 4522: fits under post-copy's target, not under CloudSim's
  const layout = (): [Vm, number][] => [
    [vm(0, 2500, 2500), 1],
    [vm(1, 2500, 2000), 3],
  ];
  assert.deepEqual(plan(cluster(4, layout())), []);
  assert.equal(plan(cluster(4, layout()), { cost: POSTCOPY_COST }).length, 1);
});

test("overlap: a VM goes to a host already receiving one this round, rather than best fit elsewhere", () => {
  // host 1 room 0.8 × 5320 − 2000 = 2256; host 3 room 4256 − 3906 = 350.
  const layout = (): [Vm, number][] => [
    [vm(0, 2500, 2000), 1],
    [vm(1, 2500, 2000), 3],
    [vm(4, 2500, 1906), 3],
    [vm(2, 500, 400), 5], // emptied first (cheapest per idle watt): too big for host 3 → host 1
    [vm(3, 500, 300, 1740), 7], // then this one: best fit is host 3, but host 1 is receiving
  ];
  assert.deepEqual(plan(cluster(8, layout()), { overlap: false }), [
    [2, 1],
    [3, 3],
  ]);
  // Both copies overlap on host 1: one destination in violation for the copy time, not two.
  assert.deepEqual(plan(cluster(8, layout())), [
    [2, 1],
    [3, 1],
  ]);
});

test("the plan leaves the cluster as it found it", () => {
  const c = cluster(6, [
    [vm(0, 2500, 2400, 870), 1],
    [vm(1, 2000, 2000, 1740), 1],
    [vm(2, 1000, 1000, 1740), 1],
    [vm(3, 500, 100, 613), 3],
  ]);
  const before = c.hosts.map((h) => [...h.vms]);
  assert.ok(plan(c).length > 0);
  assert.deepEqual(
    c.hosts.map((h) => h.vms),
    before,
  );
});

test.run();
