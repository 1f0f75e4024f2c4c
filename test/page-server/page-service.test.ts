// Two page-servers (each a PageHost behind its own gRPC server) migrate the test guest
// post-copy over the raw TCP channel, driven only through the PageService API.
import { join } from "node:path";
import { credentials, status } from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import {
  AbortMigrationRequest,
  ChannelPath,
  MigrationMode,
  MigrationPhase,
  PageServiceClient,
  PrepareIncomingRequest,
  StartMigrationRequest,
  StopVmRequest,
  VmSpec,
  VmState,
  type WatchMigrationResponse,
} from "../../gen/vmhop/v1/page.js";
import { call } from "../../services/common/grpc/call.js";
import { type RunningGrpcServer, startGrpcServer } from "../../services/common/grpc/server.js";
import { silentLogger } from "../../services/common/log.js";
import { pageService } from "../../services/page-server/grpc/service.js";
import { PageHost } from "../../services/page-server/host.js";
import { isFinalPhase } from "../../services/page-server/migration/phase.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { rejectsWithStatus } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { heartbeats } from "../helpers/heartbeats.js";
import { test } from "../helpers/uvu.js";
import { until as waitUntil } from "../helpers/wait.js";
import { ensureGuest } from "./guest.js";

const migTest = gate(test, ["qemu-system-x86_64", "gcc", "apt-get", "root"], "page-servers migrate a VM");
const dir = tempDir("vmhop-pagesvc-");
const closers: (() => Promise<void>)[] = [];

test.after(async () => {
  for (const c of closers.reverse()) await c();
  dir.cleanup();
});

interface Server {
  host: PageHost;
  grpc: RunningGrpcServer;
  client: PageServiceClient;
  /** Once; keepVms leaves the QEMUs for the next page-server on the same run folder. */
  close(o?: { keepVms?: boolean }): Promise<void>;
}

/** The destination QEMU's post-copy capabilities, as PrepareIncoming set them. */
async function capabilities(host: PageHost, vmId: string): Promise<Record<string, boolean>> {
  const caps = (await host.get(vmId).qmp.execute("query-migrate-capabilities")) as {
    capability: string;
    state: boolean;
  }[];
  const want = ["postcopy-ram", "postcopy-preempt"];
  return Object.fromEntries(
    caps.filter((c) => want.includes(c.capability)).map((c) => [c.capability, c.state]),
  );
}

async function pageServer(name: string): Promise<Server> {
  const host = new PageHost({ runRoot: join(dir.path, name), log: silentLogger });
  await host.open();
  const grpc = await startGrpcServer({
    serviceName: name,
    listen: "0",
    services: [pageService(host)],
    log: silentLogger,
  });
  const client = new PageServiceClient(grpc.address, credentials.createInsecure());
  let closed = false;
  const close = async (o: { keepVms?: boolean } = {}) => {
    if (closed) return;
    closed = true;
    client.close();
    await grpc.shutdown(1000);
    await host.close(o);
  };
  closers.push(() => close());
  return { host, grpc, client, close };
}

/** The page-server process ends (its QEMUs keep running) and a new one starts on its run folder. */
async function restart(s: Server, name: string): Promise<Server> {
  await s.close({ keepVms: true });
  return pageServer(name);
}

/** The test guest defined and started on `s`, once it beats: its spec and serial log. */
async function runningGuest(s: Server, vmId: string): Promise<{ spec: VmSpec; srcLog: string }> {
  const spec = await guestSpec(vmId);
  await call(s.client, "defineVm", { spec });
  const started = await call(s.client, "startVm", { vmId });
  const srcLog = started.vm!.serialLogPath;
  await until("a heartbeat at the source", () => heartbeats([srcLog]).at(-1));
  return { spec, srcLog };
}

/** Every WatchMigration update of `migrationId` at `s`, once the stream ends. */
async function watchToEnd(s: Server, migrationId: string): Promise<WatchMigrationResponse[]> {
  const updates: WatchMigrationResponse[] = [];
  await new Promise<void>((resolve, reject) => {
    const w = s.client.watchMigration({ migrationId });
    w.on("data", (m: WatchMigrationResponse) => updates.push(m));
    w.on("error", reject);
    w.on("end", () => resolve());
  });
  return updates;
}

