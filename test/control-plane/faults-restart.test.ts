// Fault matrix (issue 15), the control-plane killed and restarted: the only `vmhop control
// serve` (on Redis) of the namespace WAN bed is killed (kill -9) while the whole-VM migration
// of the test guest (real QEMU) is before its switch-over, and started again on the same
// address. The page-servers carry on meanwhile; the new process takes the lease once the dead
// one's expires, resumes the migration from its record and finishes it: done, the VM running
// only at the destination, memory and disk verified by the guest, its address answering.
import { faultRow } from "./faults-bed.js";

const { t, fault } = faultRow("nr-fr-", "the control-plane killed and restarted mid-migration");

t("the control-plane killed (kill -9) before the switch-over and restarted: it resumes and finishes", () =>
  fault().controlKilledAndRestarted(["preparing", "migrating"]),
);

t.run();
