// Proxy semantics against a slow upstream (every read takes 200 ms), so requests really
// overlap: shared fetches, writes racing fetches, TRIM/WRITE_ZEROES, block status, cache.
import { randomBytes } from "node:crypto";
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from "../../services/block-server/nbd/protocol/index.js";
import { ProxyBackend } from "../../services/block-server/proxy/proxy-backend.js";
import { silentLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { makeImage, type RunningServer, startNbdkit } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-proxyrace-");
const SIZE = 4 << 20;
const BS = 65536;
let up: RunningServer;
/** The same image, exported read-only: its zero blocks cannot change under the proxy. */
let upRo: RunningServer;
let data: Buffer;
let n = 0;
const t = gate(test, ["nbdkit"], "proxy races against a slow upstream");

t.before(async () => {
  const image = join(dir.path, "a.img");
  data = makeImage(image, SIZE);
  // A real hole at [2 MiB, 3 MiB): the upstream reports it as zero.
  data.fill(0, 2 << 20, 3 << 20);
  const fd = openSync(image, "w");
  writeSync(fd, data, 0, 2 << 20, 0);
  writeSync(fd, data, 3 << 20, 1 << 20, 3 << 20);
  ftruncateSync(fd, SIZE);
  closeSync(fd);
  up = await startNbdkit("file", [image, "rdelay=200ms"], { filters: ["delay"] });
  upRo = await startNbdkit("file", [image, "rdelay=200ms"], { filters: ["delay"], extra: ["-r"] });
});
t.after(async () => {
  await up?.stop();
  await upRo?.stop();
  dir.cleanup();
});

const opened: ProxyBackend[] = [];
async function open(upstreamUrl = up.url): Promise<ProxyBackend> {
  const p = await ProxyBackend.open({
    upstreamUrl,
    cachePath: join(dir.path, `c${n++}`),
    log: silentLogger,
  });
  opened.push(p);
  return p;
}
t.after.each(async () => {
  for (const p of opened.splice(0)) await p.close();
});

t("concurrent reads of the same blocks share one fetch; adjacent misses merge", async () => {
  const p = await open();
  await p.dataReady();
  const reads = [p.read(0, 4096), p.read(100, 5000), p.read(BS - 10, 20), p.read(BS, BS), p.read(2 * BS, 10)];
  const got = await Promise.all(reads);
  assert.ok(got[1].equals(data.subarray(100, 5100)));
  assert.ok(got[2].equals(data.subarray(BS - 10, BS + 10)));
  const s = p.stats();
  assert.is(s.bytesFetchedOnDemand, 3 * BS, "blocks 0..2 fetched once");
  assert.ok(s.upstream.zeroCopy, "fetched over the zero-copy data connection");
  assert.is(s.fetchLatency.count, 1, "in one upstream request");
  assert.ok(s.fetchLatency.p50Ms >= 150, "the upstream's delay is in the latency");
});

t("a write racing a fetch of the same block wins, full or partial", async () => {
  const p = await open();
  const fetching = p.read(10 * BS, BS); // fetch of block 10 now in flight
  const w = randomBytes(BS);
  await p.write(10 * BS, w, false);
  const first = await fetching;
  // The read began before the write: either version is allowed for it, nothing else.
  assert.ok(first.equals(w) || first.equals(data.subarray(10 * BS, 11 * BS)));
  assert.ok((await p.read(10 * BS, BS)).equals(w), "the late fetch did not overwrite the write");
  // Partial write to a missing block: head and tail come from upstream.
  const pw = randomBytes(1000);
  const racing = p.read(20 * BS, BS);
  await p.write(20 * BS + 500, pw, false);
  await racing;
  const want = Buffer.from(data.subarray(20 * BS, 21 * BS));
  pw.copy(want, 500);
  assert.ok((await p.read(20 * BS, BS)).equals(want));
  // Full-block write without any fetch: nothing fetched for it.
  const before = p.stats().bytesFetchedOnDemand;
  await p.write(30 * BS, randomBytes(2 * BS), true);
  assert.is(p.stats().bytesFetchedOnDemand, before);
  assert.ok(p.bitmap.has(30) && p.bitmap.has(31));
  assert.is(p.stats().bytesWrittenLocally, BS + 1000 + 2 * BS);
});

t("reads across fetches, next to local blocks, then a write wins", async () => {
  const p = await open();
  const slice = (b: number, n: number) => data.subarray(b * BS, (b + n) * BS);
  // Blocks 52-53 are fetched together; a read of 53-54 a turn later joins that fetch for 53
  // and fetches 54 itself: it is answered once both fetches are stored.
  const a = p.read(52 * BS + 7, 2 * BS - 7);
  await new Promise((r) => setImmediate(r));
  const b = p.read(53 * BS, 2 * BS);
  assert.ok((await a).equals(data.subarray(52 * BS + 7, 54 * BS)));
  assert.ok((await b).equals(slice(53, 2)));
  // Half local, half missing: served once both are local.
  await p.read(56 * BS, BS);
  assert.ok((await p.read(56 * BS + 100, BS)).equals(data.subarray(56 * BS + 100, 57 * BS + 100)));
  // A write right after a read of a just-fetched block wins, and a read issued with it sees
  // the old or the new block, never a mix; a read of a block being written waits for it.
  const got = await p.read(60 * BS, BS);
  assert.ok(got.equals(slice(60, 1)));
  const w = randomBytes(BS);
  const writing = p.write(60 * BS, w, false);
  const during = p.read(60 * BS, BS);
  await writing;
  const seen = await during;
  assert.ok(seen.equals(w) || seen.equals(slice(60, 1)));
  assert.ok((await p.read(60 * BS, BS)).equals(w), "the fetch's store did not overwrite the write");
  const w2 = randomBytes(BS);
  const claimed = p.write(62 * BS, w2, false); // whole block: claimed, never fetched
  assert.ok((await p.read(62 * BS, BS)).equals(w2), "a read of a block being written waits for it");
  await claimed;
  await p.flush();
  assert.ok(p.bitmap.has(52) && p.bitmap.has(53) && p.bitmap.has(54) && p.bitmap.has(60));
});

t(
  "a read is answered once its blocks are stored: the cache file holds them, the bitmap says so",
  async () => {
    const p = await open();
    const [piece] = await p.readSparse!(4 * BS, 2 * BS);
    assert.ok("data" in piece && piece.data.equals(data.subarray(4 * BS, 6 * BS)));
    assert.ok(p.bitmap.has(4) && p.bitmap.has(5));
    const cache = readFileSync(p.cachePath);
    assert.ok(cache.subarray(4 * BS, 6 * BS).equals(data.subarray(4 * BS, 6 * BS)), "spliced into the cache");
    assert.ok(cache.subarray(6 * BS, 8 * BS).equals(Buffer.alloc(2 * BS)), "nothing else written");
  },
);

t("a read-only upstream's zero blocks are never fetched: they become local holes", async () => {
  const p = await open(upRo.url);
  assert.ok(p.stats().upstream.zeroesTrusted, "a read-only export's holes stay holes");
  const z = await p.read((2 << 20) + BS, 3 * BS);
  assert.ok(z.equals(Buffer.alloc(3 * BS)));
  assert.is(p.stats().bytesFetchedOnDemand, 0, "nothing crossed for the zero blocks");
  assert.ok(p.bitmap.has(33) && p.bitmap.has(34) && p.bitmap.has(35));
  assert.equal(await p.blockStatus((2 << 20) + BS, 3 * BS), [
    { length: 3 * BS, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
  ]);
  // A read across the edge fetches only the data block.
  const edge = await p.read((2 << 20) - BS, 2 * BS);
  assert.ok(edge.equals(data.subarray((2 << 20) - BS, (2 << 20) + BS)));
  assert.is(p.stats().bytesFetchedOnDemand, BS);
});

t("TRIM and WRITE_ZEROES work locally and mark blocks local; CACHE fetches", async () => {
  const p = await open();
  await p.writeZeroes(5 * BS + 100, 3 * BS, { fua: false, noHole: false, fastZero: false });
  const z = await p.read(5 * BS, 4 * BS);
  const want = Buffer.from(data.subarray(5 * BS, 9 * BS));
  want.fill(0, 100, 100 + 3 * BS);
  assert.ok(z.equals(want));
  await p.trim(40 * BS + 1, 3 * BS, false); // whole blocks 41, 42 only
  assert.ok(p.bitmap.has(41) && p.bitmap.has(42));
  assert.not.ok(p.bitmap.has(40) || p.bitmap.has(43));
  assert.ok((await p.read(41 * BS, BS)).equals(Buffer.alloc(BS)), "trimmed blocks are local holes");
  await p.cache(50 * BS, 2 * BS);
  assert.ok(p.bitmap.has(50) && p.bitmap.has(51));
});

t("block status: local holes and data from the cache, missing ranges from upstream", async () => {
  const p = await open();
  await p.read(0, BS); // data, local
  await p.read(2 << 20, BS); // zeroes from upstream: stored as a hole
  const local = await p.blockStatus(2 << 20, BS);
  assert.equal(local, [{ length: BS, flags: NBD_STATE_HOLE | NBD_STATE_ZERO }]);
  assert.equal(await p.blockStatus(0, BS), [{ length: BS, flags: 0 }]);
  const missing = await p.blockStatus((2 << 20) + BS, 4 * BS);
  assert.ok(missing.length >= 1);
  assert.ok(missing[0].flags & NBD_STATE_ZERO, "upstream says the missing zero range reads as zeroes");
  const total = (await p.blockStatus(0, SIZE)).reduce((a, e) => a + e.length, 0);
  assert.ok(total > 0 && total <= SIZE);
  // REQ_ONE: one extent, starting at the offset, the first one of the full answer or shorter.
  const all = await p.blockStatus(0, SIZE);
  const [first, ...rest] = await p.blockStatus(0, SIZE, 1);
  assert.is(rest.length, 0);
  assert.is(first.flags, all[0].flags);
  assert.ok(first.length > 0 && first.length <= all[0].length);
});

t(
  "block status of ranges learned from a read-only upstream needs no round trip: it answers with the upstream gone",
  async () => {
    const image = join(dir.path, "z.img");
    const own = Buffer.alloc(SIZE);
    data.copy(own, 0, 0, 1 << 20); // data in [0, 1 MiB), zeroes (a hole) after
    const fd = openSync(image, "w");
    writeSync(fd, own, 0, 1 << 20, 0);
    ftruncateSync(fd, SIZE);
    closeSync(fd);
    const upstream = await startNbdkit("file", [image], { extra: ["-r"] });
    const p = await ProxyBackend.open({
      upstreamUrl: upstream.url,
      cachePath: join(dir.path, `c${n++}`),
      log: silentLogger,
      retryWindowMs: 200,
    });
    opened.push(p);
    await p.settled(); // the zero map is learned at open (one reply covers this disk)
    await upstream.kill(); // (a polite stop would wait for the proxy to hang up)
    assert.equal(await p.blockStatus(0, SIZE), [
      { length: 1 << 20, flags: 0 },
      { length: SIZE - (1 << 20), flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
    ]);
    assert.equal(await p.blockStatus(BS, SIZE - BS, 1), [{ length: (1 << 20) - BS, flags: 0 }]);
  },
);

t.run();
