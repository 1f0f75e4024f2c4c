// The proxy's fetch worker: one upstream NBD connection (simple replies) in a worker thread
// that moves each READ reply's data from the socket into the cache file with splice(2)
// (socket → pipe → file), so fetched bytes never pass through JavaScript and cost one
// kernel copy instead of three. It blocks in poll() on the socket and a wake eventfd; the
// main thread (file-fetcher.ts) posts requests and gets one message per finished read.
//
// Protocol with the main thread:
//   in:  { op: "read", id, offset, length }   (fetch [offset, offset+length) to the same
//        offset of the cache file)  |  { op: "close" }
//   out: { ready } once set up  |  { id } done  |  { id, error }  (the server's NBD error, or the cache's write
//        error: the stream stays in step)  |  { fatal }  (the connection is unusable; every
//        read not yet answered fails with it, then the worker ends)
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
  sockFd: number;
  /** Opened by the worker itself, so its descriptor lives exactly as long as the worker. */
  cachePath: string;
  wakeFd: number;
  /** [0] is 1 while the worker sleeps (or is about to) in poll: only then is a wake needed. */
  sleeping: Int32Array;
  port: MessagePort;
}

export type FetchCommand = { op: "read"; id: number; offset: number; length: number } | { op: "close" };
export type FetchResult = { ready: true } | { id: number; error?: string } | { fatal: string };

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

class FetchWorker {
  private readonly pending = new Map<number, Pending>();
  private outbox: Buffer[] = [];
  private readonly header = Buffer.alloc(SIMPLE_REPLY_SIZE);
  private headerGot = 0;
  private cur: Current | undefined;
  private closing = false;
  private pipe = { read: -1, write: -1, size: 0 };
  private devNull = -1;
  private cacheFd = -1;

  constructor(private readonly d: FetchWorkerData) {}

  run(): void {
    try {
      this.pipe = pipe(PIPE_SIZE);
      this.devNull = openSync("/dev/null", "w");
      this.cacheFd = openSync(this.d.cachePath, "r+");
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
      for (const fd of [this.d.sockFd, this.pipe.read, this.pipe.write]) if (fd >= 0) closeFd(fd);
      // Through fs, which tracks what a worker opened and would close it again at exit
      // (by then perhaps someone else's descriptor).
      for (const fd of [this.devNull, this.cacheFd]) if (fd >= 0) closeSync(fd);
      this.d.port.close();
    }
  }

  private post(m: FetchResult): void {
    this.d.port.postMessage(m);
  }

  private takeCommands(): void {
    for (let m = receiveMessageOnPort(this.d.port); m && !this.closing; m = receiveMessageOnPort(this.d.port))
      this.command(m.message as FetchCommand);
  }

  private command(c: FetchCommand): void {
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
      const n = sendNow(this.d.sockFd, b);
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
    const n = recvNow(this.d.sockFd, this.header.subarray(this.headerGot));
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
    const n = splice(this.d.sockFd, this.pipe.write, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
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
    // Announce the sleep, then look once more: a command posted before the announcement is
    // seen here, one posted after it comes with a wake (file-fetcher.ts checks the flag).
    Atomics.store(this.d.sleeping, 0, 1);
    const more = receiveMessageOnPort(this.d.port);
    if (more) {
      Atomics.store(this.d.sleeping, 0, 0);
      this.command(more.message as FetchCommand);
      return;
    }
    this.poll();
    Atomics.store(this.d.sleeping, 0, 0);
  }

  private poll(): void {
    const sockEvents = POLLIN | (this.outbox.length > 0 ? POLLOUT : 0);
    const [wake] = pollFds(
      [
        { fd: this.d.wakeFd, events: POLLIN },
        { fd: this.d.sockFd, events: sockEvents },
      ],
      -1,
    );
    if (wake) drainEventFd(this.d.wakeFd);
  }
}

new FetchWorker(workerData as FetchWorkerData).run();
