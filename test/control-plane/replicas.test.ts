// Control-plane replicas on one real Redis, with real page-servers (no QEMU: VMs are planted in
// the registry as CreateVm leaves them): one leader at a time that every replica names; a
// migration asked of a follower is driven by the leader; a takeover re-fences what another
// leader drove and refuses the deposed one's transitions; the leader stopping hands over to the
// other replica; the leader's liveness checks see a page-server go suspect, then down, then up.
import * as assert from "uvu/assert";
import { HostLiveness } from "../../gen/vmhop/v1/control.js";
import { MigrationMode } from "../../gen/vmhop/v1/page.js";
import { startGrpcServer } from "../../services/common/grpc/server.js";
import { silentLogger } from "../../services/common/log.js";
import { RedisStore, type Store } from "../../services/common/store/index.js";
import { ControlClient } from "../../services/control-plane/client.js";
import { ControlPlane } from "../../services/control-plane/control-plane.js";
import { controlPlaneService } from "../../services/control-plane/grpc.js";
import { lostWith } from "../../services/control-plane/host-down.js";
import {
  KEYS,
  type MigrationRecord,
  transition,
  type VmRecord,
} from "../../services/control-plane/records.js";
import { Replica } from "../../services/control-plane/replica.js";
import { adopt, DeposedError, drivenBy } from "../../services/control-plane/takeover.js";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { suite } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { host, type PageServerHandle, startPageServer } from "./fixtures.js";

const t = gate(suite("control-plane replicas"), ["redis-server"], "control-plane replicas on Redis");
const dir = tempDir("vmhop-replicas-");
let redis: RedisHandle;
let a: PageServerHandle;
let b: PageServerHandle;
let bListen: string;
const stores: Store[] = [];

interface ReplicaHandle {
  id: string;
  cp: ControlPlane;
  replica: Replica;
  client: ControlClient;
  stop(): Promise<void>;
}
const replicas: ReplicaHandle[] = [];

async function connect(prefix = `r${process.pid}:`): Promise<Store> {
  const s = await RedisStore.connect(redis.url, { prefix });
  stores.push(s);
  return s;
}

async function startReplica(id: string): Promise<ReplicaHandle> {
  const store = await connect();
  const cp = new ControlPlane(store, {
    reachMs: 1500,
    pickupMs: 300,
    liveness: { everyMs: 300, deadlineMs: 500, downAfter: 3 },
  });
  const g = await startGrpcServer({
    serviceName: `control-plane ${id}`,
    listen: "127.0.0.1:0",
    services: [controlPlaneService(cp, silentLogger)],
    log: silentLogger,
  });
  const replica = new Replica(cp, store, { id, leaseTtlMs: 1500, log: silentLogger });
  await replica.start();
  const client = new ControlClient(g.address);
  const h: ReplicaHandle = {
    id,
    cp,
    replica,
    client,
    stop: async () => {
      client.close();
      await replica.stop();
      cp.close();
      await g.shutdown(1000);
    },
  };
  replicas.push(h);
  return h;
}

const plantedVm = (vmId: string, hostId: string, migrationId = "", token = 0): VmRecord => ({
  vm_id: vmId,
  spec: { vmId, vcpus: 1, memoryMib: 64, kernelPath: "/nonexistent/vmlinux" },
  host_id: hostId,
  migration_id: migrationId,
  fencing_token: token,
});

const plantedMigration = (
  id: string,
  vmId: string,
  state: MigrationRecord["state"],
  token: number,
  driver?: number,
): MigrationRecord => ({
  migration_id: id,
  request_id: "",
  vm_id: vmId,
  source_host_id: "a",
  destination_host_id: "b",
  mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
  state,
  fencing_token: token,
  error: "",
  bytes_sent: 0,
  downtime_ms: 0,
  created_unix_ms: Date.now(),
  updated_unix_ms: Date.now(),
  entered_unix_ms: { pending: Date.now(), [state]: Date.now() },
  ...(driver === undefined ? {} : { driver_generation: driver }),
});

