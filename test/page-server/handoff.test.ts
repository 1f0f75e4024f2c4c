// The handoff path: both page-servers give the channel's TCP connection to their QEMU
// (`getfd` over QMP with SCM_RIGHTS, then `fd:` URIs), so the stream bypasses the relay.
// Pure post-copy and pre-copy between two PageHosts: the heartbeat counter continues
// unbroken at the destination, its memory verification passes, the source QEMU ends.
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import { PageHost } from "../../services/page-server/host.js";
import type { MigrationMode } from "../../services/page-server/migration/driver.js";
import { isFinalPhase } from "../../services/page-server/migration/phase.js";
import { gate, tempDir } from "../helpers/env.js";
import { ensureGuest } from "./guest.js";
import { assertGuestContinued, finished } from "./guest-continues.js";

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
    const guest = await ensureGuest();
    const a = new PageHost({ runRoot: join(dir.path, `${mode}-a`) });
    const b = new PageHost({ runRoot: join(dir.path, `${mode}-b`) });
    for (const h of [a, b]) {
      await h.open();
      closers.push(() => h.close());
    }
    const spec = {
      name: `ho-${mode}`,
      vcpus: 1,
      memoryMib: 160,
      kernel: guest.kernel,
      initrd: guest.initrd,
      cmdline: guestCmdline({ memMib: 48, rateMib: 16, verifyMib: 48 }),
    };
    a.define(spec);
    const src = await a.start(spec.name);
    await src.serial.waitForHeartbeat((h) => h.passes >= 1, 60_000);
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
