// One client connection: its socket and its lifecycle. The state table (lifecycle.ts) says
// what each state allows, and every path that reads, starts work or replies asks it first:
// once the socket is gone nothing is sent (by write or sendfile) and no backend work starts.
// Memory is bounded per connection: each request is charged when admitted and reading stops
// at the limits. Requests are parsed and run by dispatch.ts, READ replies sent by read-reply.ts.
import type { Socket } from "node:net";
import type { Logger } from "../../../common/log.js";
import type { BufferPool } from "../../export/buffer-pool.js";
import type { Export } from "../../export/export.js";
import { closeFd } from "../../export/libc.js";
import { ByteQueue } from "../byte-queue.js";
import { ProtocolError } from "../protocol/errors.js";
import { dupSocketFd } from "../socket-fd.js";
import { Dispatcher } from "./dispatch.js";
import { type ExportLookup, Handshake, type Negotiated } from "./handshake.js";
import { type Charge, Inflight, Lifecycle } from "./lifecycle.js";
import { tuneReplySocket } from "./socket-tuning.js";

export interface ConnectionLimits {
  /** Bytes of admitted requests (READ lengths, WRITE payloads) before we stop reading. */
  maxInflightBytes: number;
  /** Requests admitted and not yet answered before we stop reading. */
  maxInflightRequests: number;
  /** The whole handshake must end within this time, counted from the accept. */
  handshakeTimeoutMs: number;
  /** After DISC (or the client's EOF), the last replies must be read within this time. */
  closeTimeoutMs: number;
}

export const DEFAULT_LIMITS: ConnectionLimits = {
  maxInflightBytes: 64 << 20,
  maxInflightRequests: 256,
  handshakeTimeoutMs: 30_000,
  closeTimeoutMs: 30_000,
};

const EMPTY = Buffer.alloc(0);

/** Errors that mean the client went away, not that something is wrong here. */
const CLIENT_GONE = new Set(["EPIPE", "ECONNRESET", "ENOTCONN"]);

/** What dispatch.ts and read-reply.ts use of their connection. */
export interface Link {
  readonly log: Logger;
  readonly pool: BufferPool;
  /** Replies may still be sent; false once the socket is gone (checked on every reply). */
  isLive(): boolean;
  /** Replies queued (in Node, or held behind a READ's data): a sendfile must wait for them. */
  readonly queued: number;
  /** A descriptor for sendfile that cannot be reused under us; -1 once closed. */
  readonly fd: number;
  /** Queues a reply in order; `done` runs once it left or was dropped (connection closed). */
  write(b: Buffer, done?: () => void): void;
  cork(): void;
  uncork(): void;
  /** Runs `f` once every reply queued before has left, or at once when the connection is closed. */
  whenFlushed(f: () => void): void;
  /**
   * Replies written from now on wait until the returned function is called with what goes
   * first (a READ's data, read in the background, that must follow its header at once).
   */
  hold(): (first: Buffer | null, done?: () => void) => void;
  /** A request starts: it holds `bytes` until settled. */
  admit(bytes: number): Charge;
  /** The request's reply has left or was dropped. */
  settle(c: Charge): void;
  /**
   * The stream cannot continue (e.g. a header went out without its data): hang up at once,
   * with an error line unless `err` says the client went away.
   */
  fatal(reason: string, err?: unknown): void;
}

export class Connection implements Link {
  private readonly life = new Lifecycle();
  private readonly inflight: Inflight;
  private readonly queue = new ByteQueue();
  private readonly handshake: Handshake;
  private dispatcher: Dispatcher | null = null;
  private detach: (() => void) | null = null;
  /** Handshake deadline, then (draining) the deadline for the last replies. */
  private timer: NodeJS.Timeout | undefined;
  private paused = false;
  /** The handshake waits for an export being created (see Handshake's Wait). */
  private waiting = false;
  /** The client ended its side: serve what it sent, then drain. */
  private eof = false;
  /** destroySoon() was called. */
  private finishing = false;
  private dupFd = -1;
  /** Replies waiting behind a held one (see hold()). */
  private held: { b: Buffer; done?: () => void }[] | null = null;
  private heldBytes = 0;