t.before(async () => {
  redis = await startRedis();
  a = await startPageServer(dir.path, "a");
  bListen = `127.0.0.1:${await freePort()}`;
  b = await startPageServer(dir.path, "b", bListen);
});

t.after(async () => {
  for (const r of replicas.splice(0)) await r.stop().catch(() => {});
  await a?.close();
  await b?.close();
  for (const s of stores.splice(0)) await s.close();
  await redis?.stop();
  dir.cleanup();
});

/** The replica leading now (the one whose lease is held). */
const leader = () => replicas.find((r) => r.replica.generation !== undefined);

t("two replicas: exactly one leads and both name it", async () => {
  const r1 = await startReplica("r1");
  const r2 = await startReplica("r2");
  const l = await until("a leader", leader, 10_000);
  assert.is(Number(r1.replica.generation !== undefined) + Number(r2.replica.generation !== undefined), 1);
  for (const r of [r1, r2]) {
    const st = await r.client.hostsStatus();
    assert.is(st.leaderReplica, l.id, `${r.id} names the leader`);
    assert.is(st.leaderGeneration, l.replica.generation);
  }
  await r1.client.registerHost(host("a", a.address));
  await r2.client.registerHost(host("b", b.address));
});

t("MigrateVm asked of the follower is recorded there and driven by the leader", async () => {
  const l = leader()!;
  const follower = replicas.find((r) => r !== l)!;
  const store = await connect();
  await store.set(KEYS.vm("v1"), JSON.stringify(plantedVm("v1", "a")));
  const m = await follower.client.migrateVm({ vmId: "v1", destinationHostId: "b", mode: 0, requestId: "" });
  assert.is(m.state, "pending");
  const end = await until(
    "the migration to end",
    async () => {
      const x = await follower.client.getMigration(m.migrationId);
      return x.state === "failed" ? x : undefined;
    },
    30_000,
  );
  // The destination cannot start the planted kernel: failed with its reason, by the leader.
  assert.match(end.error, /PrepareIncoming/);
  assert.is(end.driverGeneration, l.replica.generation, "driven under the leader's generation");
  const vm = await follower.client.getVm("v1");
  assert.equal([vm.hostId, vm.migrationId], ["a", ""]);
});

t("a takeover re-fences what another leader drove; the deposed leader's steps are refused", async () => {
  // Its own key space: no replica picks these records up.
  const store = await connect(`adopt${process.pid}:`);
  await store.set(KEYS.vm("v2"), JSON.stringify(plantedVm("v2", "a", "m-x", 7)));
  await store.set(KEYS.migration("m-x"), JSON.stringify(plantedMigration("m-x", "v2", "migrating", 7, 3)));
  for (let i = 0; i < 20; i++) await store.incr(KEYS.fenceSeq);
  const m = (await adopt(store, "m-x", 9))!;
  assert.is(m.driver_generation, 9);
  assert.ok(m.fencing_token > 20, `re-fenced above every token issued: ${m.fencing_token}`);
  assert.equal(
    m.takeovers?.map((x) => [x.generation, x.from_generation, x.fencing_token, x.state]),
    [[9, 3, m.fencing_token, "migrating"]],
  );
  const vm = JSON.parse((await store.get(KEYS.vm("v2")))!) as VmRecord;
  assert.is(vm.fencing_token, m.fencing_token, "the held VM carries the new token");
  // The deposed leader (generation 3): its transition and its own adoption are refused.
  try {
    await transition(store, "m-x", "switch", {}, drivenBy(3));
    assert.unreachable("a deposed leader's step was accepted");
  } catch (err) {
    assert.instance(err, DeposedError);
  }
  try {
    await adopt(store, "m-x", 8);
    assert.unreachable("an older leader adopted it");
  } catch (err) {
    assert.instance(err, DeposedError);
  }
  assert.is((await adopt(store, "m-x", 9))!.fencing_token, m.fencing_token, "adopting again changes nothing");
  // The new leader's own steps go on.
  assert.is((await transition(store, "m-x", "switch", {}, drivenBy(9))).state, "switched");
});

