import * as assert from "uvu/assert";
import { unsafeQemu } from "../../services/common/precopy-hazard.js";
import type { MigrationRecord } from "../../services/page-server/host.js";
import { chooseMode, measureDirtyRate } from "../../services/page-server/migration/auto.js";
import { isFinalPhase } from "../../services/page-server/migration/phase.js";
import { qemuInfo } from "../../services/page-server/vm/qemu-info.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { guestOnTwoHosts } from "./guest-continues.js";

const migTest = gate(test, ["qemu-system-x86_64", "gcc", "apt-get", "root"], "auto mode migration");
const dir = tempDir("vmhop-auto-");
const closers: (() => Promise<void>)[] = [];
test.after(async () => {
  for (const c of closers.reverse()) await c();
  dir.cleanup();
});

const MiB = 2 ** 20;

test("chooseMode: pre-copy when it converges, hybrid in between, post-copy when it cannot", () => {
  const mem = 512 * MiB;
  assert.is(
    chooseMode({ dirtyBytesPerSec: 2 * MiB, bandwidthBytesPerSec: 125e6, memoryBytes: mem }).mode,
    "precopy",
  );
  const mid = chooseMode({ dirtyBytesPerSec: 30 * MiB, bandwidthBytesPerSec: 125e6, memoryBytes: mem });
  assert.is(mid.mode, "hybrid");
  assert.is(mid.hybridRounds, 1);
  const wan = chooseMode({ dirtyBytesPerSec: 400 * MiB, bandwidthBytesPerSec: 56e6, memoryBytes: mem });
  assert.is(wan.mode, "postcopy");
  assert.match(wan.reason, /would not converge/);
  // A huge guest on a thin link: even a quiet one is not worth a minutes-long pre-copy round.
  assert.is(chooseMode({ dirtyBytesPerSec: 0, bandwidthBytesPerSec: 1e6, memoryBytes: mem }).mode, "hybrid");
  assert.throws(
    () => chooseMode({ dirtyBytesPerSec: 1, bandwidthBytesPerSec: 0, memoryBytes: mem }),
    /bandwidth/,
  );
});

migTest(
  "auto on a light guest picks pre-copy (post-copy where pre-copy corrupts guests) and completes; the measured dirty rate is plausible",
  async () => {
    const { a, b, spec, src } = await guestOnTwoHosts(dir.path, "auto", closers, {
      name: "vm1",
      memoryMib: 128,
      workload: { memMib: 24, rateMib: 2, verifyMib: 24 },
    });
    const rate = await measureDirtyRate(src);
    assert.ok(rate < 64 * MiB, `measured ${rate} B/s for a 2 MiB/s workload`);

    const channel = await b.prepareIncoming(spec, "auto-1");
    const rec = await a.startMigration({
      vmId: "vm1",
      migrationId: "auto-1",
      channelAddress: channel,
      mode: "auto",
    });
    // Pre-copy converges for this guest, but QEMU < 8.0 under TCG (7.2 on these machines)
    // corrupts pre-copied guests: there auto takes post-copy and says why.
    const hazard = unsafeQemu((await qemuInfo()).version, src.accel);
    if (hazard) {
      assert.is(rec.mode, "postcopy", rec.modeReason);
      assert.is(rec.modeReason, `no pre-copy: this host runs ${hazard}`);
      assert.match(rec.modeReason ?? "", /QEMU \d+\.\d+(\.\d+)? under TCG, which corrupts pre-copied guests/);
    } else assert.is(rec.mode, "precopy", rec.modeReason);
    const end = await new Promise<MigrationRecord>((resolve) => {
      const on = (r: MigrationRecord) => isFinalPhase(r.phase) && resolve(r);
      rec.events.on("update", on);
      on(rec);
    });
    assert.is(end.phase, "completed", end.error);
    const dst = b.get("vm1");
    const before = src.serial.tracker.stats.last!.passes;
    dst.serial.continueFrom(src.serial);
    const hb = await dst.serial.waitForHeartbeat((h) => h.passes >= before + 1, 60_000);
    assert.is(hb.memErrors, 0);
  },
);

test.run();
