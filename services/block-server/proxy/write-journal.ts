// Local changes a crash of the process must not undo. A block a client changed (WRITE,
// WRITE_ZEROES, TRIM) holds its data in the cache file at once, but its bit reaches the
// bitmap file only with the next FLUSH (or background persist): the bitmap may claim a block
// only once its data is durable, or a power cut could leave a bit without its data. Killed
// before that flush, a proxy would restart with the block missing and fetch the upstream's
// data over the acknowledged write, where a target export (whose writes sit in the page
// cache) keeps it. The NBD spec would allow that loss (only a FLUSH or FUA makes a write
// durable), but a VM whose block-server restarts under it keeps running with the old data in
// its own page cache, and has no crash of its own to recover from.
//
// So each change to a block whose bit is not yet durable writes that bit to this journal
// (pwrite, no fsync) after the change's data went into the cache and before the change is
// acknowledged. The page cache outlives the process: restarted in the same boot, every bit in
// the journal names a block whose cache data is the client's, and those blocks are local.
// After a reboot the page cache may have lost the data or the bit, so the journal is
// ignored: the blocks revert to the upstream's data, exactly what a target export's
// unflushed writes do on a power cut.
//
// File `${bitmap}.journal`: a 512-byte header, then one bit per block as in the bitmap:
//   0  magic "VMHOPJNL"   8 version u32 (1)   12 block size u32   16 disk size u64
//   24 boot id (36 bytes, /proc/sys/kernel/random/boot_id)
//   60 identity length u16   62 identity (UTF-8, as in the bitmap header)
import { readFileSync } from "node:fs";
import * as fsp from "node:fs/promises";
import { readU64, writeU64 } from "../nbd/protocol/index.js";
import { BitSet } from "./bit-set.js";
import { type BitmapHeader, blockCount, MAX_IDENTITY } from "./bitmap-file.js";
import { mismatch } from "./identity.js";

export const JOURNAL_MAGIC = "VMHOPJNL";
export const JOURNAL_VERSION = 1;
export const JOURNAL_HEADER_SIZE = 512;
const BOOT_ID_LENGTH = 36;

/** This boot's id, or undefined where the system has none (then no journal is kept). */
export function currentBootId(): string | undefined {
  try {
    const id = readFileSync("/proc/sys/kernel/random/boot_id", "latin1").trim();
    return id.length === BOOT_ID_LENGTH ? id : undefined;
  } catch {
    return undefined;
  }
}

function encodeHeader(h: BitmapHeader, bootId: string): Buffer {
  const id = Buffer.from(h.identity, "utf8");
  if (id.length > MAX_IDENTITY) throw new Error(`journal identity longer than ${MAX_IDENTITY} bytes`);
  const b = Buffer.alloc(JOURNAL_HEADER_SIZE);
  b.write(JOURNAL_MAGIC, 0, "latin1");
  b.writeUInt32BE(JOURNAL_VERSION, 8);
  b.writeUInt32BE(h.blockSize, 12);
  writeU64(b, h.size, 16);
  b.write(bootId, 24, BOOT_ID_LENGTH, "latin1");
  b.writeUInt16BE(id.length, 60);
  id.copy(b, 62);
  return b;
}

/** What an existing journal says at open. */
export type Recovered =
  /** Blocks changed before the crash, their data in the cache (same boot). */
  | { kind: "blocks"; bits: BitSet }
  /** Written in another boot: its blocks' data may be lost; ignored. */
  | { kind: "other-boot"; blocks: number }
  /** Not a journal of this disk (or damaged): ignored. */
  | { kind: "unusable"; why: string }
  | { kind: "none" };

function count(bits: Uint8Array): number {
  let n = 0;
  for (const x of bits) for (let v = x; v; v &= v - 1) n++;
  return n;
}

export class WriteJournal {
  /** Bits set in memory; those in the dirty range are not yet written. */
  private readonly bits: BitSet;
  private dirtyLo = Number.POSITIVE_INFINITY;
  private dirtyHi = 0;
  /** Writes are serial: a queued round takes every bit set before it starts. */
  private chain: Promise<void> = Promise.resolve();
  private queued: Promise<void> | undefined;
  private latest: Promise<void> = Promise.resolve();
  private outstanding = 0;

  private constructor(
    readonly path: string,
    private readonly fh: fsp.FileHandle,
    blocks: number,
    private readonly bootId: string,
  ) {
    this.bits = new BitSet(blocks);
  }