t("the leader stops: the other replica takes over with a higher generation", async () => {
  const l = leader()!;
  const g1 = l.replica.generation!;
  const other = replicas.find((r) => r !== l)!;
  await l.stop();
  replicas.splice(replicas.indexOf(l), 1);
  const g2 = await until("the other replica leading", () => other.replica.generation, 10_000);
  assert.ok(g2 > g1, `${g2} > ${g1}`);
  const st = await other.client.hostsStatus();
  assert.equal([st.leaderReplica, st.leaderGeneration], [other.id, g2]);
});

t("liveness: a page-server that stops answering goes suspect, then down; back, it is up", async () => {
  const c = replicas[0]!.client;
  const stateOf = async (hostId: string) => (await c.hostsStatus()).liveness.find((l) => l.hostId === hostId);
  await until(
    "both hosts up",
    async () => (await stateOf("b"))?.state === HostLiveness.HOST_LIVENESS_UP,
    10_000,
  );
  assert.is((await stateOf("a"))?.state, HostLiveness.HOST_LIVENESS_UP);
  await b.close();
  const suspect = await until(
    "b suspect",
    async () => {
      const l = await stateOf("b");
      return l?.state === HostLiveness.HOST_LIVENESS_SUSPECT ? l : undefined;
    },
    10_000,
    20,
  );
  assert.ok(suspect.missed >= 1 && suspect.missed < 3);
  assert.match(suspect.detail, /page-server 127\.0\.0\.1:\d+/);
  const down = await until(
    "b down",
    async () => {
      const l = await stateOf("b");
      return l?.state === HostLiveness.HOST_LIVENESS_DOWN ? l : undefined;
    },
    15_000,
  );
  assert.ok(down.missed >= 3);
  assert.is((await stateOf("a"))?.state, HostLiveness.HOST_LIVENESS_UP, "a stays up");
  b = await startPageServer(dir.path, "b", bListen);
  await until(
    "b up again",
    async () => (await stateOf("b"))?.state === HostLiveness.HOST_LIVENESS_UP,
    15_000,
  );
});

t.run();

const u = suite("what a host down after the switch-over took with it");
u("the record's words", () => {
  const m = plantedMigration("m-1", "v", "relocating", 1);
  assert.match(lostWith(m, "b"), /the destination b went down after the switch-over: the VM ran only there/);
  const disk = {
    destination_export: "v",
    source_url: "nbd://x/v",
    blocks_total: 100,
    blocks_local: 40,
    bytes_fetched_on_demand: 0,
    bytes_fetched_background: 0,
    promoted: false,
  };
  assert.match(
    lostWith({ ...m, disk }, "a"),
    /with 60 of 100 disk blocks still there: the guest sees I\/O errors/,
  );
  assert.match(lostWith({ ...m, disk: { ...disk, blocks_local: 100 } }, "a"), /^nothing: /);
  // The source down during post-copy: memory not yet at the destination is lost with it.
  const postcopy = { ...m, state: "switched" as const, disk: { ...disk, blocks_local: 100 } };
  assert.match(
    lostWith({ ...postcopy, memory: { bytes_remaining: 48 << 20, pages_requested_on_fault: 9 } }, "a"),
    /the source a went down during post-copy with 48\.0 MiB of the VM's memory still there: the VM at the destination stalls/,
  );
  assert.match(lostWith(postcopy, "a"), /with part of the VM's memory still there/);
  assert.match(
    lostWith({ ...m, disk: { ...disk, blocks_total: 0, blocks_local: 0 } }, "a"),
    /before the disk's copy reported progress, with the blocks not yet copied still there/,
  );
  assert.match(
    lostWith({ ...m, disk }, "a", "block-server unix:/x: UNAVAILABLE"),
    /\(block-server unix:\/x: UNAVAILABLE\)$/,
  );
  // Only its block-server down during post-copy: memory still flows; the disk blocks are what is lost.
  assert.match(
    lostWith({ ...postcopy, disk }, "a", "block-server unix:/x: refused", false),
    /with 60 of 100 disk blocks still there: the guest sees I\/O errors/,
  );
});
u.run();