/** Bounded polling (test/helpers/wait.ts) with this file's default bound. */
const until = <T>(what: string, fn: () => T | undefined | Promise<T | undefined>, ms = 60_000) =>
  waitUntil(what, fn, ms, 100);

migTest(
  "define, start, migrate post-copy A → B over the channel; heartbeat unbroken; A's QEMU ends",
  async () => {
    const guest = await ensureGuest();
    const a = await pageServer("host-a");
    const b = await pageServer("host-b");
    const spec: VmSpec = {
      vmId: "vm1",
      vcpus: 1,
      memoryMib: 160,
      diskNbdUrl: "",
      kernelPath: guest.kernel,
      initrdPath: guest.initrd,
      kernelCmdline: guestCmdline({ memMib: 48, rateMib: 16, verifyMib: 48 }),
      nicTap: "",
      nicMac: "",
    };
    const defined = await call(a.client, "defineVm", { spec });
    assert.is(defined.vm!.state, VmState.VM_STATE_DEFINED);
    const started = await call(a.client, "startVm", {
      vmId: "vm1",
    });
    assert.is(started.vm!.state, VmState.VM_STATE_RUNNING);
    const srcLog = started.vm!.serialLogPath;
    await until("a verification pass at the source", () => heartbeats([srcLog]).find((h) => h.passes >= 1));

    const { channelAddress } = await call(
      b.client,
      "prepareIncoming",
      PrepareIncomingRequest.fromPartial({
        spec,
        migrationId: "mig-1",
        mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
        preempt: true, // neither host was started with --preempt: the request alone sets it
      }),
    );
    assert.match(channelAddress, /^127\.0\.0\.1:\d+$/);
    assert.equal(await capabilities(b.host, "vm1"), { "postcopy-ram": true, "postcopy-preempt": true });
    const dstView = await call(b.client, "inspectVm", {
      vmId: "vm1",
    });
    assert.is(dstView.vm!.state, VmState.VM_STATE_INCOMING);

    const passesBefore = Math.max(...heartbeats([srcLog]).map((h) => h.passes));
    await call(
      a.client,
      "startMigration",
      StartMigrationRequest.fromPartial({
        vmId: "vm1",
        migrationId: "mig-1",
        channelAddress,
        mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
        preempt: true,
      }),
    );
    const updates = await watchToEnd(a, "mig-1");
    const last = updates.at(-1)!;
    assert.is(last.phase, MigrationPhase.MIGRATION_PHASE_COMPLETED, last.error);
    // The urgent lane is QEMU's second connection, carried on its own channel connection.
    assert.is(a.host.migration("mig-1").connections, 2);
    await until("the destination's view to end", () =>
      isFinalPhase(b.host.migration("mig-1").phase) ? true : undefined,
    );
    assert.is(b.host.migration("mig-1").connections, 2);
    assert.ok(updates.some((u) => u.phase === MigrationPhase.MIGRATION_PHASE_POSTCOPY));
    assert.ok(last.bytesSent > 0);

    // The VM runs at B only; A's QEMU ends.
    const srcEnd = await until("A's VM stopped", () => {
      const vm = a.host.get("vm1");
      return vm.state === "stopped" ? vm : undefined;
    });
    assert.is(srcEnd.state, "stopped");
    const dst = await call(b.client, "inspectVm", { vmId: "vm1" });
    assert.is(dst.vm!.state, VmState.VM_STATE_RUNNING);

    const logs = [srcLog, dstView.vm!.serialLogPath];
    const after = await until("two verification passes at the destination", () =>
      heartbeats(logs).find((h) => h.passes >= passesBefore + 2),
    );
    assert.is(after.memErrors, 0);
    const all = heartbeats(logs);
    const breaks = all.filter((h, i) => i > 0 && h.counter !== all[i - 1].counter + 1);
    assert.equal(breaks, [], "heartbeat counter broke across the migration");

    // The destination's own view ends completed too.
    const dstWatch = await watchToEnd(b, "mig-1");
    assert.is(dstWatch.at(-1)!.phase, MigrationPhase.MIGRATION_PHASE_COMPLETED);
  },
);

