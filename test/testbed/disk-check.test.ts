// The whole-VM disk invariant (testbed/sites/disk-check.ts) on hand-made blocks and images:
// same, rewritten by the guest with a newer generation, bad, and missing (a proxy's hole).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { checkBlock, compareImages, WORKLOAD_BLOCK } from "../../testbed/sites/disk-check.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";

const dir = tempDir("vmhop-diskcheck-");
test.after(() => dir.cleanup());

/** The workload's block `index` at generation `gen` (its header; the rest as it likes). */
function guestBlock(index: number, gen: number): Buffer {
  const b = Buffer.alloc(WORKLOAD_BLOCK, 7);
  b.writeBigUInt64LE(0x766d686f70444953n, 0);
  b.writeBigUInt64LE(BigInt(index), 8);
  b.writeBigUInt64LE(BigInt(gen), 16);
  return b;
}
const random = (seed: number) => Buffer.alloc(WORKLOAD_BLOCK, seed);
const zero = () => Buffer.alloc(WORKLOAD_BLOCK);

test("a block: same, rewritten newer, and each way of being wrong", () => {
  assert.is(checkBlock(3, random(1), random(1)), "same");
  assert.is(checkBlock(3, guestBlock(3, 4), guestBlock(3, 5)), "rewritten");
  assert.is(checkBlock(3, random(1), guestBlock(3, 1)), "rewritten");
  assert.match(
    (checkBlock(3, guestBlock(3, 4), random(9)) as { bad: string }).bad,
    "not a block the guest wrote",
  );
  assert.match(
    (checkBlock(3, random(1), guestBlock(4, 9)) as { bad: string }).bad,
    "holds the guest's block 4",
  );
  assert.match((checkBlock(3, guestBlock(3, 4), guestBlock(3, 3)) as { bad: string }).bad, "not newer");
});

test("a hole where the source has data: bad, unless holes are allowed (then missing)", () => {
  assert.ok(typeof checkBlock(2, random(1), zero()) === "object");
  assert.is(checkBlock(2, random(1), zero(), true), "missing");
  assert.is(checkBlock(2, zero(), zero(), true), "same");
});

test("images: counts per verdict; missing only with holes", () => {
  const src = join(dir.path, "src.raw");
  const dst = join(dir.path, "dst.raw");
  writeFileSync(src, Buffer.concat([random(1), guestBlock(1, 2), random(3)]));
  writeFileSync(dst, Buffer.concat([random(1), guestBlock(1, 3), zero()]));
  const strict = compareImages(src, dst);
  assert.equal([strict.same, strict.rewritten, strict.badCount, strict.ok], [1, 1, 1, false]);
  const lenient = compareImages(src, dst, true);
  assert.equal([lenient.same, lenient.rewritten, lenient.missing, lenient.ok], [1, 1, 1, true]);
});

test.run();
