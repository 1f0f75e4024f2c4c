// `vmhop control create-vm` / `delete-vm` on real parts: a `vmhop block serve` process, a
// page-server running the test guest under QEMU, a control-plane. A disk made from a size is a
// new image the block-server creates; one from an image is that file served in place. The
// guest writes and verifies its disk; delete-vm ends QEMU, forgets the VM on its page-server,
// removes the export (and the image the block-server created, not the user's). A VM that
// cannot start leaves nothing behind, and a restart keeps a VM whose create it interrupted
// once the VM runs.
import { existsSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import { BlockServiceClient, ExportMode, type ListExportsResponse } from "../../gen/vmhop/v1/block.js";
import { VmState } from "../../gen/vmhop/v1/page.js";
import { call } from "../../services/common/grpc/call.js";
import { MemoryStore } from "../../services/common/store/index.js";
import { KEYS, type VmRecord } from "../../services/control-plane/records.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { serve as blockServe, killAll } from "../block-server/fixtures/serve-process.js";
import { vmhop } from "../helpers/cli.js";
import { gate } from "../helpers/env.js";
import { heartbeats } from "../helpers/heartbeats.js";
import { test } from "../helpers/uvu.js";
import { until, within } from "../helpers/wait.js";
import { ensureGuest } from "../page-server/guest.js";
import {
  type ControlPlaneHandle,
  host,
  type PageServerHandle,
  startControlPlane,
  startPageServer,
} from "./fixtures.js";

const t = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root", "nbdkit"],
  "create-vm / delete-vm with a disk on a real block-server",
);
const dir = tempDir("vmhop-vm-lifecycle-");
const closers: (() => Promise<void>)[] = [];

t.after(async () => {
  for (const c of closers.reverse()) await c().catch((err) => console.error("close:", err));
  killAll();
  dir.cleanup();
});

async function exportsOf(address: string): Promise<ListExportsResponse> {
  const c = new BlockServiceClient(address, grpc.credentials.createInsecure());
  try {
    return await call(c, "listExports", {});
  } finally {
    c.close();
  }
}

const diskPasses = (log: string) => heartbeats(log).find((h) => h.diskOk > 0);

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

let cp: ControlPlaneHandle;
let page: PageServerHandle;
let block: { grpc: string; nbd: string };
let store: MemoryStore;
let guestArgs: string[];
const stateDir = join(dir.path, "block");

