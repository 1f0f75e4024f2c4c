// Fault matrix (issue 15), the control-plane killed and restarted: the only `vmhop control
// serve` (on Redis) of the namespace WAN bed is killed (kill -9) while the whole-VM migration
// of the test guest (real QEMU) is before its switch-over, and started again on the same
// address. The page-servers carry on meanwhile; the new process takes the lease once the dead
// one's expires, resumes the migration from its record and finishes it: done, the VM running
// only at the destination, memory and disk verified by the guest, its address answering.
import * as assert from "uvu/assert";
import { destroyStaleNetns } from "../../testbed/netns.js";
import type { ServiceProcess } from "../../testbed/service-process.js";
import { runWholeVm } from "../../testbed/sites/whole-vm-run.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { ensureGuest } from "../page-server/guest.js";
import { FaultBed, GUEST, say } from "./faults-bed.js";

const t = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root", "ip", "nft", "redis-server"],
  "fault matrix: the control-plane killed and restarted mid-migration",
);
const NS = "nr-fr-";
let fb: FaultBed | undefined;

t.before(async () => {
  await destroyStaleNetns(NS);
  await ensureGuest();
  fb = await FaultBed.start(NS);
});

t.after(async () => {
  await fb?.stop();
});

t(
  "the control-plane killed (kill -9) before the switch-over and restarted: it resumes and finishes",
  async () => {
    const { bed } = fb!;
    const address = bed.control.grpc;
    let restarted: Promise<ServiceProcess> | undefined;
    let killedIn = "";
    const r = await runWholeVm(bed, {
      ...GUEST,
      say,
      onProgress: (m) => {
        if (restarted || !["preparing", "migrating"].includes(m.state)) return;
        killedIn = m.state;
        say(`kill -9 the control-plane in ${m.state}; starting it again on ${address}`);
        bed.control.child.kill("SIGKILL");
        // The same address: the test's client (as an operator's) finds it again.
        restarted = fb!.replica("control-plane (restarted)", address);
      },
    });
    assert.ok(restarted, "the control-plane was killed before the switch-over");
    const again = await restarted!;
    assert.is(again.ready.grpc, address);
    const m = await fb!.assertDoneAtDestination(r);
    // Resumed from the record by the new process, under a newer generation than the dead one's.
    assert.ok(
      m.driverGeneration > Number(bed.control.ready.generation),
      "driven to its end by the new leader",
    );
    say(
      `killed in ${killedIn}; done under generation ${m.driverGeneration}, fencing token ${m.fencingToken}`,
    );
  },
);

t.run();
