// The proxy's pure parts: bitmap, fetch planning, token bucket, copy order, latency, zero map.
import * as assert from "uvu/assert";
import { BitSet } from "../../services/block-server/proxy/bit-set.js";
import {
  BITMAP_HEADER_SIZE,
  decodeBitmapHeader,
  encodeBitmapHeader,
} from "../../services/block-server/proxy/bitmap-file.js";
import { BlockBitmap } from "../../services/block-server/proxy/block-bitmap.js";
import { CopyOrder } from "../../services/block-server/proxy/copy-order.js";
import { blockSpan, mergeRuns, runBytes, runFrom } from "../../services/block-server/proxy/fetch-plan.js";
import { LatencyRecorder } from "../../services/block-server/proxy/latency.js";
import { type Clock, TokenBucket } from "../../services/block-server/proxy/token-bucket.js";
import { ZeroMap } from "../../services/block-server/proxy/zero-map.js";
import { test } from "../helpers/uvu.js";

test("zero map: only whole blocks inside zero extents, the short last block, learning stops on silence", async () => {
  const ZERO = 2;
  const HOLE = 1;
  const m = new ZeroMap(10 * 1000 + 300, 1000); // 11 blocks, the last one 300 bytes
  // data [0,1500), zero [1500,4000), data [4000,5000), zero to the end
  const end = m.record(0, [
    { length: 1500, flags: 0 },
    { length: 2500, flags: ZERO | HOLE },
    { length: 1000, flags: 0 },
    { length: 99_999, flags: ZERO },
  ]);
  assert.is(end, 10_300, "extents past the end are clipped");
  const zero = Array.from({ length: 11 }, (_, b) => m.has(b));
  assert.equal(zero, [false, false, true, true, false, true, true, true, true, true, true]);
  assert.is(m.zeroBlocks, 8);
  // A hole without the zero flag says nothing about contents.
  const h = new ZeroMap(4000, 1000);
  h.record(0, [{ length: 4000, flags: HOLE }]);
  assert.is(h.zeroBlocks, 0);
  // Learning: one reply at a time, and an upstream that cannot say ends it without error.
  const asked: number[] = [];
  const l = new ZeroMap(4000, 1000);
  await l.learn(async (o) => {
    asked.push(o);
    return o === 0 ? [{ length: 2000, flags: ZERO }] : undefined;
  });
  assert.equal(asked, [0, 2000]);
  assert.is(l.learnedTo, 2000);
  assert.ok(l.has(0) && l.has(1) && !l.has(2));
  // Answering block status from it: zero blocks as holes, the rest (half-zero blocks too) data,
  // from any offset, at most `max` extents.
  assert.equal(m.extents(0, 10_300), [
    { length: 2000, flags: 0 },
    { length: 2000, flags: ZERO | HOLE },
    { length: 1000, flags: 0 },
    { length: 5300, flags: ZERO | HOLE },
  ]);
  assert.equal(m.extents(2500, 4100), [
    { length: 1500, flags: ZERO | HOLE },
    { length: 100, flags: 0 },
  ]);
  assert.equal(m.extents(500, 10_300, 2), [
    { length: 1500, flags: 0 },
    { length: 2000, flags: ZERO | HOLE },
  ]);
});

test("bitmap: set, count, nextMissing, dirty range, odd block counts", () => {
  const b = new BlockBitmap(21);
  assert.is(b.bits.length, 3);
  assert.is(b.nextMissing(0), 0);
  b.setRange(0, 17);
  b.set(3); // idempotent
  assert.is(b.local, 17);
  assert.is(b.nextMissing(0), 17);
  assert.equal(b.takeDirty()?.byteOffset, 0);
  assert.is(b.takeDirty(), null);
  b.set(20);
  const d = b.takeDirty()!;
  assert.is(d.byteOffset, 2);
  assert.equal([...d.bytes], [0b10001]);
  b.setRange(17, 3);
  assert.ok(b.complete);
  assert.is(b.nextMissing(0), -1);
  // Stray bits past the end in a loaded file do not count.
  const loaded = new BlockBitmap(10, new Uint8Array([0xff, 0xff]));
  assert.is(loaded.local, 10);
  assert.throws(() => new BlockBitmap(10, new Uint8Array(3)), /bitmap of 3 bytes for 10 blocks/);
});

test("bit set: fill and allSet agree with bit-by-bit truth across byte edges", () => {
  let seed = 7;
  const rnd = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  for (const size of [1, 7, 8, 9, 63, 64, 100, 1000]) {
    const s = new BitSet(size);
    const truth = new Array<boolean>(size).fill(false);
    for (let k = 0; k < 200; k++) {
      const first = rnd(size);
      const count = rnd(size - first) + 1;
      const value = rnd(3) !== 0;
      s.fill(value, first, count);
      truth.fill(value, first, first + count);
      const a = rnd(size);
      const b = a + rnd(size - a);
      assert.is(s.allSet(a, b), truth.slice(a, b + 1).every(Boolean), `size ${size} [${a}, ${b}]`);
    }
    for (let i = 0; i < size; i++) assert.is(s.has(i), truth[i], `size ${size} bit ${i}`);
    // Bits past the end stay clear, so a persisted copy holds nothing it should not.
    if (size % 8) assert.is(s.bytes[s.bytes.length - 1] >> (size % 8), 0);
  }
  assert.throws(() => new BitSet(9, new Uint8Array(1)), /1 bytes for 9 bits/);
});

