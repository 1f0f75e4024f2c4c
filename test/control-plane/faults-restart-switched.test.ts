// Fault matrix (issue 15), the control-plane killed in each phase after the switch-over: the
// only `vmhop control serve` (on Redis) of the namespace WAN bed is killed (kill -9) the moment
// the whole-VM migration's record (test guest, real QEMU) enters the phase (the VM runs at the
// destination, its memory or disk still arriving), and started again on the same address; each
// row on a fresh bed. The page-servers and the destination's block-server copy carry on
// meanwhile; the new process takes the lease once the dead one's expires, resumes the migration
// from that state (a takeover in the record, naming it) and finishes it: done, the VM running
// only at the destination, memory and disk verified by the guest, its address answering.
import { faultRow } from "./faults-bed.js";

const { t, fault } = faultRow("nr-fs-", "the control-plane killed and restarted after the switch-over", {
  each: true,
});

for (const phase of ["switched", "completing", "relocating"] as const)
  t(`the control-plane killed (kill -9) in ${phase} and restarted: it resumes there and finishes`, () =>
    fault().controlKilledIn(phase),
  );

t.run();
