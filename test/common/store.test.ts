// The same behaviour suite runs against the embedded store and a real redis-server.
import * as assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import {
  MemoryStore,
  openStore,
  RedisStore,
  type Store,
  StoreError,
} from "../../services/common/store/index.js";
import { gate } from "../helpers/env.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { suite } from "../helpers/uvu.js";
import { until, within } from "../helpers/wait.js";

function behaviour(name: string, open: () => Promise<Store>, reqs: string[] = []) {
  const s = suite<{ store: Store }>(`store: ${name}`, {} as { store: Store });
  const t = gate(s, reqs, `store ${name}`);
  t.before.each(async (ctx) => {
    ctx.store = await open();
  });
  t.after.each(async (ctx) => {
    await ctx.store.close();
  });

  t("get/set/del round trip", async ({ store }) => {
    assert.equal(await store.get("a"), null);
    await store.set("a", "1");
    assert.equal(await store.get("a"), "1");
    assert.equal(await store.del("a"), true);
    assert.equal(await store.del("a"), false);
    assert.equal(await store.get("a"), null);
  });

  t("ttl expires keys", async ({ store }) => {
    await store.set("ttl", "x", { ttlMs: 60 });
    assert.equal(await store.get("ttl"), "x");
    await sleep(150);
    assert.equal(await store.get("ttl"), null);
    await assert.rejects(store.set("bad", "x", { ttlMs: 0 }), StoreError);
  });

  t("compareAndSet: absent, match, mismatch", async ({ store }) => {
    assert.equal(await store.compareAndSet("lease", null, "owner-1"), true);
    assert.equal(await store.compareAndSet("lease", null, "owner-2"), false, "absent expected but present");
    assert.equal(await store.compareAndSet("lease", "owner-2", "owner-3"), false, "wrong expected value");
    assert.equal(await store.get("lease"), "owner-1");
    assert.equal(await store.compareAndSet("lease", "owner-1", "owner-1b", { ttlMs: 80 }), true);
    assert.equal(await store.get("lease"), "owner-1b");
    await sleep(160);
    assert.equal(await store.compareAndSet("lease", null, "owner-4"), true, "expired lease can be taken");
  });

  t("compareAndSet refuses a bad TTL before comparing", async ({ store }) => {
    await store.set("cas-ttl", "cur");
    // Whether or not the comparison would succeed, a bad TTL is an error, and nothing changes.
    await assert.rejects(store.compareAndSet("cas-ttl", "other", "new", { ttlMs: 0 }), StoreError);
    await assert.rejects(store.compareAndSet("cas-ttl", "cur", "new", { ttlMs: -5 }), StoreError);
    await assert.rejects(store.compareAndSet("cas-absent", "x", "new", { ttlMs: 0 }), StoreError);
    assert.equal(await store.get("cas-ttl"), "cur");
    assert.equal(await store.get("cas-absent"), null);
  });

  t("compareAndSet is atomic under concurrency", async ({ store }) => {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => store.compareAndSet("race", null, `w${i}`)),
    );
    assert.equal(results.filter(Boolean).length, 1);
  });

  t("compareAndDelete only deletes the expected value", async ({ store }) => {
    await store.set("cad", "mine");
    assert.equal(await store.compareAndDelete("cad", "theirs"), false);
    assert.equal(await store.get("cad"), "mine");
    assert.equal(await store.compareAndDelete("cad", "mine"), true);
    assert.equal(await store.get("cad"), null);
  });

  t("incr counts from 1 and refuses non-integers", async ({ store }) => {
    assert.equal(await store.incr("gen"), 1);
    assert.equal(await store.incr("gen"), 2);
    await store.set("notnum", "abc");
    await assert.rejects(store.incr("notnum"), StoreError);
  });

  t("incr takes only what Redis takes as an integer", async ({ store }) => {
    for (const bad of ["", " 1", "1 ", "1.5", "01", "-0", "1e3", "0x10", "+1"]) {
      await store.set("n", bad);
      await assert.rejects(store.incr("n"), StoreError, `incr of ${JSON.stringify(bad)}`);
      assert.equal(await store.get("n"), bad, `${JSON.stringify(bad)} unchanged`);
    }
    await store.set("n", "-5");
    assert.equal(await store.incr("n"), -4);
    await store.set("n", "0");
    assert.equal(await store.incr("n"), 1);
  });

  t("incr keeps the key's TTL", async ({ store }) => {
    await store.set("ttl-gen", "5", { ttlMs: 120 });
    assert.equal(await store.incr("ttl-gen"), 6);
    assert.equal(await store.get("ttl-gen"), "6");
    await until("the incremented key to expire", async () => (await store.get("ttl-gen")) === null, 5000);
    assert.equal(await store.incr("ttl-gen"), 1, "counts from 1 again once expired");
  });

  t("scan by prefix is literal and sorted", async ({ store }) => {
    await store.set("vm/b", "2");
    await store.set("vm/a", "1");
    await store.set("vm*/x", "glob");
    await store.set("vmx", "other");
    assert.deepEqual(await store.scan("vm/"), [
      ["vm/a", "1"],
      ["vm/b", "2"],
    ]);
    assert.deepEqual(await store.scan("vm*/"), [["vm*/x", "glob"]]);
    assert.deepEqual(await store.scan("nothing/"), []);
  });

  t("publish reaches subscribers until unsubscribed", async ({ store }) => {
    const got: string[] = [];
    const unsub = await store.subscribe("events", (m) => got.push(m));
    await store.publish("events", "one");
    await store.publish("events", "two");
    for (let i = 0; i < 50 && got.length < 2; i++) await sleep(20);
    assert.deepEqual(got, ["one", "two"]);
    await unsub();
    await store.publish("events", "three");
    await sleep(100);
    assert.deepEqual(got, ["one", "two"]);
  });

  return s;
}

