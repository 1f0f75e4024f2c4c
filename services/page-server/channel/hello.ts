// The migration channel's opening exchange, first bytes of each TCP connection between
// page-servers. Pure functions over bytes.
//
//   hello: "VMHC" u8 version=1, u8 flags (bit 0: recover a paused post-copy; bit 1: after the
//          reply the stream travels in frames, each plain or deflated: frame.ts; bit 2: handoff,
//          after the reply both page-servers give this TCP connection to their QEMU; bit 3:
//          probe, see below; bit 4: preempt, QEMU's urgent lane: the destination sets it
//          before its QEMU listens; bit 5: lane, this connection is that urgent lane, sent
//          beside the main stream's hello: the destination joins it to its QEMU only after the
//          main stream, as QEMU tells the two apart by order), u16 id length, id
//   reply: u8 status (0 ok, 1 unknown migration, 2 bad hello, 3 recover failed), u16 length,
//          message (UTF-8)
//   probe: a hello with only the probe flag asks the destination to echo pings until the real
//          hello follows on the same connection, so the source can time the link first and
//          choose the path from it: ping = "VMHP" u32 sequence, echoed unchanged as the pong.
// Everything after the hello/reply is QEMU's own migration stream, relayed unchanged (or framed).

export const HELLO_MAGIC = Buffer.from("VMHC");
export const HELLO_VERSION = 1;
export const MAX_ID = 256;
export const PING_MAGIC = Buffer.from("VMHP");
export const PING_BYTES = 8;

export enum ReplyStatus {
  Ok = 0,
  UnknownMigration = 1,
  BadHello = 2,
  RecoverFailed = 3,
}

export class ChannelProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChannelProtocolError";
  }
}

const FLAG_RECOVER = 1;
const FLAG_COMPRESS = 2;
const FLAG_HANDOFF = 4;
const FLAG_PROBE = 8;
const FLAG_PREEMPT = 16;
const FLAG_LANE = 32;
const KNOWN_FLAGS = FLAG_RECOVER | FLAG_COMPRESS | FLAG_HANDOFF | FLAG_PROBE | FLAG_PREEMPT | FLAG_LANE;

export interface Hello {
  migrationId: string;
  /** Re-open a broken post-copy stream (QEMU postcopy recovery) instead of starting one. */
  recover: boolean;
  compress: boolean;
  /** Both ends hand the connection to QEMU (`fd:` URIs): no relay in between. */
  handoff: boolean;
  /** Pings follow, then the real hello (the source measures the link before choosing the path). */
  probe: boolean;
  /** QEMU's postcopy-preempt lane: the destination sets the capability before QEMU listens. */
  preempt: boolean;
  /** This connection is the urgent lane: joined to QEMU after the main stream's connection. */
  lane: boolean;
}

export type HelloFlags = Partial<Omit<Hello, "migrationId">>;

export function encodeHello(migrationId: string, flags: HelloFlags = {}): Buffer {
  const id = Buffer.from(migrationId, "utf8");
  if (id.length === 0 || id.length > MAX_ID)
    throw new ChannelProtocolError(`migration id must be 1-${MAX_ID} bytes`);
  const b = Buffer.alloc(8 + id.length);
  HELLO_MAGIC.copy(b, 0);
  b[4] = HELLO_VERSION;
  b[5] =
    (flags.recover ? FLAG_RECOVER : 0) |
    (flags.compress ? FLAG_COMPRESS : 0) |
    (flags.handoff ? FLAG_HANDOFF : 0) |
    (flags.probe ? FLAG_PROBE : 0) |
    (flags.preempt ? FLAG_PREEMPT : 0) |
    (flags.lane ? FLAG_LANE : 0);
  b.writeUInt16BE(id.length, 6);
  id.copy(b, 8);
  return b;
}

