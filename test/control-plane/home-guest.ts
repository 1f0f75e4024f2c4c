// The test guest with home addresses on the sites bed (test/control-plane/traces and
// whole-vm-wan): its disk, an image exported by site 1's block-server, and its VmSpec with the
// workload on that disk and netreach's home addresses on its NIC.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import { BlockServiceClient } from "../../gen/vmhop/v1/block.js";
import type { VmSpec } from "../../gen/vmhop/v1/page.js";
import { call } from "../../services/common/grpc/call.js";
import { HOME, VM } from "../../testbed/netreach/bed.js";
import type { SitesBed } from "../../testbed/sites/bed.js";

/** Exports a `diskMib` image in `dir` as `disk0` at site 1 and returns the guest's spec. */
export async function homeGuestSpec(
  bed: SitesBed,
  dir: string,
  guest: { kernel: string; initrd: string },
  o: { diskMib: number; tap: string },
): Promise<VmSpec> {
  const image = join(dir, "disk0.raw");
  writeFileSync(image, Buffer.alloc(o.diskMib << 20));
  const blocks = new BlockServiceClient(bed.sites[0].blockAddress, grpc.credentials.createInsecure());
  try {
    await call(blocks, "createExport", {
      name: "disk0",
      source: { $case: "target", value: { imagePath: image, sizeBytes: 0 } },
      readOnly: false,
      description: "",
      fencingToken: 0,
    });
  } finally {
    blocks.close();
  }
  return {
    vmId: VM.vmId,
    vcpus: 1,
    memoryMib: 160,
    diskNbdUrl: `nbd://${bed.sites[0].nbdAddress}/disk0`,
    kernelPath: guest.kernel,
    initrdPath: guest.initrd,
    kernelCmdline: guestCmdline(
      { memMib: 48, rateMib: 16, verifyMib: 48, disk: "/dev/vda", diskMib: 8 },
      `vmhop.ip6=${VM.homeIpv6[0]} vmhop.ip4=${VM.homeIpv4[0]}/24 vmhop.gw4=${HOME.gw4}`,
    ),
    nicTap: o.tap,
    nicMac: VM.mac,
  };
}
