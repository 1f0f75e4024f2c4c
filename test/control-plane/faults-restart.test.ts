// Fault matrix (issue 15), the control-plane killed in each phase before the switch-over: the
// only `vmhop control serve` (on Redis) of the namespace WAN bed is killed (kill -9) the moment
// the whole-VM migration's record (test guest, real QEMU) enters the phase, and started again
// on the same address; each row on a fresh bed. The page-servers carry on meanwhile; the new
// process takes the lease once the dead one's expires, resumes the migration from that state
// (a takeover in the record, naming it) and finishes it: done, the VM running only at the
// destination, memory and disk verified by the guest, its address answering.
// (pending lasts from MigrateVm's write to its own first step, in one process: not a phase
// another process can see; a pending record left by a crash is tested in store.test.ts.)
import { faultRow } from "./faults-bed.js";

const { t, fault } = faultRow("nr-fr-", "the control-plane killed and restarted before the switch-over", {
  each: true,
});

for (const phase of ["preparing", "migrating"] as const)
  t(`the control-plane killed (kill -9) in ${phase} and restarted: it resumes there and finishes`, () =>
    fault().controlKilledIn(phase),
  );

t.run();
