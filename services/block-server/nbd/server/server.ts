// NbdServer: listeners (TCP and unix sockets) in front of an export registry. The registry
// can change at any time; each handshake looks exports up afresh. Connections are capped
// (maxConnections); a client refused, or cut off for a slow handshake, gets a log line.
import { existsSync, lstatSync, unlinkSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { formatAddress, type ListenAddress, parseListenAddress } from "../../../common/listen-address.js";
import { createLogger, type Logger } from "../../../common/log.js";
import { BufferPool } from "../../export/buffer-pool.js";
import { ExportRegistry } from "../../export/registry.js";
import { Connection, type ConnectionLimits, DEFAULT_LIMITS } from "./connection.js";

export { formatAddress, type ListenAddress, parseListenAddress };

export interface ServerLimits extends ConnectionLimits {
  /** Clients connected at once (handshaking or not); more are refused with a log line. */
  maxConnections: number;
}

export const DEFAULT_MAX_CONNECTIONS = 1024;

export interface NbdServerOptions {
  exports?: ExportRegistry;
  log?: Logger;
  limits?: Partial<ServerLimits>;
}

/** At most one refusal line per this many ms (a flood of clients is not a flood of logs). */
const REFUSAL_LOG_INTERVAL_MS = 1000;

export class NbdServer {
  readonly exports: ExportRegistry;
  private readonly log: Logger;
  private readonly limits: ServerLimits;
  private readonly listeners: { server: Server; address: ListenAddress }[] = [];
  private readonly connections = new Set<Connection>();
  private nextId = 1;
  private refusals = { lastLogged: 0, unlogged: 0 };
  /** Read and write buffers, shared by all connections. */
  readonly pool = new BufferPool();

  constructor(opts: NbdServerOptions = {}) {
    this.exports = opts.exports ?? new ExportRegistry();
    this.log = opts.log ?? createLogger({ svc: "block-server", part: "nbd" });
    this.limits = { ...DEFAULT_LIMITS, maxConnections: DEFAULT_MAX_CONNECTIONS, ...opts.limits };
  }

  /** Starts listening; resolves with the bound address (port 0 becomes the real port). */
  async listen(addr: ListenAddress | string): Promise<ListenAddress> {
    const a = typeof addr === "string" ? parseListenAddress(addr) : addr;
    if ("path" in a && existsSync(a.path) && lstatSync(a.path).isSocket()) unlinkSync(a.path); // stale socket
    // Half-open allowed: a client's EOF drains its connection (running requests still reply).
    const server = createServer({ noDelay: true, allowHalfOpen: true }, (sock) => this.accept(sock));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      if ("path" in a) server.listen(a.path, resolve);
      else server.listen(a.port, a.host, resolve);
    });
    server.on("error", (err: NodeJS.ErrnoException) => {
      // accept() failing for want of descriptors: libuv has already closed the client.
      if (err.code === "EMFILE" || err.code === "ENFILE") this.refused("out of file descriptors", undefined);
      else this.log.error("listener error", { err });
    });
    const bound = server.address();
    const address: ListenAddress =
      "path" in a || bound === null || typeof bound === "string" ? a : { host: a.host, port: bound.port };
    this.listeners.push({ server, address });
    this.log.info("listening", { address: formatAddress(address) });
    return address;
  }

  addresses(): ListenAddress[] {
    return this.listeners.map((l) => l.address);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  private accept(sock: Socket): void {
    const remote = sock.remoteAddress ?? "unix";
    if (this.connections.size >= this.limits.maxConnections) {
      sock.on("error", () => {});
      sock.destroy();
      this.refused(`too many connections (limit ${this.limits.maxConnections})`, remote);
      return;
    }
    const id = this.nextId++;
    const log = this.log.child({ conn: id });
    log.debug("client connected", { remote });
    let conn: Connection;
    try {
      conn = new Connection(sock, this.exports, log, this.limits, this.pool, () => {
        this.connections.delete(conn);
      });
    } catch (err) {
      sock.on("error", () => {});
      sock.destroy();
      log.error("cannot serve a client", { err, remote });
      return;
    }
    if (conn.state !== "closed") this.connections.add(conn); // not already gone during set-up
  }

  /** One log line per refusal, or per second with how many were not logged meanwhile. */
  private refused(reason: string, remote: string | undefined): void {
    const now = Date.now();
    if (now - this.refusals.lastLogged < REFUSAL_LOG_INTERVAL_MS) {
      this.refusals.unlogged++;
      return;
    }
    this.log.warn("connection refused", { reason, remote, notLoggedBefore: this.refusals.unlogged });
    this.refusals = { lastLogged: now, unlogged: 0 };
  }

  /** Stops listening and disconnects every client. Exports stay in the registry. */
  async close(): Promise<void> {
    const ls = this.listeners.splice(0);
    const closing = ls.map((l) => new Promise<void>((r) => l.server.close(() => r())));
    for (const c of [...this.connections]) c.close("server closing");
    await Promise.all(closing);
    for (const l of ls)
      if ("path" in l.address && existsSync(l.address.path)) {
        try {
          unlinkSync(l.address.path);
        } catch {
          // already gone
        }
      }
  }
}