migTest(
  "abort during pre-copy: the VM keeps running at the source, the destination reports failure",
  async () => {
    const a = await pageServer("abort-a");
    const b = await pageServer("abort-b");
    const { spec, srcLog } = await runningGuest(a, "vm2");
    const { channelAddress } = await call(
      b.client,
      "prepareIncoming",
      PrepareIncomingRequest.fromPartial({
        spec,
        migrationId: "mig-abort",
        mode: MigrationMode.MIGRATION_MODE_PRECOPY,
      }),
    );
    assert.equal(await capabilities(b.host, "vm2"), { "postcopy-ram": false, "postcopy-preempt": false });
    await call(
      a.client,
      "startMigration",
      StartMigrationRequest.fromPartial({
        vmId: "vm2",
        migrationId: "mig-abort",
        channelAddress,
        mode: MigrationMode.MIGRATION_MODE_PRECOPY,
        maxBandwidthBytesPerSecond: 2 << 20, // long enough to abort mid-way
      }),
    );
    const inspect = await call(a.client, "inspectVm", { vmId: "vm2" });
    assert.is(inspect.vm!.state, VmState.VM_STATE_MIGRATING);
    await until("pre-copy under way", () =>
      a.host.migration("mig-abort").phase === "precopy" ? true : undefined,
    );
    await call(a.client, "abortMigration", AbortMigrationRequest.fromPartial({ migrationId: "mig-abort" }));
    const updates = await watchToEnd(a, "mig-abort");
    assert.is(updates.at(-1)!.phase, MigrationPhase.MIGRATION_PHASE_CANCELLED);
    const src = await call(a.client, "inspectVm", { vmId: "vm2" });
    assert.is(src.vm!.state, VmState.VM_STATE_RUNNING);
    const at = heartbeats([srcLog]).at(-1)!.counter;
    await until("heartbeats after the abort", () => heartbeats([srcLog]).find((h) => h.counter >= at + 3));
    const dst = await until("the destination to give up", () => {
      const r = b.host.migration("mig-abort");
      return r.phase === "failed" ? r : undefined;
    });
    assert.ok((dst.error ?? "").length > 0);
  },
);

migTest(
  "a channel opened ahead: both lanes accepted before the start, reused by it; asked again the same; an abort closes it",
  async () => {
    const a = await pageServer("ahead-a");
    const b = await pageServer("ahead-b");
    const { spec } = await runningGuest(a, "vm5");
    const prepare = async (migrationId: string, vmId: string) =>
      (
        await call(
          b.client,
          "prepareIncoming",
          PrepareIncomingRequest.fromPartial({
            spec: { ...spec, vmId },
            migrationId,
            mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
          }),
        )
      ).channelAddress;
    const request = (migrationId: string, channelAddress: string) =>
      StartMigrationRequest.fromPartial({
        vmId: "vm5",
        migrationId,
        channelAddress,
        mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
        // Relayed (loopback would hand off), with the urgent lane: two connections.
        channelPath: ChannelPath.CHANNEL_PATH_RELAY,
      });

    // Opened ahead, then aborted: the source closes it, and the destination's QEMU (whose
    // stream ended before it began) gives up.
    const dropped = request("mig-dropped", await prepare("mig-dropped", "vm5-other"));
    await call(a.client, "openMigrationChannel", { start: dropped });
    await until("both connections joined at the destination", () =>
      b.host.migration("mig-dropped").connections === 2 ? true : undefined,
    );
    await call(a.client, "abortMigration", AbortMigrationRequest.fromPartial({ migrationId: "mig-dropped" }));
    await until("the destination to give up after the abort", () =>
      isFinalPhase(b.host.migration("mig-dropped").phase) ? true : undefined,
    );
    assert.throws(() => a.host.migration("mig-dropped"), /mig-dropped/, "never started at the source");

    // Opened ahead, asked again, then started: the start sends on the connections opened.
    const req = request("mig-ahead", await prepare("mig-ahead", "vm5"));
    const opened = await call(a.client, "openMigrationChannel", { start: req });
    assert.is(opened.channelPath, ChannelPath.CHANNEL_PATH_RELAY);
    assert.ok((opened.rttMs ?? 0) > 0, "the link was timed");
    assert.throws(() => a.host.migration("mig-ahead"), /mig-ahead/, "nothing started yet");
    await until("both connections joined at the destination before any start", () =>
      b.host.migration("mig-ahead").connections === 2 ? true : undefined,
    );
    const again = await call(a.client, "openMigrationChannel", { start: req });
    assert.equal(again, opened, "asked again: the same answer");
    await call(a.client, "startMigration", req);
    const updates = await watchToEnd(a, "mig-ahead");
    assert.is(updates.at(-1)!.phase, MigrationPhase.MIGRATION_PHASE_COMPLETED, updates.at(-1)!.error);
    assert.is(a.host.migration("mig-ahead").channelRttMs, opened.rttMs, "the start used the channel opened");
    await until("the destination's view to end", () =>
      isFinalPhase(b.host.migration("mig-ahead").phase) ? true : undefined,
    );
    assert.is(b.host.migration("mig-ahead").connections, 2, "no connection dialled again by the start");
    const dst = await call(b.client, "inspectVm", { vmId: "vm5" });
    assert.is(dst.vm!.state, VmState.VM_STATE_RUNNING);
    const at = heartbeats([dst.vm!.serialLogPath]).at(-1)?.counter ?? 0;
    await until("heartbeats at the destination", () =>
      heartbeats([dst.vm!.serialLogPath]).find((h) => h.counter >= at + 2),
    );
  },
);