  constructor(
    private readonly socket: Socket,
    exports: ExportLookup,
    readonly log: Logger,
    private readonly limits: ConnectionLimits,
    readonly pool: BufferPool,
    private readonly onClose: () => void,
  ) {
    // First, so a Node that no longer exposes descriptors fails here, before anything is set
    // up (the server logs it and drops the client).
    this.dupFd = dupSocketFd(socket);
    this.handshake = new Handshake(exports);
    this.inflight = new Inflight({
      maxBytes: limits.maxInflightBytes,
      maxRequests: limits.maxInflightRequests,
    });
    socket.on("data", (chunk: Buffer) => {
      if (!this.life.allows.read) return;
      this.queue.push(chunk);
      this.pump();
    });
    socket.on("end", () => {
      this.eof = true;
      this.pump();
    });
    socket.on("drain", () => this.maybeResume());
    socket.on("error", (err) => {
      this.log.debug("socket error", { err });
      this.gone("socket error");
    });
    socket.on("close", () => this.gone("socket closed"));
    tuneReplySocket(this.dupFd, socket.remoteAddress);
    socket.setNoDelay?.(true);
    this.timer = setTimeout(
      () => this.refuse(`handshake not finished within ${limits.handshakeTimeoutMs} ms`),
      limits.handshakeTimeoutMs,
    );
    this.life.go("greet");
    this.write(this.handshake.greeting());
  }

  /** Hangs up at once (export removed, server closing). */
  close(reason: string): void {
    if (this.life.state === "closed") return;
    this.log.info("disconnecting client", { reason });
    this.gone(reason);
  }

  get exportName(): string | undefined {
    return this.dispatcher?.exportName;
  }

  get state(): string {
    return this.life.state;
  }

  // ---- lifecycle ----

  isLive(): boolean {
    // Node may have destroyed the socket (and closed its descriptor) before its 'error' or
    // 'close' event reaches us: work finishing meanwhile must see the connection as gone.
    if (this.socket.destroyed && this.life.state !== "closed") this.gone("socket destroyed");
    return this.life.allows.reply;
  }

  /** The client is cut off for a reason worth a log line (a refusal, not a normal end). */
  private refuse(reason: string): void {
    if (this.life.state === "closed") return;
    this.log.warn("closing connection", { reason, state: this.life.state });
    this.gone(reason);
  }

  /** The connection is over: drop what is queued, release the descriptor, destroy the socket. */
  private gone(reason: string): void {
    if (this.life.state === "closed") return;
    this.life.go("gone");
    clearTimeout(this.timer);
    this.queue.clear();
    if (this.dupFd >= 0) closeFd(this.dupFd);
    this.dupFd = -1;
    const held = this.held;
    this.held = null;
    this.heldBytes = 0;
    for (const h of held ?? []) h.done?.();
    this.detach?.();
    this.detach = null;
    if (!this.socket.destroyed) this.socket.destroy();
    this.log.debug("client gone", { reason, requestsDropped: this.inflight.requests });
    this.onClose();
  }

  /**
   * Stop reading; requests already running finish and reply, then the socket ends. `normal`
   * for a client that said goodbye (DISC, EOF): a debug line, not an info one.
   */
  private drain(reason: string, normal = false): void {
    if (!this.life.can("drain")) return;
    this.life.go("drain");
    if (normal) this.log.debug("closing connection", { reason });
    else this.log.info("closing connection", { reason });
    this.queue.clear();
    this.pause();
    this.dispatcher?.abandonPayload(); // a WRITE cut short by EOF will not be run
    this.finishIfIdle();
  }

  private finishIfIdle(): void {
    if (this.life.state !== "draining" || this.finishing || this.inflight.requests > 0) return;
    this.finishing = true;
    // The handshake deadline, if still running, goes on bounding this too.
    if (this.dispatcher)
      this.timer = setTimeout(
        () => this.refuse(`last replies not read within ${this.limits.closeTimeoutMs} ms`),
        this.limits.closeTimeoutMs,
      );
    this.socket.destroySoon(); // ends once queued replies have left, then 'close'
  }

  // ---- reading ----

