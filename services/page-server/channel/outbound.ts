// Source side of the migration channel: a unix socket for the source QEMU (`migrate
// unix:PATH`); each connection QEMU opens is carried on its own TCP connection to the
// destination page-server, after a hello naming the migration. With `handoff` there is no
// unix socket: the one TCP connection is handed to the source QEMU itself (handoffSocket()).
// With `choose`, the first connection times a few pings first and the path is picked from
// the measured round trip (path-policy.ts) before the real hello goes out on it.
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

/** Pings timed on the first connection; the smallest round trip counts (the first may carry set-up). */
export const PROBE_PINGS = 3;

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
  private readonly sockets = new Set<Socket>();
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
    this.spare = await this.dial(this.opts.recover, !this.opts.recover && !!this.opts.choose);
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

  /** Tears the channel down at once (failure, cancel, shutdown). */
  async close(): Promise<void> {
    this.spare?.destroy();
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
    const [host, port] = splitHostPort(this.opts.peer);
    const peer = connectSocket({ host, port, noDelay: true });
    this.track(peer);
    const hello = async (flags: Parameters<typeof encodeHello>[1]) => {
      peer.write(encodeHello(this.opts.migrationId, flags));
      const reply = await readPreamble(peer, decodeReply, 10_000);
      if (reply.status !== ReplyStatus.Ok)
        throw new Error(`destination refused the channel: ${ReplyStatus[reply.status]}: ${reply.message}`);
    };
    try {
      await new Promise<void>((resolve, reject) => {
        peer.once("connect", resolve);
        peer.once("error", reject);
      });
      if (probe && this.opts.choose) {
        await hello({ probe: true });
        this.rttMs = await measureRtt(peer);
        this.plan = this.opts.choose(this.rttMs);
        this.opts.handoff = this.plan.path === "handoff";
        this.opts.compression = this.plan.compression;
        this.opts.preempt = this.plan.preempt;
      }
      await hello({
        recover,
        compress: framed(this.opts.compression),
        handoff: this.opts.handoff,
        preempt: this.opts.preempt,
      });
    } catch (err) {
      peer.destroy();
      this.lastError = `channel to ${this.opts.peer}: ${(err as Error).message}`;
      throw new ChannelError(this.lastError);
    }
    peer.on("error", () => {});
    return peer;
  }

  private async onQemu(qemu: Socket): Promise<void> {
    this.track(qemu);
    qemu.pause(); // hold QEMU's bytes until the peer has accepted
    qemu.on("error", () => {});
    let peer = this.spare;
    this.spare = undefined;
    if (!peer || peer.destroyed) {
      try {
        peer = await this.dial();
      } catch (err) {
        this.log.warn("channel: cannot open", { err });
        qemu.destroy();
        return;
      }
    }
    this.connections++;
    this.log.info("channel: relaying", { connection: this.connections });
    relay(qemu, peer, this.counters, {
      side: "source",
      compression: this.opts.compression,
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

/** Smallest of PROBE_PINGS ping/pong round trips on `peer` (ms), one at a time. */
async function measureRtt(peer: Socket): Promise<number> {
  let best = Number.POSITIVE_INFINITY;
  for (let seq = 1; seq <= PROBE_PINGS; seq++) {
    const t0 = performance.now();
    peer.write(encodePing(seq));
    const pong = await readPreamble(peer, decodePing, 10_000);
    if (pong.seq !== seq) throw new Error(`channel probe: pong ${pong.seq} for ping ${seq}`);
    best = Math.min(best, performance.now() - t0);
  }
  return best;
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
