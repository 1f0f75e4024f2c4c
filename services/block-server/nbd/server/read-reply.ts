// READ replies: straight from the page cache by sendfile(2) when the backend offers the range
// (`cachedFileRange`; header with MSG_MORE, then the data, no buffer and no threadpool), else
// buffered (read into pooled buffers, then written; structured replies send holes as hole
// chunks). A proxy's missing blocks are made local first (`makeLocal`). Each READ holds the
// charge its connection took for it until its data has left or was dropped.
import { read as fsRead } from "node:fs";
import type { Backend, ReadPiece } from "../../export/backend.js";
import type { Export } from "../../export/export.js";
import { preadCached, sendfile, sendMore } from "../../export/libc.js";
import * as C from "../protocol/constants.js";
import * as T from "../protocol/transmission.js";
import type { Link } from "./connection.js";
import type { Session } from "./dispatch.js";
import type { Charge } from "./lifecycle.js";

/**
 * The rest of a READ that sendfile could not send (the socket buffer was full) is copied from
 * the page cache on the event loop up to this size (a memcpy that RWF_NOWAIT keeps from ever
 * waiting for the disk: ~0.1 ms); anything larger is read on the threadpool while the
 * connection's later replies wait behind it.
 */
export const SYNC_REMAINDER_MAX = 1 << 20;

export type Fail = (e: Export, req: T.Request, err: unknown, charge: Charge) => void;

export class ReadReplies {
  /** READs waiting for replies queued ahead of them to leave, to go out by sendfile then. */
  private waiting: { e: Export; b: Backend; req: T.Request; charge: Charge }[] = [];

  constructor(
    private readonly link: Link,
    private readonly s: Session,
    private readonly fail: Fail,
  ) {}

  read(e: Export, req: T.Request, charge: Charge): void {
    const b = e.begin();
    e.request(req.type);
    // A proxy first brings missing blocks into its cache; then the reply is an ordinary
    // local read (by sendfile when it can be).
    let ready: Promise<void> | undefined;
    try {
      ready = b.makeLocal?.(req.offset, req.length);
    } catch (err) {
      e.end(b);
      this.fail(e, req, err, charge);
      return;
    }
    if (!ready) {
      this.local(e, b, req, charge);
      return;
    }
    ready.then(
      () => this.local(e, b, req, charge),
      (err) => {
        e.end(b);
        this.fail(e, req, err, charge);
      },
    );
  }

  /** Drops a READ whose connection is gone. */
  private drop(e: Export, b: Backend, charge: Charge): void {
    e.end(b);
    this.link.settle(charge);
  }

  /** READ of data the backend holds locally; `b` is the export's begun backend. */
  private local(e: Export, b: Backend, req: T.Request, charge: Charge): void {
    if (!this.link.isLive()) {
      this.drop(e, b, charge);
      return;
    }
    if (this.link.fd >= 0 && b.cachedFileRange) {
      // Replies queued ahead must leave first: rather than copy this one in behind them,
      // wait until they have (then it can still go by sendfile).
      if (this.link.queued > 0) {
        this.afterQueue(e, b, req, charge);
        return;
      }
      if (this.trySendfile(e, b, req, charge)) return;
    }
    const sparse = this.s.structured && b.readSparse !== undefined;
    const alloc = this.link.pool.alloc;
    attempt<ReadPiece[] | Buffer>(() =>
      sparse ? b.readSparse!(req.offset, req.length, alloc) : b.read(req.offset, req.length, alloc),
    ).then(
      (r) => {
        e.end(b);
        const pieces = Buffer.isBuffer(r) ? [{ offset: req.offset, data: r }] : r;
        if (!this.link.isLive()) {
          this.releasePieces(pieces);
          this.link.settle(charge);
          return;
        }
        // A backend answering the wrong amount would desynchronise the stream: refuse it.
        if (coverage(pieces, req.offset) !== req.length) {
          this.releasePieces(pieces);
          this.fail(
            e,
            req,
            new Error(`backend returned the wrong amount of data for ${req.length} bytes`),
            charge,
          );
          return;
        }
        e.stats.bytesRead += req.length;
        e.heat.record(req.offset, req.length);
        this.sendData(req, pieces, charge);
      },
      (err) => {
        e.end(b);
        this.fail(e, req, err, charge);
      },
    );
  }

  private afterQueue(e: Export, b: Backend, req: T.Request, charge: Charge): void {
    this.waiting.push({ e, b, req, charge });
    if (this.waiting.length > 1) return; // the callback below is already on its way
    this.link.whenFlushed(() => {
      const ready = this.waiting;
      this.waiting = [];
      for (const w of ready) this.local(w.e, w.b, w.req, w.charge); // drops them if closed
    });
  }