t.before(async () => {
  const guest = await ensureGuest();
  const s = blockServe(["--listen", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--state-dir", stateDir]);
  closers.push(() => s.stop());
  const r = await within(s.ready, 30_000, "the block-server's ready line");
  block = { grpc: r.grpc!, nbd: r.nbd[0] };
  page = await startPageServer(dir.path, "page");
  closers.push(page.close);
  store = new MemoryStore();
  cp = await startControlPlane(store);
  closers.push(() => cp.close());
  await cp.client.registerHost({
    ...host("a", page.address),
    blockServerAddress: block.grpc,
    blockNbdAddress: block.nbd,
  });
  guestArgs = [
    "--kernel",
    guest.kernel,
    "--initrd",
    guest.initrd,
    "--memory-mib",
    "160",
    "--cmdline",
    guestCmdline({ memMib: 32, rateMib: 8, verifyMib: 32, disk: "/dev/vda", diskMib: 8 }),
    "--server",
    cp.address,
  ];
});

t(
  "create-vm --disk-size: a new image on the block-server, the guest uses it; delete-vm removes all of it",
  async () => {
    const created = await vmhop([
      "control",
      "create-vm",
      "vm1",
      "a",
      "--disk-size",
      "16M",
      "--json",
      ...guestArgs,
    ]);
    assert.is(created.code, 0, created.err);
    const { hostId, vm } = JSON.parse(created.out);
    assert.is(hostId, "a");
    assert.is(vm.state, VmState.VM_STATE_RUNNING);
    assert.is(vm.spec.diskNbdUrl, `nbd://${block.nbd}/vm1`);
    const exp = (await exportsOf(block.grpc)).exports.find((e) => e.name === "vm1");
    assert.is(exp?.mode, ExportMode.EXPORT_MODE_TARGET);
    assert.is(exp?.path, join(stateDir, "cache", "vm1.img"));
    assert.is(statSync(exp!.path).size, 16 << 20);
    const rec = JSON.parse((await store.get(KEYS.vm("vm1")))!) as VmRecord;
    assert.is(rec.disk_export, "vm1", "the control-plane owns the export");
    await until("the guest writing and verifying its disk", () => diskPasses(vm.serialLogPath), 120_000);

    const pid = (await cp.client.getVm("vm1")).vm!.qemuPid;
    assert.ok(alive(pid));
    const deleted = await vmhop(["control", "delete-vm", "vm1", "--server", cp.address]);
    assert.is(deleted.code, 0, deleted.err);
    assert.match(deleted.out, "deleted vm1");
    assert.is((await store.get(KEYS.vm("vm1"))) ?? "", "");
    await until("QEMU ended", async () => (alive(pid) ? undefined : true), 30_000);
    assert.equal(
      page.host.list().map((v) => v.spec.name),
      [],
      "forgotten by the page-server",
    );
    assert.equal((await exportsOf(block.grpc)).exports, [], "the export removed");
    assert.not.ok(existsSync(exp!.path), "the image the block-server created is deleted with it");
    // The same VM id can be created again.
    const again = await vmhop(["control", "create-vm", "vm1", "a", "--disk-size", "8M", ...guestArgs]);
    assert.is(again.code, 0, again.err);
    assert.match(again.out, `created vm1 on a: running, disk nbd://${block.nbd}/vm1`);
    assert.is((await vmhop(["control", "delete-vm", "vm1", "--server", cp.address])).code, 0);
  },
);

t(
  "create-vm --disk-image: a VM that cannot start leaves nothing; the image is served in place and kept",
  async () => {
    const image = join(dir.path, "mine.raw");
    writeFileSync(image, Buffer.alloc(16 << 20));
    const i = guestArgs.indexOf("--kernel");
    const badKernel = [...guestArgs];
    badKernel[i + 1] = join(dir.path, "no-such-kernel");
    const failed = await vmhop(["control", "create-vm", "vm2", "a", "--disk-image", image, ...badKernel]);
    assert.is(failed.code, 1);
    // QEMU's own reason, not "cannot connect to QMP socket".
    assert.match(
      failed.err,
      /creating VM vm2 on a: .*DefineVm|creating VM vm2 on a: .*StartVm: VM vm2 did not start: QEMU exited with code 1: qemu: could not open kernel file/,
    );
    assert.is((await store.get(KEYS.vm("vm2"))) ?? "", "", "nothing recorded");
    assert.equal((await exportsOf(block.grpc)).exports, [], "the export made for it removed again");
    assert.ok(existsSync(image), "the user's image is kept");

    const created = await vmhop(["control", "create-vm", "vm2", "a", "--disk-image", image, ...guestArgs]);
    assert.is(created.code, 0, created.err);
    const exp = (await exportsOf(block.grpc)).exports.find((e) => e.name === "vm2");
    assert.is(exp?.path, image);
    const vm = (await cp.client.getVm("vm2")).vm!;
    await until("the guest writing and verifying its disk", () => diskPasses(vm.serialLogPath), 120_000);

    // A control-plane that stopped in the middle of this create left the VM held by "create": the
    // next one finds it running and keeps it.
    const rec = JSON.parse((await store.get(KEYS.vm("vm2")))!) as VmRecord;
    await store.set(KEYS.vm("vm2"), JSON.stringify({ ...rec, migration_id: "create" }));
    await cp.close();
    cp = await startControlPlane(store);
    const kept = await until(
      "the interrupted create settled",
      async () => {
        const r = await store.get(KEYS.vm("vm2"));
        return r && JSON.parse(r).migration_id === "" ? JSON.parse(r) : undefined;
      },
      30_000,
    );
    assert.is(kept.host_id, "a");
    assert.is((await cp.client.getVm("vm2")).vm?.state, VmState.VM_STATE_RUNNING);

    await cp.client.deleteVm("vm2");
    assert.equal((await exportsOf(block.grpc)).exports, []);
    assert.ok(existsSync(image), "an image the block-server did not create stays");
  },
);

t.run();
