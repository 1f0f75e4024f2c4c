// Pure post-copy between two QEMUs on loopback, driven by QMP: the guest's heartbeat counter
// continues unbroken on the destination, its memory verification passes there, and the
// source QEMU ends.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { truncateSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { migrate, prepareIncoming, queryMigration } from "../../services/page-server/migration/driver.js";
import type { Vm } from "../../services/page-server/vm/vm.js";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { bootPair } from "./pair.js";

const migTest = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root"],
  "post-copy needs userfaultfd (root)",
);
const dir = tempDir("vmhop-mig-");
const vms: Vm[] = [];

let nbd: ChildProcess | undefined;

async function waitListening(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on ${port}`);
}

test.after(async () => {
  for (const vm of vms) await vm.kill();
  if (nbd && nbd.exitCode === null) {
    nbd.kill("SIGKILL");
    await once(nbd, "exit");
  }
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
  const image = join(dir.path, "disk.raw");
  writeFileSync(image, Buffer.alloc(0));
  truncateSync(image, 16 << 20);
  const port = await freePort();
  // --shared: source and destination QEMU both hold the export during the migration.
  nbd = spawn(
    "qemu-nbd",
    ["-f", "raw", "-b", "127.0.0.1", "-p", String(port), "-x", "d", "-t", "--shared=4", image],
    {
      stdio: "ignore",
    },
  );
  await waitListening(port);
  const disk = { nbd: `nbd://127.0.0.1:${port}/d` };
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