  /** Reads what a journal left at `path` says about the disk `header`, in boot `bootId`. */
  static async recover(path: string, header: BitmapHeader, bootId: string): Promise<Recovered> {
    let buf: Buffer;
    try {
      buf = await fsp.readFile(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return { kind: "none" };
      throw e;
    }
    const blocks = blockCount(header.size, header.blockSize);
    const want = JOURNAL_HEADER_SIZE + Math.ceil(blocks / 8);
    if (buf.length < JOURNAL_HEADER_SIZE || buf.toString("latin1", 0, 8) !== JOURNAL_MAGIC)
      return { kind: "unusable", why: "not a vmhop journal" };
    if (buf.readUInt32BE(8) !== JOURNAL_VERSION)
      return { kind: "unusable", why: `unsupported version ${buf.readUInt32BE(8)}` };
    const idLen = buf.readUInt16BE(60);
    const got = {
      blockSize: buf.readUInt32BE(12),
      size: readU64(buf, 16),
      identity: buf.toString("utf8", 62, 62 + Math.min(idLen, MAX_IDENTITY)),
    };
    const m = mismatch(header, got);
    if (m) return { kind: "unusable", why: `its ${m.field} ${m.got} is not the disk's ${m.want}` };
    if (buf.length !== want) return { kind: "unusable", why: `${buf.length} bytes, expected ${want}` };
    const bits = new BitSet(blocks, Uint8Array.from(buf.subarray(JOURNAL_HEADER_SIZE)));
    if (blocks % 8 !== 0) bits.bytes[bits.bytes.length - 1] &= (1 << (blocks % 8)) - 1;
    if (buf.toString("latin1", 24, 24 + BOOT_ID_LENGTH) !== bootId)
      return { kind: "other-boot", blocks: count(bits.bytes) };
    return { kind: "blocks", bits };
  }

  /** Creates (or empties) the journal for `header` in boot `bootId`. */
  static async create(path: string, header: BitmapHeader, bootId: string): Promise<WriteJournal> {
    const blocks = blockCount(header.size, header.blockSize);
    const fh = await fsp.open(path, "w");
    try {
      await fh.write(encodeHeader(header, bootId), 0, JOURNAL_HEADER_SIZE, 0);
      await fh.truncate(JOURNAL_HEADER_SIZE + Math.ceil(blocks / 8));
    } catch (e) {
      await fh.close();
      throw e;
    }
    return new WriteJournal(path, fh, blocks, bootId);
  }

  /**
   * Records blocks [first, last] as changed, except those `durable` says the bitmap file
   * already holds. Resolves once the record is in the file (the page cache); undefined when
   * nothing had to be written.
   */
  add(first: number, last: number, durable: (b: number) => boolean): Promise<void> | undefined {
    let added = false;
    for (let b = first; b <= last; b++) {
      if (durable(b) || !this.bits.set(b)) continue;
      added = true;
      const i = b >>> 3;
      if (i < this.dirtyLo) this.dirtyLo = i;
      if (i + 1 > this.dirtyHi) this.dirtyHi = i + 1;
    }
    // Bits set but not yet written (also those of a round that failed) go in the next round;
    // bits already on their way to the file: wait for the latest round.
    if (added || this.dirtyHi > 0) return this.schedule();
    return this.outstanding > 0 ? this.latest : undefined;
  }

  private schedule(): Promise<void> {
    if (this.queued) return this.queued;
    this.outstanding++;
    const round = this.chain
      .then(() => {
        this.queued = undefined;
        return this.writeDirty();
      })
      .finally(() => {
        this.outstanding--;
      });
    this.queued = round;
    this.latest = round;
    this.chain = round.catch(() => {});
    return round;
  }

  private async writeDirty(): Promise<void> {
    if (this.dirtyHi === 0) return;
    const lo = this.dirtyLo;
    const bytes = this.bits.bytes.slice(lo, this.dirtyHi);
    this.dirtyLo = Number.POSITIVE_INFINITY;
    this.dirtyHi = 0;
    try {
      await this.fh.write(bytes, 0, bytes.length, JOURNAL_HEADER_SIZE + lo);
    } catch (e) {
      this.dirtyLo = Math.min(this.dirtyLo, lo);
      this.dirtyHi = Math.max(this.dirtyHi, lo + bytes.length);
      throw e;
    }
  }

  /** The disk's identity changed (the bitmap header's, retaken): the journal's header follows. */
  setIdentity(header: BitmapHeader): Promise<void> {
    const round = this.chain.then(async () => {
      await this.fh.write(encodeHeader(header, this.bootId), 0, JOURNAL_HEADER_SIZE, 0);
    });
    this.chain = round.catch(() => {});
    return round;
  }

  async close(): Promise<void> {
    await this.chain;
    await this.fh.close();
  }
}
