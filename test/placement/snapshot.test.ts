import * as assert from "node:assert/strict";
import {
  type ClusterSnapshot,
  clusterFromSnapshot,
  planFromSnapshot,
} from "../../services/placement/sim/snapshot.js";
import { test } from "../helpers/uvu.js";

const hosts = [0, 1, 0, 1].map((type, id) => ({ id, type }));

test("a snapshot becomes a cluster with CloudSim semantics (migrating VMs listed on both hosts)", () => {
  const c = clusterFromSnapshot({
    hosts,
    vms: [
      { id: 10, mips: 2500, ramMb: 870, host: 1, reqMips: 1000 },
      { id: 11, mips: 1000, ramMb: 1740, host: 1, dest: 3, reqMips: 500 },
    ],
  });
  assert.equal(c.hosts[1].vms.length, 2);
  assert.equal(c.hosts[3].vms.length, 1);
  assert.ok(c.hosts[3].inbound.has(c.vms[1]));
  // source gives the migrating VM 90 %, destination reserves 10 %
  assert.equal(c.allocated(c.hosts[1], c.vms[1]), 450);
  assert.equal(c.allocated(c.hosts[3], c.vms[1]), 50);
});

test("plan from a snapshot: moves by the caller's ids, and the hosts that can sleep", () => {
  const s: ClusterSnapshot = {
    hosts,
    vms: [
      { id: 100, mips: 2500, ramMb: 870, host: 1, reqMips: 2000, history: Array(12).fill(0.8) },
      { id: 200, mips: 500, ramMb: 613, host: 3, reqMips: 200, history: Array(12).fill(0.4) },
    ],
  };
  const p = planFromSnapshot(s, "vmhop");
  assert.deepEqual(p.moves, [{ vm: 200, from: 3, to: 1, migrationS: 613 / 62.5 }]);
  assert.deepEqual(p.sleep, [3]);
  assert.deepEqual(p.wake, []);
  assert.deepEqual(planFromSnapshot(s, "dvfs"), { moves: [], sleep: [], wake: [] });
});

test("reported host state: an awake empty host sleeps, an asleep host that receives VMs wakes", () => {
  const s: ClusterSnapshot = {
    hosts: [
      { id: 0, type: 0, asleep: false },
      { id: 1, type: 1, asleep: true },
    ],
    vms: [],
  };
  assert.deepEqual(planFromSnapshot(s, "vmhop"), { moves: [], sleep: [0], wake: [] });
  // An overloaded G4 (3720 MIPS) sheds a VM onto the sleeping G5, which wakes.
  s.vms = [
    { id: 1, mips: 2500, ramMb: 870, host: 0, reqMips: 2500, history: Array(12).fill(1) },
    { id: 2, mips: 2500, ramMb: 870, host: 0, reqMips: 2500, history: Array(12).fill(1) },
  ];
  const p = planFromSnapshot(s, "vmhop");
  assert.equal(p.moves.length, 1);
  assert.equal(p.moves[0].to, 1);
  assert.deepEqual(p.wake, [1]);
  assert.deepEqual(p.sleep, []);
});

test("bad snapshots are refused clearly", () => {
  assert.throws(() => clusterFromSnapshot({ hosts: [{ id: 0, type: 7 }], vms: [] }), /unknown type 7/);
  assert.throws(() => clusterFromSnapshot({ hosts: [{ id: 5, type: 0 }], vms: [] }), /0\.\.n-1/);
  assert.throws(
    () => clusterFromSnapshot({ hosts, vms: [{ id: 1, mips: 500, ramMb: 613, host: 9, reqMips: 1 }] }),
    /VM 1: unknown host 9/,
  );
  assert.throws(() => planFromSnapshot({ hosts, vms: [] }, "nope"), /unknown policy/);
});

test.run();
