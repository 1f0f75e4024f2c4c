// The control-plane's registries and migration records in both stores (embedded and a real
// Redis, restarted), its refusals over real gRPC, and a restarted control-plane resuming or
// failing the migrations it finds unfinished. Real page-servers (no VM needs QEMU here: VMs
// are planted in the registry as CreateVm leaves them).
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { MemoryStore, RedisStore, type Store } from "../../services/common/store/index.js";
import { MIGRATION_ID } from "../../services/control-plane/migration-id.js";
import { KEYS, type VmRecord } from "../../services/control-plane/records.js";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { rejectsWithStatus } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { suite } from "../helpers/uvu.js";
import { until as waitUntil } from "../helpers/wait.js";
import {
  type ControlPlaneHandle,
  host,
  type PageServerHandle,
  plantedMigration,
  plantHost,
  startControlPlane,
  startPageServer,
} from "./fixtures.js";

/**
 * The store, with the first write of each migration record held for `ms`: a control-plane slow
 * between recording a migration and claiming its request_id and VM.
 */
function slowMigrationWrites(store: Store, ms: number): Store {
  const seen = new Set<string>();
  const hold = async (key: string) => {
    if (!key.startsWith(KEYS.migrationPrefix) || seen.has(key)) return;
    seen.add(key);
    await new Promise((r) => setTimeout(r, ms));
  };
  return new Proxy(store, {
    get(target, p) {
      if (p === "set")
        return async (k: string, ...rest: unknown[]) => {
          await hold(k);
          return (target.set as (...a: unknown[]) => unknown)(k, ...rest);
        };
      if (p === "compareAndSet")
        return async (k: string, ...rest: unknown[]) => {
          await hold(k);
          return (target.compareAndSet as (...a: unknown[]) => unknown)(k, ...rest);
        };
      const v = Reflect.get(target, p);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

const plantedVm = (vmId: string, hostId: string, migrationId = ""): VmRecord => ({
  vm_id: vmId,
  spec: { vmId, vcpus: 1, memoryMib: 64, kernelPath: "/nonexistent/vmlinux" },
  host_id: hostId,
  migration_id: migrationId,
  fencing_token: migrationId ? 1 : 0,
});

/** Bounded polling (test/helpers/wait.ts) with this file's default bound. */
const until = <T>(what: string, fn: () => T | undefined | Promise<T | undefined>, ms = 30_000) =>
  waitUntil(what, fn, ms, 100);

function storeSuite(kind: "memory" | "redis") {
  const base = suite(`control-plane on the ${kind} store`);
  const test = kind === "redis" ? gate(base, ["redis-server"], "control-plane on Redis") : base;
  const dir = tempDir("vmhop-cp-store-");
  let redis: RedisHandle | undefined;
  let store: Store;
  let a: PageServerHandle;
  let b: PageServerHandle;
  let cp: ControlPlaneHandle;
  const openStore = async () =>
    kind === "redis" ? RedisStore.connect(redis!.url, { prefix: `t${process.pid}:` }) : store;

  test.before(async () => {
    if (kind === "redis") redis = await startRedis();
    store = kind === "redis" ? await openStore() : new MemoryStore();
    a = await startPageServer(dir.path, `${kind}-a`);
    b = await startPageServer(dir.path, `${kind}-b`);
    cp = await startControlPlane(store);
  });

  test.after(async () => {
    await cp?.close();
    await a?.close();
    await b?.close();
    await store?.close();
    await redis?.stop();
    dir.cleanup();
  });

  test("hosts: registered, updated, asleep, and seen by a new control-plane on the store", async () => {
    await cp.client.registerHost(host("a", a.address));
    await cp.client.registerHost(host("b", b.address));
    // Registered while its page-server answered, down since.
    await plantHost(store, "c", "127.0.0.1:1", { site: "new" });
    assert.equal((await cp.client.setHostAsleep("c", true)).asleep, true);
    if (kind === "redis") {
      // Durable: a Redis restart and a new connection keep them.
      await cp.close();
      await store.close();
      await redis!.restart();
      store = await openStore();
    } else await cp.close();
    cp = await startControlPlane(store);
    const hosts = await cp.client.listHosts();
    assert.equal(
      hosts.map((h) => [h.hostId, h.site, h.pageServerAddress, h.asleep]),
      [
        ["a", "", a.address, false],
        ["b", "", b.address, false],
        ["c", "new", "127.0.0.1:1", true],
      ],
    );
  });

  test("RegisterHost needs a page-server that answers, one id per page-server; DeregisterHost waits for its VMs", async () => {
    const c = cp.client;
    const down = `127.0.0.1:${await freePort()}`;
    await rejectsWithStatus(
      c.registerHost(host("x", down)),
      grpc.status.UNAVAILABLE,
      new RegExp(`host x: page-server ${down} does not answer`),
    );
    await rejectsWithStatus(
      c.registerHost(host("x", a.address)),
      grpc.status.ALREADY_EXISTS,
      new RegExp(`page-server ${a.address} is already registered as host a`),
    );
    // Updating a host under its own id stays possible.
    await c.registerHost({ ...host("a", a.address), site: "s1" });
    await c.registerHost(host("a", a.address));
    assert.equal(
      (await c.listHosts()).map((h) => h.hostId),
      ["a", "b", "c"],
      "nothing recorded for the refused ones",
    );
    // A VM on the host, then a migration from it, then one held after a switch-over to it.
    await store.set(KEYS.vm("vx"), JSON.stringify(plantedVm("vx", "b")));
    await rejectsWithStatus(
      c.deregisterHost("b"),
      grpc.status.FAILED_PRECONDITION,
      /host b cannot be deregistered: VMs on it \(vx\)/,
    );
    await store.set(KEYS.vm("vx"), JSON.stringify(plantedVm("vx", "a", "m-950")));
    await store.set(KEYS.migration("m-950"), JSON.stringify(plantedMigration("m-950", "vx", "switched")));
    await rejectsWithStatus(
      c.deregisterHost("b"),
      grpc.status.FAILED_PRECONDITION,
      /host b cannot be deregistered: VMs on it \(vx\); migrations to or from it \(m-950 of vx\)/,
    );
    await store.set(KEYS.migration("m-950"), JSON.stringify(plantedMigration("m-950", "vx", "failed")));
    await rejectsWithStatus(c.deregisterHost("b"), grpc.status.FAILED_PRECONDITION, /VMs on it \(vx\)/);
    await store.del(KEYS.vm("vx"));
    await store.del(KEYS.migration("m-950"));
    // Free: forgotten; unknown afterwards; registered again, it is back.
    await c.deregisterHost("b");
    assert.equal(
      (await c.listHosts()).map((h) => h.hostId),
      ["a", "c"],
    );
    await rejectsWithStatus(c.deregisterHost("b"), grpc.status.NOT_FOUND, /unknown host b/);
    await c.registerHost(host("b", b.address));
  });

  test("bad input is refused with the status and what is wrong", async () => {
    const c = cp.client;
    await rejectsWithStatus(
      c.registerHost(host("bad id!", "x:1")),
      grpc.status.INVALID_ARGUMENT,
      /host_id must be/,
    );
    await rejectsWithStatus(
      c.registerHost(host("d", "")),
      grpc.status.INVALID_ARGUMENT,
      /page_server_address is required/,
    );
    await rejectsWithStatus(c.setHostAsleep("nope", true), grpc.status.NOT_FOUND, /unknown host nope/);
    const spec = {
      vmId: "x",
      vcpus: 1,
      memoryMib: 64,
      diskNbdUrl: "",
      kernelPath: "/k",
      initrdPath: "",
      kernelCmdline: "",
      nicTap: "",
      nicMac: "",
    };
    await rejectsWithStatus(c.createVm(spec, "nope"), grpc.status.NOT_FOUND, /unknown host nope/);
    await rejectsWithStatus(c.createVm(spec, "c"), grpc.status.FAILED_PRECONDITION, /host c is asleep/);
    await rejectsWithStatus(
      c.createVm(spec, "a", undefined, { source: { $case: "sizeBytes", value: 1 << 20 } }),
      grpc.status.FAILED_PRECONDITION,
      /host a has no block-server registered: a disk cannot be created there/,
    );
    await rejectsWithStatus(
      c.createVm({ ...spec, diskNbdUrl: "nbd://127.0.0.1:1/x" }, "a", undefined, {
        source: { $case: "sizeBytes", value: 1 << 20 },
      }),
      grpc.status.INVALID_ARGUMENT,
      /either as spec.disk_nbd_url \(an existing export\) or as disk \(a new one\), not both/,
    );
    await rejectsWithStatus(c.getVm("ghost"), grpc.status.NOT_FOUND, /unknown VM ghost/);
    await rejectsWithStatus(c.deleteVm("ghost"), grpc.status.NOT_FOUND, /unknown VM ghost/);
    await rejectsWithStatus(
      c.migrateVm({ vmId: "ghost", destinationHostId: "b", mode: 0, requestId: "" }),
      grpc.status.NOT_FOUND,
      /unknown VM ghost/,
    );
    await rejectsWithStatus(c.getMigration("m-404"), grpc.status.NOT_FOUND, /unknown migration m-404/);
    await rejectsWithStatus(c.cancelMigration("m-404"), grpc.status.NOT_FOUND, /unknown migration m-404/);
  });

  test("MigrateVm refuses the same host, an unknown or asleep host, an unreachable page-server", async () => {
    await store.set(KEYS.vm("v1"), JSON.stringify(plantedVm("v1", "a")));
    const c = cp.client;
    const migrate = (dst: string, requestId = "") =>
      c.migrateVm({ vmId: "v1", destinationHostId: dst, mode: 0, requestId });
    await rejectsWithStatus(migrate("a"), grpc.status.INVALID_ARGUMENT, /VM v1 already runs on host a/);
    await rejectsWithStatus(migrate("zz"), grpc.status.NOT_FOUND, /unknown host zz/);
    await rejectsWithStatus(migrate("c"), grpc.status.FAILED_PRECONDITION, /destination host c is asleep/);
    await plantHost(store, "dead", `127.0.0.1:${await freePort()}`);
    await rejectsWithStatus(
      migrate("dead"),
      grpc.status.UNAVAILABLE,
      /host dead: page-server 127\.0\.0\.1:\d+ is unreachable/,
    );
    // Nothing was recorded and the VM is not held.
    assert.equal(await c.listMigrations("v1"), []);
    assert.is((await c.getVm("v1")).migrationId, "");
    // A host keeps awake while a VM is on it.
    await rejectsWithStatus(
      c.setHostAsleep("a", true),
      grpc.status.FAILED_PRECONDITION,
      /host a still has VMs \(v1\)/,
    );
  });

  test("a destination that cannot prepare: the migration fails with its reason, the VM is released", async () => {
    const c = cp.client;
    const m = await c.migrateVm({ vmId: "v1", destinationHostId: "b", mode: 0, requestId: "r-1" });
    assert.is(m.sourceHostId, "a");
    assert.is(m.fencingToken, 1);
    assert.match(m.migrationId, MIGRATION_ID);
    const end = await c.waitForMigration(m.migrationId);
    assert.is(end.state, "failed");
    assert.match(end.error, /page-server 127\.0\.0\.1:\d+: PrepareIncoming: /);
    const vm = await c.getVm("v1");
    assert.is(vm.hostId, "a");
    assert.is(vm.migrationId, "");
    assert.is(vm.fencingToken, 1, "the claim raised the fence even though the move failed");
    // The same request_id answers the same migration; reused for another VM it is refused.
    assert.is(
      (await c.migrateVm({ vmId: "v1", destinationHostId: "b", mode: 0, requestId: "r-1" })).migrationId,
      m.migrationId,
    );
    await store.set(KEYS.vm("v9"), JSON.stringify(plantedVm("v9", "a")));
    await rejectsWithStatus(
      c.migrateVm({ vmId: "v9", destinationHostId: "b", mode: 0, requestId: "r-1" }),
      grpc.status.INVALID_ARGUMENT,
      new RegExp(`request_id r-1 was used for migration ${m.migrationId} of VM v1`),
    );
  });

  test("concurrent MigrateVm calls with one request_id answer the same migration, however slow the first", async () => {
    // The first call records its migration slowly (longer than a retry would wait for it).
    const slow = await startControlPlane(slowMigrationWrites(store, 6000));
    try {
      const req = { vmId: "v1", destinationHostId: "b", mode: 0, requestId: "r-slow" };
      const first = slow.client.migrateVm(req);
      await new Promise((r) => setTimeout(r, 200));
      const [a1, a2] = await Promise.all([first, slow.client.migrateVm(req)]);
      assert.is(a1.migrationId, a2.migrationId);
      const end = await cp.client.waitForMigration(a1.migrationId);
      assert.is(end.requestId, "r-slow");
      assert.equal(
        (await cp.client.listMigrations("v1")).filter((m) => m.requestId === "r-slow").length,
        1,
        "one migration for the request_id",
      );
    } finally {
      await slow.close();
    }
    assert.is((await cp.client.getVm("v1")).migrationId, "");
  });

  test("one migration per VM: a VM held by a running migration is refused", async () => {
    // As another control-plane's migration leaves it mid-way.
    await store.set(KEYS.migration("m-900"), JSON.stringify(plantedMigration("m-900", "v1", "migrating")));
    await store.set(KEYS.vm("v1"), JSON.stringify(plantedVm("v1", "a", "m-900")));
    await rejectsWithStatus(
      cp.client.migrateVm({ vmId: "v1", destinationHostId: "b", mode: 0, requestId: "" }),
      grpc.status.FAILED_PRECONDITION,
      /VM v1 is already migrating \(m-900\): one migration per VM at a time/,
    );
    // Nor can it be deleted meanwhile, nor a VM still being created.
    await rejectsWithStatus(
      cp.client.deleteVm("v1"),
      grpc.status.FAILED_PRECONDITION,
      /VM v1 is migrating \(m-900, migrating\): delete it once the migration ended/,
    );
    assert.is((await cp.client.getVm("v1")).migrationId, "m-900");
    await store.set(KEYS.vm("v11"), JSON.stringify(plantedVm("v11", "a", "create")));
    await rejectsWithStatus(
      cp.client.deleteVm("v11"),
      grpc.status.FAILED_PRECONDITION,
      /VM v11 is still being created/,
    );
  });

  test("a restarted control-plane resumes unfinished migrations, failing clearly what it cannot finish", async () => {
    await store.set(KEYS.migration("m-901"), JSON.stringify(plantedMigration("m-901", "v2", "preparing")));
    await store.set(KEYS.vm("v2"), JSON.stringify(plantedVm("v2", "a", "m-901")));
    // A cancel recorded while its driver was stopping: the VM is still held.
    await store.set(KEYS.migration("m-902"), JSON.stringify(plantedMigration("m-902", "v3", "cancelled")));
    await store.set(KEYS.vm("v3"), JSON.stringify(plantedVm("v3", "a", "m-902")));
    // A crash between claiming the VM and writing the migration record: held by a ghost.
    await store.set(KEYS.vm("v4"), JSON.stringify(plantedVm("v4", "a", "m-999")));
    // A crash during CreateVm: the "create" hold of a VM its page-server never started.
    await store.set(KEYS.vm("v5"), JSON.stringify(plantedVm("v5", "a", "create")));
    // A crash between claiming a request_id and writing its migration record (older versions).
    await store.set(KEYS.request("r-orphan"), "m-998");
    // A crash between writing a migration record and claiming its VM: it holds nothing.
    await store.set(KEYS.migration("m-905"), JSON.stringify(plantedMigration("m-905", "v7", "pending")));
    await store.set(KEYS.vm("v7"), JSON.stringify(plantedVm("v7", "a")));
    await cp.close();
    if (kind === "redis") {
      await store.close();
      await redis!.restart();
      store = await openStore();
    }
    cp = await startControlPlane(store);
    const c = cp.client;
    const end = async (id: string) =>
      until(`${id} final`, async () => {
        const m = await c.getMigration(id);
        return ["done", "failed", "cancelled"].includes(m.state) ? m : undefined;
      });
    // m-900 was migrating: the source page-server does not know it and the VM is not at the destination.
    const m900 = await end("m-900");
    assert.is(m900.state, "failed");
    assert.match(m900.error, /WatchMigration: no migration m-900 on this host/);
    // m-901 was preparing: the preparation runs again (every step of it is idempotent); the
    // planted VM cannot start at the destination (no kernel there), so it fails, releasing it.
    const m901 = await end("m-901");
    assert.is(m901.state, "failed");
    assert.match(m901.error, /PrepareIncoming/, "the preparation ran again");
    const m905 = await end("m-905");
    assert.is(m905.state, "failed");
    assert.match(
      m905.error,
      /MigrateVm stopped before it claimed VM v7 \(a control-plane restart\): nothing was done/,
    );
    assert.equal([(await c.getVm("v7")).migrationId, (await c.getVm("v7")).fencingToken], ["", 0]);
    await until("v11's interrupted create undone", () =>
      store.get(KEYS.vm("v11")).then((v) => (v === null ? true : undefined)),
    );
    for (const v of ["v1", "v2", "v3", "v4"]) {
      const vm = await c.getVm(v);
      assert.equal([vm.hostId, vm.migrationId], ["a", ""], v);
    }
    await rejectsWithStatus(c.getVm("v5"), grpc.status.NOT_FOUND, /unknown VM v5/);
    // The orphaned request_id starts a migration afresh instead of answering NOT_FOUND.
    const fresh = await c.migrateVm({ vmId: "v4", destinationHostId: "b", mode: 0, requestId: "r-orphan" });
    assert.is.not(fresh.migrationId, "m-998");
    assert.is((await c.getMigration(fresh.migrationId)).requestId, "r-orphan");
    await end(fresh.migrationId);
    const states = (await c.listMigrations()).map((m) => m.state);
    assert.equal(
      states.filter((s) => s !== "failed"),
      ["cancelled"],
    );
    // A VM that is not on its page-server any more is deleted all the same.
    await c.deleteVm("v4");
    await rejectsWithStatus(c.getVm("v4"), grpc.status.NOT_FOUND, /unknown VM v4/);
    // Created again under its id (fence 0, as CreateVm records it): its next migration's token
    // is above every token the deleted one showed hosts, which keep the highest they saw.
    await store.set(KEYS.vm("v4"), JSON.stringify(plantedVm("v4", "a")));
    const reborn = await c.migrateVm({ vmId: "v4", destinationHostId: "b", mode: 0, requestId: "" });
    assert.ok(
      reborn.fencingToken > fresh.fencingToken,
      `token ${reborn.fencingToken} after ${fresh.fencingToken}`,
    );
    await end(reborn.migrationId);
  });

  test("a restart while a host does not answer: completing asks again, holds wait for it, a VM past its switch stays held", async () => {
    const port = await freePort();
    await plantHost(store, "late", `127.0.0.1:${port}`);
    // Memory complete, the registry not yet moved; the destination's page-server is down.
    await store.set(
      KEYS.migration("m-903"),
      JSON.stringify(plantedMigration("m-903", "v6", "completing", "late")),
    );
    await store.set(KEYS.vm("v6"), JSON.stringify(plantedVm("v6", "a", "m-903")));
    // A CreateVm on that host interrupted by a crash.
    await store.set(KEYS.vm("v8"), JSON.stringify(plantedVm("v8", "late", "create")));
    // A DeleteVm interrupted by a crash (its page-server answers).
    await store.set(KEYS.vm("v10"), JSON.stringify(plantedVm("v10", "a", "delete")));
    await cp.close();
    cp = await startControlPlane(store);
    const c = cp.client;
    await until("v10's interrupted delete finished", () =>
      store.get(KEYS.vm("v10")).then((v) => (v === null ? true : undefined)),
    );
    // Whether v8 runs is unknown until its host answers: it stays held.
    assert.is(JSON.parse((await store.get(KEYS.vm("v8")))!).migration_id, "create");
    assert.is((await c.getMigration("m-903")).state, "completing");
    const late = await startPageServer(dir.path, `${kind}-late`, `127.0.0.1:${port}`);
    try {
      const m903 = await until("m-903 final", async () => {
        const m = await c.getMigration("m-903");
        return m.state === "completing" ? undefined : m;
      });
      // Asked again until the destination answered (that it does not know the VM).
      assert.is(m903.state, "failed");
      assert.match(m903.error, /no VM v6 on this host/);
      await until("v8's interrupted create undone", () =>
        store.get(KEYS.vm("v8")).then((v) => (v === null ? true : undefined)),
      );
      // Past the switch-over the VM stays held, also across a restart: a person decides.
      assert.is((await c.getVm("v6")).migrationId, "m-903");
      await cp.close();
      cp = await startControlPlane(store);
      assert.is((await cp.client.getVm("v6")).migrationId, "m-903");
      await rejectsWithStatus(
        cp.client.migrateVm({ vmId: "v6", destinationHostId: "b", mode: 0, requestId: "" }),
        grpc.status.FAILED_PRECONDITION,
        /VM v6 is already migrating \(m-903\)/,
      );
      // DeleteVm is the way out once its migration ended.
      await cp.client.deleteVm("v6");
      await rejectsWithStatus(cp.client.getVm("v6"), grpc.status.NOT_FOUND, /unknown VM v6/);
    } finally {
      await late.close();
    }
  });

  return test;
}

storeSuite("memory").run();
storeSuite("redis").run();
