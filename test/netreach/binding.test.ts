// Binding cache: generation ordering, the state table, lifetime, and durability on real Redis.
import * as assert from "uvu/assert";
import { MemoryStore, RedisStore } from "../../services/common/store/index.js";
import { BindingCache } from "../../services/netreach/binding/cache.js";
import { transitions } from "../../services/netreach/binding/state.js";
import type { RegisterRequest } from "../../services/netreach/binding/types.js";
import { rejects } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { startRedis } from "../helpers/redis.js";
import { test } from "../helpers/uvu.js";

const s1 = { site: "s1", sid6: "fc00:1::d6", sid4: "fc00:1::d4" };
const s2 = { site: "s2", sid6: "fc00:2::d6", sid4: "fc00:2::d4" };
const reg: RegisterRequest = {
  vmId: "vm-1",
  mac: "52:54:00:00:00:01",
  homeIpv6: ["2001:db8:100::100"],
  homeIpv4: ["10.77.0.100"],
  generation: 1,
  lifetimeSeconds: 60,
  ...s1,
};

test("register then update with a newer generation re-points the binding", async () => {
  const c = new BindingCache(new MemoryStore());
  const r = await c.register(reg);
  assert.ok(r.accepted);
  assert.is(r.binding?.state, "active");
  const u = await c.update({ vmId: "vm-1", generation: 2, ...s2 });
  assert.ok(u.accepted);
  assert.is(u.binding?.site, "s2");
  assert.is(u.binding?.sid6, "fc00:2::d6");
  assert.is((await c.get("vm-1"))?.generation, 2);
});

test("a stale or replayed update is refused and changes nothing", async () => {
  const kv = new MemoryStore();
  const c = new BindingCache(kv);
  await c.register(reg);
  await c.update({ vmId: "vm-1", generation: 5, ...s2 });
  const before = await kv.get("netreach/binding/vm-1");
  const replay = await c.update({ vmId: "vm-1", generation: 5, ...s1 });
  assert.not.ok(replay.accepted);
  if (!replay.accepted) assert.match(replay.reason, /stale generation 5 \(have 5\)/);
  const stale = await c.update({ vmId: "vm-1", generation: 3, ...s1 });
  assert.not.ok(stale.accepted);
  assert.is(await kv.get("netreach/binding/vm-1"), before);
  const reReg = await c.register({ ...reg, generation: 4 });
  assert.not.ok(reReg.accepted);
  assert.is(await kv.get("netreach/binding/vm-1"), before);
});

test("update of an unknown vm is refused", async () => {
  const c = new BindingCache(new MemoryStore());
  const o = await c.update({ vmId: "ghost", generation: 1, ...s1 });
  assert.not.ok(o.accepted);
  if (!o.accepted) assert.match(o.reason, /not registered/);
});

test("bad input gets clear errors", async () => {
  const c = new BindingCache(new MemoryStore());
  await rejects(() => c.register({ ...reg, vmId: "bad id!" }), /invalid vm id/);
  await rejects(() => c.register({ ...reg, mac: "zz" }), /invalid MAC/);
  await rejects(() => c.register({ ...reg, homeIpv6: ["10.0.0.1"] }), /invalid IPv6 home address/);
  await rejects(() => c.register({ ...reg, homeIpv4: ["::1"] }), /invalid IPv4 home address/);
  await rejects(() => c.register({ ...reg, homeIpv4: [], homeIpv6: [] }), /no home address/);
  await rejects(() => c.register({ ...reg, generation: 0 }), /invalid generation/);
  await rejects(() => c.register({ ...reg, lifetimeSeconds: 0 }), /invalid lifetime/);
  await rejects(() => c.update({ vmId: "vm-1", generation: 2, ...s2, sid6: "nope" }), /invalid IPv6 SID/);
});

test("state table: prepare, cancel, expiry and revival only by a newer update", async () => {
  let now = 1_000_000;
  const c = new BindingCache(new MemoryStore(), { now: () => now });
  await c.register(reg);
  const p = await c.prepare("vm-1", "s2");
  assert.is(p.binding?.state, "moving");
  assert.is(p.binding?.movingTo, "s2");
  assert.is((await c.cancel("vm-1")).binding?.state, "active");
  assert.not.ok((await c.cancel("vm-1")).accepted, "cancel is refused when not moving");
  // Refresh keeps it alive.
  now += 50_000;
  assert.ok((await c.refresh("vm-1", 1)).accepted);
  now += 50_000;
  assert.equal(await c.expireDue(), []);
  assert.not.ok((await c.refresh("vm-1", 2)).accepted, "refresh must name the current generation");
  now += 20_000;
  const expired = await c.expireDue();
  assert.is(expired.length, 1);
  assert.is(expired[0].state, "expired");
  assert.not.ok((await c.refresh("vm-1", 1)).accepted);
  assert.not.ok((await c.prepare("vm-1", "s2")).accepted);
  const back = await c.update({ vmId: "vm-1", generation: 2, ...s2 });
  assert.is(back.binding?.state, "active");
  assert.is(transitions.expired.update, "active");
});

test("deregister removes the binding", async () => {
  const c = new BindingCache(new MemoryStore());
  await c.register(reg);
  assert.is((await c.deregister("vm-1"))?.vmId, "vm-1");
  assert.is(await c.get("vm-1"), null);
  assert.is(await c.deregister("vm-1"), null);
});

gate(
  test,
  ["redis-server"],
  "binding cache on Redis",
)("bindings survive a Redis restart and concurrent updates keep the newest", async () => {
  const redis = await startRedis();
  try {
    let kv = await RedisStore.connect(redis.url);
    let c = new BindingCache(kv);
    await c.register(reg);
    await c.register({ ...reg, vmId: "vm-2" });
    // Racing updates: whatever the order, the highest generation wins.
    const gens = [7, 3, 9, 5, 8];
    await Promise.all(gens.map((g) => c.update({ vmId: "vm-1", generation: g, ...(g % 2 ? s2 : s1) })));
    assert.is((await c.get("vm-1"))?.generation, 9);
    await kv.close();
    await redis.restart();
    kv = await RedisStore.connect(redis.url);
    c = new BindingCache(kv);
    const all = await c.list();
    assert.equal(
      all.map((b) => [b.vmId, b.generation, b.site]),
      [
        ["vm-1", 9, "s2"],
        ["vm-2", 1, "s1"],
      ],
    );
    await kv.close();
  } finally {
    await redis.stop();
  }
});

test.run();
