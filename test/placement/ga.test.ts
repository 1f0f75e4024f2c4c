// GA packing: decisions on small clusters and determinism with a fixed seed.
import * as assert from "node:assert/strict";
import { GaPolicy } from "../../services/placement/policies/ga.js";
import type { PlanContext } from "../../services/placement/policies/policy.js";
import type { Cluster } from "../../services/placement/sim/cluster.js";
import { CLOUDSIM_COST } from "../../services/placement/sim/cost-model.js";
import { test } from "../helpers/uvu.js";
import { cluster as fixture, vm } from "./cluster-fixture.js";

function cluster(nHosts: number, layout: [number, number, number][]): Cluster {
  return fixture(
    nHosts,
    layout.map(([mips, req, h], i) => [vm(i, mips, req, 870, Array(12).fill(req / mips)), h]),
  );
}

const ctx: PlanContext = { now: 3600.1, cost: CLOUDSIM_COST, interval: 300 };
const plan = (c: Cluster, seed = 1) =>
  new GaPolicy({ cost: CLOUDSIM_COST, interval: 300, seed }).plan(c, ctx).map((m) => [m.vm.id, m.to.id]);

test("empties a lightly used host when the power saved outweighs the migration price", () => {
  const c = cluster(4, [
    [2500, 2000, 1],
    [500, 200, 3],
  ]);
  assert.deepEqual(plan(c), [[1, 1]]);
});

test("relieves a host above the packing target", () => {
  const c = cluster(4, [
    [2500, 2500, 1],
    [2500, 2400, 1],
    [500, 300, 3],
  ]);
  const m = plan(c);
  assert.ok(
    m.some(([id]) => id === 0 || id === 1),
    JSON.stringify(m),
  );
  // afterwards no running host exceeds capacity
  const load = new Map<number, number>([
    [1, 4900],
    [3, 300],
  ]);
  const reqs = [2500, 2400, 300];
  for (const [id, to] of m) {
    const from = id < 2 ? 1 : 3;
    load.set(from, (load.get(from) ?? 0) - reqs[id]);
    load.set(to, (load.get(to) ?? 0) + reqs[id]);
  }
  for (const [h, l] of load) assert.ok(l <= c.hosts[h].totalMips, `host ${h} at ${l}`);
});

test("keeps a well-packed cluster as it is (merging would exceed the packing target)", () => {
  const c = cluster(4, [
    [2500, 2400, 1],
    [2500, 2400, 3],
  ]);
  assert.deepEqual(plan(c), []);
});

test("the same seed gives the same plan", () => {
  const layout: [number, number, number][] = [...Array(30).keys()].map((i) => [
    1000,
    100 + ((i * 37) % 500),
    i % 10,
  ]);
  assert.deepEqual(plan(cluster(12, layout), 7), plan(cluster(12, layout), 7));
});

test.run();
