// Framing of a compressing channel, pure over bytes. The sender decides chunk by chunk
// (compress only while the link is the bottleneck): a chunk to compress becomes one deflated
// frame; plain bytes go in runs, a header announcing PLAIN_RUN bytes and then QEMU's chunks
// as they come, so an uncompressed stream costs one header per MiB and no copy. A plain run
// is open-ended in time: nothing waits for it to fill.
//
//   frame: u8 kind (0 plain, 1 deflate-raw), u32 payload length, payload
import { constants, deflateRawSync, inflateRawSync } from "node:zlib";
import { ChannelProtocolError } from "./hello.js";

export enum FrameKind {
  Plain = 0,
  Deflate = 1,
}

const HEAD = 5;
/** Larger than any chunk a socket read yields; a bigger length means a corrupt stream. */
export const MAX_FRAME = 16 << 20;

/** Bytes a plain run announces: small enough that a switch to deflate is not held up long. */
export const PLAIN_RUN = 1 << 20;

function header(kind: FrameKind, length: number): Buffer {
  const head = Buffer.allocUnsafe(HEAD);
  head[0] = kind;
  head.writeUInt32BE(length, 1);
  return head;
}

/** The sending side: QEMU's chunks in, wire buffers out (to write in order, e.g. with writev). */
export class FrameEncoder {
  /** Bytes the open plain run still expects. */
  private runLeft = 0;

  encode(chunk: Buffer, deflate: boolean): Buffer[] {
    const out: Buffer[] = [];
    let rest = chunk;
    // An open plain run is filled first: its length is already on the wire.
    if (this.runLeft > 0) {
      const n = Math.min(this.runLeft, rest.length);
      out.push(rest.subarray(0, n));
      this.runLeft -= n;
      rest = rest.subarray(n);
    }
    if (rest.length === 0) return out;
    if (deflate) {
      const z = deflateRawSync(rest, { level: 1, strategy: constants.Z_DEFAULT_STRATEGY });
      // Not smaller (random data): a plain frame of exactly this chunk, no run left open.
      if (z.length < rest.length) out.push(header(FrameKind.Deflate, z.length), z);
      else out.push(header(FrameKind.Plain, rest.length), rest);
      return out;
    }
    while (rest.length > 0) {
      this.runLeft = PLAIN_RUN;
      const n = Math.min(PLAIN_RUN, rest.length);
      out.push(header(FrameKind.Plain, PLAIN_RUN), rest.subarray(0, n));
      this.runLeft -= n;
      rest = rest.subarray(n);
    }
    return out;
  }
}

/**
 * Decodes a framed stream fed in arbitrary pieces. Plain payloads come out as slices of the
 * input as soon as they arrive (no copy, no wait for the frame's end); a deflated payload
 * comes out inflated once complete. Throws ChannelProtocolError on a bad frame.
 */
export class FrameDecoder {
  private head = Buffer.alloc(HEAD);
  private headHave = 0;
  private kind = FrameKind.Plain;
  /** Payload bytes of the current frame still to come; -1 while reading a header. */
  private left = -1;
  private parts: Buffer[] = [];

  /** The stream may end here: between frames, or inside a plain run (it need not fill). */
  get canEnd(): boolean {
    return (this.left === -1 && this.headHave === 0) || (this.left > 0 && this.kind === FrameKind.Plain);
  }

  push(buf: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let at = 0;
    while (at < buf.length) {
      if (this.left === -1) {
        const n = Math.min(HEAD - this.headHave, buf.length - at);
        buf.copy(this.head, this.headHave, at, at + n);
        this.headHave += n;
        at += n;
        if (this.headHave < HEAD) break;
        this.headHave = 0;
        this.kind = this.head[0];
        this.left = this.head.readUInt32BE(1);
        if (this.kind !== FrameKind.Plain && this.kind !== FrameKind.Deflate)
          throw new ChannelProtocolError(`unknown channel frame kind ${this.kind}`);
        if (this.left > MAX_FRAME)
          throw new ChannelProtocolError(`channel frame of ${this.left} bytes is too large`);
      }
      const n = Math.min(this.left, buf.length - at);
      const piece = buf.subarray(at, at + n);
      at += n;
      this.left -= n;
      if (this.kind === FrameKind.Plain) {
        if (n > 0) out.push(piece);
      } else this.parts.push(piece);
      if (this.left === 0) {
        this.left = -1;
        if (this.kind === FrameKind.Deflate) out.push(inflate(Buffer.concat(this.parts)));
        this.parts = [];
      }
    }
    return out;
  }
}

function inflate(payload: Buffer): Buffer {
  try {
    return inflateRawSync(payload, { maxOutputLength: MAX_FRAME });
  } catch (err) {
    throw new ChannelProtocolError(`corrupt deflated channel frame: ${(err as Error).message}`);
  }
}
