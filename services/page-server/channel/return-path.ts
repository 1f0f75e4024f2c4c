// QEMU's migration return path (destination → source, the main stream's other direction), as
// QEMU 7.2 frames it (migration/migration.c, migrate_send_rp_message):
//
//   message:       be16 type, be16 length, payload (length bytes)
//   REQ_PAGES_ID:  be64 start, be32 length, u8 n, n bytes RAMBlock name   (type 3)
//   REQ_PAGES:     be64 start, be32 length — in the block of the last REQ_PAGES_ID (type 4)
//   SHUT, PONG, RESUME_ACK: be32 value (types 1, 2, 6)
//   RECV_BITMAP:   the block name, then a raw bitmap outside any message (type 5: recovery only)
//
// ReturnPathSplicer lets the source page-server add page requests of its own (pages the
// destination is known to fault on first, sent while it loads the device state) between the
// destination's messages. Both ends remember "the block of the last request": after a request
// of ours names another block than the destination last named, the destination's next
// REQ_PAGES is rewritten to name its block, so no request is ever read against the wrong one.
// Anything it cannot frame (a bitmap, an unknown type) turns it into a plain pipe for good,
// dropping what it had not yet added: the stream itself is never altered or held then.

export const RP_SHUT = 1;
export const RP_PONG = 2;
export const RP_REQ_PAGES_ID = 3;
export const RP_REQ_PAGES = 4;
export const RP_RECV_BITMAP = 5;
export const RP_RESUME_ACK = 6;

const HEAD = 4;
/** Types framed as plain messages (their whole content is the length in the header). */
const FRAMED = new Set([RP_SHUT, RP_PONG, RP_REQ_PAGES_ID, RP_REQ_PAGES, RP_RESUME_ACK]);

/** A page request: `length` bytes at `start` in RAMBlock `block` (or the last named one). */
export interface PageRequest {
  block?: string;
  start: number;
  length: number;
}

/** A REQ_PAGES_ID (with `block`) or REQ_PAGES message. */
export function encodePageRequest(r: PageRequest): Buffer {
  if (!Number.isSafeInteger(r.start) || r.start < 0) throw new RangeError(`bad page start ${r.start}`);
  if (!Number.isInteger(r.length) || r.length <= 0 || r.length > 0xffffffff)
    throw new RangeError(`bad page length ${r.length}`);
  const name = r.block === undefined ? undefined : Buffer.from(r.block, "latin1");
  if (name && (name.length === 0 || name.length > 255))
    throw new RangeError(`bad RAMBlock name '${r.block}'`);
  const payload = 12 + (name ? 1 + name.length : 0);
  const b = Buffer.alloc(HEAD + payload);
  b.writeUInt16BE(name ? RP_REQ_PAGES_ID : RP_REQ_PAGES, 0);
  b.writeUInt16BE(payload, 2);
  b.writeBigUInt64BE(BigInt(r.start), 4);
  b.writeUInt32BE(r.length, 12);
  if (name) {
    b[16] = name.length;
    name.copy(b, 17);
  }
  return b;
}

/** The request in one whole REQ_PAGES_ID / REQ_PAGES message, or null if it is not one. */
export function decodePageRequest(msg: Buffer): PageRequest | null {
  if (msg.length < HEAD + 12) return null;
  const type = msg.readUInt16BE(0);
  const start = Number(msg.readBigUInt64BE(4));
  const length = msg.readUInt32BE(12);
  if (type === RP_REQ_PAGES) return msg.length === HEAD + 12 ? { start, length } : null;
  if (type !== RP_REQ_PAGES_ID || msg.length < HEAD + 13 || msg.length !== HEAD + 13 + msg[16]) return null;
  return { block: msg.subarray(17).toString("latin1"), start, length };
}

export class ReturnPathSplicer {
  /** The destination's bytes of a message not yet whole. */
  private partial: Buffer = Buffer.alloc(0);
  /** Requests of ours waiting for a message boundary (encoded when they go: see flush). */
  private waiting: PageRequest[] = [];
  /** The block the destination last named (its own requests only). */
  private destinationBlock: string | undefined;
  /** The block the source will read a REQ_PAGES against (after ours, until the destination names one). */
  private sourceBlock: string | undefined;
  /** Gave up framing: everything passes as it comes. */
  private plain = false;

  /** Why framing was given up, once it was. */
  gaveUp: string | undefined;

  /** The destination's bytes in; what to write to the source QEMU out, in order. */
  push(chunk: Buffer): Buffer[] {
    if (this.plain) return [chunk];
    let buf = this.partial.length ? Buffer.concat([this.partial, chunk]) : chunk;
    const out: Buffer[] = [];
    while (buf.length >= HEAD) {
      const type = buf.readUInt16BE(0);
      if (!FRAMED.has(type)) {
        this.giveUp(type === RP_RECV_BITMAP ? "a received-pages bitmap (recovery)" : `message type ${type}`);
        out.push(buf);
        this.partial = Buffer.alloc(0);
        return out;
      }
      const end = HEAD + buf.readUInt16BE(2);
      if (buf.length < end) break;
      out.push(this.fromDestination(buf.subarray(0, end)));
      buf = buf.subarray(end);
    }
    this.partial = Buffer.from(buf); // a copy: the chunk's memory is not kept alive
    if (!this.partial.length) out.push(...this.flush());
    return out;
  }

  /**
   * Adds requests of ours: returned at once (to write now) at a message boundary, else held
   * and returned by the push() that completes the destination's message. Empty once framing
   * was given up.
   */
  request(reqs: readonly PageRequest[]): Buffer[] {
    if (this.plain || !reqs.length) return [];
    let block = this.waiting.at(-1)?.block ?? this.sourceBlock;
    for (const r of reqs) {
      block = r.block ?? block;
      if (block === undefined) throw new RangeError("the first page request must name its RAMBlock");
      this.waiting.push({ ...r, block });
    }
    return this.partial.length ? [] : this.flush();
  }

  /** Our waiting requests, each naming its block only where the source's last one differs. */
  private flush(): Buffer[] {
    const out = this.waiting.map((r) => {
      const named = r.block === this.sourceBlock ? undefined : r.block;
      this.sourceBlock = r.block;
      return encodePageRequest({ ...r, block: named });
    });
    this.waiting = [];
    return out;
  }

  /** One whole message of the destination's, rewritten if the source would misread it. */
  private fromDestination(msg: Buffer): Buffer {
    const type = msg.readUInt16BE(0);
    if (type !== RP_REQ_PAGES_ID && type !== RP_REQ_PAGES) return msg;
    const req = decodePageRequest(msg);
    if (!req) return msg; // malformed: QEMU at the source refuses it as it would have
    if (req.block !== undefined) {
      this.destinationBlock = req.block;
      this.sourceBlock = req.block;
      return msg;
    }
    if (this.sourceBlock === this.destinationBlock || this.destinationBlock === undefined) return msg;
    this.sourceBlock = this.destinationBlock;
    return encodePageRequest({ ...req, block: this.destinationBlock });
  }

  private giveUp(why: string): void {
    this.plain = true;
    this.gaveUp = why;
    this.waiting = [];
  }
}
