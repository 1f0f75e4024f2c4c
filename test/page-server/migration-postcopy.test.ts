// Pure post-copy between two QEMUs on loopback, driven by QMP: the guest's heartbeat counter
// continues unbroken on the destination, its memory verification passes there, and the
// source QEMU ends.
import * as assert from "uvu/assert";
import { migrate, prepareIncoming, queryMigration } from "../../services/page-server/migration/driver.js";
import type { Vm } from "../../services/page-server/vm/vm.js";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { bootPair } from "./pair.js";
import { type SharedDisk, sharedNbdDisk } from "./shared-disk.js";

const migTest = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root"],
  "post-copy needs userfaultfd (root)",
);
const dir = tempDir("vmhop-mig-");
const vms: Vm[] = [];

let shared: SharedDisk | undefined;

test.after(async () => {
  for (const vm of vms) await vm.kill();
  await shared?.stop();
  dir.cleanup();
});

migTest("pure post-copy: heartbeat continues unbroken on the destination, source ends", async () => {
  const { src, dst } = await bootPair(dir.path, "pc", { memMib: 48, rateMib: 16, verifyMib: 48 }, vms);
  assert.is(dst.state, "incoming");
  dst.serial.continueFrom(src.serial);
  const uri = `tcp:127.0.0.1:${await freePort()}`;
  await prepareIncoming(dst, uri, { mode: "postcopy" });

  const before = src.serial.tracker.stats.last!;
  const result = await migrate(src, uri, { mode: "postcopy" });
  assert.is(result.final.status, "completed");
  assert.ok(result.switchedAtMs !== undefined);
  assert.ok(result.final.postcopyBytes > 0, "no page moved in post-copy");
  assert.is(src.state, "postmigrate");

  // A verification pass that starts and ends on the destination, with the counter moving on.
  const hb = await dst.serial.waitForHeartbeat((h) => h.passes >= before.passes + 2, 60_000);
  assert.is(dst.state, "running");
  assert.ok(hb.counter > before.counter);
  assert.is(hb.memErrors, 0, "memory verification failed after migration");
  const stats = dst.serial.tracker.stats;
  assert.is(stats.counterBreaks, 0, "heartbeat counter broke across the switch-over");
  assert.is(stats.errorLines, 0);
  const dstInfo = await queryMigration(dst);
  console.log(
    `post-copy: wall ${result.wallMs} ms, downtime ${result.final.downtimeMs} ms, ` +
      `sent ${result.final.bytesTransferred} B (before switch ${result.final.precopyBytes + result.final.downtimeBytes} B), ` +
      `fault requests ${result.final.postcopyRequests}, blocktime ${dstInfo.postcopyBlocktimeMs} ms, max heartbeat gap ${stats.maxGapMs} ms`,
  );

  await src.stop();
  assert.is(src.state, "stopped");
  assert.throws(() => process.kill(src.pid!, 0), /ESRCH/);
});

migTest("post-copy with a shared NBD disk: the workload's disk checks pass at the destination", async () => {
  // Source and destination QEMU both hold the export during the migration.
  shared = await sharedNbdDisk(dir.path);
  const disk = { nbd: shared.url };
  const { src, dst } = await bootPair(
    dir.path,
    "disk",
    { memMib: 24, rateMib: 8, verifyMib: 24, disk: "/dev/vda", diskMib: 4 },
    vms,
    { disk },
  );
  await src.serial.waitForHeartbeat((h) => h.diskOk >= 3, 30_000);
  const uri = `tcp:127.0.0.1:${await freePort()}`;
  await prepareIncoming(dst, uri, { mode: "postcopy" });
  const before = src.serial.tracker.stats.last!;
  const r = await migrate(src, uri, { mode: "postcopy" });
  assert.is(r.final.status, "completed");
  const hb = await dst.serial.waitForHeartbeat(
    (h) => h.diskOk >= before.diskOk + 10 && h.passes >= before.passes + 1,
    60_000,
  );
  assert.is(hb.diskErrors, 0, "disk verification failed after migration");
  assert.is(hb.memErrors, 0);
  assert.is(dst.serial.tracker.stats.counterBreaks, 0);
  await src.stop();
});

test.run();
