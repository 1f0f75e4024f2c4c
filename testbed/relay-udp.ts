// UDP datagram relay with the same link model as the TCP relay (delay + rate cap), for test
// beds that carry IP between sites over UDP (VXLAN, ping over a tunnel). It has two sockets,
// like a NAT: `listen` faces side A and forwards what arrives to `target`; the target side
// socket sends to the target and forwards whatever comes back to A. A's return address is
// `peerA` when given (a VXLAN endpoint, whose source port varies), else the first sender.
// A full queue drops (tail drop, like a router); optional random loss and jitter. cut(true)
// cuts the link: every datagram, queued or arriving, is dropped silently until cut(false).

import { createSocket, type RemoteInfo, type Socket } from "node:dgram";
import { lookup } from "node:dns/promises";
import { isIPv6 } from "node:net";
import { performance } from "node:perf_hooks";
import { type Logger, silentLogger } from "../services/common/log.js";
import { formatEndpoint, parseEndpoint } from "./address.js";
import { DelayQueue } from "./delay-queue.js";
import { Link, type LinkParams } from "./link.js";

export interface UdpRelayOptions extends LinkParams {
  /** HOST:PORT facing side A (port 0 picks one). Default 127.0.0.1:0. */
  listen?: string;
  /** A's address (HOST:PORT); default: learned from the first datagram. */
  peerA?: string;
  /** HOST:PORT of side B. */
  target: string;
  /** HOST:PORT the target-side socket binds to. Default: listen's host, any port. */
  targetSideListen?: string;
  /** Probability 0..1 that a datagram is lost. */
  loss?: number;
  /** Extra random delay per datagram, 0..jitterMs. */
  jitterMs?: number;
  /** Bytes a direction may hold before it drops. Default BDP + 1 MiB (8 MiB unlimited). */
  queueBytes?: number;
  log?: Logger;
}

export interface UdpRelayStats {
  toTarget: number;
  toPeer: number;
  bytesToTarget: number;
  bytesToPeer: number;
  /** Dropped: queue full, or no peer known yet for a reply. */
  dropped: number;
  /** Lost on purpose (`loss`). */
  lost: number;
  /** Datagrams on the A side from someone other than the (learned) peer, dropped. */
  strays: number;
  /** Dropped while the link was cut (cut(true)). */
  cut: number;
}

export interface UdpRelay {
  /** HOST:PORT side A sends to. */
  address: string;
  port: number;
  /** HOST:PORT the relay sends to the target from (side B replies here). */
  targetSideAddress: string;
  targetSidePort: number;
  /** Side A's address once known. */
  peer(): string | undefined;
  stats: UdpRelayStats;
  /** Cuts the link (true: both directions drop everything, in flight too) or restores it. */
  cut(on: boolean): void;
  close(): Promise<void>;
}

interface Addr {
  host: string;
  port: number;
}

async function resolveHostPort(text: string, what: string): Promise<Addr> {
  const e = parseEndpoint(text, what);
  if ("path" in e) throw new Error(`bad ${what} '${text}': UDP needs HOST:PORT`);
  const host = isIPv6(e.host) || /^[\d.]+$/.test(e.host) ? e.host : (await lookup(e.host)).address;
  return { host, port: e.port };
}

function bind(sock: Socket, at: Addr): Promise<void> {
  return new Promise((resolve, reject) => {
    sock.once("error", reject);
    sock.bind(at.port, at.host, () => {
      sock.off("error", reject);
      resolve();
    });
  });
}

