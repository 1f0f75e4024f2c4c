// `vmhop control create-vm`'s flags → the VmSpec and the new disk of a CreateVm (pure).
import type { VmDisk, VmNetwork } from "../../gen/vmhop/v1/control.js";
import type { VmSpec } from "../../gen/vmhop/v1/page.js";

export class VmArgsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "VmArgsError";
  }
}

const UNITS: Record<string, number> = { "": 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** "256M", "2G", "1048576", "512KiB" → bytes (binary units). */
export function parseSize(s: string): number {
  const m = /^(\d+)\s*([KMGT]?)(?:i?B)?$/i.exec(s.trim());
  if (!m)
    throw new VmArgsError(
      `bad size ${JSON.stringify(s)}: a number of bytes, or with K, M, G or T (e.g. 256M)`,
    );
  const n = Number(m[1]) * UNITS[m[2].toUpperCase()];
  if (n <= 0 || !Number.isSafeInteger(n))
    throw new VmArgsError(`bad size ${JSON.stringify(s)}: out of range`);
  return n;
}

export interface CreateVmArgs {
  vmId: string;
  memoryMib: number;
  vcpus: number;
  kernel: string;
  initrd: string;
  cmdline: string;
  tap: string;
  mac: string;
  diskUrl: string;
  diskImage: string;
  diskSize: string;
  /** Comma-separated home addresses (the control-plane checks them). */
  homeIpv6?: string;
  homeIpv4?: string;
}

const list = (s = "") =>
  s
    .split(",")
    .map((x) => x.trim())
    .filter(Boolean);

/** The spec, the home addresses if any, and for --disk-image or --disk-size the disk the control-plane creates. */
export function createVmRequest(a: CreateVmArgs): { spec: VmSpec; network?: VmNetwork; disk?: VmDisk } {
  if (!a.kernel) throw new VmArgsError("--kernel PATH is required (the guest kernel on the host)");
  if (!Number.isInteger(a.memoryMib) || a.memoryMib <= 0)
    throw new VmArgsError(`--memory-mib must be a positive whole number, got ${a.memoryMib}`);
  if (!Number.isInteger(a.vcpus) || a.vcpus <= 0)
    throw new VmArgsError(`--vcpus must be a positive whole number, got ${a.vcpus}`);
  const disks = [
    a.diskUrl && "--disk-url",
    a.diskImage && "--disk-image",
    a.diskSize && "--disk-size",
  ].filter(Boolean);
  if (disks.length > 1) throw new VmArgsError(`give one disk, not ${disks.join(" and ")}`);
  if (a.diskUrl && !/^nbd(\+unix)?:\/\//.test(a.diskUrl))
    throw new VmArgsError(`--disk-url must be an nbd:// URL, got ${JSON.stringify(a.diskUrl)}`);
  const spec: VmSpec = {
    vmId: a.vmId,
    vcpus: a.vcpus,
    memoryMib: a.memoryMib,
    diskNbdUrl: a.diskUrl,
    kernelPath: a.kernel,
    initrdPath: a.initrd,
    kernelCmdline: a.cmdline,
    nicTap: a.tap,
    nicMac: a.mac,
  };
  const [homeIpv6, homeIpv4] = [list(a.homeIpv6), list(a.homeIpv4)];
  const network = homeIpv6.length + homeIpv4.length > 0 ? { network: { homeIpv6, homeIpv4 } } : {};
  if (a.diskImage) return { spec, ...network, disk: { source: { $case: "imagePath", value: a.diskImage } } };
  if (a.diskSize)
    return { spec, ...network, disk: { source: { $case: "sizeBytes", value: parseSize(a.diskSize) } } };
  return { spec, ...network };
}