/** The test guest's spec; an incoming QEMU never boots it, so any size does. */
async function guestSpec(vmId: string): Promise<VmSpec> {
  const guest = await ensureGuest();
  return VmSpec.fromPartial({
    vmId,
    vcpus: 1,
    memoryMib: 128,
    kernelPath: guest.kernel,
    initrdPath: guest.initrd,
    kernelCmdline: guestCmdline({ memMib: 16, rateMib: 2, verifyMib: 16 }),
  });
}

migTest(
  "PrepareIncoming retried with the same id answers the same, also after a restart; another VM or spec is ALREADY_EXISTS",
  async () => {
    let b = await pageServer("idem-b");
    const spec = await guestSpec("vm3");
    const prepare = (s: Server, patch: Partial<PrepareIncomingRequest> = {}) =>
      call(
        s.client,
        "prepareIncoming",
        PrepareIncomingRequest.fromPartial({
          spec,
          migrationId: "mig-idem",
          mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
          ...patch,
        }),
      );
    // A retry while the first call still starts QEMU, then one after it.
    const [first, meanwhile] = await Promise.all([prepare(b), prepare(b)]);
    assert.is(first.channelAddress, b.host.channelListenAddress);
    assert.is(meanwhile.channelAddress, first.channelAddress);
    const pid = b.host.get("vm3").pid;
    assert.ok(pid);
    assert.is((await prepare(b)).channelAddress, first.channelAddress);
    assert.is(b.host.list().length, 1);
    assert.is(b.host.get("vm3").pid, pid, "a retry started another QEMU");

    await rejectsWithStatus(
      prepare(b, { spec: { ...spec, memoryMib: 160 } }),
      status.ALREADY_EXISTS,
      /migration mig-idem is already prepared here for VM vm3 with another spec: memoryMib is 128 here, 160 in this request/,
    );
    await rejectsWithStatus(
      prepare(b, { spec: { ...spec, vmId: "vm4" } }),
      status.ALREADY_EXISTS,
      /migration mig-idem is already prepared here for VM vm3, not vm4/,
    );
    assert.is(b.host.get("vm3").state, "incoming");

    // The record comes back from migration.json: the retry is answered by the new process.
    b = await restart(b, "idem-b");
    assert.is((await prepare(b)).channelAddress, b.host.channelListenAddress);
    assert.is(b.host.get("vm3").pid, pid);
    assert.is(b.host.get("vm3").state, "incoming");
  },
);

