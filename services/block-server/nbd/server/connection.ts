// One client connection: runs the handshake state machine, then the transmission phase.
// Requests are served concurrently and answered as they finish (out of order). Reading
// stops while too much is in flight or the client is not reading replies (backpressure).
import { readSync } from "node:fs";
import type { Socket } from "node:net";
import type { Logger } from "../../../common/log.js";
import type { Backend, ReadPiece } from "../../export/backend.js";
import type { BufferPool } from "../../export/buffer-pool.js";
import type { Export } from "../../export/export.js";
import { sendfile, sendMore } from "../../export/libc.js";
import { ByteQueue } from "../byte-queue.js";
import * as C from "../protocol/constants.js";
import { isNeed } from "../protocol/decoded.js";
import { NBD_EINVAL, nbdErrnoOf, ProtocolError } from "../protocol/errors.js";
import * as T from "../protocol/transmission.js";
import { COMMANDS, type RequestContext, validate } from "./commands.js";
import { maxPayload } from "./flags.js";
import { type ExportLookup, Handshake, type Negotiated } from "./handshake.js";
import { tuneReplySocket } from "./socket-tuning.js";

export interface ConnectionLimits {
  /** Bytes of request payloads and read replies in flight before we stop reading. */
  maxInflightBytes: number;
  /** Requests in flight before we stop reading. */
  maxInflightRequests: number;
  /** A client must finish the handshake within this time (it holds a connection slot). */
  handshakeTimeoutMs: number;
}

const EMPTY = Buffer.alloc(0);

/** How READ replies went out, process-wide (for status and tuning). */
export const readPaths = { zeroCopy: 0, zeroCopyPartial: 0, buffered: 0 };

export const DEFAULT_LIMITS: ConnectionLimits = {
  maxInflightBytes: 64 << 20,
  maxInflightRequests: 256,
  handshakeTimeoutMs: 30_000,
};

/** A WRITE whose payload is still arriving; `discard` ones are consumed and refused. */
interface PendingPayload {
  req: T.Request;
  /** Received pieces (views of the network chunks), or null when discarding. */
  parts: Buffer[] | null;
  got: number;
  error?: { error: number; message: string };
}

export class Connection {
  private readonly queue = new ByteQueue();
  private readonly handshake: Handshake;
  private session: (Negotiated & { ctx: RequestContext }) | null = null;
  private detach: (() => void) | null = null;
  private payload: PendingPayload | null = null;
  private inflightBytes = 0;
  private inflightRequests = 0;
  private paused = false;
  private ending = false;
  /** destroySoon() was called. */
  private finishing = false;
  private closed = false;
  /** The socket's file descriptor for sendfile(2); -1 where Node does not expose one. */
  private readonly sockFd: number;

  constructor(
    private readonly socket: Socket,
    exports: ExportLookup,
    private readonly log: Logger,
    private readonly limits: ConnectionLimits,
    private readonly pool: BufferPool,
    private readonly onClose: () => void,
  ) {
    this.handshake = new Handshake(exports);
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    this.sockFd = typeof fd === "number" && fd >= 0 && process.env.VMHOP_NBD_SENDFILE !== "0" ? fd : -1;
    if (this.sockFd >= 0) tuneReplySocket(this.sockFd, socket.remoteAddress);
    socket.setNoDelay?.(true);
    socket.on("data", (chunk: Buffer) => {
      this.queue.push(chunk);
      this.pump();
    });
    socket.on("drain", () => this.maybeResume());
    socket.on("error", (err) => this.log.debug("socket error", { err }));
    socket.on("close", () => this.cleanup());
    socket.setTimeout(limits.handshakeTimeoutMs, () => this.hangup("handshake timed out"));
    socket.write(this.handshake.greeting());
  }

  /** Write callback: once Node's queue empties, a paused connection may take requests again. */
  private readonly flushed = (): void => {
    if (this.paused) this.maybeResume();
  };

  /** Hangs up at once (export removed, server closing). */
  close(reason: string): void {
    if (this.closed) return;
    this.log.info("disconnecting client", { reason });
    this.socket.destroy();
  }

  get exportName(): string | undefined {
    return this.session?.export.name;
  }

  private cleanup(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.clear();
    this.payload = null;
    this.detach?.();
    this.onClose();
  }

