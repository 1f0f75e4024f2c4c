// Request dispatch in the transmission phase: parses each request, validates it, charges it
// to its connection (what it will hold in memory), runs it on the export's backend and
// replies. READ replies, which carry data, are read-reply.ts's.
import type { Backend } from "../../export/backend.js";
import type { Export } from "../../export/export.js";
import type { ByteQueue } from "../byte-queue.js";
import * as C from "../protocol/constants.js";
import { isNeed } from "../protocol/decoded.js";
import { NBD_EINVAL, nbdErrnoOf } from "../protocol/errors.js";
import * as T from "../protocol/transmission.js";
import { COMMANDS, type RequestContext, validate } from "./commands.js";
import type { Link } from "./connection.js";
import { maxPayload } from "./flags.js";
import type { Negotiated } from "./handshake.js";
import type { Charge } from "./lifecycle.js";
import { attempt, ReadReplies } from "./read-reply.js";

/** What the handshake agreed, and the rules requests are checked against. */
export interface Session extends Negotiated {
  ctx: RequestContext;
}

/** A WRITE whose payload is still arriving; refused ones (`parts` null) are consumed and dropped. */
interface PendingPayload {
  req: T.Request;
  /** Received pieces (views of the network chunks), or null when discarding. */
  parts: Buffer[] | null;
  got: number;
  error?: { error: number; message: string };
  /** Null for a refused WRITE: its payload is never held. */
  charge: Charge | null;
}

/** "more": took something, call again; "need": wait for bytes; "disc": the client said goodbye. */
export type StepResult = "more" | "need" | "disc";

export class Dispatcher {
  private readonly s: Session;
  private readonly reads: ReadReplies;
  private payload: PendingPayload | null = null;

  constructor(
    private readonly link: Link,
    n: Negotiated,
  ) {
    const e = n.export;
    this.s = {
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
    this.reads = new ReadReplies(link, this.s, (ex, req, err, charge) => this.fail(ex, req, err, charge));
  }

  get exportName(): string {
    return this.s.export.name;
  }

  /** A WRITE's payload is arriving: it belongs to an admitted request and must be read. */
  get midPayload(): boolean {
    return this.payload !== null;
  }

  /** Drops a WRITE whose payload will never complete (the client ended mid-payload). */
  abandonPayload(): void {
    const p = this.payload;
    this.payload = null;
    if (p?.charge) this.link.settle(p.charge);
  }

  /** Takes one request from `queue`, or what has arrived of a WRITE's payload. */
  step(queue: ByteQueue): StepResult {
    if (this.payload) return this.payloadStep(queue) ? "more" : "need";
    if (queue.length < C.REQUEST_SIZE) return "need";
    const d = T.decodeRequest(queue.peek(C.REQUEST_SIZE)); // a bad magic throws ProtocolError
    if (isNeed(d)) return "need";
    queue.skip(C.REQUEST_SIZE);
    const req = d.value;
    if (req.type === C.NBD_CMD_DISC) return "disc";
    const e = this.s.export;
    const invalid = validate(req, this.s.ctx);
    if (COMMANDS[req.type]?.payload) {
      // The payload follows whatever we think of the request; consume it to stay in sync.
      // Oversized or refused payloads are discarded as they arrive, never buffered.
      const keep = invalid === null;
      this.payload = {
        req,
        parts: keep ? [] : null,
        got: 0,
        error: invalid ?? undefined,
        charge: keep ? this.link.admit(req.length) : null,
      };
      return "more";
    }
    if (invalid) {
      e.stats.errors++;
      this.reply(req, invalid.error, invalid.message);
      return "more";
    }
    this.dispatch(e, req);
    return "more";
  }

  private payloadStep(queue: ByteQueue): boolean {
    const p = this.payload!;
    const want = p.req.length - p.got;
    if (p.parts) {
      for (const c of queue.takeChunks(want)) {
        p.parts.push(c);
        p.got += c.length;
      }
    } else {
      const n = Math.min(want, queue.length);
      queue.skip(n);
      p.got += n;
    }
    if (p.got < p.req.length) return false;
    this.payload = null;
    const e = this.s.export;
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
        const data = this.link.pool.alloc(req.length);
        let at = 0;
        for (const c of parts) at += c.copy(data, at);
        return b.write(req.offset, data, fua).finally(() => this.link.pool.release(data));
      },
      p.charge!,
    );
    return true;
  }

  private dispatch(e: Export, req: T.Request): void {
    const fua = (req.flags & C.NBD_CMD_FLAG_FUA) !== 0;
    switch (req.type) {
      case C.NBD_CMD_READ:
        // Charged its whole length now, while it may still wait for a fetch or the socket.
        this.reads.read(e, req, this.link.admit(req.length));
        return;
      case C.NBD_CMD_FLUSH:
        this.run(e, req, (b) => b.flush(), this.link.admit(0));
        return;
      case C.NBD_CMD_TRIM:
        this.run(e, req, (b) => b.trim(req.offset, req.length, fua), this.link.admit(0));
        return;
      case C.NBD_CMD_CACHE:
        this.run(e, req, (b) => b.cache(req.offset, req.length), this.link.admit(0));
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
          this.link.admit(0),
        );
        return;
      case C.NBD_CMD_BLOCK_STATUS:
        this.blockStatus(e, req, this.link.admit(0));
        return;
    }
  }

  /** Runs a command with no data in its reply. */
  private run(e: Export, req: T.Request, op: (b: Backend) => Promise<void>, charge: Charge): void {
    const b = e.begin();
    e.request(req.type);
    attempt(() => op(b)).then(
      () => {
        e.end(b);
        if (req.type === C.NBD_CMD_WRITE) {
          e.stats.bytesWritten += req.length;
          e.heat.record(req.offset, req.length);
        } else if (req.type === C.NBD_CMD_WRITE_ZEROES) e.heat.record(req.offset, req.length);
        this.reply(req, 0);
        this.link.settle(charge);
      },
      (err) => {
        e.end(b);
        this.fail(e, req, err, charge);
      },
    );
  }

  private blockStatus(e: Export, req: T.Request, charge: Charge): void {
    const b = e.begin();
    e.request(req.type);
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
          if (one) break;
        }
        if (out.length === 0) {
          this.fail(e, req, new Error("backend returned no extents"), charge);
          return;
        }
        this.link.write(T.encodeBlockStatusChunk(C.NBD_REPLY_FLAG_DONE, req.cookie, this.s.metaContext, out));
        this.link.settle(charge);
      },
      (err) => {
        e.end(b);
        this.fail(e, req, err, charge);
      },
    );
  }

  private fail(e: Export, req: T.Request, err: unknown, charge: Charge): void {
    e.stats.errors++;
    const errno = nbdErrnoOf(err);
    const message = err instanceof Error ? err.message : String(err);
    this.link.log.debug("request failed", { cmd: COMMANDS[req.type]?.name, offset: req.offset, err });
    this.reply(req, errno, message);
    this.link.settle(charge);
  }

  /** A reply without data: simple, or a structured error where structured replies are required. */
  private reply(req: T.Request, error: number, message = ""): void {
    const chunked = this.s.structured && (req.type === C.NBD_CMD_READ || req.type === C.NBD_CMD_BLOCK_STATUS);
    if (error === 0) this.link.write(T.encodeSimpleReply(0, req.cookie));
    else if (chunked)
      this.link.write(T.encodeErrorChunk(C.NBD_REPLY_FLAG_DONE, req.cookie, error || NBD_EINVAL, message));
    else this.link.write(T.encodeSimpleReply(error, req.cookie));
  }
}
