// The leader lease on a real Redis (and the embedded store): two contenders, one leader at a
// time; the lease expires when its holder stops renewing (a process frozen with SIGSTOP's
// equivalent: its loop stopped without releasing); a holder whose renewal is refused (its key
// taken away) or fails (Redis stopped) stops leading; every acquisition's generation is above
// the last one and above every fencing token issued before.
import * as assert from "uvu/assert";
import { MemoryStore, RedisStore, type Store } from "../../services/common/store/index.js";
import { LeaderLease } from "../../services/control-plane/leader-lease.js";
import { gate } from "../helpers/env.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { suite } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";

const KEY = "control:leader";
const GEN = "control:fence-seq";

const t = gate(suite("leader lease (Redis)"), ["redis-server"], "leader lease on Redis");
let redis: RedisHandle | undefined;
const stores: Store[] = [];
const leases: LeaderLease[] = [];
let prefixN = 0;

t.before(async () => {
  redis = await startRedis();
});
t.after.each(async () => {
  for (const l of leases.splice(0)) await l.stop();
  for (const s of stores.splice(0)) await s.close();
});
t.after(async () => {
  await redis?.stop();
});

/** A fresh key space on the test's Redis, and a connection to it per contender. */
async function space(): Promise<() => Promise<Store>> {
  const prefix = `lease${process.pid}-${++prefixN}:`;
  return async () => {
    const s = await RedisStore.connect(redis!.url, { prefix });
    stores.push(s);
    return s;
  };
}

interface Events {
  acquired: number[];
  lost: string[];
}

function contender(store: Store, holder: string, ttlMs = 1500): { lease: LeaderLease; ev: Events } {
  const ev: Events = { acquired: [], lost: [] };
  const lease = new LeaderLease(store, {
    key: KEY,
    generationKey: GEN,
    holder,
    ttlMs,
    onAcquired: (g) => ev.acquired.push(g),
    onLost: (_g, why) => ev.lost.push(why),
  });
  leases.push(lease);
  return { lease, ev };
}

t("two contenders: one leads; when it stops the other takes over with a higher generation", async () => {
  const connect = await space();
  const sa = await connect();
  // Fencing tokens issued before any leader: the first generation is above them.
  for (let i = 0; i < 5; i++) await sa.incr(GEN);
  const a = contender(sa, "a");
  const b = contender(await connect(), "b");
  a.lease.start();
  b.lease.start();
  const first = await until("a leader", () => a.lease.isLeader() || b.lease.isLeader(), 10_000);
  assert.ok(first);
  // Several renewal periods later still exactly one leader, the one the store names.
  await new Promise((r) => setTimeout(r, 2000));
  assert.is(Number(a.lease.isLeader()) + Number(b.lease.isLeader()), 1, "exactly one leader");
  const [leader, other] = a.lease.isLeader() ? [a, b] : [b, a];
  const g1 = leader.lease.generation!;
  assert.ok(g1 > 5, `generation ${g1} above the fencing tokens issued before`);
  assert.equal(leader.ev.acquired, [g1]);
  const held = await LeaderLease.read(sa, KEY);
  assert.is(held?.generation, g1);
  assert.is(held?.holder, leader === a ? "a" : "b");
  await leader.lease.stop();
  assert.equal(leader.ev.lost, ["stopped"]);
  const g2 = await until("the other contender leading", () => other.lease.generation, 10_000);
  assert.ok(g2 > g1, `generation ${g2} > ${g1}`);
  assert.ok(!leader.lease.isLeader());
});

t("a holder that stops renewing loses the lease when its TTL expires; the other takes it", async () => {
  const connect = await space();
  const sa = await connect();
  const a = contender(sa, "a");
  a.lease.start();
  const g1 = await until("a leading", () => a.lease.generation, 10_000);
  // a freezes: its renewals stop and nothing releases the key (a kill -9 of its process).
  (a.lease as unknown as { stopped: boolean }).stopped = true;
  const b = contender(await connect(), "b");
  b.lease.start();
  assert.ok(!b.lease.isLeader(), "b does not lead while a's lease lives");
  const g2 = await until("b leading after a's lease expired", () => b.lease.generation, 15_000);
  assert.ok(g2 > g1);
  // a, frozen, counts its own lease lost once the TTL passed without a renewal.
  assert.ok(!a.lease.isLeader());
  assert.is((await LeaderLease.read(sa, KEY))?.holder, "b");
});

t("a renewal refused (the key taken away) ends leadership at once", async () => {
  const connect = await space();
  const sa = await connect();
  const a = contender(sa, "a", 3000);
  a.lease.start();
  const g1 = await until("a leading", () => a.lease.generation, 10_000);
  // Someone else's lease in its place (as after an expiry a slow holder did not see).
  await sa.set(KEY, JSON.stringify({ holder: "x", generation: g1 + 100, since_unix_ms: Date.now() }));
  await until("a noticing it lost", () => a.ev.lost.length > 0, 10_000);
  assert.match(a.ev.lost[0]!, /renewal refused/);
  assert.ok(!a.lease.isLeader());
});

t(
  "Redis stopped: the holder's renewal fails and it stops leading; after a restart it leads again",
  async () => {
    const connect = await space();
    const sa = await connect();
    const a = contender(sa, "a");
    a.lease.start();
    const g1 = await until("a leading", () => a.lease.generation, 10_000);
    await redis!.halt();
    try {
      await until("a noticing it lost", () => a.ev.lost.length > 0, 15_000);
      assert.ok(!a.lease.isLeader());
    } finally {
      await redis!.restart();
    }
    const g2 = await until("a leading again", () => a.lease.generation, 20_000);
    assert.ok(g2 > g1, `generation ${g2} > ${g1} (the counter survived the restart)`);
    assert.equal(a.ev.acquired, [g1, g2]);
  },
);

t.run();

const m = suite("leader lease (embedded store)");
m("a single process leads at once and stays leader", async () => {
  const store = new MemoryStore();
  const l = new LeaderLease(store, { key: KEY, generationKey: GEN, holder: "only", ttlMs: 600 });
  l.start();
  try {
    const g = await until("leading", () => l.generation, 5000);
    assert.is(g, 1);
    await new Promise((r) => setTimeout(r, 1500));
    assert.is(l.generation, 1, "renewed, same generation");
    await l.stop();
    assert.is(await store.get(KEY), null, "released on stop");
    assert.ok(!l.isLeader());
  } finally {
    await l.stop();
    await store.close();
  }
});
m.run();
