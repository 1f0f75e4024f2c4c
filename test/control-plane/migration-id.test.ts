// Migration ids: unique across stores and restarts, in creation order as strings. Two fresh
// control-planes on two fresh stores (as after a store is wiped) start different migrations
// with different ids, both well-formed, ordered by when they were made.
import * as assert from "uvu/assert";
import { MemoryStore } from "../../services/common/store/index.js";
import { MIGRATION_ID, migrationIdTime, newMigrationId } from "../../services/control-plane/migration-id.js";
import { KEYS } from "../../services/control-plane/records.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { host, startControlPlane, startPageServer } from "./fixtures.js";

test("ids carry their time, sort by it, and differ within one millisecond", () => {
  const t = Date.UTC(2026, 11, 6, 9, 30);
  const id = newMigrationId(t);
  assert.match(id, MIGRATION_ID);
  assert.is(migrationIdTime(id), t);
  const ids = Array.from({ length: 2000 }, (_, i) => newMigrationId(t + Math.floor(i / 100)));
  assert.is(new Set(ids).size, ids.length, "no two alike, even 100 in one millisecond");
  const byTime = [...ids].sort((x, y) => migrationIdTime(x)! - migrationIdTime(y)!);
  const byString = [...ids].sort();
  assert.equal(
    byString.map((x) => migrationIdTime(x)),
    byTime.map((x) => migrationIdTime(x)),
    "string order is time order",
  );
  // Across a carry in every base32 digit, and far apart.
  assert.ok(newMigrationId(32 ** 3 - 1) < newMigrationId(32 ** 3));
  assert.ok(newMigrationId(0) < newMigrationId(2 ** 49));
  assert.is(migrationIdTime("m-1"), undefined, "an old counter id carries no time");
  assert.throws(() => newMigrationId(-1), /bad time/);
});

test("two fresh stores never start with the same migration id", async () => {
  const dir = tempDir("vmhop-cp-ids-");
  const a = await startPageServer(dir.path, "ids-a");
  const b = await startPageServer(dir.path, "ids-b");
  const stores = [new MemoryStore(), new MemoryStore()];
  const cps = await Promise.all(stores.map((s) => startControlPlane(s)));
  try {
    const first: string[] = [];
    for (const [i, cp] of cps.entries()) {
      await cp.client.registerHost(host("a", a.address));
      await cp.client.registerHost(host("b", b.address));
      // A VM as CreateVm records it (its migration fails to prepare: no QEMU needed here).
      await stores[i]!.set(
        KEYS.vm("v1"),
        JSON.stringify({
          vm_id: "v1",
          spec: { vmId: "v1", vcpus: 1, memoryMib: 64, kernelPath: "/nonexistent/vmlinux" },
          host_id: "a",
          migration_id: "",
          fencing_token: 0,
        }),
      );
      const m = await cp.client.migrateVm({ vmId: "v1", destinationHostId: "b", mode: 0, requestId: "" });
      assert.match(m.migrationId, MIGRATION_ID);
      const at = migrationIdTime(m.migrationId)!;
      assert.ok(Math.abs(at - m.createdUnixMs) < 1000, `id time ${at} is the record's ${m.createdUnixMs}`);
      first.push(m.migrationId);
      await cp.client.waitForMigration(m.migrationId);
    }
    assert.is.not(first[0], first[1]);
    assert.ok(first[0]! < first[1]!, `${first[0]} was made before ${first[1]}`);
  } finally {
    for (const cp of cps) await cp.close();
    await a.close();
    await b.close();
    dir.cleanup();
  }
});

test.run();
