// Mode "auto": pick pre-copy, hybrid or post-copy from the guest's measured dirty rate and
// the link's bandwidth. Pre-copy is chosen only when it clearly converges (the VM keeps running
// at the source until the end, the safest switch-over); post-copy when pre-copy would chase
// its own tail; hybrid in between (one pre-copy round, fewer faults after the switch).
import { setTimeout as sleep } from "node:timers/promises";
import type { Vm } from "../vm/vm.js";
import type { MigrationMode } from "./driver.js";

export interface AutoInput {
  dirtyBytesPerSec: number;
  bandwidthBytesPerSec: number;
  memoryBytes: number;
}

export interface AutoChoice {
  mode: MigrationMode;
  hybridRounds?: number;
  reason: string;
}

/** Longest first pre-copy round we accept for pure pre-copy. */
const PRECOPY_MAX_ROUND_S = 30;

export function chooseMode(i: AutoInput): AutoChoice {
  if (!(i.bandwidthBytesPerSec > 0)) throw new Error("auto mode needs a positive link bandwidth");
  const ratio = i.dirtyBytesPerSec / i.bandwidthBytesPerSec;
  const roundS = i.memoryBytes / i.bandwidthBytesPerSec;
  const pct = `${(ratio * 100).toFixed(1)}%`;
  if (ratio < 0.1 && roundS <= PRECOPY_MAX_ROUND_S)
    return { mode: "precopy", reason: `dirty rate is ${pct} of the bandwidth: pre-copy converges` };
  if (ratio < 0.5)
    return {
      mode: "hybrid",
      hybridRounds: 1,
      reason: `dirty rate is ${pct} of the bandwidth: one round, then post-copy`,
    };
  return { mode: "postcopy", reason: `dirty rate is ${pct} of the bandwidth: pre-copy would not converge` };
}

/** QEMU's sampled dirty rate (calc-dirty-rate), in bytes per second. */
export async function measureDirtyRate(vm: Vm, seconds = 1): Promise<number> {
  await vm.qmp.execute("calc-dirty-rate", { "calc-time": seconds });
  const deadline = Date.now() + seconds * 1000 + 10_000;
  for (;;) {
    const r = await vm.qmp.execute<{ status: string; "dirty-rate"?: number }>("query-dirty-rate");
    if (r.status === "measured") return (r["dirty-rate"] ?? 0) * 1e6; // QEMU reports MB/s
    if (Date.now() > deadline) throw new Error(`dirty rate not measured in time (status ${r.status})`);
    await sleep(100);
  }
}
