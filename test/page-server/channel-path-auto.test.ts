import * as assert from "uvu/assert";
import { NEAR_LINK_RTT_MS } from "../../services/page-server/channel/path-policy.js";
import { HostError, type PageHost, type StartMigrationOptions } from "../../services/page-server/host.js";
import { startRelay } from "../../testbed/relay.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { assertGuestContinued, finished, guestOnTwoHosts } from "./guest-continues.js";

const migTest = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root"],
  "post-copy needs userfaultfd (root)",
);
const dir = tempDir("vmhop-chanpath-");
const closers: (() => Promise<void>)[] = [];

test.after.each(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});
test.after(() => dir.cleanup());

/** The destination QEMU's urgent-lane capability. */
async function preemptOn(host: PageHost, vmId: string): Promise<boolean> {
  const caps = (await host.get(vmId).qmp.execute("query-migrate-capabilities")) as {
    capability: string;
    state: boolean;
  }[];
  return caps.find((c) => c.capability === "postcopy-preempt")?.state ?? false;
}

/**
 * Boots the guest on A, prepares B, migrates post-copy over loopback or the WAN relay with
 * `request`; checks the guest continues; returns the source's record and B's lane.
 */
async function migrate(
  tag: string,
  link: "loopback" | "wan",
  request: Partial<StartMigrationOptions>,
  before?: (a: PageHost, vmId: string, channel: string) => Promise<void>,
) {
  const { a, b, spec, src } = await guestOnTwoHosts(dir.path, tag, closers);
  const id = `${tag}-1`;
  let channel = await b.prepareIncoming(spec, id, { mode: "postcopy" });
  if (link === "wan") {
    const relay = await startRelay({ target: channel, delayMs: 10, rateBitsPerSecond: 450e6 });
    closers.push(() => relay.close());
    channel = relay.address;
  }
  await before?.(a, spec.name, channel);
  const dst = b.get(spec.name);
  const passesBefore = src.serial.tracker.stats.last!.passes;
  const rec = await a.startMigration({
    vmId: spec.name,
    migrationId: id,
    channelAddress: channel,
    mode: "postcopy",
    ...request,
  });
  const end = await finished(rec);
  assert.is(end.phase, "completed", end.error);
  await assertGuestContinued(src, dst, passesBefore);
  console.log(
    `${tag}: ${end.channelPath} (${end.channelReason}), preempt ${end.preempt}, compression ` +
      `${end.compression}, ${end.connections} connection(s), ${end.wallMs} ms`,
  );
  return { end, dstPreempt: await preemptOn(b, spec.name), dstPath: b.migration(id).channelPath };
}

migTest("loopback, defaults: the measured link is near, the connection goes to QEMU", async () => {
  const { end, dstPreempt, dstPath } = await migrate("auto-lo", "loopback", {}, async (a, vmId, channel) => {
    // Contradictions fail before anything is dialled; the VM runs on.
    for (const [bad, re] of [
      [{ channelPath: "handoff", compression: "on" }, /compression on needs the relay/],
      [{ channelPath: "handoff", preempt: true }, /preempt needs the relay/],
      [{ channelPath: "sideways" }, /channel path must be auto, handoff or relay/],
    ] as const) {
      const req = { vmId, migrationId: "bad", channelAddress: channel, mode: "postcopy", ...bad };
      try {
        await a.startMigration(req as StartMigrationOptions);
        assert.unreachable("a contradictory request started");
      } catch (err) {
        assert.instance(err, HostError);
        assert.is((err as HostError).kind, "invalid");
        assert.match((err as Error).message, re);
      }
    }
    assert.is(a.get(vmId).state, "running");
  });
  assert.is(end.channelPath, "handoff");
  assert.ok(end.channelRttMs! < NEAR_LINK_RTT_MS, `loopback measured ${end.channelRttMs} ms`);
  assert.match(end.channelReason!, /^rtt \d+\.\d+ ms < 2 ms$/);
  assert.is(end.preempt, false);
  assert.is(end.connections, 1);
  assert.is(end.channelBytes.forward, 0, "bytes went through the relay");
  assert.is(dstPath, "handoff");
  assert.is(dstPreempt, false);
});

migTest("WAN (10 ms each way), defaults: relayed with the urgent lane and compression auto", async () => {
  const { end, dstPreempt, dstPath } = await migrate("auto-wan", "wan", {});
  assert.is(end.channelPath, "relay");
  assert.ok(end.channelRttMs! >= 20, `the WAN measured ${end.channelRttMs} ms`);
  assert.match(end.channelReason!, /^rtt \d+\.\d+ ms >= 2 ms$/);
  assert.is(end.preempt, true);
  assert.is(end.compression, "auto");
  // The urgent lane is QEMU's second connection, on its own channel connection.
  assert.is(end.connections, 2);
  assert.ok(end.channelBytes.forward > 48 << 20);
  assert.is(dstPath, "relay");
  assert.is(dstPreempt, true, "the destination did not take the urgent lane from the hello");
});

migTest("explicit handoff is honoured on the WAN", async () => {
  const { end, dstPreempt } = await migrate("ho-wan", "wan", { channelPath: "handoff" });
  assert.is(end.channelPath, "handoff");
  assert.match(end.channelReason!, /^requested; rtt/);
  assert.ok(end.channelRttMs! >= 20);
  assert.is(end.connections, 1);
  assert.is(dstPreempt, false);
});

migTest("explicit relay is honoured on loopback (urgent lane on; off when asked)", async () => {
  const { end, dstPreempt } = await migrate("relay-lo", "loopback", { channelPath: "relay" });
  assert.is(end.channelPath, "relay");
  assert.ok(end.channelRttMs! < NEAR_LINK_RTT_MS);
  assert.is(end.preempt, true);
  assert.is(end.connections, 2);
  assert.is(dstPreempt, true);
  const plain = await migrate("relay-plain-lo", "loopback", { channelPath: "relay", preempt: false });
  assert.is(plain.end.channelPath, "relay");
  assert.is(plain.end.preempt, false);
  assert.is(plain.end.connections, 1);
  assert.is(plain.dstPreempt, false);
});

test.run();
