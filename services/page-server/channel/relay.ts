// Joins QEMU's socket and the wire (TCP to the peer page-server) both ways — QEMU's
// migration stream is duplex: post-copy page requests come back on it — with back-pressure,
// optional compression (framed, compress-policy.ts), byte counts, and both sides torn down together.
import { type NetConnectOpts, connect as netConnect, type Socket } from "node:net";
import { type Compression, DrainMeter, shouldDeflate } from "./compress-policy.js";
import { FrameDecoder, FrameEncoder } from "./frame.js";
import { ChannelProtocolError } from "./hello.js";

/**
 * Socket buffer size for every channel socket (both QEMU's and the wire). With the default
 * 16 KiB, pipe() pauses and resumes the reader several times per 64 KiB read; 1 MiB lets a
 * whole burst of pages move in one go.
 */
export const SOCKET_HIGH_WATER_MARK = 1 << 20;

/** net.connect with the channel's buffer size (Node 20 takes highWaterMark; its types lag). */
export function connectSocket(opts: NetConnectOpts): Socket {
  const wide = { ...opts, highWaterMark: SOCKET_HIGH_WATER_MARK };
  return netConnect(wide as NetConnectOpts);
}

/** Bytes source → destination ("forward") and back, as QEMU sees them and on the wire. */
export interface RelayCounters {
  forward: number;
  backward: number;
  wireForward: number;
  wireBackward: number;
}

export function newCounters(): RelayCounters {
  return { forward: 0, backward: 0, wireForward: 0, wireBackward: 0 };
}

export interface RelayOptions {
  /** Which end of the migration this page-server is (says which way is forward). */
  side: "source" | "destination";
  /**
   * "on"/"auto": the wire carries frames (hello compress flag) and the source deflates them
   * always or while the link is slow and the bottleneck (compress-policy.ts); the page
   * requests going back are always plain. "off" or unset: QEMU's bytes as they are.
   */
  compression?: Compression;
  /**
   * Rewrites the bytes on their way into QEMU (the source's return path: ReturnPathSplicer),
   * chunk in, chunks to write out.
   */
  intoQemu?: (chunk: Buffer) => Buffer[];
  onEnd?: (err?: Error) => void;
  /**
   * Sees QEMU's plain bytes both ways as they pass (after any decompression), in order. It
   * must not throw nor hold on to the chunks longer than the call (postcopy/observer.ts observes
   * this way).
   */
  tap?: RelayTap;
}

export interface RelayTap {
  toQemu(chunk: Buffer): void;
  fromQemu(chunk: Buffer): void;
}

