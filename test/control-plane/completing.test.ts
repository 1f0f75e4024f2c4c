// completing always ends (issue 15: a migration stayed in `completing` for ever after the
// destination briefly reported INCOMING): real page-servers (the test guest on real QEMU) and
// a control-plane on a migration record left in `completing` (memory reported complete by the
// source, the registry not yet moved). A destination that still reports the VM INCOMING is
// asked again until it runs it (then done), or, past the bound, the migration fails naming
// the state and the wait; either way the record leaves `completing`. And a record left in
// `migrating` whose source was never asked to start (a control-plane killed between the two):
// the resumed driver asks the source, and the migration ends done.
import * as assert from "uvu/assert";
import { VmSpec as PbVmSpec } from "../../gen/vmhop/v1/page.js";
import { startGrpcServer } from "../../services/common/grpc/server.js";
import { silentLogger } from "../../services/common/log.js";
import { MemoryStore } from "../../services/common/store/index.js";
import { KEYS, type MigrationRecord, type VmRecord } from "../../services/control-plane/records.js";
import { specToProto } from "../../services/page-server/grpc/convert.js";
import { pageService } from "../../services/page-server/grpc/service.js";
import type { PageHost } from "../../services/page-server/host.js";
import type { VmSpec } from "../../services/page-server/vm/spec.js";
import type { Vm } from "../../services/page-server/vm/vm.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { heartbeats } from "../helpers/heartbeats.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { ensureGuest } from "../page-server/guest.js";
import { finished, guestOnTwoHosts } from "../page-server/guest-continues.js";
import {
  type PageServerHandle,
  plantedMigration,
  plantHost,
  startControlPlane,
  startPageServer,
} from "./fixtures.js";

const t = gate(test, ["qemu-system-x86_64", "gcc", "apt-get"], "completing ends");
const dir = tempDir("vmhop-completing-");
const closers: (() => Promise<void>)[] = [];

t.after(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  dir.cleanup();
});

/** `host` behind a real gRPC PageService (as `vmhop page serve` runs it): its address. */
async function serve(host: PageHost, name: string): Promise<string> {
  const grpc = await startGrpcServer({
    serviceName: name,
    listen: "127.0.0.1:0",
    services: [pageService(host)],
    log: silentLogger,
  });
  closers.push(() => grpc.shutdown(1000));
  return grpc.address;
}

/** A migration `id` of `spec`'s VM from a to b left in `state`, the VM held by it. */
async function plantMigration(
  store: MemoryStore,
  id: string,
  spec: VmSpec,
  state: MigrationRecord["state"] = "completing",
): Promise<void> {
  const m = plantedMigration(id, spec.name, state);
  const vm: VmRecord = {
    vm_id: spec.name,
    // As CreateVm records it: the same spec the page-servers were given.
    spec: PbVmSpec.toJSON(specToProto(spec)) as VmRecord["spec"],
    host_id: "a",
    migration_id: id,
    fencing_token: 1,
  };
  await store.set(KEYS.vm(spec.name), JSON.stringify(vm));
  await store.set(KEYS.migration(id), JSON.stringify(m));
}

/**
 * The guest goes on at the destination: two more verification passes there, no memory error,
 * the source QEMU gone. (Not its counter's continuity: under load this guest's serial line at
 * times garbles a byte, e.g. "HB 39  30719", which reads as a break.)
 */
async function guestGoesOn(src: Vm, dst: Vm, passesBefore: number): Promise<void> {
  const more = await until(
    "two more verification passes at b",
    async () => {
      const hb = heartbeats(dst.paths.serialLog).at(-1);
      return hb && hb.passes >= passesBefore + 2 ? hb : undefined;
    },
    120_000,
    200,
  );
  assert.is(
    heartbeats([src.paths.serialLog, dst.paths.serialLog]).reduce((n, h) => n + h.memErrors, 0),
    0,
    "no memory error in the guest",
  );
  assert.ok(more.passes > passesBefore);
  assert.is(dst.state, "running");
  await until(
    "the source QEMU stopped",
    async () => (src.state === "stopped" ? true : undefined),
    10_000,
    100,
  );
}

