// A whole VM moves on across the WAN while its disk is still arriving: s1 → s2, and while s2
// still copies the disk (the copy slowed down), s2 → s3, whose proxy takes s2's export as its
// upstream. Both migrations end `done`; the VM runs at s3 on a promoted export with nothing left
// at s1 or s2; its address answers, bound at s3; the guest's own checks never failed; and s3's
// image is s1's as the VM left it plus only the guest's later writes.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { BlockServiceClient, ExportMode, type ListExportsResponse } from "../../gen/vmhop/v1/block.js";
import { NetReachServiceClient } from "../../gen/vmhop/v1/netreach.js";
import { call } from "../../services/common/grpc/call.js";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../../testbed/netns.js";
import { VM } from "../../testbed/netreach/bed.js";
import { startPing } from "../../testbed/netreach/probe-process.js";
import { SitesBed } from "../../testbed/sites/bed.js";
import { compareImages } from "../../testbed/sites/disk-check.js";
import { serialLogAt, startTestVm, type TestVm } from "../../testbed/sites/whole-vm-run.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { ensureGuest } from "../page-server/guest.js";
import { migrationEnd } from "./fixtures.js";

const t = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root", "ip", "nft"],
  "a whole VM moving on across the WAN while its disk arrives",
);
const dir = tempDir("vmhop-whole-vm-chain-");
let bed: SitesBed;
let vm: TestVm;

async function exportsAt(k: number): Promise<ListExportsResponse> {
  const c = new BlockServiceClient(bed.sites[k - 1].blockAddress, grpc.credentials.createInsecure());
  try {
    return await call(c, "listExports", {});
  } finally {
    c.close();
  }
}

const final = (id: string) => migrationEnd(bed.client, id, 600_000);

const sha = (p: string) => createHash("sha256").update(readFileSync(p)).digest("hex");

t.before(async () => {
  await destroyStaleNetns("nr-wc-");
  await ensureGuest();
  bed = await SitesBed.start({
    prefix: uniqueNetnsPrefix("nr-wc-"),
    dir: dir.path,
    sites: 3,
    // A slow copy keeps s2's disk incomplete while the VM moves on.
    controlArgs: ["--disk-copy-rate-mib", "1", "--disk-copy-rate-mib-after", "1"],
  });
  vm = await startTestVm(bed, { diskMib: 48, workloadDiskMib: 8, workloadMemMib: 32, dirtyRateMib: 8 });
});

t.after(async () => {
  vm?.serial.stop();
  await bed?.stop();
  dir.cleanup();
});

t("s1 → s2, then s2 → s3 while s2 still copies: every export ends at s3, the address too", async () => {
  const m1 = await bed.client.migrateVm({ vmId: vm.vmId, destinationHostId: "h2" });
  const copying = await until(
    "s1 → s2 relocating with s2's disk incomplete",
    async () => {
      const m = await bed.client.getMigration(m1.migrationId);
      if (["done", "failed"].includes(m.state)) return m;
      return m.state === "relocating" && m.disk && m.disk.blocksTotal > 0 ? m : undefined;
    },
    300_000,
    100,
  );
  assert.is(copying.state, "relocating", `${copying.state}: ${copying.error}`);
  assert.ok(copying.disk!.blocksLocal < copying.disk!.blocksTotal, JSON.stringify(copying.disk));
  // The source is frozen from the switch-over on: what it holds now is what s3 must be built on.
  const atS1 = sha(vm.image);
  vm.serial.follow(serialLogAt(bed, 2), true);
  vm.serial.follow(serialLogAt(bed, 3), true);

  const m2 = await bed.client.migrateVm({ vmId: vm.vmId, destinationHostId: "h3" });
  const [e1, e2] = [await final(m1.migrationId), await final(m2.migrationId)];
  assert.is(e2.state, "done", e2.error);
  assert.is(e1.state, "done", e1.error);
  assert.is(e2.network?.state, "settled", JSON.stringify(e2.network));

  const at = await bed.client.getVm(vm.vmId);
  assert.is(at.hostId, "h3");
  const s3 = (await exportsAt(3)).exports.find((e) => e.name === vm.vmId);
  assert.is(s3?.mode, ExportMode.EXPORT_MODE_TARGET, "promoted at s3");
  for (const k of [1, 2])
    assert.not.ok(
      (await exportsAt(k)).exports.some((e) => e.name === vm.vmId),
      `nothing left at s${k}`,
    );

  // The address: bound at s3 with the second migration's token, answering there.
  const anchor = new NetReachServiceClient(bed.anchorAddress!, grpc.credentials.createInsecure());
  const b = (await call(anchor, "listBindings", {})).bindings.find((x) => x.vmId === vm.vmId);
  anchor.close();
  assert.is(b?.site, "s3");
  assert.is(b?.generation, e2.fencingToken);
  for (const addr of [VM.homeIpv6[0], VM.homeIpv4[0]]) {
    const s = summarisePings(await startPing(bed.cn, addr, 20).result);
    assert.is(s.lost, 0, `${addr}: ${JSON.stringify(s)}`);
  }

  // The guest carries on at s3 with one unbroken heartbeat counter and no check failing.
  const lastBefore = vm.serial.beats.filter((h) => !h.path.endsWith(`s3/page/${vm.vmId}/serial.log`)).at(-1);
  await vm.serial.waitFor(
    "the guest verifying its disk at s3",
    (h) => h.path === serialLogAt(bed, 3) && h.diskOk > (lastBefore?.diskOk ?? 0) + 10,
    180_000,
  );
  assert.equal(vm.serial.errors, []);
  assert.is(vm.serial.tracker.stats.counterBreaks, 0);
  for (const h of vm.serial.beats) assert.ok(h.memErrors === 0 && h.diskErrors === 0, JSON.stringify(h));

  // s3's image: s1's as the VM left it, except blocks the guest rewrote since.
  assert.is(sha(vm.image), atS1, "s1's image changed after the VM left");
  const cmp = compareImages(vm.image, s3!.path);
  assert.ok(cmp.ok && cmp.same > 0, JSON.stringify(cmp));
});

t.run();
