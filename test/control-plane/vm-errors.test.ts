// CreateVm's errors carry the cause (real QEMU, a real page-server behind gRPC): a VM that
// does not start answers with QEMU's own words and the status that says whose fault it is,
// not UNAVAILABLE "cannot connect to QMP socket"; bad ids and sizes are refused by the
// control-plane with the page-server's own message, before anything is recorded.

import { readFileSync } from "node:fs";
import { totalmem } from "node:os";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import type { VmSpec } from "../../gen/vmhop/v1/page.js";
import { MemoryStore } from "../../services/common/store/index.js";
import { MAX_MEMORY_MIB } from "../../services/common/vm-spec-validation.js";
import { PageServer } from "../../services/control-plane/page-client.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { rejects, rejectsWithStatus } from "../helpers/assert.js";
import { gate, gateOn } from "../helpers/env.js";
import { suite } from "../helpers/uvu.js";
import {
  type ControlPlaneHandle,
  host,
  type PageServerHandle,
  startControlPlane,
  startPageServer,
} from "./fixtures.js";

const base = suite("CreateVm errors");
const test = gate(base, ["qemu-system-x86_64"], "QEMU refusing a VM");
const dir = tempDir("vmhop-cp-vm-errors-");
let page: PageServerHandle;
let cp: ControlPlaneHandle;

const spec = (o: Partial<VmSpec> = {}): VmSpec => ({
  vmId: "v1",
  vcpus: 1,
  memoryMib: 64,
  diskNbdUrl: "",
  kernelPath: "/nonexistent/vmlinux",
  initrdPath: "",
  kernelCmdline: "",
  nicTap: "",
  nicMac: "",
  ...o,
});

test.before(async () => {
  page = await startPageServer(dir.path, "errors-a");
  cp = await startControlPlane(new MemoryStore());
  await cp.client.registerHost(host("a", page.address));
});

test.after(async () => {
  await cp?.close();
  await page?.close();
  dir.cleanup();
});

/** Nothing recorded, nothing left on the page-server. */
async function nothingLeft() {
  assert.equal(await cp.client.listVms(), []);
  assert.equal(
    page.host.list().map((v) => v.spec.name),
    [],
  );
}

test("a kernel QEMU cannot open: INVALID_ARGUMENT with QEMU's own words", async () => {
  await rejectsWithStatus(
    cp.client.createVm(spec(), "a"),
    grpc.status.INVALID_ARGUMENT,
    /VM v1 did not start: QEMU exited with code 1: qemu: could not open kernel file '\/nonexistent\/vmlinux': No such file or directory/,
  );
  await nothingLeft();
});

// Linux's default overcommit refuses one allocation above RAM + swap; "always overcommit"
// would let QEMU start and the test mean nothing.
const overcommit = readFileSync("/proc/sys/vm/overcommit_memory", "utf8").trim();
const tooMuch = Math.ceil((4 * totalmem()) / 2 ** 20);
gateOn(
  test,
  overcommit === "1"
    ? "vm.overcommit_memory=1 (QEMU would get any memory)"
    : tooMuch > MAX_MEMORY_MIB
      ? "a host with more than 256 GiB"
      : null,
  "QEMU refusing more memory than the host has",
)("more memory than the host has: RESOURCE_EXHAUSTED with QEMU's words", async () => {
  await rejectsWithStatus(
    cp.client.createVm(spec({ memoryMib: tooMuch, kernelPath: "/bin/true" }), "a"),
    grpc.status.RESOURCE_EXHAUSTED,
    /VM v1 did not start: QEMU exited with code 1: qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory/,
  );
  await nothingLeft();
});

test("bad ids and sizes: INVALID_ARGUMENT at the control-plane, in the page-server's words", async () => {
  const ps = new PageServer(page.address);
  try {
    for (const bad of [{ vmId: "vm.1" }, { memoryMib: 0 }, { vcpus: 0 }, { memoryMib: MAX_MEMORY_MIB * 2 }]) {
      // What the page-server itself says to the same spec...
      let said = "";
      await rejects(
        ps.define(spec(bad)).catch((err) => {
          said = (err as Error).message.replace(/^page-server [^:]+:\d+: DefineVm: /, "");
          throw err;
        }),
        /VM spec: /,
      );
      // ... is what the control-plane answers, without asking the page-server.
      const escaped = said.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      await rejectsWithStatus(
        cp.client.createVm(spec(bad), "a"),
        grpc.status.INVALID_ARGUMENT,
        new RegExp(`^${escaped}$`),
      );
    }
  } finally {
    ps.close();
  }
  await nothingLeft();
});

test.run();