export async function startUdpRelay(opts: UdpRelayOptions): Promise<UdpRelay> {
  const loss = opts.loss ?? 0;
  if (!(loss >= 0 && loss <= 1)) throw new Error(`loss must be a probability 0..1, got ${opts.loss}`);
  const jitterMs = opts.jitterMs ?? 0;
  if (!Number.isFinite(jitterMs) || jitterMs < 0)
    throw new Error(`jitter must be a number of ms >= 0, got ${jitterMs}`);
  const up = new Link(opts);
  const down = new Link(opts);
  const bdp = up.bandwidthDelayBytes();
  const queueBytes = opts.queueBytes ?? (Number.isFinite(bdp) ? bdp + (1 << 20) : 8 << 20);
  const listen = await resolveHostPort(opts.listen ?? "127.0.0.1:0", "listen address");
  const target = await resolveHostPort(opts.target, "target address");
  let peer = opts.peerA ? await resolveHostPort(opts.peerA, "peer address") : undefined;
  const sideB = await resolveHostPort(
    opts.targetSideListen ?? `${formatEndpoint({ ...listen, port: 0 })}`,
    "target-side address",
  );
  const log = opts.log ?? silentLogger;
  const stats: UdpRelayStats = {
    toTarget: 0,
    toPeer: 0,
    bytesToTarget: 0,
    bytesToPeer: 0,
    dropped: 0,
    lost: 0,
    strays: 0,
    cut: 0,
  };
  let cut = false;

  const a = createSocket(isIPv6(listen.host) ? "udp6" : "udp4");
  const b = createSocket(isIPv6(sideB.host) ? "udp6" : "udp4");
  const sendErr = (err: Error | null) => {
    if (err) log.debug("udp relay send failed", { err });
  };
  const qToTarget = new DelayQueue<Buffer>((m) => {
    if (cut) {
      stats.cut++;
      return true;
    }
    stats.toTarget++;
    stats.bytesToTarget += m.length;
    b.send(m, target.port, target.host, sendErr);
    return true;
  });
  const qToPeer = new DelayQueue<Buffer>((m) => {
    if (!peer) return true;
    if (cut) {
      stats.cut++;
      return true;
    }
    stats.toPeer++;
    stats.bytesToPeer += m.length;
    a.send(m, peer.port, peer.host, sendErr);
    return true;
  });
  const enqueue = (q: DelayQueue<Buffer>, link: Link, m: Buffer) => {
    if (cut) {
      stats.cut++;
      return;
    }
    if (loss > 0 && Math.random() < loss) {
      stats.lost++;
      return;
    }
    if (q.bytes + m.length > queueBytes) {
      stats.dropped++;
      return;
    }
    const at = link.schedule(m.length, performance.now()) + (jitterMs > 0 ? Math.random() * jitterMs : 0);
    q.push(at, m, m.length);
  };
  a.on("message", (m: Buffer, r: RemoteInfo) => {
    if (!peer) {
      peer = { host: r.address, port: r.port };
      log.info("udp relay learned peer", { peer: formatEndpoint(peer) });
    } else if (peer.host !== r.address || (peer.port !== r.port && !opts.peerA)) {
      // With a configured peerA only its host must match: tunnel endpoints vary source ports.
      stats.strays++;
      return;
    }
    enqueue(qToTarget, up, m);
  });
  b.on("message", (m: Buffer) => {
    if (!peer) {
      stats.dropped++;
      return;
    }
    enqueue(qToPeer, down, m);
  });
  for (const s of [a, b]) s.on("error", (err) => log.warn("udp relay socket error", { err }));
  try {
    await bind(a, listen);
    await bind(b, sideB);
  } catch (err) {
    a.close();
    b.close();
    throw err;
  }
  const aa = a.address();
  const ba = b.address();
  log.info("udp relay listening", {
    listen: formatEndpoint({ host: aa.address, port: aa.port }),
    target: opts.target,
  });
  return {
    address: formatEndpoint({ host: aa.address, port: aa.port }),
    port: aa.port,
    targetSideAddress: formatEndpoint({ host: ba.address, port: ba.port }),
    targetSidePort: ba.port,
    peer: () => (peer ? formatEndpoint(peer) : undefined),
    stats,
    cut: (on) => {
      cut = on;
      log.info(on ? "udp relay: link cut" : "udp relay: link restored", { target: opts.target });
    },
    close: async () => {
      qToTarget.close();
      qToPeer.close();
      await Promise.all([
        new Promise<void>((r) => a.close(() => r())),
        new Promise<void>((r) => b.close(() => r())),
      ]);
    },
  };
}
