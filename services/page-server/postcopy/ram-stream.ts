// Codec of the pages QEMU 7.2 sends a destination, incremental over bytes: it says which RAM
// page passed and when. Two shapes, checked against bytes from the real QEMU here:
// - the main stream (savevm.c): "QEVM" be32 3, the configuration section, then sections and
//   commands. Only RAM's sections are followed (their content is self-delimiting); commands
//   are length-prefixed (MIG_CMD_PACKAGED = 7: be32 length, then the device state, skipped
//   whole). A non-iterative section (SECTION_FULL: a pre-copy's end) or EOF ends the pages.
// - the urgent lane (postcopy-preempt): RAM records only, from its first byte.
//
//   section: u8 type: 1 START (be32 id, u8 idlen, idstr, be32 instance, be32 version, content),
//            2 PART / 3 END (be32 id, content), 4 FULL, 0 EOF, 8 COMMAND (be16 cmd, be16 len,
//            data), 0x7e FOOTER (be32 id); configuration: 7, be32 len, name, then subsections
//            (5, u8 len, name, be32 version, fields)
//   RAM record (ram.c): be64 offset|flags; flags ZERO 0x02 (u8 fill), MEM_SIZE 0x04 (block
//            list: u8 idlen, idstr, be64 length, [be64 address with x-ignore-shared]…), PAGE
//            0x08 (4 KiB), EOS 0x10 (end of the section's content), CONTINUE 0x20 (same block
//            as the last record on this channel, else u8 idlen + idstr follow the header),
//            XBZRLE 0x40 (u8, be16 len, data), COMPRESS_PAGE 0x100 (be32 len, data)
// Huge-page RAM blocks (a page size other than the host's in the block list) are not
// followed: the block list does not say which block has one (a QemuStreamError then).
import { be64, QemuStreamError, StepReader } from "./step-reader.js";

/** x86's TARGET_PAGE_SIZE; the post-copy advise command must agree. */
export const PAGE_SIZE = 4096;

const QEVM = 0x5145564d;
const FILE_VERSION = 3;

export enum Section {
  Eof = 0,
  Start = 1,
  Part = 2,
  End = 3,
  Full = 4,
  Subsection = 5,
  Configuration = 7,
  Command = 8,
  Footer = 0x7e,
}

const CMD_POSTCOPY_ADVISE = 3;
const CMD_PACKAGED = 7;

export const Flag = {
  Zero: 0x02,
  MemSize: 0x04,
  Page: 0x08,
  Eos: 0x10,
  Continue: 0x20,
  Xbzrle: 0x40,
  CompressPage: 0x100,
} as const;
const PAGE_FLAGS = Flag.Zero | Flag.Page | Flag.Xbzrle | Flag.CompressPage;
const FLAG_MASK = PAGE_SIZE - 1;

export interface PageEvents {
  /** Each page as its header passes (its data follows at once). */
  page(block: string, offset: number): void;
  /** The main stream's device-state package passed: post-copy runs from here. */
  switched?(): void;
}

enum S {
  FileHeader,
  SectionType,
  ConfigLength,
  ConfigName,
  AfterConfig,
  SubsectionLength,
  SubsectionName,
  SubsectionBody,
  CapabilityCount,
  CapabilityLength,
  CapabilityName,
  StartHead,
  StartIdstr,
  SectionId,
  CommandHead,
  PackageLength,
  AdviseBody,
  FooterId,
  RecordHead,
  RecordIdLen,
  RecordIdstr,
  ZeroFill,
  CompressLength,
  XbzrleHead,
  BlockIdLen,
  BlockEntry,
  BlockAddress,
  Done,
}

export class RamStreamDecoder extends StepReader {
  private s: S;
  /** Section ids of RAM ("ram" sections; any other iterative section is not followed). */
  private readonly ramSections = new Set<number>();
  private block: string | undefined;
  private flags = 0;
  private offsetInBlock = 0;
  private memLeft = 0;
  private capsLeft = 0;
  private sectionId = 0;
  private ignoreShared = false;
  /** Whether the main stream's EOF or end of pages was reached. */
  done = false;

