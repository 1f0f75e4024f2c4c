// Unit tests of the proxy's block claims (proxy/block-claims.ts): pure bookkeeping over a
// bitmap, so every race is staged by hand, step by step, with no upstream and no timing.
import * as assert from "uvu/assert";
import { BackendError } from "../../services/block-server/export/backend.js";
import { BlockBitmap } from "../../services/block-server/proxy/block-bitmap.js";
import { BlockClaims, type Claim } from "../../services/block-server/proxy/block-claims.js";
import { test } from "../helpers/uvu.js";

/** A claims table over `blocks` blocks, and a demand queue standing in for the proxy's. */
function setup(blocks = 16) {
  const claims = new BlockClaims(new BlockBitmap(blocks));
  const queued: Claim[] = [];
  return { claims, queued, demand: (c: Claim) => void queued.push(c) };
}

/** Lets every settled promise's callbacks run. */
const turn = () => new Promise((r) => setImmediate(r));

/**
 * Watches a promise from its creation (so a rejection is never unhandled); `state()` says,
 * after letting settled callbacks run, whether it has settled and how.
 */
function watch<T>(p: Promise<T>): {
  p: Promise<T>;
  state(): Promise<"pending" | "resolved" | "rejected">;
} {
  let s: "pending" | "resolved" | "rejected" = "pending";
  p.then(
    () => {
      s = "resolved";
    },
    () => {
      s = "rejected";
    },
  );
  return {
    p,
    async state() {
      await turn();
      return s;
    },
  };
}

test("a read claims its missing blocks for one fetch; a second read of them shares it", async () => {
  const { claims, queued, demand } = setup();
  claims.bitmap.set(1);
  const a = watch(claims.ensureLocal(0, 2, demand));
  assert.equal(
    queued.map((c) => [c.block, c.kind]),
    [
      [0, "fetch"],
      [2, "fetch"],
    ],
    "block 1 is local: only 0 and 2 are claimed",
  );
  const b = watch(claims.ensureLocal(2, 2, demand));
  assert.is(queued.length, 2, "the second read claims nothing: it waits on block 2's fetch");
  const run = claims.claimRun(2, 1);
  assert.is(run[0], queued[1], "the fetch takes on the queued claim");
  claims.stored(run);
  assert.is(await b.state(), "resolved");
  assert.is(await a.state(), "pending", "block 0 is not stored yet");
  claims.stored(claims.claimRun(0, 1));
  assert.is(await a.state(), "resolved");
  assert.ok(claims.bitmap.hasAll(0, 2));
  assert.is(claims.count, 0);
});

test("a write waits for a fetch of its block, and a fetch never takes a block a write holds", async () => {
  const { claims, queued, demand } = setup();
  const read = watch(claims.ensureLocal(3, 3, demand));
  const fetch = claims.claimRun(3, 1); // in flight
  // A whole-block write arrives while the fetch runs: it must wait, not claim.
  const write = watch(claims.claimChange(3, 3, () => true, true, demand));
  assert.is(await write.state(), "pending", "the write waits for the fetch");
  claims.stored(fetch); // the fetch's data is in the cache
  assert.is(await read.state(), "resolved");
  const mine = await write.p;
  assert.equal(mine, [], "the block is local now: the write changes it without a claim");
  // The other order: the write holds a missing block, then a fetch of it is refused.
  const w2 = await claims.claimChange(5, 6, () => true, true, demand);
  assert.equal(
    w2.map((c) => [c.block, c.kind]),
    [
      [5, "change"],
      [6, "change"],
    ],
  );
  assert.throws(() => claims.claimRun(4, 3), /block 5 is held by a change/);
  assert.ok(!claims.isBusy(4), "a refused run claims nothing");
  const reader = watch(claims.ensureLocal(5, 5, demand));
  assert.is(queued.length, 1, "a read of a block being written waits for the write, fetches nothing");
  claims.stored(w2);
  assert.is(await reader.state(), "resolved");
  assert.throws(() => claims.claimRun(5, 1), /block 5 is local/, "a fetch never stores over a written block");
});

