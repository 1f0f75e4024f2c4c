// Handshake-phase codec (fixed newstyle): greeting, client flags, option requests, option
// replies, NBD_OPT_EXPORT_NAME's reply. Pure functions over Buffers, both directions.
import {
  EXPORT_NAME_REPLY_FULL,
  EXPORT_NAME_REPLY_SHORT,
  GREETING_SIZE,
  IHAVEOPT,
  MAX_OPTION_LENGTH,
  MAX_STRING,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAGIC,
  NBD_REP_ACK,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  OLDSTYLE_MAGIC,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
} from "./constants.js";
import { type Decoded, readU64, writeU64 } from "./decoded.js";
import { ProtocolError } from "./errors.js";

// ---- greeting and client flags ----

export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.allocUnsafe(GREETING_SIZE);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** Client side: the server's newstyle greeting. Oldstyle servers are rejected. */
export function decodeGreeting(buf: Buffer): Decoded<{ handshakeFlags: number }> {
  if (buf.length < 16) return { need: 16 };
  if (buf.readBigUInt64BE(0) !== NBD_MAGIC)
    throw new ProtocolError("greeting: bad magic (not an NBD server)");
  const second = buf.readBigUInt64BE(8);
  if (second === OLDSTYLE_MAGIC) throw new ProtocolError("greeting: oldstyle server is not supported");
  if (second !== IHAVEOPT) throw new ProtocolError("greeting: bad newstyle magic");
  if (buf.length < GREETING_SIZE) return { need: GREETING_SIZE };
  return { value: { handshakeFlags: buf.readUInt16BE(16) }, consumed: GREETING_SIZE };
}

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

export function decodeClientFlags(buf: Buffer): Decoded<number> {
  if (buf.length < 4) return { need: 4 };
  return { value: buf.readUInt32BE(0), consumed: 4 };
}

// ---- option requests (client -> server) ----

export interface OptionHeader {
  option: number;
  length: number;
}

export interface OptionRequest {
  option: number;
  data: Buffer;
}

export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(OPTION_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, OPTION_HEADER_SIZE);
  return b;
}

/** The 16-byte option header; a length above `maxLength` is a protocol error (we will not buffer it). */
export function decodeOptionHeader(buf: Buffer, maxLength = MAX_OPTION_LENGTH): Decoded<OptionHeader> {
  if (buf.length < OPTION_HEADER_SIZE) return { need: OPTION_HEADER_SIZE };
  if (buf.readBigUInt64BE(0) !== IHAVEOPT) throw new ProtocolError("option: bad magic (expected IHAVEOPT)");
  const option = buf.readUInt32BE(8);
  const length = buf.readUInt32BE(12);
  if (length > maxLength)
    throw new ProtocolError(`option ${option}: length ${length} exceeds limit ${maxLength}`);
  return { value: { option, length }, consumed: OPTION_HEADER_SIZE };
}

/** A whole option (header and data). `data` is a view into `buf`. */
export function decodeOption(buf: Buffer, maxLength = MAX_OPTION_LENGTH): Decoded<OptionRequest> {
  const h = decodeOptionHeader(buf, maxLength);
  if ("need" in h) return h;
  const total = OPTION_HEADER_SIZE + h.value.length;
  if (buf.length < total) return { need: total };
  return {
    value: { option: h.value.option, data: buf.subarray(OPTION_HEADER_SIZE, total) },
    consumed: total,
  };
}

/** Bounds-checked reader over an option payload; running off the end is a ProtocolError. */
class Reader {
  at = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}
  need(n: number): void {
    if (this.at + n > this.buf.length) throw new ProtocolError(`${this.what}: truncated payload`);
  }
  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const v = readU64(this.buf, this.at);
    this.at += 8;
    return v;
  }
  string(len: number): string {
    if (len > MAX_STRING)
      throw new ProtocolError(`${this.what}: string of ${len} bytes exceeds ${MAX_STRING}`);
    this.need(len);
    const s = this.buf.toString("utf8", this.at, this.at + len);
    this.at += len;
    return s;
  }
  rest(): Buffer {
    const b = this.buf.subarray(this.at);
    this.at = this.buf.length;
    return b;
  }
  end(): void {
    if (this.at !== this.buf.length) throw new ProtocolError(`${this.what}: trailing bytes in payload`);
  }
}

