// The whole-VM disk invariant, checked on the images themselves: the destination's image equals
// the source's image as it was at the switch-over, except for blocks the guest wrote since, and
// each of those must be the test workload's own block for that index with a newer generation.
// (workload.c: 64 KiB blocks, words little-endian: magic "vmhopDIS", block index, generation.)
// A destination still missing blocks (a proxy's sparse cache: a block never fetched reads as
// zeroes) is checked on the blocks it holds, the all-zero ones counted as missing.
import { closeSync, openSync, readSync, statSync } from "node:fs";

export const WORKLOAD_BLOCK = 65536;
const DISK_MAGIC = 0x766d686f70444953n;

export type BlockVerdict = "same" | "rewritten" | "missing" | { bad: string };

function header(b: Buffer): { magic: bigint; index: bigint; gen: bigint } {
  return { magic: b.readBigUInt64LE(0), index: b.readBigUInt64LE(8), gen: b.readBigUInt64LE(16) };
}

const isZero = (b: Buffer) => b.every((x) => x === 0);

/**
 * One block: `src` as at the switch-over, `dst` at the destination now. With `holes`, an
 * all-zero `dst` block the source does not hold as zeroes is missing there (never fetched). Pure.
 */
export function checkBlock(index: number, src: Buffer, dst: Buffer, holes = false): BlockVerdict {
  if (src.equals(dst)) return "same";
  if (holes && isZero(dst)) return "missing";
  const d = header(dst);
  if (d.magic !== DISK_MAGIC) return { bad: "differs from the source and is not a block the guest wrote" };
  if (d.index !== BigInt(index)) return { bad: `holds the guest's block ${d.index}` };
  const s = header(src);
  const srcGen = s.magic === DISK_MAGIC && s.index === BigInt(index) ? s.gen : 0n;
  if (d.gen <= srcGen) return { bad: `generation ${d.gen} is not newer than the source's ${srcGen}` };
  return "rewritten";
}

export interface DiskComparison {
  blocks: number;
  same: number;
  /** Written by the guest after the switch-over. */
  rewritten: number;
  /** Not at the destination (compared with `holes`; otherwise such a block is bad). */
  missing?: number;
  /** The first few bad blocks, with why. */
  bad: { block: number; why: string }[];
  badCount: number;
  ok: boolean;
}

/**
 * Compares two images block by block (same size required). `holes`: the destination may still
 * miss blocks (a proxy's cache), counted in `missing` instead of bad.
 */
export function compareImages(srcPath: string, dstPath: string, holes = false): DiskComparison {
  const size = statSync(srcPath).size;
  const dstSize = statSync(dstPath).size;
  const r: DiskComparison = { blocks: 0, same: 0, rewritten: 0, bad: [], badCount: 0, ok: false };
  if (holes) r.missing = 0;
  if (size !== dstSize) {
    r.bad.push({ block: -1, why: `sizes differ: ${size} vs ${dstSize}` });
    r.badCount = 1;
    return r;
  }
  const [fs, fd] = [openSync(srcPath, "r"), openSync(dstPath, "r")];
  try {
    const a = Buffer.alloc(WORKLOAD_BLOCK);
    const b = Buffer.alloc(WORKLOAD_BLOCK);
    for (let off = 0, i = 0; off < size; off += WORKLOAD_BLOCK, i++) {
      const n = Math.min(WORKLOAD_BLOCK, size - off);
      readSync(fs, a, 0, n, off);
      readSync(fd, b, 0, n, off);
      const v = checkBlock(i, a.subarray(0, n), b.subarray(0, n), holes);
      r.blocks++;
      if (v === "same") r.same++;
      else if (v === "rewritten") r.rewritten++;
      else if (v === "missing") r.missing! += 1;
      else {
        r.badCount++;
        if (r.bad.length < 5) r.bad.push({ block: i, why: v.bad });
      }
    }
  } finally {
    closeSync(fs);
    closeSync(fd);
  }
  r.ok = r.badCount === 0;
  return r;
}
