import * as assert from "node:assert/strict";
import { HostLog, VmLog } from "../../services/placement/metrics/history.js";
import { meanMetrics, p99, summarise } from "../../services/placement/metrics/summary.js";
import { test } from "../helpers/uvu.js";

const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-12, `${a} ≈ ${b}`);

test("SLATAH: violation time over active time, inactive spans ignored", () => {
  const h = new HostLog();
  h.add(0, 100, 100, true); // 0-10 active, no violation
  h.add(10, 90, 100, true); // 10-30 active, violation
  h.add(30, 0, 0, false); // 30-50 off: not counted
  h.add(50, 50, 50, true); // 50-60 active
  h.add(60, 50, 50, true);
  assert.equal(h.activeTime, 40);
  assert.equal(h.slaTime, 20);
  h.close();
  assert.equal(h.shutdowns, 1);
});

test("host log: an entry at the same time replaces the previous one", () => {
  const h = new HostLog();
  h.add(0, 100, 100, true);
  h.add(10, 90, 100, true);
  h.add(10, 100, 100, true); // the update after a migration completes
  h.add(20, 100, 100, true);
  assert.equal(h.slaTime, 0);
  assert.equal(h.activeTime, 20);
});

test("a host empty from the start counts one shutdown, as in CloudSim", () => {
  const h = new HostLog();
  h.add(0, 0, 0, false);
  h.add(300, 0, 0, false);
  h.close();
  assert.equal(h.shutdowns, 1);
  assert.equal(h.activeTime, 0);
});

test("PDM: only shortfall while migrating counts, over all requested MIPS·s", () => {
  const v = new VmLog();
  v.add(0, 800, 1000, false); // 10 s of 200 MIPS short, not migrating: requested only
  v.add(10, 900, 1000, true); // 10 s migrating, 100 short
  v.add(20, 1000, 1000, false);
  v.add(30, 0, 0, false);
  assert.equal(v.requestedMipsS, 30_000);
  assert.equal(v.migrationShortfallMipsS, 1000);
});

test("summary: SLAV = SLATAH × PDM, ESV = energy × SLAV, energy in kWh", () => {
  const h = new HostLog();
  h.add(0, 90, 100, true);
  h.add(100, 100, 100, true);
  h.add(400, 100, 100, true); // SLATAH = 100 / 400
  const v = new VmLog();
  v.add(0, 900, 1000, true);
  v.add(100, 1000, 1000, false);
  v.add(400, 1000, 1000, false); // PDM = 100·100 / (1000·400)
  const m = summarise("d", 7_200_000, [h], [v], 3, 12);
  close(m.energy_kwh, 2);
  close(m.slatah, 0.25);
  close(m.pdm, 0.025);
  close(m.slav, 0.25 * 0.025);
  close(m.esv, 2 * 0.25 * 0.025);
  assert.equal(m.migrations, 3);
  assert.equal(m.plan_ms_p99, 12);
});

test("no active time or demand gives zeros, not NaN", () => {
  const m = summarise("d", 0, [new HostLog()], [new VmLog()], 0, 0);
  assert.equal(m.slatah, 0);
  assert.equal(m.pdm, 0);
  assert.equal(m.esv, 0);
});

test("mean and p99", () => {
  const a = summarise("a", 3_600_000, [], [], 10, 1);
  const b = summarise("b", 7_200_000, [], [], 20, 3);
  const mean = meanMetrics([a, b]);
  assert.equal(mean.energy_kwh, 1.5);
  assert.equal(mean.migrations, 15);
  assert.equal(p99([...Array(100).keys()].map((i) => i + 1)), 99);
  assert.equal(p99([5]), 5);
});

test.run();