t(
  "the destination reports INCOMING a while after completion: asked again until it runs the VM, done",
  async () => {
    const { a, b, spec, src } = await guestOnTwoHosts(dir.path, "late", closers, { name: "vm1" });
    const store = new MemoryStore();
    await plantHost(store, "a", await serve(a, "a"));
    await plantHost(store, "b", await serve(b, "b"));
    // The destination waits for the memory: INCOMING, as it reported when the record was written.
    await b.prepareIncoming(spec, "m-late");
    await plantMigration(store, "m-late", spec);
    const cp = await startControlPlane(store, { completingRetryMs: 300_000 });
    closers.push(() => cp.close());
    // A few of the control-plane's questions go by with the VM INCOMING there.
    await new Promise((r) => setTimeout(r, 3000));
    assert.is((await cp.client.getMigration("m-late")).state, "completing", "still waiting, not failed");
    // Then the memory arrives and the destination runs the VM.
    const passesBefore = src.serial.tracker.stats.last!.passes;
    const rec = await a.startMigration({
      vmId: "vm1",
      migrationId: "m-late",
      channelAddress: b.channelListenAddress,
      mode: "postcopy",
    });
    assert.is((await finished(rec)).phase, "completed");
    const end = await until(
      "m-late final",
      async () => {
        const m = await cp.client.getMigration("m-late");
        return ["done", "failed"].includes(m.state) ? m : undefined;
      },
      120_000,
      200,
    );
    assert.is(end.state, "done", end.error);
    const vm = await cp.client.getVm("vm1");
    assert.equal([vm.hostId, vm.migrationId], ["b", ""]);
    await guestGoesOn(src, b.get("vm1"), passesBefore);
  },
);

t(
  "the destination stays INCOMING: past the bound the migration fails, naming the state and the wait",
  async () => {
    const ps: PageServerHandle = await startPageServer(dir.path, "stuck");
    closers.push(() => ps.close());
    const store = new MemoryStore();
    await plantHost(store, "a", ps.address);
    await plantHost(store, "b", ps.address);
    const guest = await ensureGuest();
    const spec: VmSpec = {
      name: "vm2",
      vcpus: 1,
      memoryMib: 128,
      kernel: guest.kernel,
      initrd: guest.initrd,
    };
    // Incoming at b for a memory that never comes.
    await ps.host.prepareIncoming(spec, "m-stuck");
    await plantMigration(store, "m-stuck", spec);
    const cp = await startControlPlane(store, { completingRetryMs: 4000 });
    closers.push(() => cp.close());
    const end = await until(
      "m-stuck final",
      async () => {
        const m = await cp.client.getMigration("m-stuck");
        return m.state === "completing" ? undefined : m;
      },
      60_000,
      200,
    );
    assert.is(end.state, "failed");
    assert.match(
      end.error,
      /the destination still reports the VM VM_STATE_INCOMING \d+ s after the migration completed/,
    );
  },
);

t(
  "resumed in migrating, the source never asked to start (a kill between the two): asked now, done",
  async () => {
    const { a, b, spec, src } = await guestOnTwoHosts(dir.path, "never", closers, { name: "vm3" });
    const store = new MemoryStore();
    await plantHost(store, "a", await serve(a, "na"));
    await plantHost(store, "b", await serve(b, "nb"));
    // Prepared at b (the destination waits, INCOMING); the record reads migrating; the source
    // knows nothing of it: a control-plane died between recording `migrating` and StartMigration.
    await b.prepareIncoming(spec, "m-never", { mode: "postcopy" });
    await plantMigration(store, "m-never", spec, "migrating");
    const passesBefore = src.serial.tracker.stats.last!.passes;
    const cp = await startControlPlane(store);
    closers.push(() => cp.close());
    const end = await until(
      "m-never final",
      async () => {
        const m = await cp.client.getMigration("m-never");
        return ["done", "failed"].includes(m.state) ? m : undefined;
      },
      180_000,
      200,
    );
    assert.is(end.state, "done", end.error);
    assert.ok(end.enteredUnixMs.switched || end.enteredUnixMs.completing, "the memory moved");
    assert.is(a.migration("m-never").phase, "completed", "the source ran the migration");
    const vm = await cp.client.getVm("vm3");
    assert.equal([vm.hostId, vm.migrationId], ["b", ""]);
    await guestGoesOn(src, b.get("vm3"), passesBefore);
  },
);

t.run();
