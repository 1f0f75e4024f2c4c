// TCP (or unix socket) relay that behaves like a WAN path: every byte reaches the other side
// one-way delay + serialisation time after it arrived, in order, with half-close and resets
// carried across. The upstream connect itself waits one delay (the SYN's trip), so a
// server-speaks-first protocol (NBD) sees its greeting one RTT after connecting, as on a WAN.
// Backpressure: a direction holds at most `bufferBytes`; past that the sender is paused and
// TCP flow control pushes back on it, like a socket buffer.
import { type AddressInfo, connect, createServer, type Server, type Socket } from "node:net";
import { performance } from "node:perf_hooks";
import { type Logger, silentLogger } from "../services/common/log.js";
import { type Endpoint, formatEndpoint, parseEndpoint } from "./address.js";
import { DelayQueue } from "./delay-queue.js";
import { Link, type LinkParams } from "./link.js";

export interface RelayOptions extends LinkParams {
  /** Where to accept connections: HOST:PORT (port 0 picks one), unix:PATH. Default 127.0.0.1:0. */
  listen?: string | Endpoint;
  /** Where each accepted connection is relayed to. */
  target: string | Endpoint;
  /** Extra random delay per chunk, 0..jitterMs (order is kept). */
  jitterMs?: number;
  /** Bytes held per direction of a connection before the sender is paused. Default BDP + 1 MiB (8 MiB unlimited). */
  bufferBytes?: number;
  /** Delay the upstream connect by one one-way delay. Default true. */
  delayConnect?: boolean;
  log?: Logger;
}

export interface RelayStats {
  accepted: number;
  active: number;
  failedConnects: number;
  resets: number;
  bytesToTarget: number;
  bytesToClient: number;
  /** Largest number of bytes one direction of one connection held. */
  peakQueuedBytes: number;
}

export interface Relay {
  /** The bound listen address, HOST:PORT or unix:PATH. */
  address: string;
  host?: string;
  port?: number;
  path?: string;
  stats: RelayStats;
  /** Stops accepting and drops every relayed connection. */
  close(): Promise<void>;
}

type Msg = Buffer | "end" | "reset";

interface Ctx {
  target: Endpoint;
  up: Link;
  down: Link;
  jitterMs: number;
  bufferBytes: number;
  delayConnect: boolean;
  stats: RelayStats;
  log: Logger;
  live: Set<() => void>;
}

export async function startRelay(opts: RelayOptions): Promise<Relay> {
  const listen =
    typeof opts.listen === "object"
      ? opts.listen
      : parseEndpoint(opts.listen ?? "127.0.0.1:0", "listen address");
  const target = typeof opts.target === "object" ? opts.target : parseEndpoint(opts.target, "target address");
  const up = new Link(opts);
  const down = new Link(opts);
  const jitterMs = opts.jitterMs ?? 0;
  if (!Number.isFinite(jitterMs) || jitterMs < 0)
    throw new Error(`jitter must be a number of ms >= 0, got ${jitterMs}`);
  const bdp = up.bandwidthDelayBytes();
  const bufferBytes = opts.bufferBytes ?? (Number.isFinite(bdp) ? bdp + (1 << 20) : 8 << 20);
  if (!(bufferBytes >= 1)) throw new Error(`buffer must be at least 1 byte, got ${opts.bufferBytes}`);
  const stats: RelayStats = {
    accepted: 0,
    active: 0,
    failedConnects: 0,
    resets: 0,
    bytesToTarget: 0,
    bytesToClient: 0,
    peakQueuedBytes: 0,
  };
  const ctx: Ctx = {
    target,
    up,
    down,
    jitterMs,
    bufferBytes,
    delayConnect: opts.delayConnect ?? true,
    stats,
    log: opts.log ?? silentLogger,
    live: new Set(),
  };
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: false }, (client) =>
    relayConnection(client, ctx),
  );
  await listenOn(server, listen);
  const bound = server.address();
  const info: Partial<Relay> =
    typeof bound === "string"
      ? { address: `unix:${bound}`, path: bound }
      : {
          address: formatEndpoint({
            host: (bound as AddressInfo).address,
            port: (bound as AddressInfo).port,
          }),
          host: (bound as AddressInfo).address,
          port: (bound as AddressInfo).port,
        };
  ctx.log.info("relay listening", {
    listen: info.address,
    target: formatEndpoint(target),
    delayMs: opts.delayMs,
  });
  return {
    ...(info as Pick<Relay, "address">),
    stats,
    close: () =>
      new Promise<void>((resolve) => {
        for (const kill of [...ctx.live]) kill();
        server.close(() => resolve());
      }),
  };
}

