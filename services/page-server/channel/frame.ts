// Framing of a compressing channel, pure functions over bytes. Each chunk QEMU wrote is sent
// as one frame, either as is or raw-deflated on its own, so the sender can decide chunk by
// chunk (compress only while the link is the bottleneck) and a frame never waits for a later
// one to be decoded.
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

/**
 * One frame for `chunk` as header and payload (written together with writev, so a plain
 * frame costs no copy), deflated when asked and when that is smaller.
 */
export function encodeFrame(chunk: Buffer, deflate: boolean): [head: Buffer, payload: Buffer] {
  let kind = FrameKind.Plain;
  let payload = chunk;
  if (deflate) {
    const z = deflateRawSync(chunk, { level: 1, strategy: constants.Z_DEFAULT_STRATEGY });
    if (z.length < chunk.length) {
      kind = FrameKind.Deflate;
      payload = z;
    }
  }
  const head = Buffer.allocUnsafe(HEAD);
  head[0] = kind;
  head.writeUInt32BE(payload.length, 1);
  return [head, payload];
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

  /** True between frames: the stream may end here. */
  get atBoundary(): boolean {
    return this.left === -1 && this.headHave === 0;
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