  /**
   * Zero-copy READ reply. Returns false, having sent nothing, when it does not apply; true when
   * the READ is answered (or the connection hung up), its backend ended and its charge settled
   * (now or once the rest of its data has left). Header and sendfile happen synchronously, so
   * no other reply can come between them.
   */
  private trySendfile(e: Export, b: Backend, req: T.Request, charge: Charge): boolean {
    const fd = this.link.fd;
    let range: { fd: number; offset: number } | null;
    try {
      range = b.cachedFileRange!(req.offset, req.length);
    } catch {
      return false;
    }
    if (!range) return false;
    const header = this.s.structured
      ? T.encodeOffsetDataHeader(C.NBD_REPLY_FLAG_DONE, req.cookie, req.offset, req.length)
      : T.encodeSimpleReply(0, req.cookie);
    let sent = 0;
    try {
      // Nothing is queued in Node (checked by the caller), so writing to the socket directly keeps the byte order.
      const h = sendMore(fd, header);
      if (h < header.length) this.link.write(header.subarray(h));
      // Only if the header really left: else the data must queue behind it in Node.
      else sent = sendfile(fd, range.fd, range.offset, req.length);
    } catch (err) {
      // The client is gone, or the header is out and the data cannot follow: hang up.
      this.link.fatal("zero-copy read failed after its header was sent", err);
      this.drop(e, b, charge);
      return true;
    }
    e.stats.bytesRead += req.length;
    e.heat.record(req.offset, req.length);
    if (sent === req.length) {
      this.drop(e, b, charge); // answered: the same bookkeeping as a dropped one
      return true;
    }
    this.remainder(e, b, range, req, sent, charge);
    return true;
  }

  /** Sends what sendfile left of a READ (the socket buffer filled) through Node's queue. */
  private remainder(
    e: Export,
    b: Backend,
    range: { fd: number; offset: number },
    req: T.Request,
    sent: number,
    charge: Charge,
  ): void {
    const pool = this.link.pool;
    const rest = pool.alloc(req.length - sent);
    const from = range.offset + sent;
    const got = rest.length <= SYNC_REMAINDER_MAX ? preadCached(range.fd, rest, from) : 0;
    const done = () => {
      pool.release(rest);
      this.link.settle(charge);
    };
    if (got === rest.length) {
      e.end(b);
      this.link.write(rest, done);
      return;
    }
    // On the threadpool: later replies wait (held) so this data still follows its header.
    const release = this.link.hold();
    readFull(range.fd, rest, got, from).then(
      () => {
        e.end(b); // the backend's descriptor is no longer needed
        release(rest, done);
      },
      (err) => {
        e.end(b);
        // The header is out and its data cannot follow: nothing held may go after it.
        this.link.fatal("reading the rest of a zero-copy read failed after its header was sent", err);
        release(null);
        done();
      },
    );
  }

  /** Hands read buffers back: to the pool, or to the backend that lent them. */
  private releasePiece(p: ReadPiece): void {
    if (!("data" in p)) return;
    this.link.pool.release(p.data);
    p.sent?.();
  }

  private releasePieces(pieces: ReadPiece[]): void {
    for (const p of pieces) this.releasePiece(p);
  }

  /** Writes a READ's reply; the charge is settled once every buffer written has left. */
  private sendData(req: T.Request, pieces: ReadPiece[], charge: Charge): void {
    const link = this.link;
    let left = 0;
    const sent = (p: ReadPiece | null) => () => {
      if (p) this.releasePiece(p);
      if (--left === 0) link.settle(charge);
    };
    link.cork();
    if (!this.s.structured) {
      link.write(T.encodeSimpleReply(0, req.cookie));
      left = pieces.length;
      for (const p of pieces) {
        if ("data" in p) link.write(p.data, sent(p));
        else link.write(Buffer.alloc(p.hole), sent(null));
      }
      link.uncork();
      return;
    }
    if (pieces.length > 1 && req.flags & C.NBD_CMD_FLAG_DF) {
      const flat = flatten(pieces, req.length);
      this.releasePieces(pieces);
      pieces = [{ offset: req.offset, data: flat }];
    }
    left = pieces.length;
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i];
      const flags = i === pieces.length - 1 ? C.NBD_REPLY_FLAG_DONE : 0;
      if ("data" in p) {
        link.write(T.encodeOffsetDataHeader(flags, req.cookie, p.offset, p.data.length));
        link.write(p.data, sent(p));
      } else link.write(T.encodeOffsetHoleChunk(flags, req.cookie, p.offset, p.hole), sent(null));
    }
    link.uncork();
  }
}

/** Runs a backend call; a synchronous throw becomes a rejection (an error reply, not a crash). */
export function attempt<T>(f: () => Promise<T>): Promise<T> {
  try {
    return f();
  } catch (err) {
    return Promise.reject(err);
  }
}

/** Fills buf[at..] from the file at `position` + at, on the threadpool; past the end reads as zeroes. */
function readFull(fd: number, buf: Buffer, at: number, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = () =>
      fsRead(fd, buf, at, buf.length - at, position + at, (err, n) => {
        if (err) return reject(err);
        if (n === 0) {
          buf.fill(0, at);
          return resolve();
        }
        at += n;
        if (at < buf.length) step();
        else resolve();
      });
    if (at < buf.length) step();
    else resolve();
  });
}

/** Bytes covered by contiguous pieces starting at `offset`; -1 if they leave a gap or overlap. */
function coverage(pieces: ReadPiece[], offset: number): number {
  let at = offset;
  for (const p of pieces) {
    if (p.offset !== at) return -1;
    at += "data" in p ? p.data.length : p.hole;
  }
  return at - offset;
}

function flatten(pieces: ReadPiece[], length: number): Buffer {
  const out = Buffer.alloc(length);
  const base = pieces[0].offset;
  for (const p of pieces) if ("data" in p) p.data.copy(out, p.offset - base);
  return out;
}
