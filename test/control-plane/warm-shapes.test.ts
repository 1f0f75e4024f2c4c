// The control-plane's part of warm incoming QEMUs (warm-shapes.ts): the VM shapes it names
// (distinct, most common first, without a VM's id, disk or NIC), and one round against a real
// page-server (gRPC, real QEMU): it keeps a warm QEMU of the first shape within its bound,
// DescribeHost counts it, and once no VM has that shape any more, the warm QEMU is stopped.
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import { VmSpec } from "../../gen/vmhop/v1/page.js";
import { silentLogger } from "../../services/common/log.js";
import { MemoryStore } from "../../services/common/store/index.js";
import { PageServer, PageServers } from "../../services/control-plane/page-client.js";
import { KEYS, type VmRecord } from "../../services/control-plane/records.js";
import { vmShapes, WarmShapes } from "../../services/control-plane/warm-shapes.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { ensureGuest } from "../page-server/guest.js";
import { plantHost, startPageServer } from "./fixtures.js";

const qemuTest = gate(test, ["qemu-system-x86_64", "gcc", "apt-get"], "a warm incoming QEMU");
const dir = tempDir("vmhop-warm-shapes-");
const closers: (() => Promise<void>)[] = [];

test.after(async () => {
  for (const c of closers.reverse()) await c().catch(() => {});
  dir.cleanup();
});

const spec = (vmId: string, memoryMib: number, extra: Partial<VmSpec> = {}) =>
  VmSpec.fromPartial({ vmId, vcpus: 1, memoryMib, kernelPath: "/k", kernelCmdline: "c", ...extra });
const vm = (s: VmSpec): Pick<VmRecord, "vm_id" | "spec"> => ({
  vm_id: s.vmId,
  spec: VmSpec.toJSON(s) as Record<string, unknown>,
});

test("vmShapes: distinct shapes, most common first; id, disk and NIC left out", () => {
  const shapes = vmShapes([
    vm(spec("a", 128, { diskNbdUrl: "nbd://x/a", nicTap: "t1", nicMac: "52:54:00:00:00:01" })),
    vm(spec("b", 256)),
    vm(spec("c", 256, { diskNbdUrl: "nbd://x/c" })),
    vm(spec("d", 256, { kernelCmdline: "other" })),
  ]);
  assert.equal(
    shapes.map((s) => [s.memoryMib, s.kernelCmdline, s.vmId, s.diskNbdUrl, s.nicTap]),
    [
      [256, "c", "", "", ""],
      [128, "c", "", "", ""],
      [256, "other", "", "", ""],
    ],
  );
  assert.equal(vmShapes([]), []);
});

qemuTest(
  "a round: the page-server keeps a warm QEMU of the first shape (max 1), stopped once unwanted",
  async () => {
    const guest = await ensureGuest();
    const page = await startPageServer(dir.path, "p1", "127.0.0.1:0", { warmMax: 1 });
    closers.push(page.close);
    const store = new MemoryStore();
    await plantHost(store, "h1", page.address);
    const real = (vmId: string, memoryMib: number) =>
      spec(vmId, memoryMib, {
        kernelPath: guest.kernel,
        initrdPath: guest.initrd,
        kernelCmdline: guestCmdline({ memMib: 16, rateMib: 2, verifyMib: 16 }),
      });
    for (const s of [real("v1", 128), real("v2", 128), real("v3", 96)])
      await store.set(
        KEYS.vm(s.vmId),
        JSON.stringify({ ...vm(s), host_id: "h1", migration_id: "", fencing_token: 0 }),
      );
    const pages = new PageServers();
    const warm = new WarmShapes(store, pages, { log: silentLogger });
    await warm.tellAll();
    await until("a warm QEMU at the page-server", () => page.host.warm.readyCount() === 1, 120_000, 100);
    const [qemu] = page.host.warm.readyVms();
    assert.is(qemu.spec.memoryMib, 128, "not the most common shape");
    const client = new PageServer(page.address);
    const d = await client.describe();
    assert.equal([d.warmReady, d.warmMax], [1, 1]);

    for (const id of ["v1", "v2", "v3"]) await store.del(KEYS.vm(id));
    await warm.tellAll();
    assert.is(page.host.warm.readyCount(), 0);
    await qemu.waitExit();
    assert.is(qemu.state, "crashed", "the warm QEMU still runs");
    client.close();
    pages.close();
  },
);

test.run();
