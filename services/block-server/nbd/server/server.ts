// NbdServer: listeners (TCP and unix sockets) in front of an export registry. The registry
// can change at any time; each handshake looks exports up afresh.
import { existsSync, lstatSync, unlinkSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { formatAddress, type ListenAddress, parseListenAddress } from "../../../common/listen-address.js";
import { createLogger, type Logger } from "../../../common/log.js";
import { BufferPool } from "../../export/buffer-pool.js";
import { ExportRegistry } from "../../export/registry.js";
import { Connection, type ConnectionLimits, DEFAULT_LIMITS } from "./connection.js";

export { formatAddress, type ListenAddress, parseListenAddress };

export interface NbdServerOptions {
  exports?: ExportRegistry;
  log?: Logger;
  limits?: Partial<ConnectionLimits>;
}

export class NbdServer {
  readonly exports: ExportRegistry;
  private readonly log: Logger;
  private readonly limits: ConnectionLimits;
  private readonly listeners: { server: Server; address: ListenAddress }[] = [];
  private readonly connections = new Set<Connection>();
  private nextId = 1;
  /** Read and write buffers, shared by all connections. */
  readonly pool = new BufferPool();

  constructor(opts: NbdServerOptions = {}) {
    this.exports = opts.exports ?? new ExportRegistry();
    this.log = opts.log ?? createLogger({ svc: "block-server", part: "nbd" });
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
  }

  /** Starts listening; resolves with the bound address (port 0 becomes the real port). */
  async listen(addr: ListenAddress | string): Promise<ListenAddress> {
    const a = typeof addr === "string" ? parseListenAddress(addr) : addr;
    if ("path" in a && existsSync(a.path) && lstatSync(a.path).isSocket()) unlinkSync(a.path); // stale socket
    const server = createServer({ noDelay: true }, (sock) => this.accept(sock));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      if ("path" in a) server.listen(a.path, resolve);
      else server.listen(a.port, a.host, resolve);
    });
    server.on("error", (err) => this.log.error("listener error", { err }));
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
    const id = this.nextId++;
    const log = this.log.child({ conn: id });
    log.debug("client connected", { remote: sock.remoteAddress ?? "unix" });
    const conn = new Connection(sock, this.exports, log, this.limits, this.pool, () => {
      this.connections.delete(conn);
      log.debug("client gone");
    });
    this.connections.add(conn);
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
