// The QEMU command line for a VM spec. Pure: paths and accelerator come in as arguments.
import type { Accel } from "./accel.js";
import type { VmSpec } from "./spec.js";

export interface RuntimePaths {
  qmpSocket: string;
  serialSocket: string;
  serialLog: string;
  pidFile?: string;
}

export interface LaunchOptions {
  /** Start with the vCPUs stopped (-S). */
  paused?: boolean;
  /** Migration destination: wait for migrate-incoming (-incoming defer). */
  incoming?: boolean;
  /** QEMU trace event patterns (`-trace enable=…`), time-stamped into its log: a debugging aid. */
  trace?: string[];
}

/** Both ends of a migration start the disk's device with it (see buildQemuArgs). */
export const VIRTIO_BLK_GEOMETRY = "cyls=16383,heads=16,secs=63";

/** QEMU option values escape commas by doubling them. */
export function optValue(v: string): string {
  return v.replaceAll(",", ",,");
}

/**
 * The PCI slots of the per-VM devices, pinned so a QEMU that gets them later over QMP (a warm
 * incoming QEMU, see warm-pool.ts) has them where the source has them: a migration's device
 * sections and the NIC's option ROM are named by PCI address.
 */
export const DISK_PCI_ADDR = "0x2";
export const NIC_PCI_ADDR = "0x3";

/** One per-VM device as QEMU's option (`-drive`, `-netdev`, `-device`) and its value. */
export interface VmDevice {
  kind: "drive" | "netdev" | "device";
  opts: string;
}

/**
 * The devices that differ per VM of one shape (disk, NIC), in the order QEMU needs them: on
 * the command line, or added over HMP to a warm QEMU with the same words (`drive_add`,
 * `netdev_add`, `device_add`).
 */
export function perVmDevices(spec: Pick<VmSpec, "disk" | "nic">): VmDevice[] {
  const d: VmDevice[] = [];
  if (spec.disk) {
    d.push({ kind: "drive", opts: `file=${optValue(spec.disk.nbd)},if=none,id=disk0,format=raw` });
    // A fixed geometry: left to guess, QEMU reads the disk's first sector while it starts,
    // and a migration's destination then waits for that block across the WAN (its disk is a
    // lazy proxy) before it can even take the stream. Linux ignores virtio-blk's CHS.
    d.push({
      kind: "device",
      opts: `virtio-blk-pci,drive=disk0,id=vd0,addr=${DISK_PCI_ADDR},${VIRTIO_BLK_GEOMETRY}`,
    });
  }
  if (spec.nic) {
    d.push({ kind: "netdev", opts: `tap,id=net0,ifname=${spec.nic.tap},script=no,downscript=no` });
    const mac = spec.nic.mac ? `,mac=${spec.nic.mac}` : "";
    d.push({ kind: "device", opts: `virtio-net-pci,netdev=net0,id=nic0,addr=${NIC_PCI_ADDR}${mac}` });
  }
  return d;
}

export function buildQemuArgs(
  spec: VmSpec,
  paths: RuntimePaths,
  accel: Accel,
  launch: LaunchOptions = {},
): string[] {
  const a: string[] = [
    "-name",
    `${optValue(spec.name)},debug-threads=on`,
    "-machine",
    "pc",
    "-accel",
    accel,
    "-cpu",
    accel === "kvm" ? "host" : "qemu64",
    "-smp",
    String(spec.vcpus),
    "-m",
    String(spec.memoryMib),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    // A guest reboot or panic ends QEMU, so it is seen as an exit, not a silent loop.
    "-no-reboot",
    // No TPR-patching vAPIC (it serves old Windows guests): its state's load reads guest memory,
    // one more post-copy fault in the destination's device load.
    "-global",
    "apic-common.vapic=off",
    "-kernel",
    spec.kernel,
  ];
  if (spec.initrd) a.push("-initrd", spec.initrd);
  if (spec.cmdline) a.push("-append", spec.cmdline);
  a.push(
    "-chardev",
    `socket,id=serial0,path=${optValue(paths.serialSocket)},server=on,wait=off,logfile=${optValue(paths.serialLog)},logappend=on`,
    "-serial",
    "chardev:serial0",
    "-qmp",
    `unix:${optValue(paths.qmpSocket)},server=on,wait=off`,
  );
  if (paths.pidFile) a.push("-pidfile", paths.pidFile);
  for (const d of perVmDevices(spec)) a.push(`-${d.kind}`, d.opts);
  if (launch.paused) a.push("-S");
  if (launch.incoming) a.push("-incoming", "defer");
  if (launch.trace?.length) {
    a.push("-msg", "timestamp=on");
    for (const t of launch.trace) a.push("-trace", `enable=${optValue(t)}`);
  }
  return a;
}
