// Fault matrix (issue 15), the WAN cut for 3 s during post-copy: the whole-VM migration of the
// test guest (real QEMU) over the namespace WAN bed switches over, and the relayed WAN link
// between the two sites is cut (every datagram dropped, both directions, as a pulled cable) the
// moment the record reads `switched` — memory pages still at the source, the disk's blocks
// too — and restored 3 s later. The migration carries on over the link once it is back: done,
// the VM running only at the destination, memory and disk verified by the guest, its address
// answering, and the record counting the post-copy recoveries the page-servers made (here 0 so
// far: the channel's TCP connections retransmit across a 3 s cut, none breaks; the guest stalls
// on its faults meanwhile).
import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { runWholeVm } from "../../testbed/sites/whole-vm-run.js";
import { faultRow, GUEST, say } from "./faults-bed.js";

const { t, fault } = faultRow("nr-fw-", "the WAN cut for 3 s during post-copy");

t("the WAN link cut for 3 s during post-copy and restored: the migration resumes and finishes", async () => {
  const { bed } = fault();
  const [a, b] = bed.sites;
  let cut: Promise<number> | undefined;
  const r = await runWholeVm(bed, {
    ...GUEST,
    say,
    onProgress: (m) => {
      if (cut || m.state !== "switched") return;
      const remaining = m.memory?.bytesRemaining ?? 0;
      cut = (async () => {
        await bed.net.cutWan(a.ns, b.ns, true);
        say(`WAN ${a.site}–${b.site} cut in switched (${remaining} bytes of memory still at ${a.site})`);
        await sleep(3000);
        await bed.net.cutWan(a.ns, b.ns, false);
        say("WAN restored");
        return remaining;
      })();
      cut.catch(() => {}); // awaited below
    },
  });
  assert.ok(cut, "the WAN was cut during post-copy");
  const remaining = await cut!;
  assert.ok(remaining > 0, "memory pages were still remote when the link was cut");
  const m = await fault().assertDoneAtDestination(r);
  // What the page-servers did about it, in the record: a stream that broke is resumed on a new
  // channel (counted); one whose TCP rode the cut out (retransmitted once the link was back) not.
  assert.ok(
    Number.isInteger(m.memory?.recoveries),
    `the record counts recoveries: ${JSON.stringify(m.memory)}`,
  );
  say(
    `done: ${m.memory?.pagesRequestedOnFault ?? 0} pages on fault, ${JSON.stringify(m.memory)}; guest gap ${r.max_guest_gap_ms} ms`,
  );
});

t.run();