/** null while incomplete; throws ChannelProtocolError on a bad hello. `used` bytes belong to it. */
export function decodeHello(buf: Buffer): (Hello & { used: number }) | null {
  const head = Math.min(buf.length, 4);
  if (!buf.subarray(0, head).equals(HELLO_MAGIC.subarray(0, head)))
    throw new ChannelProtocolError("not a vmhop channel hello");
  if (buf.length < 5) return null;
  if (buf[4] !== HELLO_VERSION) throw new ChannelProtocolError(`unsupported channel version ${buf[4]}`);
  if (buf.length < 8) return null;
  if (buf[5] & ~KNOWN_FLAGS) throw new ChannelProtocolError(`unknown channel flags ${buf[5]}`);
  if (buf[5] & FLAG_PROBE && buf[5] !== FLAG_PROBE)
    throw new ChannelProtocolError("a probe hello carries no other flag (the real hello follows)");
  if (buf[5] & FLAG_LANE && (buf[5] & (FLAG_PREEMPT | FLAG_RECOVER | FLAG_HANDOFF)) !== FLAG_PREEMPT)
    throw new ChannelProtocolError("a lane hello is a preempt hello of a fresh relayed stream");
  const n = buf.readUInt16BE(6);
  if (n === 0 || n > MAX_ID) throw new ChannelProtocolError(`bad migration id length ${n}`);
  if (buf.length < 8 + n) return null;
  return {
    migrationId: buf.toString("utf8", 8, 8 + n),
    recover: (buf[5] & FLAG_RECOVER) !== 0,
    compress: (buf[5] & FLAG_COMPRESS) !== 0,
    handoff: (buf[5] & FLAG_HANDOFF) !== 0,
    probe: (buf[5] & FLAG_PROBE) !== 0,
    preempt: (buf[5] & FLAG_PREEMPT) !== 0,
    lane: (buf[5] & FLAG_LANE) !== 0,
    used: 8 + n,
  };
}

export function encodeReply(status: ReplyStatus, message = ""): Buffer {
  const m = Buffer.from(message.slice(0, 1000), "utf8");
  const b = Buffer.alloc(3 + m.length);
  b[0] = status;
  b.writeUInt16BE(m.length, 1);
  m.copy(b, 3);
  return b;
}

/** null while incomplete. */
export function decodeReply(buf: Buffer): { status: ReplyStatus; message: string; used: number } | null {
  if (buf.length < 3) return null;
  const n = buf.readUInt16BE(1);
  if (buf.length < 3 + n) return null;
  if (!(buf[0] in ReplyStatus)) throw new ChannelProtocolError(`unknown channel reply status ${buf[0]}`);
  return { status: buf[0] as ReplyStatus, message: buf.toString("utf8", 3, 3 + n), used: 3 + n };
}

export function encodePing(seq: number): Buffer {
  const b = Buffer.alloc(PING_BYTES);
  PING_MAGIC.copy(b, 0);
  b.writeUInt32BE(seq >>> 0, 4);
  return b;
}

/** A ping (or the pong echoing it); null while incomplete. */
export function decodePing(buf: Buffer): { seq: number; used: number } | null {
  const head = Math.min(buf.length, 4);
  if (!buf.subarray(0, head).equals(PING_MAGIC.subarray(0, head)))
    throw new ChannelProtocolError("expected a channel ping");
  if (buf.length < PING_BYTES) return null;
  return { seq: buf.readUInt32BE(4), used: PING_BYTES };
}

/** After a probe hello: a ping, or the real hello (no probe flag of its own); null while incomplete. */
export function decodeProbeStep(
  buf: Buffer,
): (({ kind: "ping"; seq: number } | ({ kind: "hello" } & Hello)) & { used: number }) | null {
  const head = Math.min(buf.length, 4);
  if (buf.subarray(0, head).equals(PING_MAGIC.subarray(0, head))) {
    if (head < 4) return null;
    const p = decodePing(buf);
    return p && { kind: "ping", ...p };
  }
  const h = decodeHello(buf);
  if (h?.probe) throw new ChannelProtocolError("a second probe hello");
  return h && { kind: "hello", ...h };
}
