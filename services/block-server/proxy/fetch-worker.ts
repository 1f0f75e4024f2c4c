// The proxy's fetch worker: a thread that serves one upstream NBD connection (simple replies)
// at a time and moves each READ reply's data from the socket into the cache file with
// splice(2) (socket → pipe → file), so fetched bytes never pass through JavaScript and cost
// one kernel copy instead of three. It blocks in poll() on the socket and a wake eventfd; the
// main thread (file-fetcher.ts) posts requests and gets one message per finished read.
//
// Threads outlive their connections: between sessions a thread waits in fetch-thread-pool.ts
// for the next one, so a new proxy export does not pay for a new isolate (module loading,
// compiling the hot loop again) while its first reads are served.
//
// Protocol with the main thread; every message carries its session, and a command or
// result of another session is stale and dropped:
//   in:  { op: "attach", session, sockFd, cachePath }  (the worker owns sockFd from here)
//        | { op: "read", session, id, offset, length }  (fetch [offset, offset+length) to
//        the same offset of the cache file)  |  { op: "close", session }  |  { op: "exit" }
//   out: { ready } once set up  |  { id } done  |  { id, error }  (the server's NBD error, or
//        the cache's write error: the stream stays in step)  |  { fatal }  (the connection is
//        unusable; every read not yet answered fails with it)  |  { detached }  (the session
//        is over, its descriptors closed: the thread is free for another)
import { closeSync, openSync } from "node:fs";
import { type MessagePort, receiveMessageOnPort, workerData } from "node:worker_threads";
import {
  closeFd,
  drainEventFd,
  POLLIN,
  POLLOUT,
  pipe,
  pollFds,
  recvNow,
  SPLICE_F_MOVE,
  SPLICE_F_NONBLOCK,
  sendNow,
  splice,
} from "../export/libc.js";
import { NBD_CMD_READ, SIMPLE_REPLY_SIZE } from "../nbd/protocol/constants.js";
import { nbdErrorName } from "../nbd/protocol/errors.js";
import { decodeSimpleReply, encodeRequest } from "../nbd/protocol/transmission.js";

export interface FetchWorkerData {
  wakeFd: number;
  /** [0] is 1 while the worker sleeps (or is about to) in poll: only then is a wake needed. */
  sleeping: Int32Array;
  port: MessagePort;
}

export type FetchCommand =
  | { op: "attach"; session: number; sockFd: number; cachePath: string }
  | { op: "read"; session: number; id: number; offset: number; length: number }
  | { op: "close"; session: number }
  | { op: "exit" };
export type FetchResult = { session: number } & (
  | { ready: true }
  | { id: number; error?: string }
  | { fatal: string }
  | { detached: true }
);

/**
 * The longest a thread sleeps in poll() before looking again, idle or serving. The process's
 * exit stops a worker only while it runs JavaScript: a thread asleep with no timeout kept a
 * block-server alive, signals and all, when it exited with a connection still open.
 */
const POLL_MS = 250;

const PIPE_SIZE = 1 << 20;

interface Pending {
  offset: number;
  length: number;
}

/** The reply whose data is being moved now. */
interface Current {
  id: number;
  /** Cache file position (loff_t) the next bytes go to; splice advances it. */
  pos: Buffer;
  left: number;
  /** Set when writing to the cache failed: the rest of the data is drained and dropped. */
  error?: string;
}

type Attach = Extract<FetchCommand, { op: "attach" }>;

/** One upstream connection, from attach to detach. */
class Session {
  private readonly pending = new Map<number, Pending>();
  private outbox: Buffer[] = [];
  private readonly header = Buffer.alloc(SIMPLE_REPLY_SIZE);
  private headerGot = 0;
  private cur: Current | undefined;
  private closing = false;
  private pipe = { read: -1, write: -1, size: 0 };
  private cacheFd = -1;
  private readonly sockFd: number;
  private readonly session: number;
  private readonly cachePath: string;

  constructor(
    private readonly d: FetchWorkerData,
    a: Attach,
    private readonly devNull: number,
  ) {
    ({ sockFd: this.sockFd, session: this.session, cachePath: this.cachePath } = a);
  }

  /** Serves the connection until closed or broken; always ends by closing it and detaching. */
  run(): void {
    try {
      this.pipe = pipe(PIPE_SIZE);
      this.cacheFd = openSync(this.cachePath, "r+");
      this.post({ ready: true });
      for (;;) {
        this.takeCommands();
        if (this.closing) break;
        const sent = this.send();
        const got = this.receive();
        if (!sent && !got) this.waitForWork();
      }
    } catch (e) {
      this.post({ fatal: (e as Error).message });
    } finally {
      for (const fd of [this.sockFd, this.pipe.read, this.pipe.write]) if (fd >= 0) closeFd(fd);
      // Through fs, which tracks what a worker opened and would close it again at exit
      // (by then perhaps someone else's descriptor).
      if (this.cacheFd >= 0) closeSync(this.cacheFd);
      this.post({ detached: true });
    }
  }

  private post(m: DistributiveOmit<FetchResult, "session">): void {
    postResult(this.d, this.session, m);
  }

  private takeCommands(): void {
    for (let m = receiveMessageOnPort(this.d.port); m && !this.closing; m = receiveMessageOnPort(this.d.port))
      this.command(m.message as FetchCommand);
  }

