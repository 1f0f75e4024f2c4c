// Test helper: a source VM running the workload and a destination waiting for it.
import { join } from "node:path";
import { guestCmdline, type WorkloadParams } from "../../deploy/guest/build/paths.js";
import type { VmSpec } from "../../services/page-server/vm/spec.js";
import { Vm } from "../../services/page-server/vm/vm.js";
import { ensureGuest } from "./guest.js";

export interface Pair {
  src: Vm;
  dst: Vm;
}

/** Boots the source until a full verification pass, then starts the destination with -incoming defer. */
export async function bootPair(
  dir: string,
  tag: string,
  workload: WorkloadParams,
  track: Vm[],
  extra: Partial<VmSpec> = {},
): Promise<Pair> {
  const guest = await ensureGuest();
  const spec = (name: string): VmSpec => ({
    name,
    vcpus: 1,
    memoryMib: 160,
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: guestCmdline(workload),
    ...extra,
  });
  const src = new Vm(spec(`${tag}-src`), { runDir: join(dir, `${tag}-src`) });
  track.push(src);
  await src.start();
  await src.serial.waitForHeartbeat((h) => h.passes >= 1, 60_000);
  const dst = new Vm(spec(`${tag}-dst`), { runDir: join(dir, `${tag}-dst`) });
  track.push(dst);
  await dst.start({ incoming: true });
  dst.serial.continueFrom(src.serial);
  return { src, dst };
}
