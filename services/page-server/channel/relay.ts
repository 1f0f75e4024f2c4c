// Joins two sockets both ways (QEMU's migration stream is duplex: post-copy page requests
// come back on it), counting bytes, with back-pressure, and tears both down together.
import type { Socket } from "node:net";

export interface RelayCounters {
  /** Bytes from the first socket to the second, and back. */
  forward: number;
  backward: number;
}

export function relay(a: Socket, b: Socket, counters: RelayCounters, onEnd?: (err?: Error) => void): void {
  a.setNoDelay(true);
  b.setNoDelay?.(true);
  a.on("data", (d: Buffer) => {
    counters.forward += d.length;
  });
  b.on("data", (d: Buffer) => {
    counters.backward += d.length;
  });
  a.pipe(b);
  b.pipe(a);
  // An orderly end flows through pipe() (end() flushes what is buffered); only an error
  // tears both sides down at once.
  let failed: Error | undefined;
  const fail = (err: Error) => {
    if (failed) return;
    failed = err;
    a.destroy();
    b.destroy();
  };
  a.on("error", fail);
  b.on("error", fail);
  let closed = 0;
  const onClose = () => {
    if (++closed === 2) onEnd?.(failed);
  };
  a.once("close", onClose);
  b.once("close", onClose);
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
