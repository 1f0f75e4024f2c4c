// Where pre-copy corrupts guests (pure): QEMU before 8.0 under TCG misses dirty pages after a
// few rounds (fixed upstream in commit 03bfc2188f, first released in 8.0). Shared by the
// control-plane (which modes a migration may use) and the page-server (what its `auto` picks).

/** What a host runs VMs with (page.proto DescribeHost); version "" when unknown. */
export interface HostQemu {
  hostId: string;
  qemuVersion: string;
  /** "tcg", "kvm", or "" when unknown. */
  accelerator: string;
  /** Why the version is unknown (the page-server's words, or why it did not say). */
  unknownBecause?: string;
}

/** Why pre-copy corrupts guests on this host, or undefined when it is safe there. */
export function precopyHazard(h: HostQemu): string | undefined {
  const what = unsafeQemu(h.qemuVersion, h.accelerator, h.unknownBecause);
  return what && `host ${h.hostId} runs ${what}`;
}

/** "QEMU 7.2.22 under TCG, which corrupts pre-copied guests (…)" when pre-copy is unsafe with it. */
export function unsafeQemu(version: string, accelerator: string, unknownBecause = ""): string | undefined {
  if (accelerator === "kvm") return undefined; // KVM tracks dirty pages in the kernel
  if (!version || !accelerator)
    return `${accelerator ? accelerator.toUpperCase() : "an unknown accelerator"} with a QEMU of unknown version (${unknownBecause || "not reported"})`;
  const [major] = version.split(".").map(Number);
  if (major !== undefined && major < 8)
    return `QEMU ${version} under TCG, which corrupts pre-copied guests (fixed in QEMU 8.0, commit 03bfc2188f)`;
  return undefined;
}
