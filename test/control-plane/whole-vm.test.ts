// A VM moves with its disk (LAZY storage), end to end on real parts: two `vmhop block serve`
// processes, two page-servers running the test guest under QEMU with its disk on NBD, and a
// control-plane. The guest writes a pattern to its disk and re-verifies it all along; after one
// MigrateVm it runs at B on B's block-server, the export promoted there and released at A, and
// its own checks of memory and disk never fail. A migration that cannot prepare the
// destination's disk rolls back: the VM keeps running at A on its untouched disk.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import { BlockServiceClient, ExportMode, type ListExportsResponse } from "../../gen/vmhop/v1/block.js";
import { StorageMode } from "../../gen/vmhop/v1/control.js";
import { type VmSpec, VmState } from "../../gen/vmhop/v1/page.js";
import { call } from "../../services/common/grpc/call.js";
import { MemoryStore } from "../../services/common/store/index.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { serve as blockServe, killAll, type Served } from "../block-server/fixtures/serve-process.js";
import { gate } from "../helpers/env.js";
import { heartbeats } from "../helpers/heartbeats.js";
import { test } from "../helpers/uvu.js";
import { until, within } from "../helpers/wait.js";
import { ensureGuest } from "../page-server/guest.js";
import {
  type ControlPlaneHandle,
  host,
  migrationEnd,
  startControlPlane,
  startPageServer,
} from "./fixtures.js";

const t = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root", "nbdkit"],
  "whole-VM migration: disk and memory",
);
const dir = tempDir("vmhop-whole-vm-");
const closers: (() => Promise<void>)[] = [];
const DISK_MIB = 32;

t.after(async () => {
  for (const c of closers.reverse()) await c().catch((err) => console.error("close:", err));
  killAll();
  dir.cleanup();
});

async function blockServer(name: string, extra: string[]): Promise<{ s: Served; grpc: string; nbd: string }> {
  const s = blockServe([
    "--listen",
    "127.0.0.1:0",
    "--grpc",
    "127.0.0.1:0",
    "--state-dir",
    join(dir.path, name),
    ...extra,
  ]);
  closers.push(() => s.stop());
  const r = await within(s.ready, 30_000, `block-server ${name}'s ready line`);
  return { s, grpc: r.grpc!, nbd: r.nbd[0] };
}

async function exportsOf(address: string): Promise<ListExportsResponse> {
  const c = new BlockServiceClient(address, grpc.credentials.createInsecure());
  try {
    return await call(c, "listExports", {});
  } finally {
    c.close();
  }
}

let cp: ControlPlaneHandle;
let store: MemoryStore;
let a: { grpc: string; nbd: string };
let b: { grpc: string; nbd: string };
let c: { grpc: string; nbd: string };
let spec: VmSpec;
const image = join(dir.path, "disk0.raw");

t.before(async () => {
  const guest = await ensureGuest();
  writeFileSync(image, Buffer.alloc(DISK_MIB << 20));
  a = await blockServer("a", ["--target", image, "--name", "disk0"]);
  b = await blockServer("b", []);
  c = await blockServer("c", []);
  const pageA = await startPageServer(dir.path, "page-a");
  const pageB = await startPageServer(dir.path, "page-b");
  const pageC = await startPageServer(dir.path, "page-c");
  closers.push(pageA.close, pageB.close, pageC.close);
  store = new MemoryStore();
  cp = await startControlPlane(store);
  closers.push(() => cp.close());
  await cp.client.registerHost({
    ...host("c", pageC.address),
    blockServerAddress: c.grpc,
    blockNbdAddress: c.nbd,
  });
  await cp.client.registerHost({
    ...host("a", pageA.address),
    blockServerAddress: a.grpc,
    blockNbdAddress: a.nbd,
  });
  await cp.client.registerHost({
    ...host("b", pageB.address),
    blockServerAddress: b.grpc,
    blockNbdAddress: b.nbd,
  });
  spec = {
    vmId: "vm1",
    vcpus: 1,
    memoryMib: 160,
    diskNbdUrl: `nbd://${a.nbd}/disk0`,
    kernelPath: guest.kernel,
    initrdPath: guest.initrd,
    kernelCmdline: guestCmdline({ memMib: 48, rateMib: 16, verifyMib: 48, disk: "/dev/vda", diskMib: 8 }),
    nicTap: "",
    nicMac: "",
  };
});

