// ICMP echo over the kernel's "ping sockets" (SOCK_DGRAM + IPPROTO_ICMP/ICMPV6): no raw socket,
// the kernel fills in identifier and checksum, and the socket sees only its own replies. Needs
// net.ipv4.ping_group_range to include our group (the test bed sets it). libc through koffi,
// synchronous: meant for a dedicated probe process.
import { isIPv4, isIPv6 } from "node:net";
import koffi from "koffi";

const libc = koffi.load("libc.so.6");
const socket = libc.func("int socket(int domain, int type, int protocol)");
const sendto = libc.func(
  "long sendto(int fd, const uint8_t *buf, size_t len, int flags, const uint8_t *addr, uint32_t alen)",
);
const recv = libc.func("long recv(int fd, _Out_ uint8_t *buf, size_t len, int flags)");
const poll = libc.func("int poll(_Inout_ uint8_t *fds, unsigned long nfds, int timeout)");
const close = libc.func("int close(int fd)");

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_DGRAM = 2;
/** Not inherited by the processes we spawn (`ip`, probes). */
const SOCK_CLOEXEC = 0o2000000;
const IPPROTO_ICMP = 1;
const IPPROTO_ICMPV6 = 58;
const MSG_DONTWAIT = 0x40;
const POLLIN = 1;

export interface EchoReply {
  seq: number;
  payload: Buffer;
}

/** Encodes an echo request (type 8 or 128); checksum and identifier are the kernel's. */
export function encodeEchoRequest(v6: boolean, seq: number, payload: Buffer): Buffer {
  if (!Number.isInteger(seq) || seq < 0 || seq > 0xffff)
    throw new RangeError(`echo sequence ${seq} out of range`);
  const b = Buffer.alloc(8 + payload.length);
  b[0] = v6 ? 128 : 8;
  b.writeUInt16BE(seq, 6);
  payload.copy(b, 8);
  return b;
}

/** Decodes an echo reply (type 0 or 129); anything else is null. */
export function decodeEchoReply(v6: boolean, b: Buffer): EchoReply | null {
  if (b.length < 8 || b[0] !== (v6 ? 129 : 0) || b[1] !== 0) return null;
  return { seq: b.readUInt16BE(6), payload: b.subarray(8) };
}

function sockaddr(addr: string): Buffer {
  if (isIPv4(addr)) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    addr.split(".").forEach((o, i) => {
      b[4 + i] = Number(o);
    });
    return b;
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  expandIPv6(addr).copy(b, 8);
  return b;
}

/** 16 bytes of an IPv6 address (no zone). */
export function expandIPv6(addr: string): Buffer {
  if (!isIPv6(addr) || addr.includes("%") || addr.includes("."))
    throw new RangeError(`not a plain IPv6 address: '${addr}'`);
  const [head, tail] = addr.includes("::") ? addr.split("::") : [addr, undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => {
    b.writeUInt16BE(Number.parseInt(g, 16), i * 2);
  });
  return b;
}

export class IcmpEchoSocket {
  readonly v6: boolean;
  private readonly fd: number;
  private readonly to: Buffer;
  private readonly buf = Buffer.alloc(2048);
  private readonly pfd = Buffer.alloc(8);

  constructor(readonly target: string) {
    if (!isIPv4(target) && !isIPv6(target)) throw new RangeError(`not an IP address: '${target}'`);
    this.v6 = isIPv6(target);
    this.to = sockaddr(target);
    this.fd = socket(
      this.v6 ? AF_INET6 : AF_INET,
      SOCK_DGRAM | SOCK_CLOEXEC,
      this.v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP,
    ) as number;
    if (this.fd < 0)
      throw new Error(
        `cannot open an ICMP echo socket (errno ${koffi.errno()}): is net.ipv4.ping_group_range set to include this group?`,
      );
    this.pfd.writeInt32LE(this.fd, 0);
    this.pfd.writeInt16LE(POLLIN, 4);
  }

  send(seq: number, payload: Buffer = Buffer.alloc(16)): void {
    const pkt = encodeEchoRequest(this.v6, seq, payload);
    const n = sendto(this.fd, pkt, pkt.length, 0, this.to, this.to.length) as number;
    // Unreachable routes and full queues fail the send: that echo is simply lost.
    void n;
  }

  /** Waits up to timeoutMs for a reply; null on timeout. */
  receive(timeoutMs: number): EchoReply | null {
    this.pfd.writeInt16LE(0, 6);
    const r = poll(this.pfd, 1, Math.max(0, Math.floor(timeoutMs))) as number;
    if (r <= 0) return null;
    const n = recv(this.fd, this.buf, this.buf.length, MSG_DONTWAIT) as number;
    if (n <= 0) return null;
    return decodeEchoReply(this.v6, Buffer.from(this.buf.subarray(0, n)));
  }

  close(): void {
    close(this.fd);
  }
}
