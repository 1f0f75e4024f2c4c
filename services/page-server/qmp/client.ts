// QMP client over a unix socket: greeting + qmp_capabilities, commands with ids and
// timeouts, events, typed errors, and a "close" event when QEMU goes away.
import { EventEmitter } from "node:events";
import { connect as netConnect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { type Logger, silentLogger } from "../../common/log.js";
import { decodeChunk, encodeCommand, type QmpEvent, type QmpGreeting, type QmpMessage } from "./codec.js";
import { QmpClosedError, QmpConnectError, QmpError, QmpTimeoutError } from "./errors.js";
import { sendWithFd } from "./pass-fd.js";

export interface QmpConnectOptions {
  /** How long to keep retrying while QEMU has not created or opened the socket yet. */
  timeoutMs?: number;
  /** Default per-command timeout. */
  commandTimeoutMs?: number;
  log?: Logger;
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

type Events = { event: [QmpEvent]; close: [reason: string] };

function openSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = netConnect(path);
    s.once("connect", () => {
      s.off("error", reject);
      resolve(s);
    });
    s.once("error", reject);
  });
}

export class QmpClient extends EventEmitter<Events> {
  private pending = new Map<string, Pending>();
  private nextId = 1;
  private rest: Buffer = Buffer.alloc(0);
  private closeReason: string | undefined;
  private closing = false;
  private greetingWaiter: ((m: QmpGreeting | Error) => void) | undefined;
  greeting: QmpGreeting | undefined;
  /** Whether commands may run out-of-band (negotiated from the greeting). */
  oobEnabled = false;

  private constructor(
    private readonly socket: Socket,
    private readonly commandTimeoutMs: number,
    private readonly log: Logger,
  ) {
    super();
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (err) => this.onClose(`socket error: ${err.message}`));
    socket.on("close", () => this.onClose(this.closing ? "closed by client" : "QEMU closed the connection"));
  }

  /** Connects (retrying until the socket exists), reads the greeting, leaves negotiation mode. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    let socket: Socket | undefined;
    let lastErr = "";
    while (!socket) {
      try {
        socket = await openSocket(path);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        lastErr = (err as Error).message;
        if ((code !== "ENOENT" && code !== "ECONNREFUSED") || Date.now() >= deadline)
          throw new QmpConnectError(path, lastErr);
        await sleep(25);
      }
    }
    const client = new QmpClient(socket, opts.commandTimeoutMs ?? 30_000, opts.log ?? silentLogger);
    try {
      client.greeting = await client.waitGreeting(Math.max(1, deadline - Date.now()));
      // Out-of-band execution when QEMU offers it (needed to recover a paused post-copy).
      const oob = client.greeting.capabilities.includes("oob");
      await client.execute("qmp_capabilities", oob ? { enable: ["oob"] } : undefined);
      client.oobEnabled = oob;
    } catch (err) {
      client.socket.destroy();
      throw err instanceof QmpConnectError ? err : new QmpConnectError(path, (err as Error).message);
    }
    return client;
  }

  get closed(): boolean {
    return this.closeReason !== undefined;
  }

  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    opts: {
      timeoutMs?: number;
      oob?: boolean /** Passed with the command (SCM_RIGHTS), for `getfd`. */;
      fd?: number;
    } = {},
  ): Promise<T> {
    if (this.closeReason !== undefined) return Promise.reject(new QmpClosedError(command, this.closeReason));
    if (opts.oob && !this.oobEnabled)
      return Promise.reject(
        new QmpError(command, "OobUnavailable", "this QMP monitor does not offer out-of-band execution"),
      );
    const id = `vmhop-${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpTimeoutError(command, timeoutMs));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.log.debug("qmp command", { command, id });
      const text = encodeCommand(command, args, id, opts.oob);
      if (opts.fd === undefined) {
        this.socket.write(text);
        return;
      }
      try {
        sendWithFd(this.socket, Buffer.from(text), opts.fd);
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(err as Error);
      }
    });
  }

  /** Resolves with the next event named `name` (and matching `match`), or rejects on timeout/close. */
  waitForEvent(
    name: string,
    opts: { timeoutMs?: number; match?: (e: QmpEvent) => boolean } = {},
  ): Promise<QmpEvent> {
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.off("event", onEvent);
        this.off("close", onClose);
      };
      const onEvent = (e: QmpEvent) => {
        if (e.event === name && (!opts.match || opts.match(e))) {
          done();
          resolve(e);
        }
      };
      const onClose = (reason: string) => {
        done();
        reject(new QmpClosedError(`(waiting for ${name})`, reason));
      };
      const timer = setTimeout(() => {
        done();
        reject(new QmpTimeoutError(`(waiting for ${name})`, timeoutMs));
      }, timeoutMs);
      if (this.closeReason !== undefined) return onClose(this.closeReason);
      this.on("event", onEvent);
      this.on("close", onClose);
    });
  }

  /** Ends the connection (QEMU keeps running). */
  async close(): Promise<void> {
    if (this.closeReason !== undefined) return;
    this.closing = true;
    const closed = new Promise<void>((r) => this.socket.once("close", () => r()));
    this.socket.end();
    const t = setTimeout(() => this.socket.destroy(), 1000);
    await closed;
    clearTimeout(t);
  }

  private waitGreeting(timeoutMs: number): Promise<QmpGreeting> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.greetingWaiter = undefined;
        reject(new Error(`no QMP greeting within ${timeoutMs} ms`));
      }, timeoutMs);
      this.greetingWaiter = (m) => {
        clearTimeout(timer);
        this.greetingWaiter = undefined;
        if (m instanceof Error) reject(m);
        else resolve(m);
      };
    });
  }

  private onData(chunk: Buffer): void {
    const { messages, rest, errors } = decodeChunk(this.rest, chunk);
    this.rest = rest;
    for (const e of errors)
      this.log.warn("qmp: unparsable message dropped", { err: e, line: e.line?.slice(0, 200) });
    for (const m of messages) this.dispatch(m);
  }

  private dispatch(m: QmpMessage): void {
    switch (m.kind) {
      case "greeting":
        this.greetingWaiter?.(m);
        return;
      case "event":
        this.log.debug("qmp event", { event: m.event });
        this.emit("event", m);
        return;
      case "return":
      case "error": {
        const p = m.id !== undefined ? this.pending.get(m.id) : undefined;
        if (!p) {
          this.log.debug("qmp: reply to no pending command (timed out?)", { id: m.id });
          return;
        }
        this.pending.delete(m.id!);
        clearTimeout(p.timer);
        if (m.kind === "return") p.resolve(m.value);
        else p.reject(new QmpError(p.command, m.errorClass, m.desc));
        return;
      }
    }
  }

  private onClose(reason: string): void {
    if (this.closeReason !== undefined) return;
    this.closeReason = reason;
    this.socket.destroy();
    this.greetingWaiter?.(new Error(reason));
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new QmpClosedError(p.command, reason));
    }
    this.pending.clear();
    this.emit("close", reason);
  }
}
