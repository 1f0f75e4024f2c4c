// The fault matrix's checks shared by rows that end with the VM back at (or still at) the source
// after a rolled-back migration: the record's rollback, the VM free and running at s1, the guest
// verifying memory and disk there, its home addresses answering there.
import * as assert from "uvu/assert";
import type { Migration } from "../../gen/vmhop/v1/control.js";
import { VmState } from "../../gen/vmhop/v1/page.js";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { VM } from "../../testbed/netreach/bed.js";
import { startPing } from "../../testbed/netreach/probe-process.js";
import { serialLogAt, type TestVm } from "../../testbed/sites/whole-vm-run.js";
import { until } from "../helpers/wait.js";
import type { FaultBed } from "./faults-bed.js";

/**
 * `end` is a migration rolled back before its switch-over: failed with a reason, never switched,
 * the address preparation undone; the VM runs at the source, free for another migration, and
 * the guest goes on verifying its memory and disk there; its addresses answer there.
 */
export async function assertRolledBackAtSource(fb: FaultBed, vm: TestVm, end: Migration): Promise<void> {
  const { bed } = fb;
  const [a] = bed.sites;
  assert.is(end.state, "failed");
  assert.ok(end.error.length > 0, "the record says why");
  assert.is(end.enteredUnixMs.switched, undefined, "never switched over");
  assert.is(end.network?.state, "rolled_back", "the address preparation undone");

  const at = await bed.client.getVm(vm.vmId);
  assert.equal([at.hostId, at.migrationId, at.vm?.state], [a.hostId, "", VmState.VM_STATE_RUNNING]);
  const aLog = serialLogAt(bed, a.k);
  const last = vm.serial.beats.filter((h) => h.path === aLog).at(-1)!;
  await vm.serial.waitFor(
    "the guest verifying its disk at s1 after the rollback",
    (h) => h.path === aLog && h.diskOk > last.diskOk + 10,
    120_000,
  );
  assert.is(
    vm.serial.beats.reduce((s, h) => s + h.memErrors + h.diskErrors, 0),
    0,
    "no memory or disk error in the guest",
  );
  assert.is(vm.serial.tracker.stats.counterBreaks, 0, "one unbroken heartbeat counter");
  for (const to of [VM.homeIpv6[0], VM.homeIpv4[0]])
    await until(
      `${to} answering at s1`,
      async () => summarisePings(await startPing(bed.cn, to, 5).result).received > 0,
      60_000,
      200,
    );
}

/** Waits until QEMU runs at s1 only (a rolled-back destination's waiting QEMU stopped). */
export function qemuAtSourceOnly(fb: FaultBed): Promise<number[]> {
  return until(
    "QEMU at s1 only",
    async () => {
      const q = await fb.qemus();
      return q[0] === 1 && q[1] === 0 ? q : undefined;
    },
    120_000,
    500,
  );
}
