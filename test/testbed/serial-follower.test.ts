// The heartbeat gaps the demo reports (SerialFollower.gapsSince) and the largest of them
// (maxGapSince), over heartbeats that arrived at known host times; a log replaced under the
// follower (a warm QEMU's log renamed into place) is read from its start.
import { appendFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { SerialFollower } from "../../testbed/sites/serial-follower.js";
import { tempDir } from "../../testbed/temp-dir.js";
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

test("a log replaced by another file is read from the new file's start", () => {
  const dir = tempDir("vmhop-follower-");
  try {
    const log = join(dir.path, "serial.log");
    const hb = (n: number) => `HB ${n} 0 0 0 ${n} 0\n`;
    writeFileSync(log, `${"boot noise\n".repeat(50)}${hb(1)}${hb(2)}`);
    const f = new SerialFollower();
    f.follow(log, true);
    f.poll();
    const next = join(dir.path, "warm.log");
    writeFileSync(next, hb(3));
    renameSync(next, log);
    appendFileSync(log, hb(4));
    f.poll();
    f.stop();
    assert.equal(
      f.beats.map((b) => b.counter),
      [1, 2, 3, 4],
    );
    assert.is(f.tracker.stats.counterBreaks, 0);
  } finally {
    dir.cleanup();
  }
});

test.run();