const waitFinal = (id: string) => migrationEnd(cp.client, id, 180_000);

t(
  "a migration whose destination cannot open the disk rolls back: the VM stays at A on its disk",
  async () => {
    const vm = await cp.client.createVm(spec, "a");
    assert.is(vm.state, VmState.VM_STATE_RUNNING);
    await until(
      "the guest writing and verifying its disk",
      () => heartbeats(vm.serialLogPath).find((h) => h.diskOk > 0),
      120_000,
    );
    // B already serves an export of that name: the destination's disk cannot be prepared.
    const other = join(dir.path, "other.raw");
    writeFileSync(other, Buffer.alloc(1 << 20));
    const c = new BlockServiceClient(b.grpc, grpc.credentials.createInsecure());
    await call(c, "createExport", {
      name: "disk0",
      source: { $case: "target", value: { imagePath: other, sizeBytes: 0 } },
      readOnly: false,
      description: "",
      fencingToken: 0,
    });
    const m = await cp.client.migrateVm({ vmId: "vm1", destinationHostId: "b" });
    assert.is(m.storage, StorageMode.STORAGE_MODE_LAZY);
    const end = await waitFinal(m.migrationId);
    assert.is(end.state, "failed");
    assert.match(end.error, /disk0/);
    const at = await cp.client.getVm("vm1");
    assert.is(at.hostId, "a");
    assert.is(at.vm?.state, VmState.VM_STATE_RUNNING);
    assert.is(at.migrationId, "", "released for another migration");
    await call(c, "removeExport", { name: "disk0", fencingToken: 0, discardLocalCopy: false });
    c.close();
    assert.equal(
      (await exportsOf(b.grpc)).exports.map((e) => e.name),
      [],
      "nothing left at the destination",
    );
  },
);

t(
  "one MigrateVm moves memory and disk: the guest runs at B on B's export, promoted, A's released",
  async () => {
    const before = (await cp.client.getVm("vm1")).vm!;
    const logA = before.serialLogPath;
    const m = await cp.client.migrateVm({ vmId: "vm1", destinationHostId: "b" });
    assert.is(m.storage, StorageMode.STORAGE_MODE_LAZY);
    assert.is(m.disk?.sourceUrl, `nbd://${a.nbd}/disk0`);
    const end = await waitFinal(m.migrationId);
    assert.is(end.state, "done", end.error);
    // Every state of the table, in order, with when it was entered.
    const order = ["pending", "preparing", "migrating", "switched", "completing", "relocating", "done"];
    const when = order.map((s) => end.enteredUnixMs[s]);
    assert.ok(
      when.every((x) => x > 0),
      JSON.stringify(end.enteredUnixMs),
    );
    assert.equal(
      [...when].sort((x, y) => x - y),
      when,
    );
    assert.ok(end.disk?.promoted);
    assert.ok(
      end.disk!.blocksTotal > 0 && end.disk!.blocksLocal === end.disk!.blocksTotal,
      JSON.stringify(end.disk),
    );
    assert.ok(end.disk!.bytesFetchedBackground + end.disk!.bytesFetchedOnDemand > 0, "the disk was pulled");

    const vm = await cp.client.getVm("vm1");
    assert.is(vm.hostId, "b");
    assert.is(vm.vm?.spec?.diskNbdUrl, `nbd://${b.nbd}/disk0`);
    assert.is(vm.vm?.state, VmState.VM_STATE_RUNNING);
    const atB = (await exportsOf(b.grpc)).exports.find((e) => e.name === "disk0");
    assert.is(atB?.mode, ExportMode.EXPORT_MODE_TARGET, "promoted to a target at B");
    assert.not.ok(
      (await exportsOf(a.grpc)).exports.some((e) => e.name === "disk0"),
      "released at A",
    );

    // The source image is not written after the switch-over: it stays as it was left.
    const sum = () => createHash("sha256").update(readFileSync(image)).digest("hex");
    const frozen = sum();
    // The guest keeps writing and re-verifying its disk at B; nothing it wrote before was lost.
    const logB = vm.vm!.serialLogPath;
    const lastA = heartbeats(logA).at(-1)!;
    const more = await until(
      "disk passes at B",
      () => {
        const hb = heartbeats(logB).filter((h) => h.counter > lastA.counter);
        return hb.length > 0 && hb.at(-1)!.diskOk > lastA.diskOk + 20 ? hb : undefined;
      },
      120_000,
    );
    for (const h of [...heartbeats(logA), ...more]) {
      assert.is(h.diskErrors, 0, `disk errors in ${JSON.stringify(h)}`);
      assert.is(h.memErrors, 0, `memory errors in ${JSON.stringify(h)}`);
    }
    assert.is(sum(), frozen, "the source image changed after the migration");
  },
);

