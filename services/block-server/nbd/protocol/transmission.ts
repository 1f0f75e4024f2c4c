// Transmission-phase codec: request header, simple reply, structured reply chunks.
// Pure functions over Buffers, both directions. The write*() variants fill a caller's
// buffer (no allocation on the hot path); encode*() allocate.
import {
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from "./constants.js";
import { type Decoded, readU64, writeU64 } from "./decoded.js";
import { ProtocolError } from "./errors.js";

// ---- requests ----

export interface Request {
  flags: number;
  type: number;
  /** Opaque to the server: echoed in every reply. */
  cookie: bigint;
  offset: number;
  length: number;
}

export function writeRequest(buf: Buffer, at: number, req: Request): void {
  buf.writeUInt32BE(REQUEST_MAGIC, at);
  buf.writeUInt16BE(req.flags, at + 4);
  buf.writeUInt16BE(req.type, at + 6);
  buf.writeBigUInt64BE(req.cookie, at + 8);
  writeU64(buf, req.offset, at + 16);
  buf.writeUInt32BE(req.length >>> 0, at + 24);
}

/** The 28-byte header. A WRITE's payload is sent after it by the caller. */
export function encodeRequest(req: Request): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_SIZE);
  writeRequest(b, 0, req);
  return b;
}

/** Decodes a request header at `at`; the WRITE payload (if any) is not part of `consumed`. */
export function decodeRequest(buf: Buffer, at = 0): Decoded<Request> {
  if (buf.length - at < REQUEST_SIZE) return { need: REQUEST_SIZE };
  const magic = buf.readUInt32BE(at);
  if (magic !== REQUEST_MAGIC) throw new ProtocolError(`request: bad magic 0x${magic.toString(16)}`);
  return {
    value: {
      flags: buf.readUInt16BE(at + 4),
      type: buf.readUInt16BE(at + 6),
      cookie: buf.readBigUInt64BE(at + 8),
      offset: readU64(buf, at + 16),
      length: buf.readUInt32BE(at + 24),
    },
    consumed: REQUEST_SIZE,
  };
}

// ---- simple reply ----

export function writeSimpleReply(buf: Buffer, at: number, error: number, cookie: bigint): void {
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  buf.writeUInt32BE(error >>> 0, at + 4);
  buf.writeBigUInt64BE(cookie, at + 8);
}

/** 16-byte simple reply header; a successful READ's data follows it. */
export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  writeSimpleReply(b, 0, error, cookie);
  return b;
}

export interface SimpleReply {
  error: number;
  cookie: bigint;
}

export function decodeSimpleReply(buf: Buffer, at = 0): Decoded<SimpleReply> {
  if (buf.length - at < SIMPLE_REPLY_SIZE) return { need: SIMPLE_REPLY_SIZE };
  const magic = buf.readUInt32BE(at);
  if (magic !== SIMPLE_REPLY_MAGIC)
    throw new ProtocolError(`simple reply: bad magic 0x${magic.toString(16)}`);
  return { value: { error: buf.readUInt32BE(at + 4), cookie: buf.readBigUInt64BE(at + 8) }, consumed: 16 };
}

// ---- structured reply chunks ----

export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  /** Length of the chunk payload that follows the 20-byte header. */
  length: number;
}

export function writeStructuredHeader(buf: Buffer, at: number, h: ChunkHeader): void {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(h.flags, at + 4);
  buf.writeUInt16BE(h.type, at + 6);
  buf.writeBigUInt64BE(h.cookie, at + 8);
  buf.writeUInt32BE(h.length >>> 0, at + 16);
}

export function encodeStructuredHeader(h: ChunkHeader): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE);
  writeStructuredHeader(b, 0, h);
  return b;
}

export function decodeStructuredChunkHeader(buf: Buffer, at = 0): Decoded<ChunkHeader> {
  if (buf.length - at < STRUCTURED_HEADER_SIZE) return { need: STRUCTURED_HEADER_SIZE };
  const magic = buf.readUInt32BE(at);
  if (magic !== STRUCTURED_REPLY_MAGIC)
    throw new ProtocolError(`structured reply: bad magic 0x${magic.toString(16)}`);
  return {
    value: {
      flags: buf.readUInt16BE(at + 4),
      type: buf.readUInt16BE(at + 6),
      cookie: buf.readBigUInt64BE(at + 8),
      length: buf.readUInt32BE(at + 16),
    },
    consumed: STRUCTURED_HEADER_SIZE,
  };
}

/** Either kind of reply header, told apart by its magic (clients that negotiated structured replies). */
export type ReplyHeader = ({ kind: "simple" } & SimpleReply) | ({ kind: "structured" } & ChunkHeader);

export function decodeReplyHeader(buf: Buffer, at = 0): Decoded<ReplyHeader> {
  if (buf.length - at < 4) return { need: 4 };
  const magic = buf.readUInt32BE(at);
  if (magic === SIMPLE_REPLY_MAGIC) {
    const d = decodeSimpleReply(buf, at);
    return "need" in d ? d : { value: { kind: "simple", ...d.value }, consumed: d.consumed };
  }
  if (magic === STRUCTURED_REPLY_MAGIC) {
    const d = decodeStructuredChunkHeader(buf, at);
    return "need" in d ? d : { value: { kind: "structured", ...d.value }, consumed: d.consumed };
  }
  throw new ProtocolError(`reply: bad magic 0x${magic.toString(16)}`);
}