  /** `main`: the migration stream from its first byte; else the urgent lane's records. */
  constructor(
    private readonly main: boolean,
    private readonly on: PageEvents,
  ) {
    super(8);
    this.s = main ? S.FileHeader : S.RecordHead;
  }

  private fail(what: string): never {
    throw new QemuStreamError(
      `${this.main ? "migration stream" : "urgent lane"}: ${what} (offset ${this.offset})`,
    );
  }

  /** Moves to state `s`, which reads `n` bytes. */
  private go(s: S, n: number): number {
    this.s = s;
    return n;
  }

  protected step(b: Buffer): number {
    switch (this.s) {
      case S.FileHeader:
        if (b.readUInt32BE(0) !== QEVM) this.fail("no QEVM magic");
        if (b.readUInt32BE(4) !== FILE_VERSION)
          this.fail(`file version ${b.readUInt32BE(4)}, not ${FILE_VERSION}`);
        return this.go(S.SectionType, 1);
      case S.SectionType:
        return this.section(b[0]!);
      case S.ConfigLength:
        return this.go(S.ConfigName, b.readUInt32BE(0));
      case S.ConfigName:
        return this.go(S.AfterConfig, 1);
      case S.AfterConfig:
        if (b[0] !== Section.Subsection) return this.section(b[0]!);
        return this.go(S.SubsectionLength, 1);
      case S.SubsectionLength:
        return this.go(S.SubsectionName, b[0]! + 4); // name, be32 version
      case S.SubsectionName:
        return this.subsectionBody(b.toString("latin1", 0, b.length - 4));
      case S.SubsectionBody:
        return this.go(S.AfterConfig, 1);
      case S.CapabilityCount:
        this.capsLeft = b.readUInt32BE(0);
        return this.nextCapability();
      case S.CapabilityLength:
        return this.go(S.CapabilityName, b[0]!);
      case S.CapabilityName:
        if (b.toString("latin1") === "x-ignore-shared") this.ignoreShared = true;
        this.capsLeft--;
        return this.nextCapability();
      case S.StartHead:
        this.sectionId = b.readUInt32BE(0);
        return this.go(S.StartIdstr, b[4]! + 8); // idstr, be32 instance, be32 version
      case S.StartIdstr: {
        const idstr = b.toString("latin1", 0, b.length - 8);
        if (idstr !== "ram") this.fail(`iterative section "${idstr}" is not followed`);
        this.ramSections.add(this.sectionId);
        return this.go(S.RecordHead, 8);
      }
      case S.SectionId: {
        const id = b.readUInt32BE(0);
        if (!this.ramSections.has(id)) this.fail(`section ${id} is not a RAM section`);
        return this.go(S.RecordHead, 8);
      }
      case S.CommandHead: {
        const cmd = b.readUInt16BE(0);
        const len = b.readUInt16BE(2);
        if (cmd === CMD_PACKAGED) {
          if (len !== 4) this.fail(`package command of ${len} bytes`);
          return this.go(S.PackageLength, 4);
        }
        if (cmd === CMD_POSTCOPY_ADVISE && len === 16) return this.go(S.AdviseBody, 16);
        this.skip(len);
        return this.go(S.SectionType, 1);
      }
      case S.PackageLength:
        this.skip(b.readUInt32BE(0));
        this.on.switched?.();
        return this.go(S.SectionType, 1);
      case S.AdviseBody: {
        const targetPage = be64(b, 8);
        if (targetPage !== PAGE_SIZE) this.fail(`target page size ${targetPage}, not ${PAGE_SIZE}`);
        return this.go(S.SectionType, 1);
      }
      case S.FooterId:
        return this.go(S.SectionType, 1);
      case S.RecordHead:
        return this.record(b);
      case S.RecordIdLen:
        if (b[0] === 0) this.fail("RAM record naming an empty block");
        return this.go(S.RecordIdstr, b[0]!);
      case S.RecordIdstr:
        this.block = b.toString("latin1");
        return this.page();
      case S.ZeroFill:
        return this.go(S.RecordHead, 8);
      case S.CompressLength:
        this.skip(b.readUInt32BE(0));
        return this.go(S.RecordHead, 8);
      case S.XbzrleHead:
        this.skip(b.readUInt16BE(1));
        return this.go(S.RecordHead, 8);
      case S.BlockIdLen:
        return this.go(S.BlockEntry, b[0]! + 8); // idstr, be64 used length
      case S.BlockEntry:
        this.memLeft -= be64(b, b.length - 8);
        if (this.ignoreShared) return this.go(S.BlockAddress, 8);
        return this.nextBlock();
      case S.BlockAddress:
        return this.nextBlock();
      case S.Done:
        this.skip(Number.POSITIVE_INFINITY);
        return 1;
    }
  }