t(
  "the VM moves on (B→C, then C→A) while C still copies its disk: C's export is A's upstream, every export ends where the VM is",
  async () => {
    // A slow copy after memory keeps C's disk incomplete while the VM moves on.
    await cp.close();
    cp = await startControlPlane(store, {
      diskCopyRateWhileMemory: 2 << 20,
      diskCopyRateAfterMemory: 2 << 20,
      diskPollMs: 100,
    });
    const log0 = (await cp.client.getVm("vm1")).vm!.serialLogPath;
    const m1 = await cp.client.migrateVm({ vmId: "vm1", destinationHostId: "c" });
    const copying = await until(
      "B→C relocating with C's disk incomplete",
      async () => {
        const m = await cp.client.getMigration(m1.migrationId);
        if (m.state === "done" || m.state === "failed") return m;
        return m.state === "relocating" && m.disk && m.disk.blocksTotal > 0 ? m : undefined;
      },
      120_000,
      100,
    );
    assert.is(copying.state, "relocating", `${copying.state}: ${copying.error}`);
    assert.ok(copying.disk!.blocksLocal < copying.disk!.blocksTotal, JSON.stringify(copying.disk));
    // C's own copy all but stops: A's, reading through C, finishes first (C fetches what A asks
    // from B on demand), so the B→C migration sees its export taken away by the next move.
    const cc = new BlockServiceClient(c.grpc, grpc.credentials.createInsecure());
    await call(cc, "setRateLimit", {
      name: "disk0",
      rateLimitBytesPerSecond: 64 << 10,
      fencingToken: 0,
    });
    cc.close();
    const m2 = await cp.client.migrateVm({ vmId: "vm1", destinationHostId: "a" });
    assert.is(m2.disk?.sourceUrl, `nbd://${c.nbd}/disk0`, "C's export, still a proxy, is the upstream");
    const [e1, e2] = [await waitFinal(m1.migrationId), await waitFinal(m2.migrationId)];
    assert.is(e2.state, "done", e2.error);
    assert.is(e1.state, "done", e1.error);
    // Either C completed first (A's copy through C makes C's blocks local too) and B→C promoted
    // there, or the C→A move took the disk on and removed C's export first: both end "done".
    const vm = await cp.client.getVm("vm1");
    assert.is(vm.hostId, "a");
    assert.is(vm.vm?.spec?.diskNbdUrl, `nbd://${a.nbd}/disk0`);
    const names = async (x: { grpc: string }) => (await exportsOf(x.grpc)).exports.map((e) => e.name);
    assert.equal(await names(b), [], "B's export released");
    assert.equal(await names(c), [], "C's export released");
    const atA = (await exportsOf(a.grpc)).exports.find((e) => e.name === "disk0");
    assert.is(atA?.mode, ExportMode.EXPORT_MODE_TARGET, "promoted at A");
    const logA = vm.vm!.serialLogPath;
    const seen = heartbeats(log0).at(-1)!;
    const after = await until(
      "disk passes at A after two moves",
      () => {
        const hb = heartbeats(logA).filter((h) => h.counter > seen.counter);
        return hb.length > 0 && hb.at(-1)!.diskOk > seen.diskOk + 20 ? hb : undefined;
      },
      120_000,
    );
    for (const h of after) {
      assert.is(h.diskErrors, 0, `disk errors in ${JSON.stringify(h)}`);
      assert.is(h.memErrors, 0, `memory errors in ${JSON.stringify(h)}`);
    }
  },
);

t.run();
