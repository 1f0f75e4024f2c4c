import * as assert from "node:assert/strict";
import { iqr, linearFit, mad, median, rSquared } from "../../services/placement/policies/stats.js";
import { countNonZeroBeginning } from "../../services/placement/sim/cluster.js";
import { test } from "../helpers/uvu.js";

const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-9, `${a} ≈ ${b}`);

test("median and MAD", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  // deviations from 2: 1,1,0,1,7 -> median 1
  assert.equal(mad([1, 3, 2, 1, 9]), 1);
});

test("IQR with CloudSim's quartile positions", () => {
  // n = 12: q1 = round(3.25) - 1 = 2, q3 = round(9.75) - 1 = 9
  const xs = [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1];
  assert.equal(iqr(xs), 10 - 3);
});

test("linear fit on x = 1..n", () => {
  const [a, b] = linearFit([3, 5, 7, 9]);
  close(a, 1);
  close(b, 2);
  assert.throws(() => linearFit([1]), /two points/);
});

test("R² is 1 for an exact linear relation, NaN without degrees of freedom", () => {
  const x = [1, 2, 3, 4, 5, 6];
  close(
    rSquared(
      x.map((v) => 3 * v + 1),
      [x],
    ),
    1,
  );
  assert.ok(Number.isNaN(rSquared([1, 2], [[1, 2]])));
});

test("countNonZeroBeginning follows CloudSim (1 when all zero)", () => {
  assert.equal(countNonZeroBeginning([0.5, 0.2, 0, 0]), 2);
  assert.equal(countNonZeroBeginning([0, 0, 0]), 1);
  assert.equal(countNonZeroBeginning([1, 1, 1]), 3);
});

test.run();
