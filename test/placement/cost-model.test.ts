import * as assert from "node:assert/strict";
import {
  CLOUDSIM_COST,
  costModelByName,
  POSTCOPY_COST,
  POSTCOPY_TOUCHED_FRACTION,
} from "../../services/placement/sim/cost-model.js";
import { HOST_TYPES, newHost } from "../../services/placement/sim/setup.js";
import { test } from "../helpers/uvu.js";
import { host, vm } from "./cluster-fixture.js";

const MiB = 2 ** 20 / 1e6; // MB per MiB

test("post-copy model reproduces vmhop's measured WAN post-copy (160 MiB guest, 450 Mbit/s: 2.48 s, 108.4 MB)", () => {
  // A host whose half bandwidth is the 450 Mbit/s link: 900,000 kbit/s.
  const wan = newHost(0, { ...HOST_TYPES[0], name: "wan", bwKbps: 900_000 });
  const guest = vm(0, 1000, 100, 160 * MiB);
  const t = POSTCOPY_COST.durationS(guest, wan);
  assert.ok(Math.abs(t - 2.476) / 2.476 < 0.1, `predicted ${t.toFixed(2)} s`);
  assert.ok(Math.abs(POSTCOPY_TOUCHED_FRACTION * 160 * MiB - 108.4) / 108.4 < 0.05);
});

test("post-copy's degraded phase is shorter than CloudSim's whole-RAM copy, for every VM type", () => {
  for (const ram of [613, 870, 1740]) {
    const v = vm(0, 1000, 100, ram);
    const pc = POSTCOPY_COST.durationS(v, host(1));
    const cs = CLOUDSIM_COST.durationS(v, host(1));
    assert.equal(cs, ram / 62.5);
    assert.ok(pc < cs && pc > 0.5 * cs, `${ram} MB: ${pc} vs ${cs}`);
  }
  assert.throws(() => costModelByName("precopy"), /unknown cost model "precopy"/);
});

test.run();
