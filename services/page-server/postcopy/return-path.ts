// Codec of QEMU 7.2's return path (destination QEMU → source, on the main migration
// connection), incremental over bytes: it finds the post-copy page requests, the faults the
// destination's vCPUs (and device loads) took. Checked against bytes from the real QEMU here.
//
//   message: be16 type, be16 length, payload (migration.c migrate_send_rp_message)
//   types:   0 invalid, 1 SHUT (be32), 2 PONG (be32 seq), 3 REQ_PAGES_ID (be64 start, be32 len,
//            u8 idlen, idstr), 4 REQ_PAGES (be64 start, be32 len: the last block named),
//            5 RECV_BITMAP (u8 idlen, idstr; the bitmap follows raw: recovery only),
//            6 RESUME_ACK (be32)
// start is the offset in the RAM block, len its page size (4 KiB here, more for huge pages).
import { be64, QemuStreamError, StepReader } from "./step-reader.js";

export enum RpType {
  Invalid = 0,
  Shut = 1,
  Pong = 2,
  ReqPagesId = 3,
  ReqPages = 4,
  RecvBitmap = 5,
  ResumeAck = 6,
}

export interface PageRequest {
  block: string;
  start: number;
  length: number;
}

export interface ReturnPathEvents {
  request(r: PageRequest): void;
  /** A recovery's bitmap exchange began: what follows is raw, and pages are re-sent. */
  recovery?(): void;
}

const HEAD = 4;

export class ReturnPathDecoder extends StepReader {
  private type = -1;
  private block: string | undefined;

  constructor(private readonly on: ReturnPathEvents) {
    super(HEAD);
  }

  protected step(b: Buffer): number {
    if (this.type === -1) {
      const type = b.readUInt16BE(0);
      const len = b.readUInt16BE(2);
      if (type === RpType.Invalid || type > RpType.ResumeAck)
        throw new QemuStreamError(
          `return path: unknown message type ${type} at offset ${this.offset - HEAD}`,
        );
      if (len === 0) throw new QemuStreamError(`return path: empty message of type ${type}`);
      this.type = type;
      return len;
    }
    const type = this.type;
    this.type = -1;
    if (type === RpType.ReqPagesId || type === RpType.ReqPages) {
      if (b.length < 12) throw new QemuStreamError(`return path: page request of ${b.length} bytes`);
      if (type === RpType.ReqPagesId) {
        const idLen = b[12] ?? 0;
        if (idLen === 0 || b.length !== 13 + idLen)
          throw new QemuStreamError(
            `return path: page request naming a block of ${idLen} bytes in ${b.length}`,
          );
        this.block = b.toString("latin1", 13, 13 + idLen);
      } else if (b.length !== 12) throw new QemuStreamError(`return path: page request of ${b.length} bytes`);
      if (this.block === undefined)
        throw new QemuStreamError("return path: a page request before any named its RAM block");
      this.on.request({ block: this.block, start: be64(b, 0), length: b.readUInt32BE(8) });
    } else if (type === RpType.RecvBitmap) {
      // The raw bitmap after it is not framed as a message: nothing after is read.
      this.skip(Number.POSITIVE_INFINITY);
      this.on.recovery?.();
    }
    return HEAD;
  }
}
