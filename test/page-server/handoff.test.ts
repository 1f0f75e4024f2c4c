import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import type { MigrationMode } from "../../services/page-server/migration/driver.js";
import { isFinalPhase } from "../../services/page-server/migration/phase.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { assertGuestContinued, finished, guestOnTwoHosts } from "./guest-continues.js";

const migTest = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root"],
  "post-copy needs userfaultfd (root)",
);
const dir = tempDir("vmhop-handoff-");
const closers: (() => Promise<void>)[] = [];

test.after(async () => {
  for (const c of closers.reverse()) await c();
  dir.cleanup();
});

for (const mode of ["postcopy", "precopy"] as MigrationMode[]) {
  migTest(`handoff, ${mode}: QEMU takes the TCP connection, guest continues at the destination`, async () => {
    const { a, b, spec, src } = await guestOnTwoHosts(dir.path, mode, closers, { name: `ho-${mode}` });
    const id = `ho-${mode}-1`;
    const channel = await b.prepareIncoming(spec, id, { mode });
    const dst = b.get(spec.name);
    const passesBefore = src.serial.tracker.stats.last!.passes;

    const rec = await a.startMigration({
      vmId: spec.name,
      migrationId: id,
      channelAddress: channel,
      mode,
      compression: "off",
    });
    assert.is(rec.channelPath, "handoff");
    const end = await finished(rec);
    assert.is(end.phase, "completed", end.error);
    assert.is(end.channelBytes.forward, 0, "bytes went through the relay");
    assert.is(end.connections, 1);
    assert.ok((end.progress?.bytesTransferred ?? 0) > 48 << 20, "QEMU sent less than the guest's memory");
    for (let i = 0; i < 50 && !isFinalPhase(b.migration(id).phase); i++) await sleep(100);
    assert.is(b.migration(id).channelPath, "handoff");

    await assertGuestContinued(src, dst, passesBefore);
    console.log(`handoff ${mode}: ${end.wallMs} ms, ${end.progress?.bytesTransferred} B sent by QEMU`);
  });
}

test.run();
