// Fault matrix (issue 15), the destination block-server killed before the switch-over: the test
// guest (real QEMU) runs at s1 of the namespace WAN bed; its whole-VM migration to s2 starts and
// s2's block-server is killed (kill -9) once it holds the migration's proxy export of the disk
// (the destination's QEMU opening its disk on it) and the record still reads `preparing`. The
// migration rolls back: failed, the reason naming the block-server, the VM running at s1 on its
// own disk (the guest goes on verifying memory and disk there), its address answering there.
// Once s2's block-server is back (it restores the export it had recorded), the leader removes
// that export: nothing is left prepared at s2, and a later migration there ends done, verified.
import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { BlockServer } from "../../services/control-plane/block-client.js";
import { isNotFound } from "../../services/control-plane/peer-call.js";
import { migrateTestVm, startTestVm, type TestVm } from "../../testbed/sites/whole-vm-run.js";
import { until } from "../helpers/wait.js";
import { faultRow, GUEST, say } from "./faults-bed.js";
import { assertRolledBackAtSource, qemuAtSourceOnly } from "./faults-checks.js";
import { migrationEnd } from "./fixtures.js";

const { t, fault } = faultRow("nr-fbd-", "the destination block-server killed before the switch-over");
let vm: TestVm | undefined;

t.after(() => vm?.serial.stop());

/** Whether s2's block-server has export `name` (undefined: it does not answer). */
async function hasExport(block: BlockServer, name: string): Promise<boolean | undefined> {
  try {
    return (await block.status(name)).export !== undefined;
  } catch (err) {
    return isNotFound(err) ? false : undefined;
  }
}

t(
  "the destination block-server killed before the switch-over: rolled back to the source, nothing left at s2, a later migration there done",
  async () => {
    const fb = fault();
    const { bed } = fb;
    const [, b] = bed.sites;
    vm = await startTestVm(bed, { ...GUEST, say });
    const block = new BlockServer(b.blockAddress, 5000);
    try {
      let m = await bed.client.migrateVm({ vmId: vm.vmId, destinationHostId: b.hostId });
      const name = m.disk!.destinationExport;
      for (;;) {
        m = await bed.client.getMigration(m.migrationId);
        assert.ok(
          ["pending", "preparing"].includes(m.state),
          `reached ${m.state} before the kill: ${m.error}`,
        );
        if (m.state === "preparing" && (await hasExport(block, name))) break;
        await sleep(20);
      }
      say(
        `kill -9 ${b.site}'s block-server (pid ${b.block.child.pid}) in ${m.state}, its export ${name} made`,
      );
      b.block.child.kill("SIGKILL");
      const end = await migrationEnd(bed.client, m.migrationId, 300_000);
      say(`migration ${end.state}: ${end.error}`);
      assert.match(end.error, /block-server/, "the reason names the block-server");
      await assertRolledBackAtSource(fb, vm, end);
      await qemuAtSourceOnly(fb);

      // s2's block-server back: it restores the proxy export it had recorded; the leader,
      // seeing the host answer again, removes it (with its partial copy).
      await bed.restartService(b.k, "block");
      await until(
        "the rolled-back proxy export gone from s2",
        async () => (await hasExport(block, name)) === false,
        120_000,
        500,
      ).catch((err: Error) => {
        // What the leader saw and did about the host, for the failure's message.
        const said = bed.control
          .stderr()
          .split("\n")
          .filter((l) => /liveness|host back up|host down/.test(l));
        throw new Error(`${err.message}\n${said.slice(-10).join("\n")}`);
      });
      assert.equal(await fb.qemus(), [1, 0], "nothing prepared at s2");

      // A later migration to s2 starts afresh and ends done, verified.
      const r = await migrateTestVm(bed, vm, { ...GUEST, say });
      const done = await fb.assertDoneAtDestination(r);
      say(
        `then ${done.migrationId} done: ${r.disk.same} blocks as at the switch-over, ${r.disk.rewritten} rewritten by the guest`,
      );
    } finally {
      block.close();
    }
  },
);

t.run();