function lengthPrefixed(s: string): Buffer {
  const body = Buffer.from(s, "utf8");
  const b = Buffer.allocUnsafe(4 + body.length);
  b.writeUInt32BE(body.length, 0);
  body.copy(b, 4);
  return b;
}

/** NBD_OPT_EXPORT_NAME's data is the bare name. */
export function decodeExportName(data: Buffer): string {
  if (data.length > MAX_STRING)
    throw new ProtocolError(`export name of ${data.length} bytes exceeds ${MAX_STRING}`);
  return data.toString("utf8");
}

/** NBD_OPT_INFO / NBD_OPT_GO data: export name and requested NBD_INFO_* types. */
export interface InfoRequest {
  name: string;
  infos: number[];
}

export function encodeInfoRequest(req: InfoRequest): Buffer {
  const name = lengthPrefixed(req.name);
  const b = Buffer.allocUnsafe(name.length + 2 + 2 * req.infos.length);
  name.copy(b, 0);
  b.writeUInt16BE(req.infos.length, name.length);
  for (let i = 0; i < req.infos.length; i++) b.writeUInt16BE(req.infos[i], name.length + 2 + 2 * i);
  return b;
}

export function decodeInfoRequest(data: Buffer): InfoRequest {
  const r = new Reader(data, "OPT_INFO/OPT_GO");
  const name = r.string(r.u32());
  const n = r.u16();
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(r.u16());
  r.end();
  return { name, infos };
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export interface MetaContextRequest {
  name: string;
  queries: string[];
}

export function encodeMetaContextRequest(req: MetaContextRequest): Buffer {
  const parts = [lengthPrefixed(req.name), Buffer.alloc(4)];
  parts[1].writeUInt32BE(req.queries.length, 0);
  for (const q of req.queries) parts.push(lengthPrefixed(q));
  return Buffer.concat(parts);
}

export function decodeMetaContextRequest(data: Buffer): MetaContextRequest {
  const r = new Reader(data, "META_CONTEXT");
  const name = r.string(r.u32());
  const n = r.u32();
  const queries: string[] = [];
  for (let i = 0; i < n; i++) queries.push(r.string(r.u32()));
  r.end();
  return { name, queries };
}

// ---- option replies (server -> client) ----

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** An error reply (NBD_REP_ERR_*) with a human-readable message. */
export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(message, "utf8"));
}

