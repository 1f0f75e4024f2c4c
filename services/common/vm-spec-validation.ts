// The one check of a VM's id and sizes, shared by the control-plane (before it records or asks
// anything) and the page-server (before it runs QEMU), so both refuse the same specs with the
// same words. Pure: it returns the problem, each service throws it as its own error.

/** A VM id names the QEMU process, its run folder and its disk export: no dots, no slashes. */
const VM_ID = /^[A-Za-z0-9][A-Za-z0-9-]{0,62}$/;
export const MAX_VCPUS = 64;
export const MIN_MEMORY_MIB = 32;
/** 1 TiB: above any host here; a size QEMU cannot have on this host is QEMU's to refuse. */
export const MAX_MEMORY_MIB = 1 << 20;

/** The fields checked, by their page.proto names. */
export interface VmSizes {
  vmId: string;
  vcpus: number;
  memoryMib: number;
}

/** What is wrong with the VM id, or undefined. */
export function vmIdProblem(vmId: string): string | undefined {
  if (!VM_ID.test(vmId ?? ""))
    return `VM spec: vm_id ${JSON.stringify(vmId ?? "")} must be 1-63 letters, digits or dashes, starting with a letter or digit`;
  return undefined;
}

/** The first problem with the spec's id, vcpus or memory, or undefined when they are fine. */
export function vmSpecProblem(s: VmSizes): string | undefined {
  const id = vmIdProblem(s.vmId);
  if (id) return id;
  if (!Number.isInteger(s.vcpus) || s.vcpus < 1 || s.vcpus > MAX_VCPUS)
    return `VM spec: vcpus ${s.vcpus} must be a whole number 1-${MAX_VCPUS}`;
  if (!Number.isInteger(s.memoryMib) || s.memoryMib < MIN_MEMORY_MIB || s.memoryMib > MAX_MEMORY_MIB)
    return `VM spec: memory_mib ${s.memoryMib} must be a whole number ${MIN_MEMORY_MIB}-${MAX_MEMORY_MIB} (MiB)`;
  return undefined;
}