export function relay(qemu: Socket, wire: Socket, counters: RelayCounters, opts: RelayOptions): void {
  wire.setNoDelay(true);
  const out = opts.side === "source";
  const tap = opts.tap;
  // An orderly end flows through (end() flushes what is buffered); only an error tears
  // everything down at once.
  let failed: Error | undefined;
  const fail = (err: Error) => {
    if (failed) return;
    failed = err;
    qemu.destroy();
    wire.destroy();
  };
  qemu.on("error", fail);
  wire.on("error", fail);
  let closed = 0;
  const onClose = () => {
    if (++closed === 2) opts.onEnd?.(failed);
  };
  qemu.once("close", onClose);
  wire.once("close", onClose);

  const fromQemu: keyof RelayCounters = out ? "forward" : "backward";
  const toQemu: keyof RelayCounters = out ? "backward" : "forward";
  const toWire: keyof RelayCounters = out ? "wireForward" : "wireBackward";
  const fromWire: keyof RelayCounters = out ? "wireBackward" : "wireForward";
  if (!opts.compression || opts.compression === "off") {
    // Plain: pipe() both ways, counting alongside.
    qemu.on("data", (d: Buffer) => {
      counters[fromQemu] += d.length;
      counters[toWire] += d.length;
      tap?.fromQemu(d);
    });
    wire.on("data", (d: Buffer) => {
      counters[fromWire] += d.length;
      counters[toQemu] += d.length;
    });
    qemu.pipe(wire);
    if (!opts.intoQemu) {
      if (tap) wire.on("data", (d: Buffer) => tap.toQemu(d));
      wire.pipe(qemu);
      return;
    }
    const into = opts.intoQemu;
    wire.on("data", (d: Buffer) => {
      const bufs = into(d);
      if (tap) for (const b of bufs) tap.toQemu(b);
      writeAll(bufs, wire, qemu);
    });
    wire.on("end", () => qemu.end());
    return;
  }
  const mode: Compression = out ? opts.compression : "off";
  const meter = new DrainMeter();
  const encoder = new FrameEncoder();
  qemu.on("data", (chunk: Buffer) => {
    counters[fromQemu] += chunk.length;
    tap?.fromQemu(chunk);
    meter.sample(wire.bytesWritten, wire.writableLength, performance.now());
    const bufs = encoder.encode(chunk, shouldDeflate(mode, meter));
    let room = true;
    if (bufs.length > 1) wire.cork();
    for (const b of bufs) {
      counters[toWire] += b.length;
      room = wire.write(b);
    }
    if (bufs.length > 1) wire.uncork();
    if (!room) {
      meter.pushedBack();
      holdUntilDrained(qemu, wire);
    }
  });
  qemu.on("end", () => wire.end());
  const decoder = new FrameDecoder();
  wire.on("data", (d: Buffer) => {
    counters[fromWire] += d.length;
    let chunks: Buffer[];
    try {
      chunks = decoder.push(d);
    } catch (err) {
      return fail(err as Error);
    }
    for (const c of chunks) counters[toQemu] += c.length;
    const out = opts.intoQemu ? chunks.flatMap(opts.intoQemu) : chunks;
    if (tap) for (const c of out) tap.toQemu(c);
    writeAll(out, wire, qemu);
  });
  wire.on("end", () => {
    if (!decoder.canEnd) return fail(new ChannelProtocolError("channel ended inside a frame"));
    qemu.end();
  });
}

/** Writes `bufs` to `to` in order, pausing `from` while `to` is full. */
function writeAll(bufs: Buffer[], from: Socket, to: Socket): void {
  let room = true;
  for (const b of bufs) room = to.write(b);
  if (!room) holdUntilDrained(from, to);
}

/** Back-pressure: stops reading `from` until `to` has drained (once, however often asked). */
function holdUntilDrained(from: Socket, to: Socket): void {
  if (from.isPaused()) return;
  from.pause();
  to.once("drain", () => from.resume());
}

/**
 * Reads from `s` until `parse` returns a value; bytes after it are pushed back (unshift) and
 * `s` is left paused (so nothing more is read until the caller relays or reads again).
 */
export function readPreamble<T>(
  s: Socket,
  parse: (b: Buffer) => (T & { used: number }) | null,
  timeoutMs: number,
): Promise<T> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const done = (err: Error | null, v?: T) => {
      clearTimeout(timer);
      s.off("data", onData);
      s.off("error", onErr);
      s.off("close", onClose);
      if (err) reject(err);
      else resolve(v as T);
    };
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      let v: (T & { used: number }) | null;
      try {
        v = parse(buf);
      } catch (err) {
        return done(err as Error);
      }
      if (v === null) return;
      s.pause();
      const rest = buf.subarray(v.used);
      if (rest.length) s.unshift(rest);
      done(null, v);
    };
    const onErr = (e: Error) => done(e);
    const onClose = () => done(new Error("channel closed during the opening exchange"));
    const timer = setTimeout(() => done(new Error(`no channel preamble within ${timeoutMs} ms`)), timeoutMs);
    s.on("data", onData);
    s.on("error", onErr);
    s.on("close", onClose);
    s.resume(); // an earlier preamble read left it paused
  });
}
