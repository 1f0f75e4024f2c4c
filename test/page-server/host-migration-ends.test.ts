// PageHost (in-process, real QEMU) at the edges of a migration: a PrepareIncoming whose QEMU
// cannot start leaves nothing behind, so the same migration id can be prepared again; and a
// completed migration whose source clean-up fails stays completed; a StartMigration asked
// twice (a caller that lost the first answer) starts one migration.
import { existsSync, readFileSync, rmSync } from "node:fs";
import { type AddressInfo, createServer, type Socket } from "node:net";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import { silentLogger } from "../../services/common/log.js";
import { PageHost } from "../../services/page-server/host.js";
import { isFinalPhase } from "../../services/page-server/migration/phase.js";
import type { VmSpec } from "../../services/page-server/vm/spec.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { heartbeats } from "../helpers/heartbeats.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { ensureGuest } from "./guest.js";

const qemuTest = gate(test, ["qemu-system-x86_64", "gcc", "apt-get", "root"], "page-host migration ends");
const dir = tempDir("vmhop-host-ends-");
const hosts: PageHost[] = [];

test.after(async () => {
  for (const h of hosts) await h.close();
  dir.cleanup();
});

async function pageHost(name: string): Promise<PageHost> {
  const h = new PageHost({ runRoot: join(dir.path, name), log: silentLogger });
  await h.open();
  hosts.push(h);
  return h;
}

async function guestSpec(name: string): Promise<VmSpec> {
  const guest = await ensureGuest();
  return {
    name,
    vcpus: 1,
    memoryMib: 128,
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: guestCmdline({ memMib: 16, rateMib: 2, verifyMib: 16 }),
  };
}

qemuTest("a PrepareIncoming that fails leaves nothing behind; the same id is prepared afresh", async () => {
  const b = await pageHost("prep-b");
  const good = await guestSpec("vm1");
  const bad = { ...good, kernel: join(dir.path, "no-such-kernel") };
  const vmDir = join(dir.path, "prep-b", "vm1");
  for (let i = 0; i < 2; i++) {
    // The second attempt fails the same way, not with "already known here".
    try {
      await b.prepareIncoming(bad, "mig-1");
      assert.unreachable("a QEMU without its kernel started");
    } catch (err) {
      // QEMU's own words, whichever came first: its exit or its QMP socket closing.
      assert.match(
        (err as Error).message,
        /VM vm1 did not start: QEMU exited with code 1: qemu: could not open kernel file/,
        (err as Error).message,
      );
      assert.is((err as { kind?: string }).kind, "invalid");
    }
    assert.equal(b.list(), [], "the VM stayed registered");
    assert.throws(() => b.migration("mig-1"), /no migration mig-1/);
    assert.not.ok(existsSync(join(vmDir, "spec.json")), "a restart would adopt the failed VM");
    assert.not.ok(existsSync(join(vmDir, "migration.json")), "a restart would pick the migration up");
  }
  const channel = await b.prepareIncoming(good, "mig-1");
  assert.is(channel, b.channelListenAddress);
  assert.is(b.get("vm1").state, "incoming");
  assert.is(b.migration("mig-1").phase, "setup");
});

qemuTest(
  "a completed migration whose source clean-up fails stays completed; the source QEMU still ends",
  async () => {
    const a = await pageHost("end-a");
    const b = await pageHost("end-b");
    const spec = await guestSpec("vm2");
    a.define(spec);
    const src = await a.start("vm2");
    const beat = () => heartbeats(src.paths.serialLog).length > 0;
    await until("the guest's first heartbeat", beat, 120_000, 200);
    const channel = await b.prepareIncoming(spec, "mig-2", { mode: "postcopy" });
    // Retiring spec.json is the first clean-up step once memory is complete: make it fail.
    rmSync(src.paths.specFile);
    const rec = await a.startMigration({
      vmId: "vm2",
      migrationId: "mig-2",
      channelAddress: channel,
      mode: "postcopy",
    });
    await until("the migration to end", () => isFinalPhase(rec.phase), 120_000, 100);
    assert.is(rec.phase, "completed", rec.error);
    await until("the source QEMU to end", () => src.state === "stopped", 30_000, 100);
    const saved = await until(
      "migration.json to record the clean-up failure",
      () => {
        const s = JSON.parse(readFileSync(join(dir.path, "end-a", "vm2", "migration.json"), "utf8"));
        return s.cleanupError ? s : undefined;
      },
      30_000,
      100,
    );
    assert.is(saved.phase, "completed");
    assert.match(saved.cleanupError, /retiring spec\.json: ENOENT/);
    assert.match(rec.cleanupError ?? "", /retiring spec\.json/);
    assert.is(rec.error, undefined);
    await until("the VM to run at the destination", () => b.get("vm2").state === "running", 60_000, 100);
  },
);

qemuTest(
  "a StartMigration repeated while the first still opens its channel is refused as known",
  async () => {
    const a = await pageHost("twice-a");
    const spec = await guestSpec("vm3");
    a.define(spec);
    await a.start("vm3");
    // A destination that accepts and never answers: the first start stays in its channel's opening.
    const held: Socket[] = [];
    const mute = createServer((c) => held.push(c));
    await new Promise<void>((r) => mute.listen(0, "127.0.0.1", r));
    const channelAddress = `127.0.0.1:${(mute.address() as AddressInfo).port}`;
    const start = () =>
      a.startMigration({ vmId: "vm3", migrationId: "mig-3", channelAddress, mode: "postcopy" });
    const first = start();
    first.catch(() => {}); // awaited below
    await until("the first start's connection", () => held.length > 0, 30_000, 50);
    try {
      await start();
      assert.unreachable("a second start of mig-3 was accepted");
    } catch (err) {
      assert.match((err as Error).message, /migration mig-3 already known here/);
      assert.is((err as { kind?: string }).kind, "exists");
    }
    // The first one's peer goes away: it fails, and leaves the id free.
    for (const c of held) c.destroy();
    mute.close();
    await first.then(
      () => assert.unreachable("the start against a mute peer succeeded"),
      () => undefined,
    );
    assert.throws(() => a.migration("mig-3"), /no migration mig-3/);
  },
);

test.run();
