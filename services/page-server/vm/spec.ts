// What a VM is made of, as the page-server is asked to run it.
import { ServiceError } from "../../common/errors.js";
import { vmSpecProblem } from "../../common/vm-spec-validation.js";

export interface VmSpec {
  /** Letters, digits, dashes; names the QEMU process and its files. */
  name: string;
  vcpus: number;
  memoryMib: number;
  kernel: string;
  initrd?: string;
  cmdline?: string;
  /** An NBD export (nbd://host:port/export or nbd+unix:///export?socket=PATH), attached as virtio-blk. */
  disk?: { nbd: string };
  /** A tap device (created by the caller), attached as virtio-net. */
  nic?: { tap: string; mac?: string };
  /** auto: KVM only when the CPU has real hardware virtualisation (see accel.ts). */
  accel?: "auto" | "tcg" | "kvm";
}

export class VmSpecError extends ServiceError {
  constructor(message: string) {
    super("invalid", message);
    this.name = "VmSpecError";
  }
}

/** Throws VmSpecError naming the first bad field. */
export function validateSpec(spec: VmSpec): VmSpec {
  const bad = (m: string) => {
    throw new VmSpecError(`VM spec: ${m}`);
  };
  // Id and sizes: the check the control-plane makes too (same words).
  const sizes = vmSpecProblem({ vmId: spec.name, vcpus: spec.vcpus, memoryMib: spec.memoryMib });
  if (sizes) throw new VmSpecError(sizes);
  if (!spec.kernel) bad("kernel is required");
  if (spec.disk && !/^nbd(\+unix)?:\/\//.test(spec.disk.nbd))
    bad(`disk ${JSON.stringify(spec.disk.nbd)} is not an nbd:// URL`);
  if (spec.nic && !/^[\w.-]{1,15}$/.test(spec.nic.tap))
    bad(`nic tap ${JSON.stringify(spec.nic.tap)} is not a device name`);
  if (spec.nic?.mac && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(spec.nic.mac))
    bad(`nic mac ${spec.nic.mac} is malformed`);
  if (spec.accel && !["auto", "tcg", "kvm"].includes(spec.accel))
    bad(`accel ${spec.accel} must be auto, tcg or kvm`);
  return spec;
}

/**
 * The first field two specs differ in, as "memoryMib is 160 here, 128 in this request" (a
 * field left out and an empty one are equal); undefined when they describe the same VM.
 */
export function specDifference(here: VmSpec, asked: VmSpec): string | undefined {
  const keys = [...new Set([...Object.keys(here), ...Object.keys(asked)])] as (keyof VmSpec)[];
  for (const k of keys) {
    const [a, b] = [canonical(here[k]), canonical(asked[k])];
    if (a !== b) return `${k} is ${a} here, ${b} in this request`;
  }
  return undefined;
}

function canonical(v: unknown): string {
  if (v === undefined || v === "") return "unset";
  if (typeof v !== "object" || v === null) return JSON.stringify(v);
  const set = Object.entries(v).filter(([, x]) => x !== undefined && x !== "");
  return JSON.stringify(Object.fromEntries(set.sort(([x], [y]) => x.localeCompare(y))));
}
