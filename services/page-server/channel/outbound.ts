// Source side of the migration channel: a unix socket for the source QEMU (`migrate
// unix:PATH`); each connection QEMU opens is carried on its own TCP connection to the
// destination page-server, after a hello naming the migration. With `handoff` there is no
// unix socket: the one TCP connection is handed to the source QEMU itself (handoffSocket()).
// With `choose`, the first connection times the link first (two pings, the first sent along
// with a probe hello) and the path is picked from the measured round trip
// (path-policy.ts) before the real hello goes out on it. With the urgent lane, a second
// connection is accepted right after the first, before QEMU asks for it: the destination QEMU
// reads nothing before it holds both, and QEMU here opens the lane only as post-copy starts.
import { unlinkSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { type Logger, silentLogger } from "../../common/log.js";
import type { Compression } from "./compress-policy.js";
import { decodePing, decodeReply, encodeHello, encodePing, ReplyStatus } from "./hello.js";
import type { ChannelPlan } from "./path-policy.js";
import {
  connectSocket,
  newCounters,
  type RelayCounters,
  readPreamble,
  relay,
  SOCKET_HIGH_WATER_MARK,
} from "./relay.js";
import { type PageRequest, ReturnPathSplicer } from "./return-path.js";

export interface OutboundOptions {
  migrationId: string;
  /** host:port of the destination's ChannelServer. */
  peer: string;
  /** Where QEMU connects. */
  socketPath: string;
  /** Re-open a paused post-copy: the first connection asks the destination to recover. */
  recover?: boolean;
  /** Deflate on the wire: "auto" only while the link is slow and the bottleneck. Default off. */
  compression?: Compression;
  /**
   * Open one TCP connection that both page-servers give to their QEMU (`fd:` URIs): the
   * stream then flows QEMU → kernel → QEMU, no relay. Plain streams only (no compression,
   * no urgent lane: QEMU 7.2 opens that second connection itself).
   */
  handoff?: boolean;
  /** QEMU's urgent lane (postcopy-preempt): the hello tells the destination to set it. */
  preempt?: boolean;
  /**
   * Measure the link first (pings on the first connection) and let this pick the path; its
   * plan replaces compression, handoff and preempt.
   */
  choose?: (rttMs: number) => ChannelPlan;
  log?: Logger;
}

/**
 * How long the destination may take to accept a real hello: it answers once its QEMU listens,
 * which waits for the VM's disk (a proxy export opening across the WAN, slow on a loaded host).
 */
const HELLO_REPLY_MS = 60_000;

export class ChannelOut {
  readonly counters: RelayCounters = newCounters();
  connections = 0;
  /** The last failure, for the migration's error report. */
  lastError: string | undefined;
  /** The round trip measured before the path was chosen (ms), when `choose` was given. */
  rttMs: number | undefined;
  /** What `choose` decided. */
  plan: ChannelPlan | undefined;
  private server: Server | undefined;
  private spare: Socket | undefined;
  /** The urgent lane's connection, accepted before QEMU asks for it (see readyLane). */
  private lane: Promise<Socket | undefined> | undefined;
  /** The lane's TCP connection while the first one's path is being chosen. */
  private laneSocket: Socket | undefined;
  /** Page requests asked for before QEMU's main stream was joined (requestPages). */
  private readonly early: PageRequest[] = [];
  private readonly sockets = new Set<Socket>();
  /** QEMU's main stream (its first connection) and the splicer on its return path. */
  private main: { qemu: Socket; returnPath: ReturnPathSplicer } | undefined;
  private readonly log: Logger;

  private readonly opts: OutboundOptions;

  constructor(opts: OutboundOptions) {
    this.opts = { ...opts }; // `choose` fills in the path's settings
    this.log = (opts.log ?? silentLogger).child({ part: "channel-out", migration: opts.migrationId });
  }

  /** Whether QEMU takes the connection itself (handoffSocket) rather than our unix socket. */
  get handoff(): boolean {
    return !!this.opts.handoff;
  }

  get compression(): Compression | undefined {
    return this.opts.compression;
  }

  get preempt(): boolean {
    return !!this.opts.preempt;
  }

  /** The URI to give QEMU's `migrate`. */
  get qemuUri(): string {
    return `unix:${this.opts.socketPath}`;
  }

  /**
   * Listens for QEMU and dials the destination once, so a refused or unreachable channel is
   * reported here, before QEMU is told to migrate: in post-copy a channel failing after the
   * switch would leave the VM running nowhere.
   */
  async open(): Promise<void> {
    try {
      unlinkSync(this.opts.socketPath);
    } catch {
      // not there: fine
    }
    // The urgent lane's TCP connection is made beside the first one's; its hello goes out as
    // soon as the path is chosen (dial), and it is dropped if the path has no lane.
    const fresh = !this.opts.recover && !this.opts.handoff;
    if (fresh && (this.opts.preempt || this.opts.choose)) this.laneSocket = this.connect();
    try {
      this.spare = await this.dial(this.opts.recover, !this.opts.recover && !!this.opts.choose);
    } finally {
      if (!this.lane) this.laneSocket?.destroy();
      this.laneSocket = undefined;
    }
    if (this.opts.handoff) return;
    const server = createServer({ highWaterMark: SOCKET_HIGH_WATER_MARK }, (s) => this.onQemu(s));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.opts.socketPath, () => {
        server.off("error", reject);
        resolve();
      });
    });
  }

  /** Settles once the urgent lane (if any) is accepted or known not to come (never rejects). */
  async laneReady(): Promise<void> {
    await this.lane;
  }

  /** Whether the connections opened ahead are still there for QEMU (nothing closed them since). */
  get intact(): boolean {
    return !!this.spare && !this.spare.destroyed;
  }

  /**
   * Handoff: the connection for QEMU (`getfd`). The caller destroys it once QEMU holds its
   * copy; nothing here reads it any more.
   */
  handoffSocket(): Socket {
    const s = this.spare;
    if (!this.opts.handoff || !s || s.destroyed) throw new ChannelError("no channel to hand to QEMU");
    if (s.readableLength > 0) throw new ChannelError("the destination sent stream bytes before QEMU started");
    this.spare = undefined;
    this.connections++;
    return s;
  }

  /**
   * After a completed migration: QEMU counts a byte as sent once our socket took it, so what is
   * still queued here must reach the destination before the channel goes. The relays end on
   * their own (QEMU's end flows through as end(), the destination closes once its QEMU has
   * loaded everything); wait for that, at most `timeoutMs`, then close.
   */
  async finish(timeoutMs = 30_000): Promise<void> {
    const open = [...this.sockets].filter((s) => s !== this.spare && !s.destroyed);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(
        open.map((s) => new Promise<void>((r) => (s.destroyed ? r() : s.once("close", () => r())))),
      ),
      new Promise<void>((r) => {
        timer = setTimeout(r, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    await this.close();
  }

  /**
   * Asks the source QEMU for pages as if the destination had faulted on them (on the main
   * stream's return path, between the destination's own requests; asked before QEMU's main
   * stream is joined here, they go in as it is). Only once QEMU's migration left set-up: a
   * request before its RAM state exists crashes QEMU 7.2. Returns how many requests went in or wait:
   * 0 without a relayed main stream (handoff, a recovery's channel) or once the return path
   * could not be framed.
   */
  requestPages(reqs: readonly PageRequest[]): number {
    if (this.opts.handoff || this.opts.recover) return 0;
    const m = this.main;
    if (!m) {
      // QEMU's connection is on its way (its `migrate` returned, the accept not yet run here):
      // the requests go in as it is joined.
      this.early.push(...reqs);
      return reqs.length;
    }
    if (m.qemu.destroyed || m.returnPath.gaveUp) return 0;
    for (const b of m.returnPath.request(reqs)) m.qemu.write(b);
    return reqs.length;
  }

  /** Tears the channel down at once (failure, cancel, shutdown). */
  async close(): Promise<void> {
    this.spare?.destroy();
    void this.lane?.then((s) => s?.destroy());
    this.lane = undefined;
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }

  private track(s: Socket): void {
    this.sockets.add(s);
    s.once("close", () => this.sockets.delete(s));
  }

  /** A TCP connection to the destination, accepted for this migration. */
  private async dial(recover = false, probe = false): Promise<Socket> {
    const peer = this.connect();
    try {
      await connected(peer);
      if (probe && this.opts.choose) {
        // Two pings, the first sent along with the probe hello (answered after its reply);
        // the smaller round trip counts. Not the TCP handshake: a proxy on the path answers that.
        const t1 = performance.now();
        peer.write(Buffer.concat([encodeHello(this.opts.migrationId, { probe: true }), encodePing(1)]));
        await this.accepted(peer);
        await pong(peer, 1);
        const first = performance.now() - t1;
        const t2 = performance.now();
        peer.write(encodePing(2));
        await pong(peer, 2);
        this.rttMs = Math.min(first, performance.now() - t2);
        this.plan = this.opts.choose(this.rttMs);
        this.opts.handoff = this.plan.path === "handoff";
        this.opts.compression = this.plan.compression;
        this.opts.preempt = this.plan.preempt;
      }
      const accepted = this.hello(peer, recover);
      if (this.laneSocket && this.opts.preempt && !this.opts.handoff)
        this.lane = this.readyLane(this.laneSocket);
      await accepted;
    } catch (err) {
      throw this.failed(peer, err);
    }
    return peer;
  }

  /**
   * The urgent lane, accepted (its hello answered) along with the main stream: the destination
   * QEMU reads nothing before it holds both, and QEMU here opens the lane only as post-copy
   * starts, so readying it now takes it off the switch-over. Its hello says it is the lane, so
   * the destination joins it after the main stream. Undefined if that failed (dialled afresh
   * then).
   */
  private async readyLane(peer: Socket): Promise<Socket | undefined> {
    try {
      await connected(peer);
      await this.hello(peer, false, true);
      return peer;
    } catch (err) {
      peer.destroy();
      this.log.debug("channel: urgent lane not readied", { err });
      return undefined;
    }
  }

  private connect(): Socket {
    const [host, port] = splitHostPort(this.opts.peer);
    const peer = connectSocket({ host, port, noDelay: true });
    this.track(peer);
    peer.on("error", () => {}); // each step listens for errors itself; none may go unhandled
    return peer;
  }

  /**
   * The real hello, with the path's settings; resolves once the destination accepted it, which
   * is once its QEMU listens: after its disk is attached when the channel is opened ahead.
   */
  private async hello(peer: Socket, recover = false, lane = false): Promise<void> {
    peer.write(
      encodeHello(this.opts.migrationId, {
        recover,
        compress: framed(this.opts.compression),
        handoff: this.opts.handoff,
        preempt: this.opts.preempt,
        lane,
      }),
    );
    await this.accepted(peer, HELLO_REPLY_MS);
  }

  private async accepted(peer: Socket, timeoutMs = 10_000): Promise<void> {
    const reply = await readPreamble(peer, decodeReply, timeoutMs);
    if (reply.status !== ReplyStatus.Ok)
      throw new Error(`destination refused the channel: ${ReplyStatus[reply.status]}: ${reply.message}`);
  }

  private failed(peer: Socket, err: unknown): ChannelError {
    peer.destroy();
    this.lastError = `channel to ${this.opts.peer}: ${(err as Error).message}`;
    return new ChannelError(this.lastError);
  }

  /** The next connection for QEMU: the readied urgent lane if there is one, else a new one. */
  private async nextPeer(): Promise<Socket> {
    const lane = await this.lane;
    this.lane = undefined;
    if (lane && !lane.destroyed) return lane;
    return this.dial();
  }

  private spliced(returnPath: ReturnPathSplicer, chunk: Buffer): Buffer[] {
    const known = returnPath.gaveUp;
    const out = returnPath.push(chunk);
    if (!known && returnPath.gaveUp)
      this.log.info("channel: return path passed through unframed from here on", { why: returnPath.gaveUp });
    return out;
  }

  private async onQemu(qemu: Socket): Promise<void> {
    this.track(qemu);
    qemu.pause(); // hold QEMU's bytes until the peer has accepted
    qemu.on("error", () => {});
    let peer = this.spare;
    this.spare = undefined;
    if (!peer || peer.destroyed) {
      try {
        peer = await this.nextPeer();
      } catch (err) {
        this.log.warn("channel: cannot open", { err });
        qemu.destroy();
        return;
      }
    }
    // The first connection of a fresh channel is the main stream: the return path runs on it.
    const returnPath = this.connections === 0 && !this.opts.recover ? new ReturnPathSplicer() : undefined;
    if (returnPath) {
      this.main = { qemu, returnPath };
      if (this.early.length) this.requestPages(this.early.splice(0));
    }
    this.connections++;
    this.log.info("channel: relaying", { connection: this.connections });
    relay(qemu, peer, this.counters, {
      side: "source",
      compression: this.opts.compression,
      intoQemu: returnPath && ((c) => this.spliced(returnPath, c)),
      onEnd: (err) => {
        if (err) {
          this.lastError = err.message;
          this.log.warn("channel: relay ended with an error", { err });
        }
      },
    });
    qemu.resume();
    peer.resume();
  }
}

async function pong(peer: Socket, seq: number): Promise<void> {
  const p = await readPreamble(peer, decodePing, 10_000);
  if (p.seq !== seq) throw new Error(`channel probe: pong ${p.seq} for ping ${seq}`);
}

/** Resolves once `peer` is connected (at once if it already is). */
function connected(peer: Socket): Promise<void> {
  if (peer.destroyed) return Promise.reject(new Error("connection closed before it was used"));
  if (!peer.connecting && peer.readyState === "open") return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    peer.once("connect", resolve);
    peer.once("error", reject);
    peer.once("close", () => reject(new Error("connection closed while connecting")));
  });
}

/** Whether the wire carries frames (anything but plain QEMU bytes). */
const framed = (c?: Compression) => c === "on" || c === "auto";

export class ChannelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChannelError";
  }
}

export function splitHostPort(addr: string): [string, number] {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(addr);
  if (!m) throw new Error(`bad channel address ${JSON.stringify(addr)} (want host:port)`);
  return [m[1], Number(m[2])];
}
