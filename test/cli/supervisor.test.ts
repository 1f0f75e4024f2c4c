// The supervisor behind `vmhop up`: the back-off (pure), and on real child processes a
// crash-looping service restarted and logged each time while its neighbour runs on untouched.
import * as assert from "uvu/assert";
import { DEFAULT_BACKOFF, nextDelay, Supervisor } from "../../services/cli/supervisor.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";

test("back-off: 0.5 s doubling to 30 s, reset once a service stayed up a minute", () => {
  const seq: number[] = [];
  let d = 0;
  for (let i = 0; i < 9; i++) {
    d = nextDelay(d, 100);
    seq.push(d);
  }
  assert.equal(seq, [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
  assert.is(nextDelay(30_000, DEFAULT_BACKOFF.resetAfterMs), 500, "up a minute: the first crash again");
  assert.is(nextDelay(30_000, DEFAULT_BACKOFF.resetAfterMs - 1), 30_000);
});

test("a crashing service is restarted and logged; its neighbour keeps its pid; stop ends both", async () => {
  const lines: string[] = [];
  const sup = new Supervisor(
    [
      { name: "steady", command: process.execPath, args: ["-e", "setInterval(() => {}, 1000)"] },
      { name: "flaky", command: process.execPath, args: ["-e", "setTimeout(() => process.exit(3), 50)"] },
    ],
    {
      backoff: { initialMs: 20, maxMs: 80, resetAfterMs: 60_000 },
      log: (l) => lines.push(l),
      output: () => {},
    },
  );
  sup.start();
  const steady = await until("steady running", async () => sup.pid("steady"), 10_000);
  try {
    await until("flaky restarted four times", async () => sup.restarts("flaky") >= 4, 60_000);
    assert.equal(lines.slice(0, 4), [
      "[up] flaky exited (code 3); restarting it in 0.02 s",
      "[up] flaky exited (code 3); restarting it in 0.04 s",
      "[up] flaky exited (code 3); restarting it in 0.08 s",
      "[up] flaky exited (code 3); restarting it in 0.08 s",
    ]);
    assert.is(sup.pid("steady"), steady, "the neighbour was never touched");
    assert.is(sup.restarts("steady"), 0);
  } finally {
    await sup.stop("SIGTERM");
  }
  assert.is(sup.pid("steady"), undefined);
  assert.is(sup.pid("flaky"), undefined);
  const after = lines.length;
  await new Promise((r) => setTimeout(r, 200));
  assert.is(lines.length, after, "nothing restarted after stop");
});

test.run();