function listenOn(server: Server, at: Endpoint): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    const done = () => {
      server.off("error", reject);
      resolve();
    };
    if ("path" in at) server.listen(at.path, done);
    else server.listen(at.port, at.host, done);
  });
}

/** One direction of a relayed connection: src's bytes queued on a link, written to dst when due. */
class Direction {
  readonly queue: DelayQueue<Msg>;
  src: Socket | undefined;
  dst: Socket | undefined;
  private lastAt = 0;

  constructor(
    private readonly link: Link,
    private readonly ctx: Ctx,
    private readonly count: (n: number) => void,
  ) {
    this.queue = new DelayQueue<Msg>((m) => this.write(m));
  }

  push(m: Msg): void {
    const bytes = typeof m === "string" ? 0 : m.length;
    let at = this.link.schedule(bytes, performance.now());
    if (this.ctx.jitterMs > 0) at += Math.random() * this.ctx.jitterMs;
    // A stream never overtakes itself, jitter or not.
    at = Math.max(at, this.lastAt);
    this.lastAt = at;
    this.queue.push(at, m, bytes);
    if (this.queue.bytes > this.ctx.stats.peakQueuedBytes) this.ctx.stats.peakQueuedBytes = this.queue.bytes;
    if (this.queue.bytes >= this.ctx.bufferBytes && this.src && !this.src.isPaused()) this.src.pause();
  }

  private write(m: Msg): boolean {
    const { src, dst } = this;
    if (src?.isPaused() && !src.destroyed && this.queue.bytes < this.ctx.bufferBytes / 2) src.resume();
    if (!dst || dst.destroyed) return true;
    if (m === "end") {
      dst.end();
      return true;
    }
    if (m === "reset") {
      this.ctx.stats.resets++;
      dst.resetAndDestroy();
      return true;
    }
    this.count(m.length);
    return dst.write(m);
  }
}

function relayConnection(client: Socket, ctx: Ctx): void {
  const { stats, log } = ctx;
  stats.accepted++;
  stats.active++;
  client.setNoDelay(true);
  const toTarget = new Direction(ctx.up, ctx, (n) => {
    stats.bytesToTarget += n;
  });
  const toClient = new Direction(ctx.down, ctx, (n) => {
    stats.bytesToClient += n;
  });
  toTarget.src = client;
  toClient.dst = client;
  // Client bytes wait (timestamped) until the upstream connection exists.
  toTarget.queue.hold();
  let upstream: Socket | undefined;
  let connectTimer: NodeJS.Timeout | undefined;
  let finished = false;

  const finish = () => {
    if (finished || !client.destroyed || connectTimer || (upstream && !upstream.destroyed)) return;
    finished = true;
    stats.active--;
    toTarget.queue.close();
    toClient.queue.close();
    ctx.live.delete(kill);
  };
  const kill = () => {
    if (connectTimer) clearTimeout(connectTimer);
    connectTimer = undefined;
    // Relay shut down: like a link going away, both ends see a reset, not a clean FIN.
    if (!client.destroyed) client.resetAndDestroy();
    if (upstream && !upstream.destroyed) upstream.resetAndDestroy();
    finish();
  };
  ctx.live.add(kill);

  // A side that closes without a clean FIN (reset, error, refused connect) resets the other
  // side one delay later, as a RST would.
  const wire = (sock: Socket, out: Direction, inbound: Direction, name: string) => {
    let ended = false;
    let failed = false;
    sock.on("data", (b: Buffer) => out.push(b));
    sock.on("end", () => {
      ended = true;
      out.push("end");
    });
    sock.on("drain", () => inbound.queue.resume());
    sock.on("error", (err) => {
      failed = true;
      log.debug("relay socket error", { side: name, err });
    });
    sock.on("close", () => {
      inbound.queue.close();
      if (failed || !ended) out.push("reset");
      finish();
    });
  };
  wire(client, toTarget, toClient, "client");

  const open = () => {
    connectTimer = undefined;
    if (client.destroyed) return finish();
    const t = ctx.target;
    const up =
      "path" in t
        ? connect({ path: t.path, allowHalfOpen: true })
        : connect({ host: t.host, port: t.port, allowHalfOpen: true });
    upstream = up;
    toTarget.dst = up;
    toClient.src = up;
    let connected = false;
    up.once("connect", () => {
      connected = true;
      up.setNoDelay(true);
      toTarget.queue.resume();
    });
    up.on("error", (err) => {
      if (connected) return;
      stats.failedConnects++;
      log.info("relay target unreachable", { target: formatEndpoint(ctx.target), err });
    });
    wire(up, toClient, toTarget, "target");
  };
  if (ctx.delayConnect && ctx.up.delayMs > 0) connectTimer = setTimeout(open, ctx.up.delayMs);
  else open();
}
