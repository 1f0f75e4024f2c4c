// What this host runs VMs with: QEMU's version (from its binary, asked once) and the
// accelerator its VMs get (accel.ts). The control-plane reads both through DescribeHost to
// tell which migration modes are safe here.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { type Accel, hostAccel } from "./accel.js";

export interface QemuInfo {
  /** "7.2.22"; empty when unknown. */
  version: string;
  accelerator: Accel;
  /** Why the version is unknown. */
  error: string;
}

/** Pure: the version in `qemu-system-x86_64 -version`'s first line. */
export function parseQemuVersion(text: string): string | undefined {
  return /QEMU emulator version (\d+\.\d+(?:\.\d+)?)/.exec(text)?.[1];
}

let probed: Promise<QemuInfo> | undefined;

/** The host's QEMU, asked once per process (the binary does not change under a running service). */
export function qemuInfo(bin = "qemu-system-x86_64"): Promise<QemuInfo> {
  probed ??= (async () => {
    const accelerator = hostAccel();
    try {
      const { stdout } = await promisify(execFile)(bin, ["-version"], { timeout: 10_000 });
      const version = parseQemuVersion(stdout);
      return version
        ? { version, accelerator, error: "" }
        : { version: "", accelerator, error: `${bin} -version said ${JSON.stringify(stdout.trim())}` };
    } catch (err) {
      probed = undefined; // asked again next time: QEMU may be installed meanwhile
      return { version: "", accelerator, error: `cannot run ${bin}: ${(err as Error).message}` };
    }
  })();
  return probed;
}
