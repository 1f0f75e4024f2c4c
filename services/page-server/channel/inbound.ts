// Destination side of the migration channel: a TCP listener for peer page-servers. Each
// connection names its migration in a hello; it is then joined to the destination QEMU's
// incoming unix socket. Several connections per migration are fine (postcopy-preempt opens
// a second one for urgent pages, which so never queues behind the bulk stream). A handoff
// connection is not relayed: the destination QEMU is given the socket itself. A probe hello
// first gets its pings echoed (the source times the link to choose the path), then the real
// hello follows on the same connection.
import { createServer, type Server, type Socket } from "node:net";
import { formatAddress } from "../../common/listen-address.js";
import { type Logger, silentLogger } from "../../common/log.js";
import {
  ChannelProtocolError,
  decodeHello,
  decodeProbeStep,
  encodePing,
  encodeReply,
  type Hello,
  ReplyStatus,
} from "./hello.js";
import {
  connectSocket,
  newCounters,
  type RelayCounters,
  type RelayTap,
  readPreamble,
  relay,
  SOCKET_HIGH_WATER_MARK,
} from "./relay.js";

export interface IncomingTarget {
  /** QEMU's `migrate-incoming unix:PATH` socket (after a recovery: its `migrate-recover` one). */
  qemuSocket: string;
  /** Puts the paused destination QEMU into recovery; resolves with its new socket. */
  recover?: () => Promise<string>;
  /**
   * Makes QEMU listen on qemuSocket before the first relayed connection (once), with the
   * urgent lane when the source's hello asks for it.
   */
  listen?: (o: { preempt: boolean }) => Promise<void>;
  /** Gives the connection itself to the destination QEMU (hello handoff flag). */
  handoff?: (sock: Socket) => Promise<void>;
  /**
   * An observer for each relayed connection's bytes (the post-copy fault timing, lanes.ts);
   * `recover` says the connection re-opens a paused post-copy.
   */
  tap?: (o: { recover: boolean }) => RelayTap | undefined;
  /** Whether the stream went to QEMU by handoff (no relay, so no byte counts). */
  handedOff: boolean;
  recoveries: number;
  counters: RelayCounters;
  connections: number;
}

/** A probe gets at most this many pings echoed before its real hello. */
export const MAX_PROBE_PINGS = 16;
/** How long an urgent lane's hello waits for its main stream to be joined to QEMU. */
export const LANE_WAIT_MS = 60_000;

export class ChannelServer {
  private server: Server | undefined;
  private readonly targets = new Map<string, IncomingTarget>();
  private readonly sockets = new Set<Socket>();
  /** Per migration: settles once its main stream is joined to QEMU (a lane hello waits for it). */
  private readonly mains = new Map<string, { joined: Promise<void>; join: () => void }>();
  private readonly log: Logger;

  constructor(opts: { log?: Logger; helloTimeoutMs?: number } = {}) {
    this.log = (opts.log ?? silentLogger).child({ part: "channel-in" });
    this.helloTimeoutMs = opts.helloTimeoutMs ?? 5000;
  }
  private readonly helloTimeoutMs: number;

  /** Listens; returns host:port for the source page-server. */
  async listen(port = 0, host = "127.0.0.1"): Promise<string> {
    const server = createServer({ highWaterMark: SOCKET_HIGH_WATER_MARK }, (s) => this.onConnection(s));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const a = server.address();
    if (typeof a !== "object" || a === null) throw new Error("channel listener has no address");
    return formatAddress({ host: a.address, port: a.port });
  }

  /** Accept connections for `migrationId`, relaying them to QEMU's incoming socket. */
  expect(
    migrationId: string,
    qemuSocket: string,
    hooks: Pick<IncomingTarget, "recover" | "listen" | "handoff" | "tap"> = {},
  ): IncomingTarget {
    const t: IncomingTarget = {
      qemuSocket,
      ...hooks,
      handedOff: false,
      recoveries: 0,
      counters: newCounters(),
      connections: 0,
    };
    this.targets.set(migrationId, t);
    let join = () => {};
    const joined = new Promise<void>((r) => {
      join = r;
    });
    this.mains.set(migrationId, { joined, join });
    return t;
  }

  target(migrationId: string): IncomingTarget | undefined {
    return this.targets.get(migrationId);
  }

  forget(migrationId: string): void {
    this.targets.delete(migrationId);
    this.mains.delete(migrationId);
  }

