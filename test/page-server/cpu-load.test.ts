// The CPU load's two ends, without QEMU: the test guest's workload (run on this host, as its
// README allows) takes `busy P` lines on its console and computes that share of each period;
// cpuSeconds reads what a process used from /proc, as the page-server does for a VM's QEMU.
import { spawn } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { cpuSeconds } from "../../services/page-server/vm/cpu-time.js";
import { test } from "../helpers/uvu.js";
import { within } from "../helpers/wait.js";
import { ensureGuest } from "./guest.js";

test("cpuSeconds: this process's CPU time grows with work; a pid that does not exist reads 0", () => {
  const before = cpuSeconds(process.pid);
  const end = Date.now() + 300;
  let x = 0;
  while (Date.now() < end) x += Math.sqrt(x + 1);
  assert.ok(x > 0);
  const after = cpuSeconds(process.pid);
  assert.ok(after > before, `${before} → ${after}`);
  assert.is(cpuSeconds(2 ** 22 + 1), 0);
  assert.is(cpuSeconds(undefined), 0);
});

test("the workload: `busy P` on its console sets its load, answered; bad lines are ignored", async () => {
  const { workload } = await ensureGuest();
  const child = spawn(workload, [], {
    env: { VMHOP_CMDLINE: "vmhop.mem_mib=1 vmhop.rate_mib=0 vmhop.verify_mib=1 vmhop.hb_ms=50" },
    stdio: ["pipe", "pipe", "inherit"],
  });
  let out = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => {
    out += d;
  });
  const answered = (line: string) =>
    within(
      (async () => {
        while (!out.includes(line)) await sleep(20);
      })(),
      30_000,
      `the workload to answer ${line}`,
    );
  try {
    await answered("WORKLOAD filled 1 MiB");
    assert.match(out, /WORKLOAD start .* busy=0\n/);
    const idle0 = cpuSeconds(child.pid);
    await sleep(1000);
    const idle = cpuSeconds(child.pid) - idle0;
    child.stdin!.write("busy 101\nbusy x\nbusy 100\n");
    await answered("WORKLOAD busy 100\n");
    const busy0 = cpuSeconds(child.pid);
    await sleep(1000);
    const busy = cpuSeconds(child.pid) - busy0;
    assert.ok(busy > idle, `busy ${busy} s, idle ${idle} s of CPU in a second`);
    assert.not.match(out, /WORKLOAD busy 101|WORKLOAD busy x/);
    child.stdin!.write("busy 0\n");
    await answered("WORKLOAD busy 0\n");
    // The heartbeat went on throughout.
    assert.ok((out.match(/^HB /gm) ?? []).length > 10);
  } finally {
    child.kill();
  }
});

test.run();