  /** Ends the connection after what is already queued for sending. */
  private hangup(reason: string): void {
    if (this.ending) return;
    this.ending = true;
    this.log.info("closing connection", { reason });
    this.queue.clear();
    this.socket.pause();
    this.finishing = true;
    this.socket.destroySoon();
  }

  private pump(): void {
    try {
      while (!this.ending && !this.closed && !this.paused) {
        if (this.handshake.state !== "transmission") {
          if (!this.handshakeStep()) return;
        } else if (!this.transmissionStep()) return;
      }
    } catch (err) {
      if (err instanceof ProtocolError) this.hangup(`protocol error: ${err.message}`);
      else {
        this.log.error("connection failed", { err });
        this.socket.destroy();
      }
    }
  }

  private handshakeStep(): boolean {
    if (this.queue.length === 0) return false;
    const r = this.handshake.step(this.queue.peek(this.queue.length));
    if ("need" in r) return false;
    this.queue.skip(r.consumed);
    for (const b of r.out) this.socket.write(b, this.flushed);
    if (r.hangup) {
      this.hangup(r.hangup);
      return false;
    }
    if (r.done) this.enter(r.done);
    return true;
  }

  private enter(n: Negotiated): void {
    const e = n.export;
    if (e.isRemoved) {
      this.hangup("export removed during handshake");
      return;
    }
    this.socket.setTimeout(0); // idle clients are fine once connected
    this.detach = e.attach(this);
    this.session = {
      ...n,
      ctx: {
        size: e.size,
        readOnly: e.readOnly,
        maxPayload: maxPayload(e),
        structured: n.structured,
        metaContext: n.metaContext,
        transmissionFlags: n.transmissionFlags,
      },
    };
    this.log.debug("transmission", { export: e.name, structured: n.structured, meta: n.metaContext });
  }

  /** Parses one request (or part of a payload); false when more bytes are needed. */
  private transmissionStep(): boolean {
    const s = this.session!;
    if (this.payload) return this.payloadStep(s.export);
    if (this.queue.length < C.REQUEST_SIZE) return false;
    if (this.socket.writableLength > 0) {
      // Replies are waiting in Node (the socket buffer is full): take no new requests until
      // they are out. This bounds memory when a client does not read, and keeps READ replies
      // on the zero-copy path, which needs an empty queue.
      this.pause();
      return false;
    }
    const d = T.decodeRequest(this.queue.peek(C.REQUEST_SIZE));
    if (isNeed(d)) return false;
    this.queue.skip(C.REQUEST_SIZE);
    const req = d.value;
    if (req.type === C.NBD_CMD_DISC) {
      this.disconnect();
      return false;
    }
    const invalid = validate(req, s.ctx);
    if (COMMANDS[req.type]?.payload) {
      // The payload follows whatever we think of the request; consume it to stay in sync.
      // Oversized or refused payloads are discarded as they arrive, never buffered.
      const keep = invalid === null;
      this.payload = {
        req,
        parts: keep ? [] : null,
        got: 0,
        error: invalid ?? undefined,
      };
      if (keep) this.track(req.length);
      return true;
    }
    if (invalid) {
      this.reply(req, invalid.error, invalid.message);
      s.export.stats.errors++;
      return true;
    }
    this.dispatch(s.export, req);
    return true;
  }

  private payloadStep(e: Export): boolean {
    const p = this.payload!;
    const want = p.req.length - p.got;
    if (p.parts) {
      const got = this.queue.takeChunks(want);
      for (const c of got) {
        p.parts.push(c);
        p.got += c.length;
      }
    } else {
      const n = Math.min(want, this.queue.length);
      this.queue.skip(n);
      p.got += n;
    }
    if (p.got < p.req.length) return false;
    this.payload = null;
    if (p.error) {
      e.stats.errors++;
      this.reply(p.req, p.error.error, p.error.message);
      return true;
    }
    const { req } = p;
    const parts = p.parts!;
    const fua = (req.flags & C.NBD_CMD_FLAG_FUA) !== 0;
    this.run(
      e,
      req,
      (b) => {
        if (parts.length === 1) return b.write(req.offset, parts[0], fua);
        if (b.writev) return b.writev(req.offset, parts, fua);
        // One contiguous buffer for backends without writev; recycled afterwards.
        const data = this.pool.alloc(req.length);
        let at = 0;
        for (const c of parts) at += c.copy(data, at);
        return b.write(req.offset, data, fua).finally(() => this.pool.release(data));
      },
      req.length,
    );
    return true;
  }

