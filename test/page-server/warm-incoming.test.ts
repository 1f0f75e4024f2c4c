// Warm incoming QEMUs (vm/warm-pool.ts) with real QEMU: a migration (NBD disk, tap NIC) into a
// QEMU started before the request, its disk and NIC added over HMP when taken, loads and the
// guest carries on with memory and disk verified; the pool refills; a spec of another shape
// gets a QEMU of its own (the cold path); a warm QEMU that died is replaced, never handed out;
// closing the page-server stops the warm ones.
import { existsSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { PageHost } from "../../services/page-server/host.js";
import type { VmSpec } from "../../services/page-server/vm/spec.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { heartbeats } from "../helpers/heartbeats.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { assertGuestContinued, finished, guestOnTwoHosts } from "./guest-continues.js";
import { type SharedDisk, sharedNbdDisk } from "./shared-disk.js";

const qemuTest = gate(
  test,
  ["qemu-system-x86_64", "qemu-nbd", "gcc", "apt-get", "root"],
  "warm incoming QEMU (post-copy needs userfaultfd, a tap needs root)",
);
const dir = tempDir("vmhop-warm-");
const closers: (() => Promise<void>)[] = [];
let shared: SharedDisk | undefined;

test.after(async () => {
  for (const c of closers.reverse()) await c().catch(() => {});
  await shared?.stop();
  dir.cleanup();
});

const pidAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

function warmPids(b: PageHost): number[] {
  return b.warm.readyVms().map((vm) => vm.pid!);
}

qemuTest(
  "a migration with disk and NIC into a warm QEMU; refill, cold path, dead one replaced, close",
  async () => {
    const tag = `w${process.pid % 10000}`;
    shared = await sharedNbdDisk(dir.path);
    const disk = { nbd: shared.url };
    const { a, b, spec, src } = await guestOnTwoHosts(dir.path, "warm", closers, {
      name: "warm-vm",
      warmMax: 2,
      workload: { memMib: 24, rateMib: 8, verifyMib: 24, disk: "/dev/vda", diskMib: 4 },
      extra: { disk, nic: { tap: `${tag}a`, mac: "52:54:00:12:34:56" } },
    });
    // The destination's tap is its own (both hosts share this namespace); the MAC is the VM's.
    const dstSpec: VmSpec = { ...spec, nic: { tap: `${tag}b`, mac: "52:54:00:12:34:56" } };
    assert.equal(b.setWarmShapes([dstSpec]).length, 1);
    await until("a warm QEMU of the VM's shape", () => b.warm.readyCount(dstSpec) === 1, 120_000, 100);
    const [warmPid] = warmPids(b);

    await src.serial.waitForHeartbeat((h) => h.diskOk >= 2, 60_000);
    const passesBefore = src.serial.tracker.stats.last!.passes;
    const channel = await b.prepareIncoming(dstSpec, "mig-warm", { mode: "postcopy" });
    const dstRec = b.migration("mig-warm");
    assert.is(dstRec.warmQemu, true, "the destination started a QEMU of its own");
    const dst = b.get(spec.name);
    assert.is(dst.pid, warmPid, "not the warm QEMU");
    assert.is(dst.state, "incoming");
    assert.ok(existsSync(join(dir.path, "warm-b", spec.name, "qmp.sock")), "the warm QEMU's socket moved");

    const rec = await a.startMigration({
      vmId: spec.name,
      migrationId: "mig-warm",
      channelAddress: channel,
      mode: "postcopy",
    });
    const done = await finished(rec);
    assert.is(done.phase, "completed", done.error);
    await assertGuestContinued(src, dst, passesBefore);
    const last = heartbeats([src.paths.serialLog, dst.paths.serialLog]).at(-1)!;
    assert.ok(last.diskOk > 0, "no disk check at the destination");
    assert.is(last.diskErrors, 0, "disk verification failed after the migration");

    // The pool refills behind the taken one.
    await until("the pool to refill", () => b.warm.readyCount(dstSpec) === 1, 120_000, 100);
    assert.not.equal(warmPids(b), [warmPid]);

    // Another shape (more memory): none waits for it, so the cold path starts a QEMU of its own.
    const other: VmSpec = { ...dstSpec, name: "cold-vm", memoryMib: 144, nic: undefined, disk: undefined };
    const before = warmPids(b);
    await b.prepareIncoming(other, "mig-cold", { mode: "postcopy" });
    assert.not.ok(b.migration("mig-cold").warmQemu, "a warm QEMU of another shape was taken");
    assert.is(b.get("cold-vm").state, "incoming");
    assert.not.ok(before.includes(b.get("cold-vm").pid!));
    assert.equal(warmPids(b), before, "the warm QEMU was touched");

    // A warm QEMU that dies is dropped and replaced, never handed out.
    const [dying] = warmPids(b);
    process.kill(dying, "SIGKILL");
    await until(
      "a replacement for the dead warm QEMU",
      () => warmPids(b).length === 1 && !warmPids(b).includes(dying),
      120_000,
      100,
    );
    const replacement = warmPids(b)[0];

    // Closing the page-server stops the warm QEMUs (the VMs are another matter).
    await b.close({ keepVms: true });
    await until("the warm QEMU to end", () => !pidAlive(replacement), 10_000, 100);
    assert.ok(pidAlive(dst.pid!), "the migrated VM was stopped with the warm ones");
    await dst.kill();
    await b.get("cold-vm").kill();
  },
);

qemuTest(
  "a taken warm QEMU is adopted by a restarted page-server, and the migration into it completes",
  async () => {
    const tag = `r${process.pid % 10000}`;
    const { a, b, spec, src } = await guestOnTwoHosts(dir.path, "warm-restart", closers, {
      name: "warm-vm2",
      warmMax: 1,
      extra: { nic: { tap: `${tag}a`, mac: "52:54:00:12:34:57" } },
    });
    const dstSpec: VmSpec = { ...spec, nic: { tap: `${tag}b`, mac: "52:54:00:12:34:57" } };
    b.setWarmShapes([dstSpec]);
    await until("a warm QEMU of the VM's shape", () => b.warm.readyCount(dstSpec) === 1, 120_000, 100);
    await b.prepareIncoming(dstSpec, "mig-warm-r", { mode: "postcopy" });
    assert.is(b.migration("mig-warm-r").warmQemu, true);
    const pid = b.get(spec.name).pid!;
    const passesBefore = src.serial.tracker.stats.last!.passes;

    // The page-server restarts; its VMs (this one was warm) are left running for the next one.
    await b.close({ keepVms: true });
    assert.ok(pidAlive(pid), "the VM's QEMU ended with its page-server");
    const again = new PageHost({ runRoot: join(dir.path, "warm-restart-b") });
    await again.open();
    closers.push(() => again.close());
    const dst = again.get(spec.name);
    assert.is(dst.pid, pid, "not the QEMU the warm one became");
    assert.is(dst.state, "incoming");
    const rec = await a.startMigration({
      vmId: spec.name,
      migrationId: "mig-warm-r",
      channelAddress: again.channelListenAddress,
      mode: "postcopy",
    });
    const done = await finished(rec);
    assert.is(done.phase, "completed", done.error);
    await assertGuestContinued(src, dst, passesBefore);
  },
);

test.run();
