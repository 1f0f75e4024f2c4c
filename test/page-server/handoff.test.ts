// The handoff path: both page-servers give the channel's TCP connection to their QEMU
// (`getfd` over QMP with SCM_RIGHTS, then `fd:` URIs), so the stream bypasses the relay.
// Pure post-copy and pre-copy between two PageHosts: the heartbeat counter continues
// unbroken at the destination, its memory verification passes, the source QEMU ends.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import { type MigrationRecord, PageHost } from "../../services/page-server/host.js";
import { splitLines } from "../../services/page-server/lines.js";
import type { MigrationMode } from "../../services/page-server/migration/driver.js";
import { isFinalPhase } from "../../services/page-server/migration/phase.js";
import { parseHeartbeat } from "../../services/page-server/vm/heartbeat.js";
import { gate, tempDir } from "../helpers/env.js";
import { ensureGuest } from "./guest.js";

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

function heartbeats(logs: string[]) {
  return splitLines(Buffer.concat(logs.map((p) => readFileSync(p))))
    .lines.map(parseHeartbeat)
    .filter((h) => h !== null);
}

function finished(rec: MigrationRecord): Promise<MigrationRecord> {
  return new Promise((resolve) => {
    if (isFinalPhase(rec.phase)) return resolve(rec);
    const on = (r: MigrationRecord) => {
      if (isFinalPhase(r.phase)) {
        rec.events.off("update", on);
        resolve(r);
      }
    };
    rec.events.on("update", on);
  });
}

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

    const logs = [src.paths.serialLog, dst.paths.serialLog];
    const deadline = Date.now() + 60_000;
    let after = heartbeats(logs).at(-1);
    while ((after?.passes ?? 0) < passesBefore + 2 && Date.now() < deadline) {
      await sleep(200);
      after = heartbeats(logs).at(-1);
    }
    assert.ok((after?.passes ?? 0) >= passesBefore + 2, "no full verification pass at the destination");
    assert.is(after!.memErrors, 0, "memory verification failed after the migration");
    const all = heartbeats(logs);
    assert.equal(
      all.filter((h, i) => i > 0 && h.counter !== all[i - 1].counter + 1),
      [],
      "heartbeat counter broke",
    );
    assert.is(dst.state, "running");
    for (let i = 0; i < 50 && src.state !== "stopped"; i++) await sleep(100);
    assert.is(src.state, "stopped");
    console.log(`handoff ${mode}: ${end.wallMs} ms, ${end.progress?.bytesTransferred} B sent by QEMU`);
  });
}

test.run();
