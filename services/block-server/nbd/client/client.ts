// NBD client: fixed newstyle handshake (structured replies, base:allocation, OPT_GO with a
// fallback to EXPORT_NAME), then pipelined requests matched to replies by cookie. Every byte
// on the wire goes through the codec in ../protocol; this file only moves bytes and keeps
// the table of pending requests. If the peer vanishes, every pending request is rejected
// with NbdConnectionError and later calls fail at once: nothing hangs.
import { EventEmitter } from "node:events";
import * as net from "node:net";
import { ByteQueue } from "../byte-queue.js";
import {
  BASE_ALLOCATION,
  type Chunk,
  type Decoded,
  decodeChunkPayload,
  decodeExportNameReply,
  decodeGreeting,
  decodeOptionReply,
  decodeReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_INFO_BLOCK_SIZE,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  nbdErrorName,
  type ParsedOptionReply,
  parseOptionReply,
  readU64,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_HEADER_SIZE,
} from "../protocol/index.js";
import { dupSocketFd } from "../socket-fd.js";
import { type NbdAddress, parseNbdUrl } from "./url.js";

/** The server answered a request with an NBD error. */
export class NbdRequestError extends Error {
  constructor(
    readonly command: string,
    /** NBD error value (EIO = 5, ...). */
    readonly errorValue: number,
    detail = "",
  ) {
    super(`NBD ${command} failed: ${nbdErrorName(errorValue)}${detail ? ` (${detail})` : ""}`);
    this.name = "NbdRequestError";
  }
  /** errno name, e.g. "EIO" (so nbdErrnoOf() maps it back). */
  get errno(): string {
    return nbdErrorName(this.errorValue);
  }
}

/** The connection failed or closed: the request's outcome is unknown. */
export class NbdConnectionError extends Error {
  readonly errno = "EIO";
  constructor(message: string) {
    super(message);
    this.name = "NbdConnectionError";
  }
}

/** Handshake refused by the server or broken. */
export class NbdHandshakeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NbdHandshakeError";
  }
}

export interface NbdClientOptions {
  /** Overrides the URL's export name. */
  exportName?: string;
  /** Negotiate structured replies (default true). */
  structuredReplies?: boolean;
  /** Negotiate base:allocation for block status (default true; needs structured replies). */
  blockStatus?: boolean;
  /** Use NBD_OPT_EXPORT_NAME instead of NBD_OPT_GO (tests; servers without GO). */
  forceExportName?: boolean;
  /** Bound on TCP connect plus handshake (default 10 s). */
  connectTimeoutMs?: number;
  /** Gives up the connect or handshake (NbdConnectionError, with the abort reason's message) when aborted. */
  signal?: AbortSignal;
  /**
   * Called when the server's greeting arrived, before any option is sent: what it returns
   * overrides structuredReplies/blockStatus (a proxy gives the first of two connections to be
   * greeted the full handshake).
   */
  onGreeting?: () => Pick<NbdClientOptions, "structuredReplies" | "blockStatus">;
}

export interface BlockStatusExtent {
  length: number;
  flags: number;
}

type Pending = {
  command: string;
  offset: number;
  length: number;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  /** READ: the result buffer (structured replies fill it chunk by chunk). */
  buf?: Buffer;
  /** READ: bytes filled by data and hole chunks (must reach `length`). */
  covered?: number;
  extents?: BlockStatusExtent[];
  error?: Error;
};

const COMMAND_NAMES: Record<number, string> = {
  [NBD_CMD_READ]: "READ",
  [NBD_CMD_WRITE]: "WRITE",
  [NBD_CMD_FLUSH]: "FLUSH",
  [NBD_CMD_TRIM]: "TRIM",
  [NBD_CMD_CACHE]: "CACHE",
  [NBD_CMD_WRITE_ZEROES]: "WRITE_ZEROES",
  [NBD_CMD_BLOCK_STATUS]: "BLOCK_STATUS",
};

/** Receives into buffers `buffer()` picks; `callback` gets each read's byte count and buffer. */
type OnRead = { buffer: () => Uint8Array; callback: (n: number, buf: Uint8Array) => boolean };

function dial(addr: NbdAddress, onread: OnRead): net.Socket {
  return addr.transport === "unix"
    ? net.createConnection({ path: addr.path, onread })
    : net.createConnection({ host: addr.host, port: addr.port, onread });
}

