// Fault matrix (issue 15), the control-plane killed and restarted: the only `vmhop control
// serve` (on Redis) of the namespace WAN bed is killed (kill -9) while the whole-VM migration
// of the test guest (real QEMU) is past its switch-over (the VM runs at the destination, its
// disk still arriving), and started again on the same address. The page-servers and the
// destination's block-server copy carry on meanwhile; the new process takes the lease once the dead
// one's expires, resumes the migration from its record and finishes it: done, the VM running
// only at the destination, memory and disk verified by the guest, its address answering.
import { destroyStaleNetns } from "../../testbed/netns.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { ensureGuest } from "../page-server/guest.js";
import { FaultBed } from "./faults-bed.js";

const t = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root", "ip", "nft", "redis-server"],
  "fault matrix: the control-plane killed and restarted after the switch-over",
);
const NS = "nr-fs-";
let fb: FaultBed | undefined;

t.before(async () => {
  await destroyStaleNetns(NS);
  await ensureGuest();
  fb = await FaultBed.start(NS);
});

t.after(async () => {
  await fb?.stop();
});

t("the control-plane killed (kill -9) after the switch-over and restarted: it resumes and finishes", () =>
  fb!.controlKilledAndRestarted(["switched", "completing", "relocating"]),
);

t.run();
