// Joins QEMU's socket and the wire (TCP to the peer page-server) both ways — QEMU's
// migration stream is duplex: post-copy page requests come back on it — with back-pressure,
// optional compression, byte counts, and both sides torn down together.
import { type NetConnectOpts, connect as netConnect, type Socket } from "node:net";
import { constants, createDeflateRaw, createInflateRaw } from "node:zlib";

/** Bytes source → destination ("forward") and back, as QEMU sees them and on the wire. */
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
  /** Deflate the wire (level 1, flushed per chunk so a page request is never held back). */
  compress?: boolean;
  onEnd?: (err?: Error) => void;
}

export function relay(qemu: Socket, wire: Socket, counters: RelayCounters, opts: RelayOptions): void {
  wire.setNoDelay(true);
  const out = opts.side === "source";
  const count = (s: NodeJS.ReadableStream, key: keyof RelayCounters) =>
    s.on("data", (d: Buffer) => {
      counters[key] += d.length;
    });
  count(qemu, out ? "forward" : "backward");
  count(wire, out ? "wireBackward" : "wireForward");
  const streams: NodeJS.EventEmitter[] = [qemu, wire];
  if (opts.compress) {
    const z = { highWaterMark: SOCKET_HIGH_WATER_MARK, chunkSize: 256 << 10 };
    const deflate = createDeflateRaw({ ...z, level: 1, flush: constants.Z_SYNC_FLUSH });
    const inflate = createInflateRaw(z);
    count(deflate, out ? "wireForward" : "wireBackward");
    count(inflate, out ? "backward" : "forward");
    qemu.pipe(deflate).pipe(wire);
    wire.pipe(inflate).pipe(qemu);
    streams.push(deflate, inflate);
  } else {
    count(qemu, out ? "wireForward" : "wireBackward");
    count(wire, out ? "backward" : "forward");
    qemu.pipe(wire);
    wire.pipe(qemu);
  }
  // An orderly end flows through pipe() (end() flushes what is buffered); only an error
  // tears everything down at once.
  let failed: Error | undefined;
  const fail = (err: Error) => {
    if (failed) return;
    failed = err;
    qemu.destroy();
    wire.destroy();
  };
  for (const s of streams) s.on("error", fail);
  let closed = 0;
  const onClose = () => {
    if (++closed === 2) opts.onEnd?.(failed);
  };
  qemu.once("close", onClose);
  wire.once("close", onClose);
}

/** Reads from `s` until `parse` returns a value; bytes after it are pushed back (unshift). */
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
  });
}