/** Where received bytes go before any parsing: reused for every read, so never kept. */
const SCRATCH_SIZE = 256 * 1024;

/** The rest of a READ's data, received straight into its result buffer. */
interface Direct {
  buf: Buffer;
  at: number;
  left: number;
  /** Runs once the last byte is in. */
  done: () => void;
}

/**
 * One NBD connection in the transmission phase. Create with NbdClient.connect(). Emits
 * "close" (err?: Error) once, when the connection ends for any reason.
 */
export class NbdClient extends EventEmitter {
  size = 0;
  transmissionFlags = 0;
  /** Structured replies were negotiated. */
  structured = false;
  /** Context id of base:allocation, when negotiated. */
  metaContextId: number | undefined;
  blockSizes: { minimum: number; preferred: number; maximum: number } | undefined;
  readonly exportName: string;

  private readonly q = new ByteQueue();
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private closedWith: Error | undefined;
  private waiter: (() => void) | undefined;
  private handshaking = true;
  private idleWaiters: (() => void)[] = [];
  private readonly scratch = Buffer.allocUnsafeSlow(SCRATCH_SIZE);
  private direct: Direct | undefined;
  private readonly socket: net.Socket;

  private constructor(
    readonly address: NbdAddress,
    exportName: string,
  ) {
    super();
    this.exportName = exportName;
    // The kernel copies a READ's data straight into its result (no chunk per read to collect).
    const socket = dial(address, {
      buffer: () => this.receiveBuffer(),
      callback: (n, b) => {
        this.received(n, b);
        return true;
      },
    });
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on("error", (e) => this.fail(new NbdConnectionError(`NBD connection error: ${e.message}`)));
    socket.on("close", () => this.fail(new NbdConnectionError("NBD server closed the connection")));
  }

  private receiveBuffer(): Buffer {
    const d = this.direct;
    return d ? d.buf.subarray(d.at, d.at + d.left) : this.scratch;
  }

  private received(n: number, buf: Uint8Array): void {
    if (buf.buffer !== this.scratch.buffer) {
      const d = this.direct;
      if (!d) return; // failed meanwhile
      d.at += n;
      d.left -= n;
      if (d.left === 0) this.endDirect();
      return;
    }
    this.q.push(this.scratch.subarray(0, n));
    if (this.handshaking) this.wake();
    else this.drain();
    // The scratch is overwritten by the next read: keep a copy of what is left unparsed.
    if (this.q.length > 0) {
      const rest = this.q.take(this.q.length);
      this.q.push(rest.buffer === this.scratch.buffer ? Buffer.from(rest) : rest);
    }
  }

  /** Fills a READ buffer from the queue, then directly from the socket for the rest. */
  private startDirect(buf: Buffer, at: number, len: number, done: () => void): void {
    const now = Math.min(len, this.q.length);
    this.q.takeInto(buf, at, now);
    if (now === len) done();
    else this.direct = { buf, at: at + now, left: len - now, done };
  }

  private endDirect(): void {
    const d = this.direct!;
    this.direct = undefined;
    try {
      d.done();
    } catch (e) {
      this.fail(new NbdConnectionError(`NBD protocol error from server: ${(e as Error).message}`));
      return;
    }
    this.drain();
  }

