// Fault matrix (issue 15), the leader replica killed: two `vmhop control serve` replicas on one
// Redis over the namespace WAN bed; the whole-VM migration of the test guest (real QEMU) runs,
// and the leader is killed (kill -9) once the record reads past the switch-over. The second
// replica takes the lease over, re-fences the migration and finishes it: done, the VM running
// only at the destination, memory and disk verified by the guest, its address answering, and
// the record naming the takeover.
import * as assert from "uvu/assert";
import { ControlClient } from "../../services/control-plane/client.js";
import type { ServiceProcess } from "../../testbed/service-process.js";
import { runWholeVm } from "../../testbed/sites/whole-vm-run.js";
import { faultRow, GUEST, say } from "./faults-bed.js";

const { t, fault } = faultRow("nr-fl-", "the leader replica killed mid-migration");

t(
  "the leader replica killed (kill -9) after the switch-over: the second replica takes over and finishes",
  async () => {
    const { bed } = fault();
    assert.is(bed.control.ready.leader, true, "the bed's control-plane leads");
    const second = await fault().replica("control-plane replica 2");
    let survivor: ServiceProcess | undefined;
    assert.is(second.ready.leader, false, "the second replica follows");
    const procs = [bed.control, second];
    let killedIn = "";
    let killed: Promise<number> | undefined;
    const r = await runWholeVm(bed, {
      ...GUEST,
      say,
      onProgress: (m) => {
        if (killed || !["switched", "completing", "relocating"].includes(m.state)) return;
        killedIn = m.state;
        // Whichever replica leads now (under load a lease may have changed hands already).
        killed = bed.client.hostsStatus().then((st) => {
          const leader = procs.find((p) => p.ready.replica === st.leaderReplica);
          const other = procs.find((p) => p !== leader)!;
          assert.ok(leader, `a replica leads: ${st.leaderReplica}`);
          say(`kill -9 the leader ${st.leaderReplica} (generation ${st.leaderGeneration}) in ${m.state}`);
          leader!.child.kill("SIGKILL");
          // The client follows the surviving replica from now on.
          bed.client.close();
          bed.client = new ControlClient(other.grpc);
          survivor = other;
          return st.leaderGeneration;
        });
        killed.catch(() => {}); // awaited below
      },
    });
    assert.ok(killed, "the leader was killed mid-migration");
    const generationBefore = await killed!;
    const m = await fault().assertDoneAtDestination(r);
    const st = await bed.client.hostsStatus();
    assert.is(st.leaderReplica, String(survivor!.ready.replica), "the surviving replica leads now");
    assert.is(m.driverGeneration, st.leaderGeneration, "the new leader drove it to its end");
    assert.ok(m.driverGeneration > generationBefore, `${m.driverGeneration} > ${generationBefore}`);
    assert.ok(m.fencingToken > m.driverGeneration, "re-fenced on the takeover, above the new generation");
    say(
      `killed in ${killedIn}; done under generation ${m.driverGeneration}, fencing token ${m.fencingToken}`,
    );
  },
);

t.run();
