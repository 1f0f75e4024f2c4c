// Which way a migration's stream crosses, from what the caller asked and the link's measured
// round-trip time. Pure.
//
// handoff: the TCP connection is given to both QEMUs (no relay copies; no urgent lane, no
//          compression: QEMU writes plain bytes straight to the wire).
// relay:   through both page-servers, with the urgent lane (QEMU's postcopy-preempt) and
//          compression "auto" unless the caller says otherwise.
import type { Compression } from "./compress-policy.js";

export type ChannelPath = "handoff" | "relay";
export type ChannelPathChoice = ChannelPath | "auto";

export const CHANNEL_PATHS: readonly ChannelPathChoice[] = ["auto", "handoff", "relay"];
export const COMPRESSIONS: readonly Compression[] = ["off", "on", "auto"];

/**
 * Links with a round trip below this (ms) count as near: the same host or rack. There a
 * post-copy fault is answered in well under a heartbeat whatever queues ahead of it, and the
 * link outruns deflate, so the urgent lane and compression buy nothing, while relaying costs
 * two extra socket crossings per byte (1.3-2.2x direct's total time on loopback; handoff
 * 0.98-1.03x). Far links (the testbed WAN: 20+ ms) gain from both (relay + urgent lane +
 * auto compression: 0.71x direct's time, 1578 vs 2442 ms largest heartbeat gap). Loopback
 * measures ~0.1 ms here even with two busy TCG guests; the 2 ms bound leaves room for that.
 */
export const NEAR_LINK_RTT_MS = 2;

export interface PathRequest {
  /** Default "auto": from the measured round trip. */
  path?: ChannelPathChoice;
  /** Explicit compression (request, else the host's); undefined = "auto". */
  compression?: Compression;
  /** Explicit urgent lane: true needs the relay; undefined = on when relayed. */
  preempt?: boolean;
  /** The migration can switch to post-copy (the urgent lane matters only then). */
  postcopy: boolean;
}

export interface ChannelPlan {
  path: ChannelPath;
  /** What the relay does ("off" for a handoff). */
  compression: Compression;
  /** QEMU's postcopy-preempt capability, on both ends. */
  preempt: boolean;
  /** For the log and the migration record, e.g. "rtt 0.08 ms < 2 ms". */
  reason: string;
}

export class PathRequestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PathRequestError";
  }
}

/** Rejects contradictory requests before anything is dialled. */
export function checkPathRequest(r: PathRequest): void {
  const path = parseChannelPath(r.path ?? "auto");
  if (r.compression !== undefined) parseCompression(r.compression);
  if (path !== "handoff") return;
  if (r.compression === "on")
    throw new PathRequestError(
      "channel path handoff carries QEMU's plain stream: compression on needs the relay",
    );
  if (r.preempt)
    throw new PathRequestError(
      "channel path handoff has no urgent lane (QEMU 7.2 opens it as a second connection): preempt needs the relay",
    );
}

/** The plan for `r` on a link measured at `rttMs` (undefined: not measured). */
export function choosePath(r: PathRequest, rttMs: number | undefined): ChannelPlan {
  checkPathRequest(r);
  const rtt = rttMs === undefined ? "rtt not measured" : `rtt ${rttMs.toFixed(2)} ms`;
  const requested = r.path ?? "auto";
  let path: ChannelPath;
  let reason: string;
  if (requested !== "auto") {
    path = requested;
    reason = `requested; ${rtt}`;
  } else if (r.compression === "on" || r.preempt) {
    path = "relay";
    reason = `${r.preempt ? "urgent lane" : "compression on"} requested; ${rtt}`;
  } else if (rttMs === undefined) {
    path = "relay";
    reason = rtt;
  } else if (rttMs < NEAR_LINK_RTT_MS) {
    path = "handoff";
    reason = `${rtt} < ${NEAR_LINK_RTT_MS} ms`;
  } else {
    path = "relay";
    reason = `${rtt} >= ${NEAR_LINK_RTT_MS} ms`;
  }
  if (path === "handoff") return { path, compression: "off", preempt: false, reason };
  return {
    path,
    compression: r.compression ?? "auto",
    preempt: r.postcopy && (r.preempt ?? true),
    reason,
  };
}

/** Parses a flag or option value. */
export function parseChannelPath(v: string): ChannelPathChoice {
  if (!CHANNEL_PATHS.includes(v as ChannelPathChoice))
    throw new PathRequestError(`channel path must be auto, handoff or relay, not ${JSON.stringify(v)}`);
  return v as ChannelPathChoice;
}

export function parseCompression(v: string): Compression {
  if (!COMPRESSIONS.includes(v as Compression))
    throw new PathRequestError(`compression must be off, on or auto, not ${JSON.stringify(v)}`);
  return v as Compression;
}