/** NBD_REPLY_TYPE_NONE with DONE: ends a structured reply with no further payload. */
export function encodeNoneChunk(cookie: bigint): Buffer {
  return encodeStructuredHeader({ flags: NBD_REPLY_FLAG_DONE, type: NBD_REPLY_TYPE_NONE, cookie, length: 0 });
}

/** OFFSET_DATA header + offset (28 bytes); the `dataLength` data bytes follow it on the wire. */
export function writeOffsetDataHeader(
  buf: Buffer,
  at: number,
  flags: number,
  cookie: bigint,
  offset: number,
  dataLength: number,
): void {
  writeStructuredHeader(buf, at, { flags, type: NBD_REPLY_TYPE_OFFSET_DATA, cookie, length: 8 + dataLength });
  writeU64(buf, offset, at + STRUCTURED_HEADER_SIZE);
}

export function encodeOffsetDataHeader(
  flags: number,
  cookie: bigint,
  offset: number,
  dataLength: number,
): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + 8);
  writeOffsetDataHeader(b, 0, flags, cookie, offset, dataLength);
  return b;
}

export function encodeOffsetHoleChunk(
  flags: number,
  cookie: bigint,
  offset: number,
  holeLength: number,
): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + 12);
  writeStructuredHeader(b, 0, { flags, type: NBD_REPLY_TYPE_OFFSET_HOLE, cookie, length: 12 });
  writeU64(b, offset, 20);
  b.writeUInt32BE(holeLength >>> 0, 28);
  return b;
}

export interface BlockStatusExtent {
  length: number;
  flags: number;
}

export function encodeBlockStatusChunk(
  flags: number,
  cookie: bigint,
  contextId: number,
  extents: readonly BlockStatusExtent[],
): Buffer {
  const len = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + len);
  writeStructuredHeader(b, 0, { flags, type: NBD_REPLY_TYPE_BLOCK_STATUS, cookie, length: len });
  b.writeUInt32BE(contextId >>> 0, 20);
  let at = 24;
  for (const e of extents) {
    b.writeUInt32BE(e.length >>> 0, at);
    b.writeUInt32BE(e.flags >>> 0, at + 4);
    at += 8;
  }
  return b;
}

/** ERROR chunk, or ERROR_OFFSET when `offset` is given. The message is truncated to 4096 bytes. */
export function encodeErrorChunk(
  flags: number,
  cookie: bigint,
  error: number,
  message: string,
  offset?: number,
): Buffer {
  const msg = Buffer.from(message, "utf8").subarray(0, 4096);
  const len = 6 + msg.length + (offset === undefined ? 0 : 8);
  const type = offset === undefined ? NBD_REPLY_TYPE_ERROR : NBD_REPLY_TYPE_ERROR_OFFSET;
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + len);
  writeStructuredHeader(b, 0, { flags, type, cookie, length: len });
  b.writeUInt32BE(error >>> 0, 20);
  b.writeUInt16BE(msg.length, 24);
  msg.copy(b, 26);
  if (offset !== undefined) writeU64(b, offset, 26 + msg.length);
  return b;
}

export type Chunk =
  | { type: "none" }
  | { type: "data"; offset: number; data: Buffer }
  | { type: "hole"; offset: number; length: number }
  | { type: "block_status"; contextId: number; extents: BlockStatusExtent[] }
  | { type: "error"; error: number; message: string; offset?: number }
  | { type: "unknown"; code: number; payload: Buffer };

/** Decodes a chunk's payload (the `length` bytes after its header). Views, not copies. */
export function decodeChunkPayload(code: number, payload: Buffer): Chunk {
  const bad = (why: string) => new ProtocolError(`structured chunk type ${code}: ${why}`);
  switch (code) {
    case NBD_REPLY_TYPE_NONE:
      if (payload.length !== 0) throw bad("NONE with a payload");
      return { type: "none" };
    case NBD_REPLY_TYPE_OFFSET_DATA:
      if (payload.length < 9) throw bad("OFFSET_DATA shorter than 9 bytes");
      return { type: "data", offset: readU64(payload, 0), data: payload.subarray(8) };
    case NBD_REPLY_TYPE_OFFSET_HOLE:
      if (payload.length !== 12) throw bad("OFFSET_HOLE must be 12 bytes");
      return { type: "hole", offset: readU64(payload, 0), length: payload.readUInt32BE(8) };
    case NBD_REPLY_TYPE_BLOCK_STATUS: {
      if (payload.length < 12 || (payload.length - 4) % 8 !== 0) throw bad("BLOCK_STATUS has a bad length");
      const extents: BlockStatusExtent[] = [];
      for (let at = 4; at < payload.length; at += 8)
        extents.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
      return { type: "block_status", contextId: payload.readUInt32BE(0), extents };
    }
    default:
      if (code & 0x8000) {
        // Every error type (known or not) starts with error and message length.
        if (payload.length < 6) throw bad("error chunk shorter than 6 bytes");
        const mlen = payload.readUInt16BE(4);
        if (6 + mlen > payload.length) throw bad("error message runs past the chunk");
        const message = payload.toString("utf8", 6, 6 + mlen);
        const error = payload.readUInt32BE(0);
        if (code === NBD_REPLY_TYPE_ERROR_OFFSET) {
          if (payload.length !== 6 + mlen + 8) throw bad("ERROR_OFFSET has a bad length");
          return { type: "error", error, message, offset: readU64(payload, 6 + mlen) };
        }
        return { type: "error", error, message };
      }
      return { type: "unknown", code, payload };
  }
}