  private pump(): void {
    try {
      while (this.isLive() && this.life.allows.read && !this.paused && !this.waiting) {
        if (this.life.state === "handshake") {
          if (!this.handshakeStep()) break;
          continue;
        }
        const d = this.dispatcher!;
        // Between requests (a WRITE's payload is part of its admitted request): stop while
        // the budget is spent or replies wait in Node (a client not reading; READ replies
        // also need an empty queue to go out by sendfile).
        if (!d.midPayload && (this.inflight.full || this.queued > 0)) {
          this.pause();
          return;
        }
        const r = d.step(this.queue);
        if (r === "disc") {
          this.drain("client sent DISC", true);
          return;
        }
        if (r === "need") break;
      }
      if (this.eof && this.life.allows.read && !this.paused) this.drain("client closed its side", true);
    } catch (err) {
      if (err instanceof ProtocolError) this.drain(`protocol error: ${err.message}`);
      else this.fatal("connection failed", err);
    }
  }

  private handshakeStep(): boolean {
    if (this.queue.length === 0) return false;
    const r = this.handshake.step(this.queue.peek(this.queue.length));
    if ("need" in r) return false;
    if ("wait" in r) {
      // Bounded by the handshake deadline; the same option is read again afterwards.
      this.waiting = true;
      void r.wait.then(() => {
        this.waiting = false;
        this.pump();
      });
      return false;
    }
    this.queue.skip(r.consumed);
    for (const b of r.out) this.write(b);
    if (r.hangup) {
      this.drain(r.hangup);
      return false;
    }
    if (r.done) this.enter(r.done);
    return true;
  }

  private enter(n: Negotiated): void {
    const e: Export = n.export;
    if (e.isRemoved) {
      this.drain("export removed during handshake");
      return;
    }
    clearTimeout(this.timer); // idle clients are fine once connected
    this.timer = undefined;
    this.detach = e.attach(this);
    this.dispatcher = new Dispatcher(this, n);
    this.life.go("negotiated");
    this.log.debug("transmission", { export: e.name, structured: n.structured, meta: n.metaContext });
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  private maybeResume(): void {
    if (!this.paused || !this.isLive() || !this.life.allows.read) return;
    if (!this.inflight.roomToResume || this.queued > 0) return; // settle() or a write callback comes back
    this.paused = false;
    this.socket.resume();
    this.pump();
  }

  // ---- Link: accounting ----

  admit(bytes: number): Charge {
    return this.inflight.admit(bytes);
  }

  settle(c: Charge): void {
    if (!this.inflight.settle(c)) return;
    if (this.life.state === "draining") this.finishIfIdle();
    else this.maybeResume();
  }

  // ---- Link: replies ----

  get fd(): number {
    return this.isLive() ? this.dupFd : -1;
  }

  get queued(): number {
    return this.socket.writableLength + this.heldBytes + (this.held ? 1 : 0);
  }

  /** Write callback: once Node's queue empties, a paused connection may take requests again. */
  private readonly flushed = (): void => {
    if (this.paused) this.maybeResume();
  };

  write(b: Buffer, done?: () => void): void {
    if (!this.isLive()) {
      done?.();
      return;
    }
    if (this.held) {
      this.held.push({ b, done });
      this.heldBytes += b.length;
      return;
    }
    this.socket.write(
      b,
      done
        ? () => {
            done();
            this.flushed();
          }
        : this.flushed,
    );
  }

  cork(): void {
    if (this.isLive()) this.socket.cork();
  }

  uncork(): void {
    if (!this.socket.destroyed) this.socket.uncork();
  }

  whenFlushed(f: () => void): void {
    // An empty write's callback runs once everything written before it has left.
    if (this.isLive()) this.write(EMPTY, f);
    else f();
  }

  hold(): (first: Buffer | null, done?: () => void) => void {
    if (this.held) throw new Error("connection: replies are already held");
    if (this.isLive()) this.held = [];
    return (first, done) => {
      const waiting = this.held ?? [];
      this.held = null;
      this.heldBytes = 0;
      this.cork();
      if (first) this.write(first, done);
      else done?.();
      for (const h of waiting) this.write(h.b, h.done);
      this.uncork();
      this.flushed();
    };
  }

  fatal(reason: string, err?: unknown): void {
    if (this.life.state === "closed") return;
    // A client hanging up mid-reply is its own business; anything else is ours.
    if (CLIENT_GONE.has((err as { code?: string } | undefined)?.code ?? "")) this.log.debug(reason, { err });
    else this.log.error(reason, { err });
    this.gone(reason);
  }
}
