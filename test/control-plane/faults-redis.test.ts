// Fault matrix (issue 15), Redis killed and restarted: the control-plane's Redis (append-only,
// fsync always) is killed (kill -9) while the whole-VM migration of the test guest (real QEMU)
// over the namespace WAN bed is under way, and started again a few seconds later. The
// control-plane's store calls wait meanwhile and its leader stops driving once its lease is
// older than its TTL; the page-servers carry on; once Redis is back the control-plane leads
// again (the same lease if it outlived the outage, else a newer generation that takes the
// migration over from its record) and finishes it: done, the VM running only at the
// destination, memory and disk verified by the guest, its address answering.
import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { runWholeVm } from "../../testbed/sites/whole-vm-run.js";
import { faultRow, GUEST, say } from "./faults-bed.js";

const { t, fault } = faultRow("nr-fd-", "Redis killed and restarted mid-migration");

t(
  "Redis killed (kill -9) mid-migration and restarted: the leader takes the lease again and finishes",
  async () => {
    const { bed, redis } = fault();
    let outage: Promise<number> | undefined;
    let killedIn = "";
    const r = await runWholeVm(bed, {
      ...GUEST,
      say,
      onProgress: (m) => {
        if (outage || !["migrating", "switched", "relocating"].includes(m.state)) return;
        killedIn = m.state;
        const before = m.driverGeneration;
        outage = (async () => {
          say(`kill -9 Redis in ${m.state} (driven under generation ${before})`);
          await redis.kill();
          await sleep(3000);
          await redis.restart();
          say("Redis restarted");
          return before;
        })();
        outage.catch(() => {}); // awaited below
      },
    });
    assert.ok(outage, "Redis was killed mid-migration");
    const before = await outage!;
    const m = await fault().assertDoneAtDestination(r);
    // A lease that outlived the outage is kept (same generation); one that expired is taken again.
    assert.ok(
      m.driverGeneration >= before,
      `driven to its end by the leader: ${m.driverGeneration} >= ${before}`,
    );
    const st = await bed.client.hostsStatus();
    assert.is(st.leaderReplica, String(bed.control.ready.replica), "the control-plane leads again");
    say(
      `Redis killed in ${killedIn}; done under generation ${m.driverGeneration}, fencing token ${m.fencingToken}`,
    );
  },
);

t.run();