test("bitmap header round-trips and rejects damage", () => {
  const h = { blockSize: 65536, size: 5 * 2 ** 40 + 7, identity: "sha256:abc" };
  const enc = encodeBitmapHeader(h);
  assert.is(enc.length, BITMAP_HEADER_SIZE);
  assert.equal(decodeBitmapHeader(enc, "f"), h);
  assert.throws(() => decodeBitmapHeader(enc.subarray(0, 100), "f"), /bitmap file f: too short/);
  const bad = Buffer.from(enc);
  bad.writeUInt32BE(2, 8);
  assert.throws(() => decodeBitmapHeader(bad, "f"), /unsupported version 2/);
  bad.writeUInt32BE(1, 8);
  bad.writeUInt32BE(1000, 12);
  assert.throws(() => decodeBitmapHeader(bad, "f"), /bad block size 1000/);
  assert.throws(() => encodeBitmapHeader({ ...h, identity: "x".repeat(300) }), /identity longer than 256/);
});

test("fetch planning merges adjacent blocks up to the request limit", () => {
  assert.equal(mergeRuns([1, 2, 3, 5, 6, 9], 32), [
    { first: 1, count: 3 },
    { first: 5, count: 2 },
    { first: 9, count: 1 },
  ]);
  assert.equal(mergeRuns([0, 1, 2, 3, 4], 2), [
    { first: 0, count: 2 },
    { first: 2, count: 2 },
    { first: 4, count: 1 },
  ]);
  assert.equal(mergeRuns([], 4), []);
  assert.throws(() => mergeRuns([1], 0), /maxBlocks/);
  const wanted = new Set([4, 5, 6, 8]);
  assert.equal(
    runFrom(4, 100, 32, (b) => wanted.has(b)),
    { first: 4, count: 3 },
  );
  assert.equal(
    runFrom(4, 6, 32, () => true),
    { first: 4, count: 2 },
  );
  // The last block of a disk that is not a multiple of the block size is short.
  assert.equal(runBytes({ first: 2, count: 2 }, 1000, 3500), { offset: 2000, length: 1500 });
  assert.equal(blockSpan(999, 2, 1000), { first: 0, last: 1 });
  assert.equal(blockSpan(1000, 1000, 1000), { first: 1, last: 1 });
});

function fakeClock(): Clock & { t: number; slept: number[] } {
  const c = {
    t: 0,
    slept: [] as number[],
    now: () => c.t,
    sleep: async (ms: number) => {
      c.slept.push(ms);
      c.t += ms;
    },
  };
  return c;
}

test("token bucket: burst, then the rate; runtime changes; 0 = unlimited", async () => {
  const clock = fakeClock();
  const b = new TokenBucket(1000, 500, clock);
  await b.take(500); // the burst
  assert.is(clock.t, 0);
  await b.take(1000); // debt of 1000 bytes
  await b.take(1);
  assert.is(clock.t, 1000, "waited for the debt at 1000 B/s");
  b.setRate(0);
  await b.take(1e9);
  assert.is(clock.t, 1000);
  b.setRate(100);
  await b.take(10_000);
  await b.take(1);
  assert.ok(clock.t >= 1000 + 99_000 - 1000, `rate 100 B/s took ${clock.t}`);
  assert.throws(() => b.setRate(-1), /rate limit must be >= 0/);
  assert.throws(() => new TokenBucket(Number.NaN), /rate limit/);
});

test("copy order: destination hot, then source hot, then the rest in order; skips local and busy", async () => {
  const bm = new BlockBitmap(100);
  bm.set(51);
  let srcCalls = 0;
  const order = new CopyOrder(bm, 1000, [
    () => [{ offset: 50_000, length: 3000 }], // blocks 50..52 at the destination
    async () => {
      srcCalls++;
      return [{ offset: 90_000, length: 1 }];
    },
    () => {
      throw new Error("source gone");
    },
  ]);
  await order.refresh();
  assert.is(srcCalls, 1);
  const busy = new Set([52]);
  const seq: number[] = [];
  for (let i = 0; i < 5; i++) {
    const b = order.next((x) => busy.has(x));
    seq.push(b);
    busy.add(b);
  }
  assert.equal(seq, [50, 90, 0, 1, 2]);
  // Everything local or busy: -1; once a busy block is released it is found again.
  for (let i = 0; i < 100; i++) if (!busy.has(i)) bm.set(i);
  assert.is(
    order.next((x) => busy.has(x)),
    -1,
  );
  busy.delete(52);
  assert.is(
    order.next((x) => busy.has(x)),
    52,
  );
});

test("latency summary", () => {
  const l = new LatencyRecorder(100);
  assert.equal(l.summary(), { p50Ms: 0, p99Ms: 0, maxMs: 0, count: 0 });
  for (let i = 1; i <= 200; i++) l.record(i);
  const s = l.summary();
  assert.is(s.count, 200);
  assert.is(s.maxMs, 200);
  assert.is(s.p50Ms, 151); // the window holds the last 100 samples
  assert.is(s.p99Ms, 200);
});

test.run();
