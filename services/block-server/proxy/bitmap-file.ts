// The bitmap file beside the cache (<cache>.bitmap): a 512-byte header, then one bit per
// block (bit b of byte b>>3 = block b is local). Header, big-endian:
//   0  magic "VMHOPBMP"    8  version u32 (1)   12 block size u32   16 disk size u64
//   24 identity length u16  26 identity (UTF-8, at most 256 bytes: which upstream disk)
// Bits only ever go 0 -> 1, so a torn write leaves a mix of two snapshots, each of which
// was saved only after the cache data it claims was made durable: still safe.
import * as fsp from "node:fs/promises";
import { readU64, writeU64 } from "../nbd/protocol/index.js";
import { BitSet } from "./bit-set.js";
import { BlockBitmap } from "./block-bitmap.js";
import { mismatch } from "./identity.js";

const LABELS = { size: "disk size", blockSize: "block size", identity: "upstream disk identity" } as const;

export const BITMAP_MAGIC = "VMHOPBMP";
export const BITMAP_VERSION = 1;
export const BITMAP_HEADER_SIZE = 512;
export const MAX_IDENTITY = 256;

export interface BitmapHeader {
  blockSize: number;
  size: number;
  identity: string;
}

export class BitmapFileError extends Error {
  constructor(path: string, why: string) {
    super(`bitmap file ${path}: ${why}`);
    this.name = "BitmapFileError";
  }
}

export function blockCount(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}

export function encodeBitmapHeader(h: BitmapHeader): Buffer {
  const id = Buffer.from(h.identity, "utf8");
  if (id.length > MAX_IDENTITY) throw new Error(`bitmap identity longer than ${MAX_IDENTITY} bytes`);
  const b = Buffer.alloc(BITMAP_HEADER_SIZE);
  b.write(BITMAP_MAGIC, 0, "latin1");
  b.writeUInt32BE(BITMAP_VERSION, 8);
  b.writeUInt32BE(h.blockSize, 12);
  writeU64(b, h.size, 16);
  b.writeUInt16BE(id.length, 24);
  id.copy(b, 26);
  return b;
}

/** Parses a header; `what` names the file in errors. */
export function decodeBitmapHeader(b: Buffer, what: string): BitmapHeader {
  if (b.length < BITMAP_HEADER_SIZE)
    throw new BitmapFileError(what, `too short for a header (${b.length} bytes)`);
  if (b.toString("latin1", 0, 8) !== BITMAP_MAGIC)
    throw new BitmapFileError(what, "bad magic (not a vmhop bitmap)");
  const version = b.readUInt32BE(8);
  if (version !== BITMAP_VERSION) throw new BitmapFileError(what, `unsupported version ${version}`);
  const blockSize = b.readUInt32BE(12);
  if (blockSize < 512 || (blockSize & (blockSize - 1)) !== 0)
    throw new BitmapFileError(what, `bad block size ${blockSize}`);
  const idLen = b.readUInt16BE(24);
  if (idLen > MAX_IDENTITY) throw new BitmapFileError(what, "identity too long");
  return { blockSize, size: readU64(b, 16), identity: b.toString("utf8", 26, 26 + idLen) };
}

export class BitmapFile {
  /** Blocks whose bits are on disk (saved after their data was made durable). */
  private readonly durable: BitSet;

  private constructor(
    readonly path: string,
    readonly header: BitmapHeader,
    private readonly fh: fsp.FileHandle,
    readonly bitmap: BlockBitmap,
  ) {
    this.durable = new BitSet(bitmap.blocks, Uint8Array.from(bitmap.bits));
  }

  /** Block b's bit is durable: a crash of the machine (not only the process) keeps it local. */
  isDurable(b: number): boolean {
    return this.durable.has(b);
  }

  /** Creates (or replaces) the file with every block missing, durably. */
  static async create(path: string, header: BitmapHeader): Promise<BitmapFile> {
    const bitmap = new BlockBitmap(blockCount(header.size, header.blockSize));
    const fh = await fsp.open(path, "w+");
    try {
      await fh.write(encodeBitmapHeader(header), 0, BITMAP_HEADER_SIZE, 0);
      await fh.write(Buffer.from(bitmap.bits.buffer), 0, bitmap.bits.length, BITMAP_HEADER_SIZE);
      await fh.sync();
    } catch (e) {
      await fh.close();
      throw e;
    }
    return new BitmapFile(path, header, fh, bitmap);
  }

  /** Opens an existing file; refuses a wrong magic, size, block size or identity. */
  static async open(path: string, expect: Partial<BitmapHeader>): Promise<BitmapFile> {
    const fh = await fsp.open(path, "r+");
    try {
      const st = await fh.stat();
      const head = Buffer.alloc(BITMAP_HEADER_SIZE);
      const { bytesRead } = await fh.read(head, 0, BITMAP_HEADER_SIZE, 0);
      const header = decodeBitmapHeader(head.subarray(0, bytesRead), path);
      // The same comparison a reconnect makes (identity.ts), here against the saved header.
      const m = mismatch(expect, header);
      if (m)
        throw new BitmapFileError(
          path,
          `${LABELS[m.field]} ${JSON.stringify(m.got)} does not match ${JSON.stringify(m.want)}; ` +
            "it belongs to another disk (remove it and the cache to start over)",
        );
      const blocks = blockCount(header.size, header.blockSize);
      const want = BITMAP_HEADER_SIZE + Math.ceil(blocks / 8);
      if (st.size !== want)
        throw new BitmapFileError(
          path,
          `file is ${st.size} bytes, expected ${want} for ${blocks} blocks (truncated?)`,
        );
      const bits = new Uint8Array(want - BITMAP_HEADER_SIZE);
      await fh.read(bits, 0, bits.length, BITMAP_HEADER_SIZE);
      return new BitmapFile(path, header, fh, new BlockBitmap(blocks, bits));
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Reads just the header (e.g. to learn the block size before opening). */
  static async peekHeader(path: string): Promise<BitmapHeader> {
    const fh = await fsp.open(path, "r");
    try {
      const head = Buffer.alloc(BITMAP_HEADER_SIZE);
      const { bytesRead } = await fh.read(head, 0, BITMAP_HEADER_SIZE, 0);
      return decodeBitmapHeader(head.subarray(0, bytesRead), path);
    } finally {
      await fh.close();
    }
  }

  /**
   * Makes the bits set so far durable. The snapshot of changed bits is taken first, then
   * `syncData` makes the cache durable, and only then are the bits written: the file never
   * claims a block whose data might still be lost.
   */
  async persist(syncData: () => Promise<void>): Promise<void> {
    const d = this.bitmap.takeDirty();
    try {
      await syncData();
      if (!d) return;
      await this.fh.write(d.bytes, 0, d.bytes.length, BITMAP_HEADER_SIZE + d.byteOffset);
      await this.fh.datasync();
      const bytes = this.durable.bytes;
      for (let i = 0; i < d.bytes.length; i++) bytes[d.byteOffset + i] |= d.bytes[i];
    } catch (e) {
      if (d) this.bitmap.markDirty(d.byteOffset, d.bytes.length);
      throw e;
    }
  }

  /** Records another identity for the upstream disk (its content changed while still the same disk), durably. */
  async setIdentity(identity: string): Promise<void> {
    await this.fh.write(encodeBitmapHeader({ ...this.header, identity }), 0, BITMAP_HEADER_SIZE, 0);
    await this.fh.datasync();
    this.header.identity = identity;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}
