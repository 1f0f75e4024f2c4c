// Fault matrix (issue 15), the source block-server killed while disk blocks are still remote:
// the test guest (real QEMU) moves from s1 to s2 with its disk LAZY, the background copy kept
// slow (1 MiB/s, before and after memory) so most blocks are still at s1 after the switch-over;
// s1's block-server is killed (kill -9) as soon as the record reads past the switch-over. The
// guest runs on at s2: reads of blocks still at s1 fail with I/O errors (at once, once the
// proxy's retry window since the loss has passed), never with wrong data; what it wrote at s2
// and what was copied read back right. The VM runs at s2 only, its address answers there, and
// the record (and `vmhop control migrations`) says what was lost with s1's block-server.
import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { StorageMode } from "../../gen/vmhop/v1/control.js";
import { VmState } from "../../gen/vmhop/v1/page.js";
import { BlockServer } from "../../services/control-plane/block-client.js";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { VM } from "../../testbed/netreach/bed.js";
import { startPing } from "../../testbed/netreach/probe-process.js";
import { compareImages } from "../../testbed/sites/disk-check.js";
import { serialLogAt, startTestVm, type TestVm } from "../../testbed/sites/whole-vm-run.js";
import { vmhop } from "../helpers/cli.js";
import { until } from "../helpers/wait.js";
import { faultRow, GUEST, say } from "./faults-bed.js";

const SLOW_COPY = ["--disk-copy-rate-mib", "1", "--disk-copy-rate-mib-after", "1"];
const { t, fault } = faultRow(
  "nr-fbs-",
  "the source block-server killed while disk blocks are still remote",
  SLOW_COPY,
);
let vm: TestVm | undefined;

t.after(() => vm?.serial.stop());

/**
 * The guest's disk errors that would mean wrong data: a block read back with other contents
 * than the workload last wrote there, unless that write itself failed (then the block may
 * rightly hold what it held before).
 */
function wrongData(errors: string[]): string[] {
  const failedWrites = new Set<string>();
  const wrong: string[] = [];
  for (const e of errors) {
    const w = /^ERR disk write block=(\d+)/.exec(e);
    if (w) failedWrites.add(w[1]);
    const b = /^ERR disk block=(\d+)/.exec(e);
    if (b && !failedWrites.has(b[1])) wrong.push(e);
    if (e.startsWith("ERR mem")) wrong.push(e);
  }
  return wrong;
}

t(
  "the source block-server killed after the switch-over with blocks still remote: I/O errors, never wrong data; the VM at s2 only; the loss recorded",
  async () => {
    const fb = fault();
    const { bed } = fb;
    const [a, b] = bed.sites;
    vm = await startTestVm(bed, { ...GUEST, say });
    let m = await bed.client.migrateVm({
      vmId: vm.vmId,
      destinationHostId: b.hostId,
      storage: StorageMode.STORAGE_MODE_LAZY,
    });
    for (;;) {
      m = await bed.client.getMigration(m.migrationId);
      assert.ok(!["failed", "cancelled", "done"].includes(m.state), `reached ${m.state}: ${m.error}`);
      if (["switched", "completing", "relocating"].includes(m.state)) break;
      await sleep(20);
    }
    // The source QEMU stopped and flushed at the switch-over: s1's image is from now on what
    // every block at s2 not rewritten by the guest must equal.
    say(`kill -9 ${a.site}'s block-server (pid ${a.block.child.pid}) in ${m.state}`);
    a.block.child.kill("SIGKILL");
    const bLog = serialLogAt(bed, b.k);
    vm.serial.follow(bLog, true);

    // The record says what was lost, and why.
    const rec = await until(
      "the record saying what was lost",
      async () => {
        const x = await bed.client.getMigration(m.migrationId);
        return x.lost ? x : undefined;
      },
      120_000,
      500,
    );
    say(`${rec.state}; lost: ${rec.lost}`);
    assert.match(
      rec.lost,
      /^the source h1 went down after the switch-over .*still there: the guest sees I\/O errors/,
    );
    assert.match(rec.lost, /block-server/, "names the block-server that stopped answering");
    const cli = await vmhop(["control", "migrations", "--server", bed.controlAddress]);
    assert.is(cli.code, 0, cli.err);
    assert.match(cli.out, `lost: ${rec.lost.slice(0, 40)}`, "`vmhop control migrations` shows it");

    // The guest at s2: reads of blocks still at s1 fail, the rest go on being verified.
    await until(
      "the guest seeing an I/O error reading a block still at s1",
      () => vm!.serial.errors.some((e) => /^ERR disk read block=\d+: Input\/output error/.test(e)),
      180_000,
      200,
    );
    const seen = vm.serial.beats.at(-1)?.diskOk ?? 0;
    await vm.serial.waitFor(
      "the guest verifying its disk at s2 after the loss",
      (h) => h.path === bLog && h.diskOk > seen + 20,
      180_000,
    );
    const errors = vm.serial.errors;
    say(
      `guest: ${errors.filter((e) => e.startsWith("ERR disk read")).length} read errors, ` +
        `${errors.filter((e) => e.startsWith("ERR disk write")).length} write errors, ` +
        `${vm.serial.beats.at(-1)?.diskOk} blocks read back right`,
    );
    assert.equal(wrongData(errors), [], "never wrong data (memory or disk)");
    assert.is(vm.serial.tracker.stats.counterBreaks, 0, "one unbroken heartbeat counter");

    // The VM at s2 only.
    const at = await bed.client.getVm(vm.vmId);
    assert.equal([at.hostId, at.vm?.state], [b.hostId, VmState.VM_STATE_RUNNING]);
    assert.equal(await fb.qemus(), [0, 1], "QEMU processes at s1, s2: exactly one, at the destination");
    // The migration cannot finish its disk without s1: still relocating, or failed saying why.
    const now = await bed.client.getMigration(m.migrationId);
    assert.ok(
      now.state === "relocating" || (now.state === "failed" && /disk/.test(now.error)),
      `${now.state}: ${now.error}`,
    );

    // What s2 holds of the disk is right: each block as at the switch-over or the guest's newer one.
    const block = new BlockServer(b.blockAddress);
    try {
      const st = await block.status(m.disk!.destinationExport);
      const disk = compareImages(vm.image, st.export!.path, true);
      say(
        `s2's copy: ${disk.same} blocks as at s1, ${disk.rewritten} rewritten by the guest, ${disk.missing} still at s1`,
      );
      assert.ok(disk.ok, JSON.stringify(disk));
      assert.ok((disk.missing ?? 0) > 0, "blocks were still at s1 (the loss was real)");
    } finally {
      block.close();
    }

    for (const to of [VM.homeIpv6[0], VM.homeIpv4[0]])
      await until(
        `${to} answering at s2`,
        async () => summarisePings(await startPing(bed.cn, to, 5).result).received > 0,
        60_000,
        200,
      );
  },
);

t.run();