let redis: RedisHandle | undefined;
let n = 0;
const redisReqs = ["redis-server"];

behaviour("memory", async () => new MemoryStore()).run();

const r = behaviour(
  "redis",
  async () => {
    redis ??= await startRedis();
    // A fresh prefix per test keeps tests independent on one server.
    return RedisStore.connect(redis.url, { prefix: `t${++n}:` });
  },
  redisReqs,
);
r.after(async () => {
  await redis?.stop();
});
r.run();

const d = gate(suite("store: redis durability and errors"), redisReqs, "redis durability");
d("data survives a redis-server restart", async () => {
  const h = await startRedis();
  try {
    const a = await openStore(h.url);
    await a.set("migration/1", JSON.stringify({ state: "switching" }));
    await a.close();
    await h.restart();
    const b = await openStore(h.url);
    assert.deepEqual(JSON.parse((await b.get("migration/1")) ?? "null"), { state: "switching" });
    await b.close();
  } finally {
    await h.stop();
  }
});
d("a subscribe whose connection failed is tried again on the next subscribe", async () => {
  const h = await startRedis();
  const store = await RedisStore.connect(h.url, { connectTimeoutMs: 1000 });
  try {
    await h.halt();
    await assert.rejects(
      within(
        store.subscribe("ch", () => {}),
        10_000,
        "subscribe with Redis down",
      ),
      (err: Error) => err instanceof StoreError && /cannot connect \(subscriber\) to Redis/.test(err.message),
    );
    await h.restart();
    const got: string[] = [];
    const unsub = await within(
      store.subscribe("ch", (m) => got.push(m)),
      10_000,
      "subscribe once Redis is back",
    );
    await until(
      "a message published after Redis came back",
      async () => {
        await store.publish("ch", "back");
        return got.length > 0;
      },
      10_000,
      200,
    );
    assert.equal(got[0], "back");
    await unsub();
  } finally {
    await store.close();
    await h.stop();
  }
});
d("unreachable Redis gives a clear error", async () => {
  await assert.rejects(
    RedisStore.connect("redis://127.0.0.1:1", { connectTimeoutMs: 500 }),
    (err: Error) =>
      err instanceof StoreError && /cannot connect to Redis at redis:\/\/127\.0\.0\.1:1/.test(err.message),
  );
});
d("bad store URL is refused", async () => {
  await assert.rejects(openStore("postgres://x"), /unsupported store URL/);
  assert.equal((await openStore()).kind, "memory");
});
d.run();
