// How the NBD server sets up a client's socket whose READ replies go out by sendfile(2).
import { setCongestionControl, setSendBuffer } from "../../export/libc.js";

/**
 * Send buffer: sendfile queues page references, not copies, and a buffer deep enough for a
 * client's pipelined reads (nbdcopy keeps 16 MiB asked for per connection) means fewer
 * replies find it full and must be copied instead.
 */
export const SEND_BUFFER_BYTES = 8 << 20;

/**
 * Congestion control for clients on this host (QEMU reading its disk from the local
 * block-server is the usual case). Loopback has no bottleneck queue for pacing to protect,
 * yet a pacing algorithm (BBR, a common default) holds each sendfile burst back and releases
 * it from timers and from the client's ACKs, on the client's CPU: measured here, replies to
 * nbdcopy took ~5% longer under BBR than under reno. Remote clients keep the system default.
 */
export const LOOPBACK_CONGESTION_CONTROL = "reno";

/** True for an IPv4 127/8 or IPv6 ::1 address (also IPv4-mapped). */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const a = address.toLowerCase();
  if (a === "::1") return true;
  const v4 = a.startsWith("::ffff:") ? a.slice(7) : a;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4);
}

/** Best effort: a socket the kernel refuses to tune keeps its defaults. */
export function tuneReplySocket(fd: number, remoteAddress: string | undefined): void {
  setSendBuffer(fd, SEND_BUFFER_BYTES);
  if (isLoopback(remoteAddress)) setCongestionControl(fd, LOOPBACK_CONGESTION_CONTROL);
}
