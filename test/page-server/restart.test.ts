// The source page-server is killed (SIGKILL) after the post-copy switch-over and restarted on
// the same run folder: it adopts the running source QEMU, finds the unfinished migration,
// recovers the broken stream, and post-copy completes. The VM never runs on two hosts.
import type { ChildProcess } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { credentials } from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import {
  ChannelPath,
  DefineVmRequest,
  MigrationMode,
  MigrationPhase,
  PageServiceClient,
  StartMigrationRequest,
  type WatchMigrationResponse,
} from "../../gen/vmhop/v1/page.js";
import { call } from "../../services/common/grpc/call.js";
import { PageHost } from "../../services/page-server/host.js";
import { startService } from "../../testbed/service-process.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { heartbeats } from "../helpers/heartbeats.js";
import { test } from "../helpers/uvu.js";
import { ensureGuest } from "./guest.js";

const migTest = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root"],
  "page-server restart during post-copy",
);
const dir = tempDir("vmhop-restart-");
const children: ChildProcess[] = [];
const pids: number[] = [];
let b: PageHost | undefined;

test.after(async () => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  for (const p of pids) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      // gone
    }
  }
  await b?.close();
  dir.cleanup();
});

async function serveA(): Promise<{ child: ChildProcess; client: PageServiceClient }> {
  const p = await startService({
    name: "page serve a",
    args: ["page", "serve", "--listen", "0", "--run-dir", join(dir.path, "a")],
  });
  children.push(p.child);
  return { child: p.child, client: new PageServiceClient(p.grpc, credentials.createInsecure()) };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

migTest("SIGKILL the source page-server after the switch-over; its restart completes post-copy", async () => {
  const guest = await ensureGuest();
  b = new PageHost({ runRoot: join(dir.path, "b") });
  await b.open();
  let a = await serveA();

  const cmdline = guestCmdline({ memMib: 64, rateMib: 16, verifyMib: 48 });
  const spec = { name: "vm1", vcpus: 1, memoryMib: 160, kernel: guest.kernel, initrd: guest.initrd, cmdline };
  const pbSpec = {
    vmId: "vm1",
    vcpus: 1,
    memoryMib: 160,
    kernelPath: guest.kernel,
    initrdPath: guest.initrd,
    kernelCmdline: cmdline,
  };
  await call(a.client, "defineVm", DefineVmRequest.fromPartial({ spec: pbSpec }));
  const started = await call(a.client, "startVm", { vmId: "vm1" });
  const srcPid = started.vm!.qemuPid;
  pids.push(srcPid);
  const srcLog = started.vm!.serialLogPath;
  while (!heartbeats([srcLog]).some((h) => h.passes >= 1)) await sleep(200);

  const channel = await b.prepareIncoming(spec, "mig-x");
  const dst = b.get("vm1");
  await call(
    a.client,
    "startMigration",
    StartMigrationRequest.fromPartial({
      vmId: "vm1",
      migrationId: "mig-x",
      channelAddress: channel,
      mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
      // Relayed, so the stream dies with the page-server (loopback would hand it to QEMU).
      channelPath: ChannelPath.CHANNEL_PATH_RELAY,
      maxBandwidthBytesPerSecond: 32 << 20, // post-copy still pushing (~5 s) when the page-server dies
    }),
  );
  for (let i = 0; i < 300 && dst.state !== "running"; i++) await sleep(50);
  assert.is(dst.state, "running", "the destination never resumed");
  await sleep(300);

  a.child.kill("SIGKILL");
  await once(a.child, "exit");
  a.client.close();
  assert.ok(alive(srcPid), "the source QEMU died with its page-server");

  a = await serveA();
  const updates: WatchMigrationResponse[] = [];
  await new Promise<void>((resolve, reject) => {
    const s = a.client.watchMigration({ migrationId: "mig-x" });
    s.on("data", (m: WatchMigrationResponse) => updates.push(m));
    s.on("error", reject);
    s.on("end", () => resolve());
  });
  const last = updates.at(-1)!;
  assert.is(last.phase, MigrationPhase.MIGRATION_PHASE_COMPLETED, last.error);
  for (let i = 0; i < 100 && alive(srcPid); i++) await sleep(100);
  assert.not.ok(alive(srcPid), "the source QEMU did not end");
  assert.ok(b.migration("mig-x").recoveries >= 1);

  const logs = [srcLog, dst.paths.serialLog];
  const passes = Math.max(...heartbeats([srcLog]).map((h) => h.passes));
  let after = heartbeats(logs).at(-1)!;
  for (let i = 0; i < 300 && after.passes < passes + 2; i++) {
    await sleep(200);
    after = heartbeats(logs).at(-1)!;
  }
  assert.ok(after.passes >= passes + 2, "no full verification pass at the destination");
  assert.is(after.memErrors, 0);
  const all = heartbeats(logs);
  assert.equal(
    all.filter((h, i) => i > 0 && h.counter !== all[i - 1].counter + 1),
    [],
    "heartbeat counter broke",
  );
  assert.is(dst.state, "running");
  a.child.kill("SIGTERM");
  await once(a.child, "exit");
  a.client.close();
});

test.run();