  private track(bytes: number): void {
    this.inflightBytes += bytes;
    this.inflightRequests++;
    if (
      this.inflightBytes > this.limits.maxInflightBytes ||
      this.inflightRequests >= this.limits.maxInflightRequests
    )
      this.pause();
  }

  private untrack(bytes: number): void {
    this.inflightBytes -= bytes;
    this.inflightRequests--;
    this.maybeResume();
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  private maybeResume(): void {
    if (this.closed) return;
    if (this.ending) {
      // After DISC: close once the last running request has replied (queued replies still go).
      if (this.inflightRequests === 0 && !this.finishing) {
        this.finishing = true;
        this.socket.destroySoon();
      }
      return;
    }
    if (!this.paused) return;
    if (this.inflightBytes > this.limits.maxInflightBytes / 2) return;
    if (this.inflightRequests >= this.limits.maxInflightRequests) return;
    if (this.socket.writableLength > 0) return; // a write callback or 'drain' comes back
    this.paused = false;
    this.socket.resume();
    this.pump();
  }

  /** NBD_CMD_DISC: stop reading, finish what is running, then close. */
  private disconnect(): void {
    this.ending = true;
    this.paused = true;
    this.queue.clear();
    this.socket.pause();
    this.maybeResume();
  }

  private dispatch(e: Export, req: T.Request): void {
    const fua = (req.flags & C.NBD_CMD_FLAG_FUA) !== 0;
    switch (req.type) {
      case C.NBD_CMD_READ:
        this.read(e, req);
        return;
      case C.NBD_CMD_FLUSH:
        this.run(e, req, (b) => b.flush(), 0);
        return;
      case C.NBD_CMD_TRIM:
        this.run(e, req, (b) => b.trim(req.offset, req.length, fua), 0);
        return;
      case C.NBD_CMD_CACHE:
        this.run(e, req, (b) => b.cache(req.offset, req.length), 0);
        return;
      case C.NBD_CMD_WRITE_ZEROES:
        this.run(
          e,
          req,
          (b) =>
            b.writeZeroes(req.offset, req.length, {
              fua,
              noHole: (req.flags & C.NBD_CMD_FLAG_NO_HOLE) !== 0,
              fastZero: (req.flags & C.NBD_CMD_FLAG_FAST_ZERO) !== 0,
            }),
          0,
        );
        return;
      case C.NBD_CMD_BLOCK_STATUS:
        this.blockStatus(e, req);
        return;
    }
  }

  /** Runs a command with no data in its reply; `bytes` is what is held in memory meanwhile. */
  private run(e: Export, req: T.Request, op: (b: Backend) => Promise<void>, bytes: number): void {
    if (bytes === 0) this.track(0);
    const b = e.begin();
    e.stats.requests++;
    attempt(() => op(b)).then(
      () => {
        e.end(b);
        if (req.type === C.NBD_CMD_WRITE) {
          e.stats.bytesWritten += req.length;
          e.heat.record(req.offset, req.length);
        } else if (req.type === C.NBD_CMD_WRITE_ZEROES) e.heat.record(req.offset, req.length);
        this.reply(req, 0);
        this.untrack(bytes);
      },
      (err) => {
        e.end(b);
        this.fail(e, req, err);
        this.untrack(bytes);
      },
    );
  }

  private read(e: Export, req: T.Request): void {
    const b = e.begin();
    e.stats.requests++;
    // A proxy first brings missing blocks into its cache; then the reply is an ordinary
    // local read (by sendfile when it can be).
    let ready: Promise<void> | undefined;
    try {
      ready = b.makeLocal?.(req.offset, req.length);
    } catch (err) {
      e.end(b);
      this.fail(e, req, err);
      return;
    }
    if (!ready) {
      this.readLocal(e, b, req);
      return;
    }
    this.track(0);
    ready.then(
      () => {
        this.untrack(0);
        this.readLocal(e, b, req);
      },
      (err) => {
        this.untrack(0);
        e.end(b);
        this.fail(e, req, err);
      },
    );
  }

  /** READ of data the backend holds locally; `b` is the export's begun backend. */
  private readLocal(e: Export, b: Backend, req: T.Request): void {
    if (this.sockFd >= 0 && b.cachedFileRange) {
      // Replies queued in Node must leave first: rather than copy this one in behind them,
      // wait until they have (then it can still go by sendfile).
      if (this.socket.writableLength > 0 && !this.closed) {
        this.afterQueue(e, b, req);
        return;
      }
      if (this.trySendfile(b, req)) {
        e.end(b);
        e.stats.bytesRead += req.length;
        e.heat.record(req.offset, req.length);
        return;
      }
    }
    this.track(req.length);
    readPaths.buffered++;
    const s = this.session!;
    const sparse = s.structured && b.readSparse !== undefined;
    const alloc = this.pool.alloc;
    const p = attempt<ReadPiece[] | Buffer>(() =>
      sparse ? b.readSparse!(req.offset, req.length, alloc) : b.read(req.offset, req.length, alloc),
    );
    p.then(
      (r) => {
        e.end(b);
        const pieces = Buffer.isBuffer(r) ? [{ offset: req.offset, data: r }] : r;
        // A backend answering the wrong amount would desynchronise the stream: refuse it.
        if (coverage(pieces, req.offset) !== req.length) {
          this.releasePieces(pieces);
          this.fail(e, req, new Error(`backend returned the wrong amount of data for ${req.length} bytes`));
        } else {
          e.stats.bytesRead += req.length;
          e.heat.record(req.offset, req.length);
          this.sendData(req, pieces);
        }
        this.untrack(req.length);
      },
      (err) => {
        e.end(b);
        this.fail(e, req, err);
        this.untrack(req.length);
      },
    );
  }

  /** READs waiting for Node's write queue to empty, to go out by sendfile then. */
  private waiting: { e: Export; b: Backend; req: T.Request }[] = [];

  private afterQueue(e: Export, b: Backend, req: T.Request): void {
    this.track(0); // counts towards the in-flight limit like any request held here
    this.waiting.push({ e, b, req });
    if (this.waiting.length > 1) return; // the callback below is already on its way
    // An empty write's callback runs once everything written before it has left.
    this.socket.write(EMPTY, () => {
      const ready = this.waiting;
      this.waiting = [];
      for (const w of ready) {
        this.untrack(0);
        if (this.closed || this.socket.destroyed) w.e.end(w.b);
        else this.readLocal(w.e, w.b, w.req);
      }
    });
  }

  /**
   * Zero-copy READ reply straight from the page cache (no threadpool, no buffer). Returns
   * false, having sent nothing, when it does not apply. Everything happens synchronously so
   * no other reply can come between the header and the data.
   */
  private trySendfile(b: Backend, req: T.Request): boolean {
    const sock = this.socket;
    if (this.closed || sock.writableLength > 0) return false;
    let range: { fd: number; offset: number } | null;
    try {
      range = b.cachedFileRange!(req.offset, req.length);
    } catch {
      return false;
    }
    if (!range) return false;
    const header = this.session!.structured
      ? T.encodeOffsetDataHeader(C.NBD_REPLY_FLAG_DONE, req.cookie, req.offset, req.length)
      : T.encodeSimpleReply(0, req.cookie);
    let sent = 0;
    try {
      // Node's queue is empty, so writing to the fd directly keeps the byte order.
      const h = sendMore(this.sockFd, header);
      if (h < header.length) sock.write(header.subarray(h), this.flushed);
      // Only if the header really left: else the data must queue behind it in Node.
      else sent = sendfile(this.sockFd, range.fd, range.offset, req.length);
      if (sent === req.length) readPaths.zeroCopy++;
      else readPaths.zeroCopyPartial++;
      if (sent < req.length) {
        // Socket buffer full: queue the rest in Node, read synchronously (it is cached).
        const rest = this.pool.alloc(req.length - sent);
        let got = 0;
        while (got < rest.length) {
          const n = readSync(range.fd, rest, got, rest.length - got, range.offset + sent + got);
          if (n === 0) break;
          got += n;
        }
        rest.fill(0, got);
        sock.write(rest, () => {
          this.pool.release(rest);
          this.flushed();
        });
      }
    } catch (err) {
      // The client is gone, or the header is out and the data cannot follow: hang up.
      const gone = ["EPIPE", "ECONNRESET"].includes((err as { code?: string }).code ?? "");
      if (gone) this.log.debug("client went away during a read reply", { err });
      else this.log.error("zero-copy read failed after its header was sent", { err });
      sock.destroy();
    }
    return true;
  }

  /** Hands read buffers back: to the pool, or to the backend that lent them. */
  private releasePiece(p: ReadPiece): void {
    if (!("data" in p)) return;
    this.pool.release(p.data);
    p.sent?.();
  }

  private releasePieces(pieces: ReadPiece[]): void {
    for (const p of pieces) this.releasePiece(p);
  }

  private sendData(req: T.Request, pieces: ReadPiece[]): void {
    if (this.closed) {
      this.releasePieces(pieces);
      return;
    }
    const sock = this.socket;
    if (!this.session!.structured) {
      sock.cork();
      sock.write(T.encodeSimpleReply(0, req.cookie));
      for (const p of pieces) {
        if ("data" in p)
          sock.write(p.data, () => {
            this.releasePiece(p);
            this.flushed();
          });
        else sock.write(Buffer.alloc(p.hole), this.flushed);
      }
      sock.uncork();
      return;
    }
    if (pieces.length > 1 && req.flags & C.NBD_CMD_FLAG_DF) {
      const flat = flatten(pieces, req.length);
      this.releasePieces(pieces);
      pieces = [{ offset: req.offset, data: flat }];
    }
    sock.cork();
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i];
      const flags = i === pieces.length - 1 ? C.NBD_REPLY_FLAG_DONE : 0;
      if ("data" in p) {
        sock.write(T.encodeOffsetDataHeader(flags, req.cookie, p.offset, p.data.length));
        sock.write(p.data, () => {
          this.releasePiece(p);
          this.flushed();
        });
      } else sock.write(T.encodeOffsetHoleChunk(flags, req.cookie, p.offset, p.hole), this.flushed);
    }
    sock.uncork();
  }

  private blockStatus(e: Export, req: T.Request): void {
    this.track(0);
    const b = e.begin();
    e.stats.requests++;
    const one = (req.flags & C.NBD_CMD_FLAG_REQ_ONE) !== 0;
    attempt(() => b.blockStatus(req.offset, req.length, one ? 1 : undefined)).then(
      (extents) => {
        e.end(b);
        // Clip to the request (and to one extent with REQ_ONE); drop empty extents.
        const out: { length: number; flags: number }[] = [];
        let left = req.length;
        for (const x of extents) {
          if (left <= 0) break;
          if (x.length <= 0) continue;
          const len = Math.min(x.length, left);
          out.push({ length: len, flags: x.flags });
          left -= len;
          if (req.flags & C.NBD_CMD_FLAG_REQ_ONE) break;
        }
        if (out.length === 0) this.fail(e, req, new Error("backend returned no extents"));
        else if (!this.closed)
          this.socket.write(
            T.encodeBlockStatusChunk(C.NBD_REPLY_FLAG_DONE, req.cookie, this.session!.metaContext, out),
            this.flushed,
          );
        this.untrack(0);
      },
      (err) => {
        e.end(b);
        this.fail(e, req, err);
        this.untrack(0);
      },
    );
  }

  private fail(e: Export, req: T.Request, err: unknown): void {
    e.stats.errors++;
    const errno = nbdErrnoOf(err);
    const message = err instanceof Error ? err.message : String(err);
    this.log.debug("request failed", { cmd: COMMANDS[req.type]?.name, offset: req.offset, err });
    this.reply(req, errno, message);
  }

  /** A reply without data: simple, or a structured error/none where structured replies are required. */
  private reply(req: T.Request, error: number, message = ""): void {
    if (this.closed) return;
    const s = this.session!;
    const chunked = s.structured && (req.type === C.NBD_CMD_READ || req.type === C.NBD_CMD_BLOCK_STATUS);
    if (error === 0) this.socket.write(T.encodeSimpleReply(0, req.cookie), this.flushed);
    else if (chunked)
      this.socket.write(
        T.encodeErrorChunk(C.NBD_REPLY_FLAG_DONE, req.cookie, error || NBD_EINVAL, message),
        this.flushed,
      );
    else this.socket.write(T.encodeSimpleReply(error, req.cookie), this.flushed);
  }
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

/** Runs a backend call; a synchronous throw becomes a rejection (an error reply, not a crash). */
function attempt<T>(f: () => Promise<T>): Promise<T> {
  try {
    return f();
  } catch (err) {
    return Promise.reject(err);
  }
}

function flatten(pieces: ReadPiece[], length: number): Buffer {
  const out = Buffer.alloc(length);
  const base = pieces[0].offset;
  for (const p of pieces) if ("data" in p) p.data.copy(out, p.offset - base);
  return out;
}