  /** Connects to `nbd://…` / `nbd+unix://…` (or a parsed address) and completes the handshake. */
  static async connect(target: string | NbdAddress, opts: NbdClientOptions = {}): Promise<NbdClient> {
    const addr = typeof target === "string" ? parseNbdUrl(target) : target;
    const name = opts.exportName ?? addr.exportName;
    const c = new NbdClient(addr, name);
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    const timer = setTimeout(
      () => c.fail(new NbdConnectionError(`NBD connect/handshake timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
    const abort = () => {
      const why = opts.signal?.reason;
      c.fail(new NbdConnectionError(why instanceof Error ? why.message : "NBD connect aborted"));
    };
    if (opts.signal?.aborted) abort();
    else opts.signal?.addEventListener("abort", abort, { once: true });
    try {
      await c.handshake(opts);
      return c;
    } catch (e) {
      c.socket.destroy();
      throw e;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", abort);
    }
  }

  get readOnly(): boolean {
    return (this.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  // ---- handshake ----

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** Waits until `dec` yields a value from the queued bytes (handshake only: messages are small). */
  private async decode<T>(dec: (b: Buffer) => Decoded<T>): Promise<T> {
    for (;;) {
      if (this.closedWith) throw this.closedWith;
      const d = dec(this.q.peek(this.q.length));
      if (!("need" in d)) {
        this.q.skip(d.consumed);
        return d.value;
      }
      await new Promise<void>((r) => {
        this.waiter = r;
      });
    }
  }

  private async option(option: number, data?: Buffer): Promise<ParsedOptionReply[]> {
    this.socket.write(encodeOption(option, data));
    const replies: ParsedOptionReply[] = [];
    for (;;) {
      const r = parseOptionReply(await this.decode((b) => decodeOptionReply(b, 1 << 20)));
      if (r.option !== option)
        throw new NbdHandshakeError(`reply to option ${r.option} while waiting for option ${option}`);
      replies.push(r);
      if (r.kind === "ack" || r.kind === "error") return replies;
    }
  }

  private async handshake(given: NbdClientOptions): Promise<void> {
    const { handshakeFlags } = await this.decode(decodeGreeting);
    const opts = { ...given, ...given.onGreeting?.() };
    if (!(handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE))
      throw new NbdHandshakeError("server does not speak fixed newstyle NBD");
    const noZeroes = (handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
    this.socket.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0)));

    if (opts.structuredReplies ?? true) {
      const r = await this.option(NBD_OPT_STRUCTURED_REPLY);
      this.structured = r[r.length - 1].kind === "ack";
    }
    if (this.structured && (opts.blockStatus ?? true)) {
      const req = encodeMetaContextRequest({ name: this.exportName, queries: [BASE_ALLOCATION] });
      for (const r of await this.option(NBD_OPT_SET_META_CONTEXT, req))
        if (r.kind === "meta_context" && r.name === BASE_ALLOCATION) this.metaContextId = r.id;
    }

    let useExportName = opts.forceExportName ?? false;
    if (!useExportName) {
      const replies = await this.option(
        NBD_OPT_GO,
        encodeInfoRequest({ name: this.exportName, infos: [NBD_INFO_BLOCK_SIZE] }),
      );
      const last = replies[replies.length - 1];
      if (last.kind === "error") {
        if (last.type !== NBD_REP_ERR_UNSUP) {
          const why =
            last.type === NBD_REP_ERR_UNKNOWN ? "unknown export" : `error 0x${last.type.toString(16)}`;
          throw new NbdHandshakeError(
            `server refused export ${JSON.stringify(this.exportName)}: ${why}${last.message ? `: ${last.message}` : ""}`,
          );
        }
        useExportName = true;
      }
      let gotExport = false;
      for (const r of replies) {
        if (r.kind !== "info") continue;
        if (r.info.info === "export") {
          this.size = r.info.size;
          this.transmissionFlags = r.info.transmissionFlags;
          gotExport = true;
        } else if (r.info.info === "block_size") {
          const { minimum, preferred, maximum } = r.info;
          this.blockSizes = { minimum, preferred, maximum };
        }
      }
      if (!useExportName && !gotExport)
        throw new NbdHandshakeError("OPT_GO acknowledged without NBD_INFO_EXPORT");
    }
    if (useExportName) {
      this.socket.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from(this.exportName, "utf8")));
      // A server that refuses the name just closes the connection.
      const r = await this.decode((b) => decodeExportNameReply(b, noZeroes)).catch((e: Error) => {
        throw new NbdHandshakeError(
          `server closed the connection on export ${JSON.stringify(this.exportName)} (${e.message})`,
        );
      });
      this.size = r.size;
      this.transmissionFlags = r.transmissionFlags;
    }
    this.handshaking = false;
    this.drain();
  }

  // ---- transmission ----

  private send(
    type: number,
    flags: number,
    offset: number,
    length: number,
    p: Omit<Pending, "command">,
    data?: Buffer,
  ): void {
    const cookie = this.nextCookie++;
    this.pending.set(cookie, { command: COMMAND_NAMES[type] ?? String(type), ...p });
    const header = encodeRequest({ flags, type, cookie, offset, length });
    if (data) {
      this.socket.cork();
      this.socket.write(header);
      this.socket.write(data);
      this.socket.uncork();
    } else this.socket.write(header);
  }

  private request<T>(
    type: number,
    flags: number,
    offset: number,
    length: number,
    extra: Partial<Pending> = {},
    data?: Buffer,
  ): Promise<T> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.handshaking) return Promise.reject(new Error("NBD client: handshake not finished"));
    return new Promise<T>((resolve, reject) => {
      this.send(
        type,
        flags,
        offset,
        length,
        { offset, length, resolve: resolve as (v: unknown) => void, reject, ...extra },
        data,
      );
    });
  }

  /**
   * Reads [offset, offset+length). `into` (exactly `length` bytes) receives the data instead of
   * a fresh buffer, e.g. one from a pool; the promise resolves with it.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (into && into.length !== length)
      return Promise.reject(new RangeError(`read into ${into.length} bytes for a ${length}-byte READ`));
    // Structured replies fill it chunk by chunk; a reply that leaves a gap is rejected, so
    // uninitialised bytes never escape.
    const buf = into ?? Buffer.allocUnsafe(length);
    return this.request<Buffer>(NBD_CMD_READ, 0, offset, length, { buf, covered: 0 });
  }

  write(offset: number, data: Buffer, opts: { fua?: boolean } = {}): Promise<void> {
    return this.request(NBD_CMD_WRITE, opts.fua ? NBD_CMD_FLAG_FUA : 0, offset, data.length, {}, data);
  }

  flush(): Promise<void> {
    return this.request(NBD_CMD_FLUSH, 0, 0, 0);
  }

  trim(offset: number, length: number, opts: { fua?: boolean } = {}): Promise<void> {
    return this.request(NBD_CMD_TRIM, opts.fua ? NBD_CMD_FLAG_FUA : 0, offset, length);
  }

  writeZeroes(
    offset: number,
    length: number,
    opts: { fua?: boolean; noHole?: boolean; fastZero?: boolean } = {},
  ): Promise<void> {
    const flags =
      (opts.fua ? NBD_CMD_FLAG_FUA : 0) |
      (opts.noHole ? NBD_CMD_FLAG_NO_HOLE : 0) |
      (opts.fastZero ? NBD_CMD_FLAG_FAST_ZERO : 0);
    return this.request(NBD_CMD_WRITE_ZEROES, flags, offset, length);
  }

  cache(offset: number, length: number): Promise<void> {
    return this.request(NBD_CMD_CACHE, 0, offset, length);
  }

  /** base:allocation extents from `offset` (needs a negotiated meta context). */
  blockStatus(offset: number, length: number, opts: { reqOne?: boolean } = {}): Promise<BlockStatusExtent[]> {
    if (this.metaContextId === undefined)
      return Promise.reject(new Error("NBD client: base:allocation was not negotiated with this server"));
    return this.request(NBD_CMD_BLOCK_STATUS, opts.reqOne ? NBD_CMD_FLAG_REQ_ONE : 0, offset, length, {
      extents: [],
    });
  }

  /** Waits for pending requests, sends NBD_CMD_DISC and closes. */
  async disconnect(): Promise<void> {
    if (this.closedWith) return;
    while (this.pending.size > 0 && !this.closedWith)
      await new Promise<void>((r) => this.idleWaiters.push(r));
    if (this.closedWith) return;
    this.socket.end(encodeRequest({ flags: 0, type: NBD_CMD_DISC, cookie: 0n, offset: 0, length: 0 }));
    await new Promise<void>((r) => (this.closedWith ? r() : this.once("close", () => r())));
  }

  /**
   * Hands the connection over, between requests: returns a duplicate of its socket
   * descriptor (the caller's to close) and closes this client's own without a DISC, so the
   * server sees the same connection carry on. The client is unusable afterwards.
   */
  detachFd(): number {
    if (this.closedWith) throw this.closedWith;
    if (this.pending.size > 0 || this.q.length > 0 || this.direct)
      throw new Error("cannot hand over an NBD connection with requests in flight");
    const copy = dupSocketFd(this.socket);
    this.fail(new NbdConnectionError("NBD connection handed over"));
    return copy;
  }

  /** Drops the connection at once; pending requests fail. */
  destroy(): void {
    this.socket.destroy();
    this.fail(new NbdConnectionError("NBD connection closed by the client"));
  }

  private fail(err: Error): void {
    if (this.closedWith) return;
    this.closedWith = err;
    this.direct = undefined;
    this.socket.destroy();
    const n = this.pending.size;
    const e = n > 0 ? new NbdConnectionError(`${err.message} with ${n} request(s) pending`) : err;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    this.wake();
    this.wakeIdle();
    this.emit("close", err);
  }

  private wakeIdle(): void {
    const ws = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of ws) w();
  }

  /** Parses every complete reply in the queue. */
  private drain(): void {
    try {
      while (this.q.length >= 4 && !this.closedWith && !this.direct) if (!this.step()) break;
      if (this.pending.size === 0) this.wakeIdle();
    } catch (e) {
      this.fail(new NbdConnectionError(`NBD protocol error from server: ${(e as Error).message}`));
    }
  }

  /** Handles one reply or chunk; false when more bytes are needed. */
  private step(): boolean {
    const h = decodeReplyHeader(this.q.peek(Math.min(this.q.length, STRUCTURED_HEADER_SIZE)));
    if ("need" in h) return false;
    const r = h.value;
    const p = this.pending.get(r.cookie);
    if (!p) throw new Error(`reply for unknown cookie ${r.cookie}`);
    if (r.kind === "simple") {
      if (this.q.length < SIMPLE_REPLY_SIZE) return false;
      this.q.skip(SIMPLE_REPLY_SIZE);
      if (r.error === 0 && p.command === "READ") {
        // Settled (and dropped from the pending table) only once all its data is in.
        this.startDirect(p.buf!, 0, p.length, () => {
          this.pending.delete(r.cookie);
          p.resolve(p.buf);
        });
        return true;
      }
      this.pending.delete(r.cookie);
      if (r.error !== 0) p.reject(new NbdRequestError(p.command, r.error));
      else p.resolve(undefined);
      return true;
    }
    if (r.type === NBD_REPLY_TYPE_OFFSET_DATA && p.buf && r.length > 8) {
      // Hot path: the data goes straight into the result, from the queue and then the socket.
      if (this.q.length < STRUCTURED_HEADER_SIZE + 8) return false;
      this.q.skip(STRUCTURED_HEADER_SIZE);
      const offset = readU64(this.q.take(8), 0);
      const len = r.length - 8;
      const at = this.placeChunk(p, "data", offset, len);
      this.startDirect(p.buf, at, len, () => this.chunkDone(r.cookie, r.flags, p));
      return true;
    }
    if (this.q.length < STRUCTURED_HEADER_SIZE + r.length) return false;
    this.q.skip(STRUCTURED_HEADER_SIZE);
    this.applyChunk(p, decodeChunkPayload(r.type, this.q.take(r.length)));
    this.chunkDone(r.cookie, r.flags, p);
    return true;
  }

  /** After a structured chunk: the last one settles its request. */
  private chunkDone(cookie: bigint, flags: number, p: Pending): void {
    const r = { cookie, flags };
    if (r.flags & NBD_REPLY_FLAG_DONE) {
      this.pending.delete(r.cookie);
      if (p.error) p.reject(p.error);
      else if (p.command === "READ" && p.covered !== p.length)
        p.reject(
          new NbdConnectionError(`NBD server left ${p.length - (p.covered ?? 0)} bytes of a READ unsent`),
        );
      else if (p.command === "READ") p.resolve(p.buf);
      else if (p.command === "BLOCK_STATUS") p.resolve(p.extents);
      else p.resolve(undefined);
    }
  }

  /** Where a data/hole chunk goes in the READ buffer; throws if it lies outside the request. */
  private placeChunk(p: Pending, type: string, offset: number, len: number): number {
    const at = offset - p.offset;
    if (!p.buf || at < 0 || at + len > p.length)
      throw new Error(`${type} chunk [${offset}, +${len}) outside ${p.command} [${p.offset}, +${p.length})`);
    p.covered = (p.covered ?? 0) + len;
    return at;
  }

  private applyChunk(p: Pending, c: Chunk): void {
    switch (c.type) {
      case "data":
      case "hole": {
        const len = c.type === "data" ? c.data.length : c.length;
        const at = this.placeChunk(p, c.type, c.offset, len);
        if (c.type === "data") c.data.copy(p.buf!, at);
        else p.buf!.fill(0, at, at + len);
        return;
      }
      case "block_status":
        if (c.contextId === this.metaContextId) p.extents?.push(...c.extents);
        return;
      case "error":
        p.error ??= new NbdRequestError(p.command, c.error, c.message);
        return;
      default:
        return;
    }
  }
}
