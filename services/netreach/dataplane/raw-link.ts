// Sends raw Ethernet frames on a device of another network namespace: the socket is opened
// inside the namespace (setns on this thread, then straight back, all synchronous) and keeps
// working from here. libc through koffi.
import { closeSync, openSync } from "node:fs";
import koffi from "koffi";

const libc = koffi.load("libc.so.6");
const socket = libc.func("int socket(int domain, int type, int protocol)");
const setns = libc.func("int setns(int fd, int nstype)");
const ifNameToIndex = libc.func("unsigned int if_nametoindex(const char *name)");
const sendto = libc.func(
  "long sendto(int fd, const uint8_t *buf, size_t len, int flags, const uint8_t *addr, uint32_t alen)",
);
const closeFd = libc.func("int close(int fd)");

const AF_PACKET = 17;
const SOCK_RAW = 3;
/** Not inherited by the processes we spawn (the `ip -batch` helper lives as long as we do). */
const SOCK_CLOEXEC = 0o2000000;
const CLONE_NEWNET = 0x40000000;

export class RawLink {
  private readonly fd: number;
  private readonly ifindex: number;

  /** Opens a packet socket for `dev` in namespace `netns` (absent: the current one). */
  constructor(
    readonly dev: string,
    readonly netns?: string,
  ) {
    const here = netns ? openSync("/proc/thread-self/ns/net", "r") : -1;
    const there = netns ? openSync(`/var/run/netns/${netns}`, "r") : -1;
    try {
      if (netns && setns(there, CLONE_NEWNET) !== 0)
        throw new Error(`setns into ${netns} failed (errno ${koffi.errno()})`);
      // Plain libc calls (they return errors, never throw), then straight back home.
      this.ifindex = ifNameToIndex(dev) as number;
      this.fd = this.ifindex ? (socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0) as number) : -1;
      if (netns && setns(here, CLONE_NEWNET) !== 0)
        throw new Error(`setns back failed (errno ${koffi.errno()}): this thread is in the wrong namespace`);
    } finally {
      if (netns) {
        closeSync(here);
        closeSync(there);
      }
    }
    if (!this.ifindex) throw new Error(`no device '${dev}'${netns ? ` in ${netns}` : ""}`);
    if (this.fd < 0) throw new Error(`cannot open a packet socket (errno ${koffi.errno()})`);
  }

  send(frame: Buffer): void {
    // struct sockaddr_ll: family, protocol (BE), ifindex, hatype, pkttype, halen, addr[8].
    const sll = Buffer.alloc(20);
    sll.writeUInt16LE(AF_PACKET, 0);
    sll.writeUInt16BE(frame.readUInt16BE(12), 2);
    sll.writeInt32LE(this.ifindex, 4);
    sll[11] = 6;
    frame.copy(sll, 12, 0, 6);
    const n = sendto(this.fd, frame, frame.length, 0, sll, sll.length) as number;
    if (n !== frame.length) throw new Error(`sending on ${this.dev} failed (errno ${koffi.errno()})`);
  }

  close(): void {
    closeFd(this.fd);
  }
}
