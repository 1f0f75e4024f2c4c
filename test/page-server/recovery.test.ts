import * as assert from "uvu/assert";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { assertGuestContinued, finished, guestOnTwoHosts } from "./guest-continues.js";
import { Link } from "./link.js";

const migTest = gate(test, ["qemu-system-x86_64", "gcc", "apt-get", "root"], "post-copy recovery");
const dir = tempDir("vmhop-recover-");
const closers: (() => Promise<void>)[] = [];

test.after(async () => {
  for (const c of closers.reverse()) await c();
  dir.cleanup();
});

for (const path of ["relay", "handoff"] as const)
  migTest(
    `link cut during post-copy, restored (${path}): post-copy recovers, VM survives at the destination`,
    async () => {
      const { a, b, spec, src } = await guestOnTwoHosts(dir.path, path, closers, {
        name: "vm1",
        workload: { memMib: 64, rateMib: 16, verifyMib: 48 },
      });
      const link = new Link(b.channelListenAddress);
      await link.open();
      closers.push(() => link.close());
      await b.prepareIncoming(spec, "mig-r");
      const dst = b.get("vm1");
      const passesBefore = src.serial.tracker.stats.last!.passes;

      // Capped so post-copy is still pushing pages when the link breaks.
      const rec = await a.startMigration({
        vmId: "vm1",
        migrationId: "mig-r",
        channelAddress: link.address,
        mode: "postcopy",
        maxBandwidth: 32 << 20, // ~5 s of background push: the break lands inside it
        channelPath: path, // loopback would hand off by default
        compression: path === "handoff" ? "off" : "auto",
      });
      let broke = false;
      rec.events.on("update", (r) => {
        if (!broke && r.phase === "postcopy" && (r.progress?.postcopyBytes ?? 0) > 2 << 20) {
          broke = true;
          link.break();
          setTimeout(() => link.restore(), 1500);
        }
      });
      assert.is(rec.channelPath, path);
      const end = await finished(rec);
      assert.ok(broke, "the migration finished before the link could be broken");
      assert.is(end.phase, "completed", end.error);
      assert.ok(end.recoveries >= 1, "no recovery happened");
      assert.ok(b.migration("mig-r").recoveries >= 1);
      // The fault timing stops at the recovery (pages are sent again), saying so; none on a handoff.
      const timing = b.migration("mig-r").faultTiming?.figures();
      if (path === "relay") assert.match(timing?.stopped ?? "", /recovery/);
      else assert.is(timing?.requested, 0);

      await assertGuestContinued(src, dst, passesBefore);
      console.log(
        `recovery (${path}): ${end.recoveries} recovery, max heartbeat gap ${dst.serial.tracker.stats.maxGapMs} ms, ` +
          `${end.channelBytes.forward} B over the channel`,
      );
    },
  );

test.run();