  private command(c: FetchCommand): void {
    if (c.op === "exit" || c.op === "attach") {
      // Never sent to a thread in use: a bug in the pool. Hand back what came with it.
      if (c.op === "attach") {
        closeFd(c.sockFd);
        postResult(this.d, c.session, { fatal: "fetch thread is busy" });
        postResult(this.d, c.session, { detached: true });
      }
      return;
    }
    if (c.session !== this.session) return; // stale: from a session that is over
    if (c.op === "close") {
      this.closing = true;
      return;
    }
    this.pending.set(c.id, { offset: c.offset, length: c.length });
    this.outbox.push(
      encodeRequest({
        flags: 0,
        type: NBD_CMD_READ,
        cookie: BigInt(c.id),
        offset: c.offset,
        length: c.length,
      }),
    );
  }

  /** Sends queued requests as far as the socket takes them; true if anything went out. */
  private send(): boolean {
    let any = false;
    while (this.outbox.length > 0) {
      const b = this.outbox[0];
      const n = sendNow(this.sockFd, b);
      if (n === 0) break;
      any = true;
      if (n < b.length) this.outbox[0] = b.subarray(n);
      else this.outbox.shift();
    }
    return any;
  }

  /**
   * Moves whatever has arrived; true if it made progress. Also when nothing is asked for:
   * the server hanging up (or sending what no one asked for) must end the worker, not leave
   * it polling a dead socket.
   */
  private receive(): boolean {
    return this.cur ? this.moveData(this.cur) : this.readHeader();
  }

  private readHeader(): boolean {
    const n = recvNow(this.sockFd, this.header.subarray(this.headerGot));
    if (n < 0) return false;
    if (n === 0) throw new Error("upstream closed the connection");
    this.headerGot += n;
    if (this.headerGot < SIMPLE_REPLY_SIZE) return true;
    this.headerGot = 0;
    const d = decodeSimpleReply(this.header); // throws on a bad magic: the stream is lost
    if ("need" in d) return true;
    const { error, cookie } = d.value;
    const id = Number(cookie);
    const p = this.pending.get(id);
    if (!p) throw new Error(`upstream answered an unknown request (cookie ${cookie})`);
    if (error !== 0) {
      // An error reply carries no data.
      this.pending.delete(id);
      this.post({ id, error: `upstream: ${nbdErrorName(error)}` });
      return true;
    }
    const pos = Buffer.alloc(8);
    pos.writeBigUInt64LE(BigInt(p.offset));
    this.cur = { id, pos, left: p.length };
    if (p.length === 0) this.finish(this.cur);
    return true;
  }

  private moveData(c: Current): boolean {
    const want = Math.min(c.left, this.pipe.size);
    const n = splice(this.sockFd, this.pipe.write, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0) return false;
    if (n === 0) throw new Error("upstream closed the connection in the middle of a reply");
    this.drainPipe(c, n);
    c.left -= n;
    if (c.left === 0) this.finish(c);
    return true;
  }

  /** Empties the pipe into the cache at c.pos (or, after a write error, into /dev/null). */
  private drainPipe(c: Current, n: number): void {
    while (n > 0) {
      let m: number;
      if (c.error === undefined) {
        try {
          m = splice(this.pipe.read, this.cacheFd, n, SPLICE_F_MOVE, { out: c.pos });
          if (m === 0) throw new Error("cache write made no progress");
        } catch (e) {
          c.error = `cache write failed: ${(e as Error).message}`;
          continue;
        }
      } else m = splice(this.pipe.read, this.devNull, n, SPLICE_F_MOVE);
      n -= m;
    }
  }

  private finish(c: Current): void {
    this.cur = undefined;
    this.pending.delete(c.id);
    this.post(c.error === undefined ? { id: c.id } : { id: c.id, error: c.error });
  }

  /** Sleeps until the socket can move something or the main thread wakes us. */
  private waitForWork(): void {
    const sockEvents = POLLIN | (this.outbox.length > 0 ? POLLOUT : 0);
    const c = sleep(this.d, [{ fd: this.sockFd, events: sockEvents }], POLL_MS);
    if (c) this.command(c);
  }
}

/**
 * Sleeps in poll() until woken, `also` is ready or the timeout passes. Announces the sleep,
 * then looks at the port once more: a command posted before the announcement is returned
 * here instead, one posted after it comes with a wake (file-fetcher.ts checks the flag).
 */
function sleep(
  d: FetchWorkerData,
  also: { fd: number; events: number }[],
  timeoutMs: number,
): FetchCommand | undefined {
  Atomics.store(d.sleeping, 0, 1);
  const more = receiveMessageOnPort(d.port);
  if (!more) {
    const [wake] = pollFds([{ fd: d.wakeFd, events: POLLIN }, ...also], timeoutMs);
    if (wake) drainEventFd(d.wakeFd);
  }
  Atomics.store(d.sleeping, 0, 0);
  return more?.message as FetchCommand | undefined;
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

function postResult(d: FetchWorkerData, session: number, m: DistributiveOmit<FetchResult, "session">): void {
  d.port.postMessage({ ...m, session });
}

/** Between sessions: waits for the next attach (or exit); stale commands are dropped. */
function serve(d: FetchWorkerData): void {
  const devNull = openSync("/dev/null", "w");
  try {
    for (;;) {
      const c = (receiveMessageOnPort(d.port)?.message as FetchCommand | undefined) ?? sleep(d, [], POLL_MS);
      if (c?.op === "exit") break;
      if (c?.op === "attach") new Session(d, c, devNull).run();
    }
  } finally {
    closeSync(devNull);
  }
}

serve(workerData as FetchWorkerData);
