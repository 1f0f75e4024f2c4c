// No pre-copy where it corrupts guests: the decision (pure) for every kind of host, and on
// this machine's real QEMU (7.2 under TCG) through real page-servers and the control-plane's
// gRPC: DescribeHost reports the binary's version and accelerator, an explicit pre-copy or
// hybrid is refused with FAILED_PRECONDITION naming both, `auto` is recorded as post-copy.
import { execFileSync } from "node:child_process";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { MigrationMode } from "../../gen/vmhop/v1/page.js";
import { MemoryStore } from "../../services/common/store/index.js";
import { decideMode, type HostQemu, precopyHazard } from "../../services/control-plane/mode-safety.js";
import { PageServer } from "../../services/control-plane/page-client.js";
import { KEYS } from "../../services/control-plane/records.js";
import { hostAccel } from "../../services/page-server/vm/accel.js";
import { parseQemuVersion } from "../../services/page-server/vm/qemu-info.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { rejectsWithStatus } from "../helpers/assert.js";
import { gate, gateOn } from "../helpers/env.js";
import { suite, test } from "../helpers/uvu.js";
import { host, startControlPlane, startPageServer } from "./fixtures.js";

const { PRECOPY, POSTCOPY, HYBRID, AUTO, UNSPECIFIED } = {
  PRECOPY: MigrationMode.MIGRATION_MODE_PRECOPY,
  POSTCOPY: MigrationMode.MIGRATION_MODE_POSTCOPY,
  HYBRID: MigrationMode.MIGRATION_MODE_HYBRID,
  AUTO: MigrationMode.MIGRATION_MODE_AUTO,
  UNSPECIFIED: MigrationMode.MIGRATION_MODE_UNSPECIFIED,
};
const q = (hostId: string, qemuVersion: string, accelerator: string): HostQemu => ({
  hostId,
  qemuVersion,
  accelerator,
});
const old = [q("a", "7.2.22", "tcg"), q("b", "8.2.2", "tcg")];
const fixed = [q("a", "8.0.0", "tcg"), q("b", "9.1.0", "tcg")];
const kvm = [q("a", "7.2.22", "kvm"), q("b", "7.2.22", "kvm")];

test("QEMU's version from its -version line", () => {
  assert.is(parseQemuVersion("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"), "7.2.22");
  assert.is(parseQemuVersion("QEMU emulator version 9.1\n"), "9.1");
  assert.is(parseQemuVersion("command not found"), undefined);
});

test("the hazard: QEMU < 8.0 under TCG, or a version unknown without KVM", () => {
  assert.match(
    precopyHazard(old[0]!) ?? "",
    /^host a runs QEMU 7\.2\.22 under TCG, which corrupts pre-copied guests \(fixed in QEMU 8\.0, commit 03bfc2188f\)$/,
  );
  assert.is(precopyHazard(fixed[0]!), undefined);
  assert.is(precopyHazard(kvm[0]!), undefined);
  assert.match(
    precopyHazard({ ...q("c", "", ""), unknownBecause: "DescribeHost: UNIMPLEMENTED" }) ?? "",
    /host c runs an unknown accelerator with a QEMU of unknown version \(DescribeHost: UNIMPLEMENTED\)/,
  );
  assert.match(precopyHazard(q("c", "", "tcg")) ?? "", /host c runs TCG with a QEMU of unknown version/);
});

test("the decision: allowed where safe, auto becomes post-copy, pre-copy and hybrid refused", () => {
  for (const hosts of [fixed, kvm]) {
    assert.equal(decideMode(PRECOPY, hosts), { mode: PRECOPY });
    assert.equal(decideMode(HYBRID, hosts), { mode: HYBRID });
    assert.equal(decideMode(AUTO, hosts), { mode: AUTO }, "auto stays the source's choice");
  }
  assert.equal(decideMode(UNSPECIFIED, old), { mode: POSTCOPY });
  assert.equal(decideMode(POSTCOPY, old), { mode: POSTCOPY });
  const auto = decideMode(AUTO, old);
  assert.is(auto.mode, POSTCOPY);
  assert.match((auto as { note: string }).note, /^auto chose post-copy: host a runs QEMU 7\.2\.22 under TCG/);
  // One old host of the two is enough (b is fine).
  assert.match(
    (decideMode(PRECOPY, old) as { refused: string }).refused,
    /^pre-copy would corrupt the guest: host a runs QEMU 7\.2\.22 under TCG, .*; use post-copy \(or auto\)$/,
  );
  assert.match(
    (decideMode(HYBRID, old) as { refused: string }).refused,
    /^hybrid \(pre-copy rounds first\) would corrupt/,
  );
  assert.is(decideMode(PRECOPY, old, true).mode, PRECOPY, "allowUnsafe: the operator's call");
  assert.is(decideMode(AUTO, old, true).mode, POSTCOPY, "auto stays safe whatever the override");
});

