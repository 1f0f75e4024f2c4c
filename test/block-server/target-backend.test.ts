// TargetBackend on its own: sparse reads, block status, trim and zeroing semantics, errors.
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { TargetBackend } from "../../services/block-server/export/target.js";
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from "../../services/block-server/nbd/protocol/index.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { makeImage, pattern } from "./fixtures/nbd.js";

const MiB = 1 << 20;
const HOLE = NBD_STATE_HOLE | NBD_STATE_ZERO;
const tmp = tempDir("vmhop-target-");
let n = 0;

function image(size: number, regions: [number, number][]): string {
  const p = join(tmp.path, `img${n++}.raw`);
  makeImage(p, size, regions);
  return p;
}

/** Allocated bytes on disk (st_blocks is in 512-byte units). */
const allocated = (p: string) => statSync(p).blocks * 512;

test.after(() => tmp.cleanup());

test("size and capabilities; read-only opens refuse nothing but advertise read-only", async () => {
  const p = image(3 * MiB, []);
  const t = new TargetBackend(p);
  assert.is(t.size, 3 * MiB);
  assert.ok(t.caps.multiConn && t.caps.trim && !t.caps.readOnly);
  await t.close();
  const r = new TargetBackend(p, { readOnly: true });
  assert.ok(r.caps.readOnly && !r.caps.trim && !r.caps.writeZeroes);
  await r.close();
  assert.throws(() => new TargetBackend(join(tmp.path, "missing")), /ENOENT/);
  assert.throws(() => new TargetBackend(tmp.path), /EISDIR|not a regular file/);
});

test("read returns the bytes of the image", async () => {
  const p = image(4 * MiB, [[MiB, MiB]]);
  const t = new TargetBackend(p);
  assert.ok((await t.read(MiB + 100, 5000)).equals(pattern(MiB + 100, 5000)));
  assert.ok((await t.read(0, 4096)).every((x) => x === 0));
  await t.close();
});

test("readSparse reports holes and merges small holes into data", async () => {
  const p = image(8 * MiB, [
    [MiB, MiB],
    [2 * MiB + 8192, 4096], // 8 KiB hole before it: read as data
    [6 * MiB, MiB],
  ]);
  const t = new TargetBackend(p);
  const pieces = await t.readSparse(0, 8 * MiB);
  const summary = pieces.map((x) =>
    "hole" in x ? ["hole", x.offset, x.hole] : ["data", x.offset, x.data.length],
  );
  assert.equal(summary, [
    ["hole", 0, MiB],
    ["data", MiB, MiB + 8192 + 4096],
    ["hole", 2 * MiB + 12288, 4 * MiB - 12288],
    ["data", 6 * MiB, MiB],
    ["hole", 7 * MiB, MiB],
  ]);
  const whole = readFileSync(p);
  for (const x of pieces)
    if ("data" in x) assert.ok(x.data.equals(whole.subarray(x.offset, x.offset + x.data.length)));
  // Fully allocated range: one data piece.
  const one = await t.readSparse(MiB + 10, 1000);
  assert.is(one.length, 1);
  assert.ok("data" in one[0] && one[0].data.equals(pattern(MiB + 10, 1000)));
  await t.close();
});

test("blockStatus covers the range with data and hole extents", async () => {
  const p = image(4 * MiB, [[MiB, MiB]]);
  const t = new TargetBackend(p);
  assert.equal(await t.blockStatus(0, 4 * MiB), [
    { length: MiB, flags: HOLE },
    { length: MiB, flags: 0 },
    { length: 2 * MiB, flags: HOLE },
  ]);
  assert.equal(await t.blockStatus(MiB + 4096, 4096), [{ length: 4096, flags: 0 }]);
  // A client's REQ_ONE: only the first extent is looked for, whole, whichever kind it is.
  assert.equal(await t.blockStatus(0, 4 * MiB, 1), [{ length: MiB, flags: HOLE }]);
  assert.equal(await t.blockStatus(MiB, 3 * MiB, 1), [{ length: MiB, flags: 0 }]);
  assert.equal(await t.blockStatus(0, 4 * MiB, 2), [
    { length: MiB, flags: HOLE },
    { length: MiB, flags: 0 },
  ]);
  await t.close();
});

test("trim punches a hole; writeZeroes punches unless NO_HOLE; data reads back as zero", async () => {
  const p = image(4 * MiB, [[0, 4 * MiB]]);
  const t = new TargetBackend(p);
  const full = allocated(p);
  await t.trim(0, MiB, false);
  assert.ok(allocated(p) <= full - MiB, "trim frees space");
  assert.ok((await t.read(0, MiB)).every((x) => x === 0));
  await t.writeZeroes(MiB, MiB, { fua: true, noHole: false, fastZero: true });
  assert.ok(allocated(p) <= full - 2 * MiB, "write zeroes punches");
  assert.equal((await t.blockStatus(MiB, MiB))[0].flags, HOLE);
  const before = allocated(p);
  await t.writeZeroes(2 * MiB, MiB, { fua: false, noHole: true, fastZero: false });
  assert.ok(allocated(p) >= before, "NO_HOLE keeps the range allocated");
  assert.ok((await t.read(2 * MiB, MiB)).every((x) => x === 0));
  assert.ok((await t.read(3 * MiB, MiB)).equals(pattern(3 * MiB, MiB)), "neighbours untouched");
  await t.close();
});

test("write with FUA, flush, and use after close", async () => {
  const p = image(MiB, []);
  const t = new TargetBackend(p);
  await t.write(4096, Buffer.alloc(4096, 0x42), true);
  await t.flush();
  await t.cache(0, MiB);
  assert.ok(
    readFileSync(p)
      .subarray(4096, 8192)
      .every((x) => x === 0x42),
  );
  await t.close();
  await t.close(); // idempotent
  let err: { errno?: string } = {};
  await t.read(0, 1).catch((e) => {
    err = e;
  });
  assert.is(err.errno, "ESHUTDOWN");
});

test("zero-copy ranges: data once known needs no new look, but a punched hole is seen at once", async () => {
  const p = image(2 * MiB, [[0, MiB]]);
  const t = new TargetBackend(p);
  await t.read(0, MiB); // into the page cache
  const first = t.cachedFileRange(0, 64 << 10);
  if (first === null) return; // no cachestat(2) here: the zero-copy path is never taken
  assert.ok(t.cachedFileRange(512 << 10, 64 << 10), "later in the same extent");
  assert.is(t.cachedFileRange(MiB - 4096, 8192), null, "runs into the hole after the data");
  await t.trim(128 << 10, 64 << 10, false);
  assert.is(t.cachedFileRange(128 << 10, 64 << 10), null, "the punched hole goes out as a hole");
  assert.is(t.cachedFileRange(64 << 10, 128 << 10), null, "a range across it too");
  assert.ok(t.cachedFileRange(0, 64 << 10), "data before it still by sendfile");
  await t.writeZeroes(256 << 10, 64 << 10, { fua: false, noHole: false, fastZero: false });
  assert.is(t.cachedFileRange(256 << 10, 64 << 10), null, "WRITE_ZEROES punched too");
  await t.close();
});

test.run();