  private section(type: number): number {
    switch (type) {
      case Section.Configuration:
        return this.go(S.ConfigLength, 4);
      case Section.Start:
        return this.go(S.StartHead, 5);
      case Section.Part:
      case Section.End:
        return this.go(S.SectionId, 4);
      case Section.Command:
        return this.go(S.CommandHead, 4);
      case Section.Footer:
        return this.go(S.FooterId, 4);
      case Section.Full:
      case Section.Eof:
        // No more pages on this stream (device state, or the end).
        this.done = true;
        this.s = S.Done;
        this.skip(Number.POSITIVE_INFINITY);
        return 1;
      default:
        this.fail(`unknown section type ${type}`);
    }
  }

  /** The configuration's subsections (savevm.c vmstate_configuration). */
  private subsectionBody(name: string): number {
    switch (name) {
      case "configuration/target-page-bits":
        return this.go(S.SubsectionBody, 4);
      case "configuration/uuid":
        return this.go(S.SubsectionBody, 16);
      case "configuration/capabilities":
        return this.go(S.CapabilityCount, 4);
      default:
        this.fail(`unknown configuration subsection "${name}"`);
    }
  }

  private nextCapability(): number {
    if (this.capsLeft > 0) return this.go(S.CapabilityLength, 1);
    return this.go(S.AfterConfig, 1);
  }

  private nextBlock(): number {
    if (this.memLeft > 0) return this.go(S.BlockIdLen, 1);
    if (this.memLeft < 0) this.fail("RAM block list longer than its total");
    return this.go(S.RecordHead, 8);
  }

  private record(b: Buffer): number {
    const lo = b.readUInt32BE(4);
    const flags = lo & FLAG_MASK;
    this.flags = flags;
    this.offsetInBlock = b.readUInt32BE(0) * 0x1_0000_0000 + (lo - flags);
    if (flags & Flag.MemSize) {
      this.memLeft = this.offsetInBlock;
      return this.nextBlock();
    }
    if (flags === Flag.Eos) {
      // The urgent lane goes on with records; the main stream returns to its sections.
      if (this.main) return this.go(S.SectionType, 1);
      return this.go(S.RecordHead, 8);
    }
    const kind = flags & ~Flag.Continue;
    if (kind !== Flag.Zero && kind !== Flag.Page && kind !== Flag.Xbzrle && kind !== Flag.CompressPage)
      this.fail(`RAM record with flags 0x${flags.toString(16)}`);
    if (flags & Flag.Continue) {
      if (this.block === undefined) this.fail("RAM record continuing no block");
      return this.page();
    }
    return this.go(S.RecordIdLen, 1);
  }

  /** The page's header has passed: report it, then step over its data. */
  private page(): number {
    this.on.page(this.block!, this.offsetInBlock);
    switch (this.flags & PAGE_FLAGS) {
      case Flag.Zero:
        return this.go(S.ZeroFill, 1);
      case Flag.Page:
        this.skip(PAGE_SIZE);
        return this.go(S.RecordHead, 8);
      case Flag.CompressPage:
        return this.go(S.CompressLength, 4);
      default:
        return this.go(S.XbzrleHead, 3);
    }
  }
}