export function decodeOptionReply(buf: Buffer, maxLength = MAX_OPTION_LENGTH): Decoded<OptionReply> {
  if (buf.length < OPTION_REPLY_HEADER_SIZE) return { need: OPTION_REPLY_HEADER_SIZE };
  if (buf.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new ProtocolError("option reply: bad magic");
  const length = buf.readUInt32BE(16);
  if (length > maxLength)
    throw new ProtocolError(`option reply: length ${length} exceeds limit ${maxLength}`);
  const total = OPTION_REPLY_HEADER_SIZE + length;
  if (buf.length < total) return { need: total };
  return {
    value: { option: buf.readUInt32BE(8), type: buf.readUInt32BE(12), data: buf.subarray(20, total) },
    consumed: total,
  };
}

/** NBD_REP_SERVER payload (reply to NBD_OPT_LIST). */
export function encodeServerReply(name: string, description = ""): Buffer {
  return Buffer.concat([lengthPrefixed(name), Buffer.from(description, "utf8")]);
}

/** NBD_REP_META_CONTEXT payload. */
export function encodeMetaContextReply(id: number, name: string): Buffer {
  const body = Buffer.from(name, "utf8");
  const b = Buffer.allocUnsafe(4 + body.length);
  b.writeUInt32BE(id >>> 0, 0);
  body.copy(b, 4);
  return b;
}

/** NBD_REP_INFO payloads. */
export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  writeU64(b, size, 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoName(name: string): Buffer {
  const body = Buffer.from(name, "utf8");
  const b = Buffer.allocUnsafe(2 + body.length);
  b.writeUInt16BE(NBD_INFO_NAME, 0);
  body.copy(b, 2);
  return b;
}

export function encodeInfoDescription(description: string): Buffer {
  const body = Buffer.from(description, "utf8");
  const b = Buffer.allocUnsafe(2 + body.length);
  b.writeUInt16BE(NBD_INFO_DESCRIPTION, 0);
  body.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

export type Info =
  | { info: "export"; size: number; transmissionFlags: number }
  | { info: "name"; name: string }
  | { info: "description"; description: string }
  | { info: "block_size"; minimum: number; preferred: number; maximum: number }
  | { info: "unknown"; code: number };

export function decodeInfo(data: Buffer): Info {
  const r = new Reader(data, "NBD_REP_INFO");
  const code = r.u16();
  switch (code) {
    case NBD_INFO_EXPORT: {
      const size = r.u64();
      const transmissionFlags = r.u16();
      r.end();
      return { info: "export", size, transmissionFlags };
    }
    case NBD_INFO_NAME:
      return { info: "name", name: r.string(data.length - 2) };
    case NBD_INFO_DESCRIPTION:
      return { info: "description", description: r.string(data.length - 2) };
    case NBD_INFO_BLOCK_SIZE: {
      const minimum = r.u32();
      const preferred = r.u32();
      const maximum = r.u32();
      r.end();
      return { info: "block_size", minimum, preferred, maximum };
    }
    default:
      return { info: "unknown", code };
  }
}

/** A decoded option reply, by type. Clients should ignore "unknown" non-error replies. */
export type ParsedOptionReply =
  | { kind: "ack"; option: number }
  | { kind: "server"; option: number; name: string; description: string }
  | { kind: "info"; option: number; info: Info }
  | { kind: "meta_context"; option: number; id: number; name: string }
  | { kind: "error"; option: number; type: number; message: string }
  | { kind: "unknown"; option: number; type: number; data: Buffer };

export function parseOptionReply(reply: OptionReply): ParsedOptionReply {
  const { option, type, data } = reply;
  if (type >= NBD_REP_FLAG_ERROR) return { kind: "error", option, type, message: data.toString("utf8") };
  switch (type) {
    case NBD_REP_ACK:
      if (data.length !== 0) throw new ProtocolError("NBD_REP_ACK with a payload");
      return { kind: "ack", option };
    case NBD_REP_SERVER: {
      const r = new Reader(data, "NBD_REP_SERVER");
      const name = r.string(r.u32());
      return { kind: "server", option, name, description: r.rest().toString("utf8") };
    }
    case NBD_REP_INFO:
      return { kind: "info", option, info: decodeInfo(data) };
    case NBD_REP_META_CONTEXT: {
      const r = new Reader(data, "NBD_REP_META_CONTEXT");
      const id = r.u32();
      return { kind: "meta_context", option, id, name: r.string(data.length - 4) };
    }
    default:
      return { kind: "unknown", option, type, data };
  }
}

// ---- NBD_OPT_EXPORT_NAME reply ----

export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? EXPORT_NAME_REPLY_SHORT : EXPORT_NAME_REPLY_FULL);
  writeU64(b, size, 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export function decodeExportNameReply(
  buf: Buffer,
  noZeroes: boolean,
): Decoded<{ size: number; transmissionFlags: number }> {
  const total = noZeroes ? EXPORT_NAME_REPLY_SHORT : EXPORT_NAME_REPLY_FULL;
  if (buf.length < total) return { need: total };
  return { value: { size: readU64(buf, 0), transmissionFlags: buf.readUInt16BE(8) }, consumed: total };
}
