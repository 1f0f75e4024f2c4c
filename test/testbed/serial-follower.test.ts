// The heartbeat gaps the demo reports (SerialFollower.gapsSince) and the largest of them
// (maxGapSince), over heartbeats that arrived at known host times.
import * as assert from "uvu/assert";
import { SerialFollower } from "../../testbed/sites/serial-follower.js";
import { test } from "../helpers/uvu.js";

function follower(times: number[]): SerialFollower {
  const f = new SerialFollower();
  for (const [i, atMs] of times.entries())
    f.beats.push({
      counter: i + 1,
      verifyOk: 0,
      memErrors: 0,
      passes: 0,
      diskOk: 0,
      diskErrors: 0,
      atMs,
      path: i < 4 ? "a.log" : "b.log",
    });
  return f;
}

test("gaps longer than the threshold, from a time on, across logs; the largest", () => {
  const f = follower([0, 100, 200, 900, 1000, 1100, 1500, 1600]);
  assert.equal(f.gapsSince(0, 250), [
    { startMs: 200, ms: 700 },
    { startMs: 1100, ms: 400 },
  ]);
  assert.equal(f.gapsSince(1000, 250), [{ startMs: 1100, ms: 400 }]);
  assert.is(f.maxGapSince(0), 700);
  assert.is(f.maxGapSince(1000), 400);
  assert.equal(follower([]).gapsSince(0, 0), []);
  assert.is(follower([5]).maxGapSince(0), 0);
});

test.run();