const base = suite("mode safety on this machine's QEMU");
const qemuHere = (() => {
  try {
    return parseQemuVersion(execFileSync("qemu-system-x86_64", ["-version"], { encoding: "utf8" })) ?? "";
  } catch {
    return "";
  }
})();
const real = gate(base, ["qemu-system-x86_64"], "DescribeHost with a real QEMU");
const unsafeHere = gateOn(
  real,
  precopyHazard(q("here", qemuHere, hostAccel()))
    ? null
    : `QEMU ${qemuHere} ${hostAccel()} here: pre-copy is safe`,
  "pre-copy refused on QEMU < 8.0 under TCG",
);
const dir = tempDir("vmhop-cp-modes-");
let pages: Awaited<ReturnType<typeof startPageServer>>[] = [];
let cp: Awaited<ReturnType<typeof startControlPlane>>;

real.before(async () => {
  pages = [await startPageServer(dir.path, "modes-a"), await startPageServer(dir.path, "modes-b")];
  const store = new MemoryStore();
  cp = await startControlPlane(store);
  await cp.client.registerHost(host("a", pages[0]!.address));
  await cp.client.registerHost(host("b", pages[1]!.address));
  await store.set(
    KEYS.vm("v1"),
    JSON.stringify({
      vm_id: "v1",
      spec: { vmId: "v1", vcpus: 1, memoryMib: 64, kernelPath: "/nonexistent/vmlinux" },
      host_id: "a",
      migration_id: "",
      fencing_token: 0,
    }),
  );
});

real.after(async () => {
  await cp?.close();
  for (const p of pages) await p.close();
  dir.cleanup();
});

real("DescribeHost reports the QEMU binary's version and the accelerator VMs get", async () => {
  const ps = new PageServer(pages[0]!.address);
  try {
    const d = await ps.describe(10_000);
    assert.is(d.qemuVersion, qemuHere);
    assert.match(d.qemuVersion, /^\d+\.\d+\.\d+$/);
    assert.is(d.accelerator, hostAccel());
    assert.is(d.qemuError, "");
  } finally {
    ps.close();
  }
});

unsafeHere(
  "pre-copy and hybrid refused naming the QEMU version and TCG; auto recorded as post-copy",
  async () => {
    const migrate = (mode: MigrationMode) =>
      cp.client.migrateVm({ vmId: "v1", destinationHostId: "b", mode, requestId: "" });
    const why = new RegExp(
      `host a runs QEMU ${qemuHere.replace(/\./g, "\\.")} under TCG, which corrupts pre-copied guests \\(fixed in QEMU 8\\.0, commit 03bfc2188f\\)`,
    );
    await rejectsWithStatus(
      migrate(PRECOPY),
      grpc.status.FAILED_PRECONDITION,
      /^pre-copy would corrupt the guest: /,
    );
    await rejectsWithStatus(migrate(PRECOPY), grpc.status.FAILED_PRECONDITION, why);
    await rejectsWithStatus(migrate(HYBRID), grpc.status.FAILED_PRECONDITION, why);
    assert.equal(await cp.client.listMigrations("v1"), [], "nothing recorded for a refusal");
    assert.is((await cp.client.getVm("v1")).migrationId, "", "the VM is not held");
    const m = await cp.client.migrateVm({ vmId: "v1", destinationHostId: "b", mode: AUTO, requestId: "" });
    assert.is(m.mode, POSTCOPY, "auto chose post-copy");
    await cp.client.waitForMigration(m.migrationId);
  },
);

test.run();
base.run();
