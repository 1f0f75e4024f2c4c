// Fault matrix (issue 15), the destination page-server killed before the switch-over: the test
// guest (real QEMU) runs at s1 of the namespace WAN bed; its whole-VM migration to s2 starts and
// s2's page-server is killed (kill -9) once its incoming QEMU waits (the record in `preparing`,
// the address prepared for that QEMU's tap) while the disk's proxy export still opens: from
// `migrating` on, the post-copy switch follows within a round trip or two (the channel was
// opened ahead), too soon for a kill to land before it. The migration rolls
// back: failed with the reason, the VM running at s1 (the guest goes on verifying its memory and
// disk there), its address answering there, s2 seen suspect or down by the leader's liveness
// checks. Once s2's page-server is back (it adopts the waiting QEMU it left), the leader stops
// that QEMU: the VM runs in exactly one place.
import * as assert from "uvu/assert";
import { HostLiveness } from "../../gen/vmhop/v1/control.js";
import { VmState } from "../../gen/vmhop/v1/page.js";
import { destroyStaleNetns } from "../../testbed/netns.js";
import { startTestVm, type TestVm } from "../../testbed/sites/whole-vm-run.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { ensureGuest } from "../page-server/guest.js";
import { FaultBed, GUEST, say } from "./faults-bed.js";
import { assertRolledBackAtSource, qemuAtSourceOnly } from "./faults-checks.js";
import { migrationEnd } from "./fixtures.js";

const t = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root", "ip", "nft", "redis-server"],
  "fault matrix: the destination page-server killed before the switch-over",
);
const NS = "nr-fp-";
let fb: FaultBed | undefined;
let vm: TestVm | undefined;

t.before(async () => {
  await destroyStaleNetns(NS);
  await ensureGuest();
  fb = await FaultBed.start(NS);
  vm = await startTestVm(fb.bed, { ...GUEST, say });
});

t.after(async () => {
  vm?.serial.stop();
  await fb?.stop();
});

t(
  "the destination page-server killed before the switch-over: rolled back, the VM at the source only",
  async () => {
    const { bed } = fb!;
    const [a, b] = bed.sites;
    let m = await bed.client.migrateVm({ vmId: vm!.vmId, destinationHostId: b.hostId });
    for (;;) {
      m = await bed.client.getMigration(m.migrationId);
      if (m.state === "preparing" && m.network?.state === "prepared") break;
      assert.ok(["pending", "preparing"].includes(m.state), `reached ${m.state} before the kill: ${m.error}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    say(`kill -9 ${b.site}'s page-server (pid ${b.page.child.pid}) in ${m.state}`);
    b.page.child.kill("SIGKILL");
    const end = await migrationEnd(bed.client, m.migrationId, 300_000);
    say(`migration ${end.state}: ${end.error}`);
    await assertRolledBackAtSource(fb!, vm!, end);

    // The leader's checks saw s2 go.
    const live = await until(
      "s2 suspect or down",
      async () => {
        const l = (await bed.client.hostsStatus()).liveness.find((x) => x.hostId === b.hostId);
        return l && l.state !== HostLiveness.HOST_LIVENESS_UP ? l : undefined;
      },
      60_000,
      200,
    );
    assert.match(live.detail, /page-server/);

    // s2's page-server back (it adopts the waiting QEMU it left); the leader stops that QEMU.
    await bed.restartService(b.k, "page");
    await qemuAtSourceOnly(fb!);
    const still = await bed.client.getVm(vm!.vmId);
    assert.equal([still.hostId, still.vm?.state], [a.hostId, VmState.VM_STATE_RUNNING]);
  },
);

t.run();
