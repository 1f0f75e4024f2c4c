import * as assert from "node:assert/strict";
import { HP_PROLIANT_G4, HP_PROLIANT_G5, specPowerModel } from "../../services/placement/power/spec-power.js";
import { test } from "../helpers/uvu.js";

const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-9, `${a} ≈ ${b}`);

test("table points are exact", () => {
  close(HP_PROLIANT_G4.power(0), 86);
  close(HP_PROLIANT_G4.power(0.5), 102);
  close(HP_PROLIANT_G4.power(1), 117);
  close(HP_PROLIANT_G5.power(0), 93.7);
  close(HP_PROLIANT_G5.power(1), 135);
  assert.equal(HP_PROLIANT_G5.maxPower, 135);
});

test("linear between table points", () => {
  close(HP_PROLIANT_G4.power(0.05), (86 + 89.4) / 2);
  close(HP_PROLIANT_G4.power(0.55), 102 + 0.5 * (106 - 102));
  close(HP_PROLIANT_G5.power(0.235), 101 + 0.35 * (105 - 101));
  close(HP_PROLIANT_G5.power(0.99), 133 + 0.9 * 2);
});

test("utilisation outside [0, 1] is refused", () => {
  assert.throws(() => HP_PROLIANT_G4.power(1.2), /outside \[0, 1\]/);
  assert.throws(() => HP_PROLIANT_G4.power(-0.1), /outside/);
  assert.throws(() => HP_PROLIANT_G4.power(Number.NaN), /outside/);
});

test("a table needs 11 points", () => {
  assert.throws(() => specPowerModel("x", [1, 2, 3]), /11 values/);
});

test.run();
