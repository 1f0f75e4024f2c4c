// Where the built guest lives, for the builder and for anything that boots it.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const defaultGuestOutDir = fileURLToPath(new URL("../out", import.meta.url));
export const guestSourceDir = fileURLToPath(new URL("..", import.meta.url));

export interface GuestArtefacts {
  kernel: string;
  initrd: string;
  workload: string;
}

export function guestPaths(outDir = defaultGuestOutDir): GuestArtefacts {
  return {
    kernel: join(outDir, "vmlinux"),
    initrd: join(outDir, "initramfs.cpio"),
    workload: join(outDir, "workload"),
  };
}

/** The built artefacts; a clear error when the guest has not been built. */
export function guestArtefacts(outDir = defaultGuestOutDir): GuestArtefacts {
  const p = guestPaths(outDir);
  const absent = [p.kernel, p.initrd].filter((f) => !existsSync(f));
  if (absent.length > 0)
    throw new Error(`guest not built (missing ${absent.join(", ")}): run \`vmhop guest build\``);
  return p;
}

/** The guest kernel command line for a workload configuration. */
export interface WorkloadParams {
  memMib?: number;
  rateMib?: number;
  verifyMib?: number;
  hbMs?: number;
  disk?: string;
  diskMib?: number;
  /** CPU load: percent of each heartbeat period the workload computes (`busy P` on the console changes it). */
  busy?: number;
}

export function guestCmdline(w: WorkloadParams = {}, extra = ""): string {
  // no_timer_check: on a busy host TCG can miss the kernel's early IO-APIC timer check, which
  // then panics ("IO-APIC + timer doesn't work"); the usual setting for VMs.
  const parts = ["console=ttyS0", "quiet", "panic=-1", "no_timer_check"];
  const add = (k: string, v: number | string | undefined) => {
    if (v !== undefined) parts.push(`vmhop.${k}=${v}`);
  };
  add("mem_mib", w.memMib);
  add("rate_mib", w.rateMib);
  add("verify_mib", w.verifyMib);
  add("hb_ms", w.hbMs);
  add("disk", w.disk);
  add("disk_mib", w.diskMib);
  add("busy", w.busy);
  if (extra) parts.push(extra);
  return parts.join(" ");
}