  /** Resolves once `id`'s main stream is joined to QEMU; rejects after LANE_WAIT_MS or if `peer` goes. */
  private async mainJoined(id: string, peer: Socket): Promise<void> {
    const main = this.mains.get(id);
    if (!main) throw new Error(`no incoming migration ${id} on this host`);
    let timer: NodeJS.Timeout | undefined;
    let onClose = () => {};
    try {
      await Promise.race([
        main.joined,
        new Promise<void>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`its main stream was not joined within ${LANE_WAIT_MS / 1000} s`)),
            LANE_WAIT_MS,
          );
          onClose = () => reject(new Error("the lane closed while it waited for its main stream"));
          peer.once("close", onClose);
        }),
      ]);
    } finally {
      clearTimeout(timer);
      peer.off("close", onClose);
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }

  private async onConnection(peer: Socket): Promise<void> {
    this.sockets.add(peer);
    peer.once("close", () => this.sockets.delete(peer));
    peer.on("error", () => {});
    peer.setNoDelay(true); // pongs and replies go out at once
    let hello: Hello;
    try {
      hello = await readPreamble(peer, decodeHello, this.helloTimeoutMs);
    } catch (err) {
      // A source drops the urgent lane it connected ahead when the path chosen has none.
      if (peer.bytesRead === 0 && peer.destroyed)
        return this.log.debug("channel: connection closed before its hello", { remote: peer.remoteAddress });
      this.log.warn("channel: bad hello", { err, remote: peer.remoteAddress });
      peer.end(encodeReply(ReplyStatus.BadHello, (err as Error).message));
      return;
    }
    const id = hello.migrationId;
    const target = this.targets.get(id);
    if (!target) {
      this.log.warn("channel: unknown migration", { migration: id });
      peer.end(encodeReply(ReplyStatus.UnknownMigration, `no incoming migration ${id} on this host`));
      return;
    }
    if (hello.probe) {
      peer.write(encodeReply(ReplyStatus.Ok));
      try {
        hello = await this.echoPings(peer, id);
      } catch (err) {
        this.log.warn("channel: bad probe", { migration: id, err });
        peer.end(encodeReply(ReplyStatus.BadHello, (err as Error).message));
        return;
      }
    }
    const { recover, compress, handoff, preempt, lane } = hello;
    if (recover) {
      try {
        if (!target.recover) throw new Error("this migration cannot be recovered");
        target.qemuSocket = await target.recover();
        target.recoveries++;
        this.log.info("channel: destination recovering", { migration: id, socket: target.qemuSocket });
      } catch (err) {
        this.log.warn("channel: recovery refused", { migration: id, err });
        peer.end(encodeReply(ReplyStatus.RecoverFailed, (err as Error).message));
        return;
      }
    }
    if (handoff) return this.handOff(id, target, peer);
    try {
      if (!recover) await target.listen?.({ preempt });
    } catch (err) {
      this.log.warn("channel: destination QEMU cannot listen", { migration: id, err });
      peer.end(
        encodeReply(
          ReplyStatus.UnknownMigration,
          `destination QEMU cannot listen: ${(err as Error).message}`,
        ),
      );
      return;
    }
    if (lane) {
      // QEMU takes its second connection as the urgent lane: the main stream goes in first.
      try {
        await this.mainJoined(id, peer);
      } catch (err) {
        this.log.warn("channel: urgent lane refused", { migration: id, err });
        if (!peer.destroyed) peer.end(encodeReply(ReplyStatus.UnknownMigration, (err as Error).message));
        return;
      }
    }
    const qemu = connectSocket({ path: target.qemuSocket });
    this.sockets.add(qemu);
    qemu.once("close", () => this.sockets.delete(qemu));
    let connected = false;
    qemu.once("error", (err) => {
      if (!connected) {
        this.log.warn("channel: destination QEMU unreachable", { migration: id, err });
        peer.end(encodeReply(ReplyStatus.UnknownMigration, `destination QEMU not listening: ${err.message}`));
      }
    });
    qemu.once("connect", () => {
      connected = true;
      target.connections++;
      if (!lane && !recover) this.mains.get(id)?.join();
      peer.write(encodeReply(ReplyStatus.Ok));
      this.log.info("channel: relaying", { migration: id, connection: target.connections });
      relay(qemu, peer, target.counters, {
        side: "destination",
        compression: compress ? "on" : "off",
        tap: target.tap?.({ recover }),
        onEnd: (err) => {
          if (err) this.log.warn("channel: relay ended with an error", { migration: id, err });
        },
      });
      peer.resume();
    });
  }

  /** Echoes the probe's pings until the real hello comes; returns that hello. */
  private async echoPings(peer: Socket, id: string): Promise<Hello> {
    for (let pings = 0; ; pings++) {
      const step = await readPreamble(peer, decodeProbeStep, this.helloTimeoutMs);
      if (step.kind === "hello") {
        if (step.migrationId !== id)
          throw new ChannelProtocolError(`probe for ${id} followed by a hello for ${step.migrationId}`);
        return step;
      }
      if (pings >= MAX_PROBE_PINGS)
        throw new ChannelProtocolError(`more than ${MAX_PROBE_PINGS} probe pings`);
      peer.write(encodePing(step.seq));
    }
  }

  /**
   * QEMU takes the connection (getfd + migrate-incoming fd:), then the OK goes out on it:
   * the source QEMU writes only after the reply, and the hello's reader stopped reading, so
   * every stream byte reaches QEMU. Our own fd copy is then closed (destroy: no FIN).
   */
  private async handOff(id: string, target: IncomingTarget, peer: Socket): Promise<void> {
    try {
      if (!target.handoff) throw new Error("this migration cannot take a handed-off channel");
      if (peer.readableLength > 0) throw new Error("stream bytes arrived before the reply");
      await target.handoff(peer);
    } catch (err) {
      this.log.warn("channel: handoff refused", { migration: id, err });
      peer.end(encodeReply(ReplyStatus.UnknownMigration, `handoff: ${(err as Error).message}`));
      return;
    }
    target.handedOff = true;
    target.connections++;
    this.log.info("channel: handed to QEMU", { migration: id });
    peer.write(encodeReply(ReplyStatus.Ok), () => peer.destroy());
  }
}
