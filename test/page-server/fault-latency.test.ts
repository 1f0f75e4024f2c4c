// The per-fault post-copy latency histogram on real QEMU: a guest migrated in post-copy
// through the relay, there and back between two page-servers (with the urgent lane; then
// compressed without it, so every page comes on the main stream). The destination's
// vmhop_page_postcopy_fault_latency_seconds counts the faults QEMU reports (within reason:
// a fault whose page had already passed the relay when asked for is counted, not timed), the
// record and WatchMigration carry the same figures, a stream handed to QEMU shows no series,
// and the series go once the migration does. No timings asserted.
import * as assert from "uvu/assert";
import { startMetricsServer } from "../../services/common/metrics/server.js";
import { migrationToProto } from "../../services/page-server/grpc/convert.js";
import type { MigrationRecord } from "../../services/page-server/host.js";
import { bindPageMetrics } from "../../services/page-server/metrics.js";
import { isLive } from "../../services/page-server/vm/states.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { scrape } from "../helpers/metrics.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { finished, guestOnTwoHosts } from "./guest-continues.js";

const migTest = gate(test, ["qemu-system-x86_64", "gcc", "apt-get", "root"], "post-copy fault timing");
const dir = tempDir("vmhop-faults-");
const closers: (() => Promise<void>)[] = [];
test.after(async () => {
  for (const c of closers.reverse()) await c();
  dir.cleanup();
});

const HIST = "vmhop_page_postcopy_fault_latency_seconds";
const UNTIMED = "vmhop_page_postcopy_faults_untimed_total";

migTest(
  "relayed post-copy, urgent lane then compressed main stream: every fault QEMU reports is timed; a handoff shows none",
  async () => {
    const { a, b, spec, src } = await guestOnTwoHosts(dir.path, "fl", closers, { name: "vm1" });
    const metrics = await startMetricsServer("127.0.0.1:0");
    closers.push(() => metrics.close());
    let shown = () => [...a.migrations(), ...b.migrations()];
    const unbind = bindPageMetrics(() => shown());
    closers.push(async () => unbind());

    let from = a;
    let to = b;
    let vm = src;
    for (const [id, preempt, compression] of [
      ["fl-1", true, "off"],
      ["fl-2", false, "on"],
    ] as const) {
      const passes = vm.serial.tracker.stats.last!.passes;
      const channel = await to.prepareIncoming(spec, id);
      const dst = to.get(spec.name);
      dst.serial.continueFrom(vm.serial);
      const rec = await from.startMigration({
        vmId: spec.name,
        migrationId: id,
        channelAddress: channel,
        mode: "postcopy",
        channelPath: "relay",
        preempt,
        compression,
      });
      const end = await finished(rec);
      assert.is(end.phase, "completed", end.error);
      const dstRec = to.migrations().find((r) => r.id === id) as MigrationRecord;
      await finished(dstRec);
      // The guest goes on at the destination: a verification pass there, its counter unbroken.
      const hb = await dst.serial.waitForHeartbeat((h) => h.passes >= passes + 1, 60_000);
      assert.is(hb.memErrors, 0, "memory verification failed after the migration");
      assert.is(dst.serial.tracker.stats.counterBreaks, 0, "heartbeat counter broke");

      // QEMU's own count of the page requests (source), and what the relay timed (destination).
      const faults = end.progress?.postcopyRequests ?? 0;
      assert.ok(faults > 0, "no post-copy fault: nothing to time");
      const f = dstRec.faultTiming?.figures();
      assert.ok(f, "no fault timing on the destination's record");
      assert.is(f.stopped, undefined, `timing stopped: ${f.stopped}`);
      assert.ok(
        Math.abs(f.requested - faults) <= 2,
        `relay saw ${f.requested} requests, QEMU counted ${faults}`,
      );
      // Each request is timed, or its page was already on its way in; hardly any is left unanswered.
      assert.is(f.count + f.inFlight + f.waiting + f.dropped, f.requested);
      assert.ok(f.count > 0, "no fault timed");
      const unanswered = f.waiting + f.dropped;
      assert.ok(unanswered <= Math.max(2, f.requested / 10), `${unanswered} of ${f.requested} unanswered`);
      assert.ok(f.p50Ms <= f.p99Ms && f.p99Ms <= f.maxMs && f.maxMs > 0);

      // WatchMigration carries them (destination only).
      const pb = migrationToProto(dstRec).faultLatency;
      assert.equal(
        [pb?.timed, pb?.requested, pb?.inFlight, pb?.maxMs, pb?.stopped],
        [f.count, f.requested, f.inFlight, f.maxMs, ""],
      );
      assert.is(migrationToProto(end).faultLatency, undefined);

      const s = await scrape(metrics.address);
      const labels = { migration: id, role: "destination", vm: spec.name };
      assert.is(s.value(`${HIST}_count`, labels), f.count);
      assert.is(s.value(`${HIST}_bucket`, { ...labels, le: "+Inf" }), f.count);
      assert.ok((s.value(`${HIST}_sum`, labels) ?? 0) > 0);
      const buckets = s.all(`${HIST}_bucket`, labels).map((x) => x.value);
      assert.equal(
        buckets,
        [...buckets].sort((x, y) => x - y),
        "cumulative buckets",
      );
      assert.is(s.all(`${HIST}_count`, { migration: id, role: "source" }).length, 0);
      const untimed = (reason: string) => s.value(UNTIMED, { ...labels, reason });
      assert.equal([untimed("in_flight"), untimed("unanswered")], [f.inFlight, unanswered]);
      console.log(
        `${id} (${preempt ? "urgent lane" : `main stream, compression ${compression}`}): ${f.count} of ${faults} faults timed ` +
          `(${f.inFlight} in flight, ${unanswered} unanswered), p50 ${f.p50Ms.toFixed(1)} ms, p99 ${f.p99Ms.toFixed(1)} ms, max ${f.maxMs.toFixed(1)} ms`,
      );
      [from, to, vm] = [to, from, dst];
    }

    // Handed to QEMU (no relay): nothing to see, so no series and no figures, rather than zeros.
    // (The last source QEMU there ends on its own after the migration: wait for it.)
    await until(
      "the old source QEMU stopped",
      () => {
        const st = to.get(spec.name).state;
        return !isLive(st) && st !== "stopping";
      },
      30_000,
    );
    const hand = await from.startMigration({
      vmId: spec.name,
      migrationId: "fl-3",
      channelAddress: await to.prepareIncoming(spec, "fl-3"),
      mode: "postcopy",
      channelPath: "handoff",
    });
    const handEnd = await finished(hand);
    assert.is(handEnd.phase, "completed", handEnd.error);
    assert.is(handEnd.channelPath, "handoff");
    const handDst = to.migrations().find((r) => r.id === "fl-3") as MigrationRecord;
    await finished(handDst);
    assert.is(migrationToProto(handDst).faultLatency, undefined);
    const s3 = await scrape(metrics.address);
    assert.is(s3.all(`${HIST}_count`, { migration: "fl-3" }).length, 0);
    assert.is(s3.all(UNTIMED, { migration: "fl-3" }).length, 0);
    assert.is(s3.all(`${HIST}_count`).length, 2, "fl-1 and fl-2 still shown");

    // A migration no longer known: its series are gone at the next scrape.
    shown = () => [];
    const after = await scrape(metrics.address);
    assert.ok(after.declared.has(HIST));
    assert.is(after.all(`${HIST}_count`).length, 0);
  },
);

test.run();
