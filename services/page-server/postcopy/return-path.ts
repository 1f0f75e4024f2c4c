// QEMU 7.2's return path (destination QEMU → source, on the main migration connection) read
// incrementally as it passes: it finds the post-copy page requests, the faults the
// destination's vCPUs (and device loads) took. The messages themselves are decoded by
// channel/return-path.ts (the format is described there); this follows a stream of them in
// chunks of any size, remembering the block a bare REQ_PAGES refers to. Checked against bytes
// from the real QEMU here.
import {
  decodePageRequest,
  RP_PONG,
  RP_RECV_BITMAP,
  RP_REQ_PAGES,
  RP_REQ_PAGES_ID,
  RP_RESUME_ACK,
  RP_SHUT,
} from "../channel/return-path.js";
import { QemuStreamError, StepReader } from "./step-reader.js";

/** A page request with its block named (start: offset in the RAM block; length: its page size). */
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
const KNOWN = new Set([RP_SHUT, RP_PONG, RP_REQ_PAGES_ID, RP_REQ_PAGES, RP_RECV_BITMAP, RP_RESUME_ACK]);

export class ReturnPathDecoder extends StepReader {
  /** The message's header while its payload is read (null: reading a header). */
  private head: Buffer | null = null;
  private block: string | undefined;

  constructor(private readonly on: ReturnPathEvents) {
    super(HEAD);
  }

  protected step(b: Buffer): number {
    if (this.head === null) {
      const type = b.readUInt16BE(0);
      const len = b.readUInt16BE(2);
      if (!KNOWN.has(type))
        throw new QemuStreamError(
          `return path: unknown message type ${type} at offset ${this.offset - HEAD}`,
        );
      if (len === 0) throw new QemuStreamError(`return path: empty message of type ${type}`);
      this.head = Buffer.from(b); // b may be the reader's buffer, reused for the payload
      return len;
    }
    const head = this.head;
    this.head = null;
    const type = head.readUInt16BE(0);
    if (type === RP_REQ_PAGES_ID || type === RP_REQ_PAGES) {
      const r = decodePageRequest(Buffer.concat([head, b]));
      if (!r) throw new QemuStreamError(`return path: malformed page request of ${b.length} bytes`);
      if (r.block !== undefined) this.block = r.block;
      if (this.block === undefined)
        throw new QemuStreamError("return path: a page request before any named its RAM block");
      this.on.request({ block: this.block, start: r.start, length: r.length });
    } else if (type === RP_RECV_BITMAP) {
      // The raw bitmap after it is not framed as a message: nothing after is read.
      this.skip(Number.POSITIVE_INFINITY);
      this.on.recovery?.();
    }
    return HEAD;
  }
}