migTest(
  "fencing tokens: an older migration's calls are FAILED_PRECONDITION, also after a restart; 0 is unfenced",
  async () => {
    let b = await pageServer("fence-b");
    const spec = await guestSpec("vm5");
    const stale = (token: number, seen: number) =>
      new RegExp(`stale fencing token ${token} for VM vm5 \\(seen ${seen}\\)`);
    const prepare = (migrationId: string, fencingToken: number) =>
      call(
        b.client,
        "prepareIncoming",
        PrepareIncomingRequest.fromPartial({ spec, migrationId, fencingToken }),
      );
    const stop = (fencingToken: number) =>
      call(b.client, "stopVm", StopVmRequest.fromPartial({ vmId: "vm5", force: true, fencingToken }));
    await prepare("mig-5", 5);
    await rejectsWithStatus(prepare("mig-3", 3), status.FAILED_PRECONDITION, stale(3, 5));
    await rejectsWithStatus(stop(4), status.FAILED_PRECONDITION, stale(4, 5));
    await rejectsWithStatus(
      call(
        b.client,
        "abortMigration",
        AbortMigrationRequest.fromPartial({ migrationId: "mig-5", fencingToken: 4 }),
      ),
      status.FAILED_PRECONDITION,
      stale(4, 5),
    );
    await rejectsWithStatus(
      call(
        b.client,
        "startMigration",
        StartMigrationRequest.fromPartial({
          vmId: "vm5",
          migrationId: "mig-2",
          channelAddress: "127.0.0.1:1",
          mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
          fencingToken: 2,
        }),
      ),
      status.FAILED_PRECONDITION,
      stale(2, 5),
    );
    await prepare("mig-5", 5); // the migration holding the newest token retries: answered
    assert.is(b.host.get("vm5").state, "incoming");

    b = await restart(b, "fence-b");
    await rejectsWithStatus(stop(4), status.FAILED_PRECONDITION, stale(4, 5));
    assert.is(b.host.get("vm5").state, "incoming");
    // A newer migration's rollback stops the waiting QEMU; from then on 5 is stale too.
    const stopped = await stop(6);
    assert.ok([VmState.VM_STATE_STOPPED, VmState.VM_STATE_CRASHED].includes(stopped.vm!.state));
    await rejectsWithStatus(stop(5), status.FAILED_PRECONDITION, stale(5, 6));
    await stop(0); // unfenced (the CLI): accepted
  },
);

migTest("errors map to gRPC statuses", async () => {
  const a = await pageServer("host-err");
  await rejectsWithStatus(call(a.client, "inspectVm", { vmId: "nope" }), status.NOT_FOUND, /no VM nope/);
  await rejectsWithStatus(
    call(a.client, "defineVm", {
      spec: VmSpec.fromPartial({ vmId: "bad name", vcpus: 1, memoryMib: 64, kernelPath: "/k" }),
    }),
    status.INVALID_ARGUMENT,
    /VM spec: vm_id "bad name" must be 1-63 letters, digits or dashes/,
  );
  await call(a.client, "defineVm", {
    spec: VmSpec.fromPartial({ vmId: "v2", vcpus: 1, memoryMib: 64, kernelPath: "/k" }),
  });
  await rejectsWithStatus(
    call(a.client, "pauseVm", { vmId: "v2" }),
    status.FAILED_PRECONDITION,
    /defined cannot pause/,
  );
  await rejectsWithStatus(
    call(
      a.client,
      "startMigration",
      StartMigrationRequest.fromPartial({
        vmId: "v2",
        migrationId: "m",
        channelAddress: "127.0.0.1:1",
        mode: 2,
      }),
    ),
    status.FAILED_PRECONDITION,
    /cannot migrate/,
  );
  await rejectsWithStatus(
    call(
      a.client,
      "startMigration",
      StartMigrationRequest.fromPartial({
        vmId: "v2",
        migrationId: "m",
        channelAddress: "127.0.0.1:1",
        mode: 2,
        channelPath: 9 as ChannelPath,
      }),
    ),
    status.INVALID_ARGUMENT,
    /channel_path 9 is not one of AUTO, HANDOFF, RELAY/,
  );
  await rejectsWithStatus(
    new Promise<void>((resolve, reject) => {
      const s = a.client.watchMigration({ migrationId: "none" });
      s.on("data", () => {});
      s.on("error", reject);
      s.on("end", () => resolve());
    }),
    status.NOT_FOUND,
    /no migration none/,
  );
});

test.run();