test("a partial write fetches its block first; whole blocks are claimed, never fetched", async () => {
  const { claims, queued, demand } = setup();
  // Blocks 7 and 9 partly, 8 wholly covered.
  const covers = (b: number) => b === 8;
  const w = watch(claims.claimChange(7, 9, covers, true, demand));
  assert.equal(
    queued.map((c) => c.block),
    [7, 9],
  );
  assert.is(claims.kind(8), "change");
  assert.is(await w.state(), "pending", "waits for the head and tail blocks");
  claims.stored(claims.claimRun(7, 1));
  claims.stored(claims.claimRun(9, 1));
  const mine = await w.p;
  assert.equal(
    mine.map((c) => c.block),
    [8],
  );
  claims.stored(mine);
  assert.ok(claims.bitmap.hasAll(7, 9));
  // Without fetchPartial (TRIM): partial blocks are left missing and unclaimed.
  const t = await claims.claimChange(10, 12, (b) => b === 11, false, demand);
  assert.equal(
    t.map((c) => c.block),
    [11],
  );
  assert.ok(!claims.isBusy(10) && !claims.isBusy(12));
  assert.is(queued.length, 2);
});

test("a failed fetch: its own readers fail, others look again and fetch anew", async () => {
  const { claims, queued, demand } = setup();
  const own = watch(claims.ensureLocal(0, 0, demand));
  // Another read of blocks 0-1: waits on 0's fetch, claims 1 itself.
  const other = watch(claims.ensureLocal(0, 1, demand));
  assert.equal(
    queued.map((c) => c.block),
    [0, 1],
  );
  const run0 = claims.claimRun(0, 1);
  claims.failed(run0, new BackendError("upstream gone", "EIO"));
  assert.is(await own.state(), "rejected", "the fetch's own reader fails");
  await own.p.catch((e) => assert.match(String(e), /upstream gone/));
  assert.ok(!claims.isBusy(0) && !claims.bitmap.has(0), "the block is free and missing again");
  claims.stored(claims.claimRun(1, 1)); // the other reader's own block arrives
  await turn();
  assert.equal(
    queued.map((c) => c.block),
    [0, 1, 0],
    "then the other reader looks again and claims block 0 anew",
  );
  claims.stored(claims.claimRun(0, 1));
  assert.is(await other.state(), "resolved");
});

test("a change that fails frees its blocks; one that is stored sets their bits", async () => {
  const { claims, demand } = setup();
  const c = await claims.claimChange(2, 3, () => true, true, demand);
  const waiting = watch(claims.ensureLocal(2, 2, demand));
  claims.failed(c, new Error("disk full"));
  assert.ok(!claims.isBusy(2) && !claims.bitmap.has(2));
  await turn();
  assert.is(claims.kind(2), "fetch", "the waiting reader fetches the block instead");
  assert.is(await waiting.state(), "pending");
  claims.stored(claims.claimRun(2, 1));
  assert.is(await waiting.state(), "resolved");
  assert.throws(() => claims.stored(c), /not held/, "a settled claim cannot be stored");
});

test("a fetch cannot take a block twice, and stored() only settles claims held", () => {
  const { claims, demand } = setup();
  void claims.ensureLocal(4, 4, demand);
  const run = claims.claimRun(4, 1);
  assert.throws(() => claims.claimRun(4, 1), /held by another fetch/);
  assert.throws(() => claims.claimFetch(4), /already claimed by a fetch/);
  claims.stored(run);
  assert.throws(() => claims.claimFetch(4), /block 4 is local/);
});

test("closed: no new claim of any kind (ESHUTDOWN); claims held settle and settled() sees them", async () => {
  const { claims, queued, demand } = setup();
  const reading = watch(claims.ensureLocal(0, 0, demand));
  const fetch = claims.claimRun(0, 1);
  const queuedOnly = watch(claims.ensureLocal(1, 1, demand)); // queued, not yet issued
  claims.close();
  assert.ok(claims.closed);
  for (const attempt of [
    () => claims.claimFetch(2),
    () => claims.claimRun(2, 1),
    () => claims.claimRun(1, 1), // the queued claim cannot be issued any more
  ])
    assert.throws(attempt, (e: unknown) => e instanceof BackendError && e.errno === "ESHUTDOWN");
  await claims.ensureLocal(3, 3, demand).then(
    () => assert.unreachable("a read after close must not claim"),
    (e: BackendError) => assert.is(e.errno, "ESHUTDOWN"),
  );
  await claims
    .claimChange(3, 3, () => true, true, demand)
    .then(
      () => assert.unreachable("a write after close must not claim"),
      (e: BackendError) => assert.is(e.errno, "ESHUTDOWN"),
    );
  assert.is(queued.length, 2, "nothing new was queued for fetching");
  const settled = watch(claims.settled());
  assert.is(await settled.state(), "pending", "the fetch in flight is still held");
  claims.stored(fetch);
  claims.failed([queued[1]], new BackendError("closed", "ESHUTDOWN"));
  assert.is(await settled.state(), "resolved");
  assert.is(await reading.state(), "resolved", "a fetch in flight at close still completes its read");
  assert.is(await queuedOnly.state(), "rejected");
});

test.run();
