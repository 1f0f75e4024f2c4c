// Boots the real test guest under QEMU (TCG here) with an NBD disk from qemu-nbd, and checks
// the lifecycle the page-server relies on: heartbeats with passing verification, pause and
// resume with an unbroken counter, and a SIGKILLed QEMU detected as crashed.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { truncateSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import { IllegalTransitionError } from "../../services/page-server/vm/states.js";
import { Vm } from "../../services/page-server/vm/vm.js";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { ensureGuest } from "./guest.js";

const vmTest = gate(test, ["qemu-system-x86_64", "qemu-nbd", "gcc", "apt-get"], "boot the test guest");
const dir = tempDir("vmhop-vm-");
let vm: Vm | undefined;
let nbd: ChildProcess | undefined;

test.after(async () => {
  await vm?.kill();
  if (nbd && nbd.exitCode === null) {
    nbd.kill("SIGKILL");
    await once(nbd, "exit");
  }
  dir.cleanup();
});

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

async function startNbd(image: string): Promise<string> {
  const port = await freePort();
  nbd = spawn("qemu-nbd", ["-f", "raw", "-b", "127.0.0.1", "-p", String(port), "-x", "disk", "-t", image], {
    stdio: "ignore",
  });
  for (let i = 0; i < 100; i++) {
    if (await accepts(port)) return `nbd://127.0.0.1:${port}/disk`;
    await sleep(50);
  }
  throw new Error("qemu-nbd did not come up");
}

vmTest("boot, heartbeats with memory and disk verification, pause/resume, kill -9 → crashed", async () => {
  const guest = await ensureGuest();
  const image = join(dir.path, "disk.raw");
  writeFileSync(image, Buffer.alloc(0));
  truncateSync(image, 16 << 20);
  const url = await startNbd(image);

  vm = new Vm(
    {
      name: "lifecycle",
      vcpus: 1,
      memoryMib: 128,
      kernel: guest.kernel,
      initrd: guest.initrd,
      cmdline: guestCmdline({ memMib: 16, rateMib: 4, verifyMib: 32, disk: "/dev/vda", diskMib: 4 }),
      disk: { nbd: url },
      accel: "auto",
    },
    { runDir: join(dir.path, "vm") },
  );
  const states: string[] = [];
  vm.on("state", (s) => states.push(s));
  await vm.start();
  assert.is(vm.state, "running");
  assert.is((await vm.qmp.execute<{ status: string }>("query-status")).status, "running");

  // A full verification pass over memory, and disk blocks read back correctly.
  const hb = await vm.serial.waitForHeartbeat((h) => h.passes >= 1 && h.diskOk >= 3, 60_000);
  assert.is(hb.memErrors, 0, "memory verification failed");
  assert.is(hb.diskErrors, 0, "disk verification failed");
  assert.ok(hb.verifyOk > 0);
  assert.is(vm.serial.tracker.stats.errorLines, 0);

  await vm.pause();
  assert.is(vm.state, "paused");
  assert.is((await vm.qmp.execute<{ status: string }>("query-status")).status, "paused");
  await sleep(150); // let a heartbeat already in flight arrive
  const atPause = vm.serial.tracker.stats.last!.counter;
  await sleep(600);
  assert.is(vm.serial.tracker.stats.last!.counter, atPause, "heartbeats while paused");
  try {
    await vm.pause();
    assert.unreachable("paused twice");
  } catch (err) {
    assert.instance(err, IllegalTransitionError);
  }

  await vm.resume();
  assert.is(vm.state, "running");
  const after = await vm.serial.waitForHeartbeat((h) => h.counter >= atPause + 3, 30_000);
  assert.ok(after.counter > atPause);
  assert.is(vm.serial.tracker.stats.counterBreaks, 0, "heartbeat counter broke across pause/resume");
  assert.is(after.memErrors + after.diskErrors, 0);

  const pid = vm.pid!;
  process.kill(pid, "SIGKILL");
  await vm.waitExit();
  assert.is(vm.state, "crashed");
  assert.match(vm.endReason ?? "", /SIGKILL/);
  assert.equal(states, ["starting", "running", "paused", "running", "crashed"]);
});

test.run();
