// Hands an open file descriptor to another process over a unix socket (SCM_RIGHTS), with a
// message in the same sendmsg(2): how QMP's `getfd` receives one. Node's net sockets cannot
// send ancillary data, so sendmsg is called through koffi on the socket's own fd.
import type { Socket } from "node:net";
import koffi from "koffi";

const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_NOSIGNAL = 0x4000;
const EAGAIN = 11;
const EINTR = 4;

/**
 * The control buffer carrying `fds` (Linux, 64-bit: struct cmsghdr is a size_t length, then
 * int level and int type; the data is padded to 8 bytes, CMSG_SPACE). Pure.
 */
export function encodeRightsCmsg(fds: number[]): Buffer {
  if (fds.length === 0) throw new Error("no fd to pass");
  const len = 16 + 4 * fds.length; // CMSG_LEN
  const b = Buffer.alloc((len + 7) & ~7); // CMSG_SPACE
  b.writeBigUInt64LE(BigInt(len), 0);
  b.writeInt32LE(SOL_SOCKET, 8);
  b.writeInt32LE(SCM_RIGHTS, 12);
  for (const [i, fd] of fds.entries()) b.writeInt32LE(fd, 16 + 4 * i);
  return b;
}

interface Iovec {
  iov_base: Buffer;
  iov_len: number;
}
interface Msghdr {
  msg_name: null;
  msg_namelen: number;
  msg_iov: Iovec[];
  msg_iovlen: number;
  msg_control: Buffer;
  msg_controllen: number;
  msg_flags: number;
}
type Sendmsg = (fd: number, msg: Msghdr, flags: number) => number;
let sendmsg: Sendmsg | undefined;

function load(): Sendmsg {
  if (sendmsg) return sendmsg;
  const lib = koffi.load("libc.so.6");
  const iovec = koffi.struct("vmhop_passfd_iovec", { iov_base: "void *", iov_len: "size_t" });
  koffi.struct("vmhop_msghdr", {
    msg_name: "void *",
    msg_namelen: "uint32_t",
    msg_iov: koffi.pointer(iovec),
    msg_iovlen: "size_t",
    msg_control: "void *",
    msg_controllen: "size_t",
    msg_flags: "int",
  });
  sendmsg = lib.func("int64_t sendmsg(int fd, const vmhop_msghdr *msg, int flags)") as unknown as Sendmsg;
  return sendmsg;
}

/** The kernel fd under a connected net.Socket (Node keeps it on its libuv handle). */
export function socketFd(s: Socket): number {
  const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) throw new Error("socket has no file descriptor");
  return fd;
}

/**
 * Sends `data` with `fd` attached on the unix socket `via`, in one sendmsg. Nothing may be
 * queued in Node for `via` (the bytes would overtake it): the caller checks. Retries a short
 * while when the socket buffer is full.
 */
export function sendWithFd(via: Socket, data: Buffer, fd: number): void {
  if (via.writableLength > 0) throw new Error("cannot pass an fd while other writes are queued");
  const call = load();
  const control = encodeRightsCmsg([fd]);
  const msg: Msghdr = {
    msg_name: null,
    msg_namelen: 0,
    msg_iov: [{ iov_base: data, iov_len: data.length }],
    msg_iovlen: 1,
    msg_control: control,
    msg_controllen: control.length,
    msg_flags: 0,
  };
  const deadline = Date.now() + 1000;
  for (;;) {
    const n = call(socketFd(via), msg, MSG_NOSIGNAL);
    if (n === data.length) return;
    const errno = n < 0 ? koffi.errno() : 0;
    if (n < 0 && (errno === EAGAIN || errno === EINTR) && Date.now() < deadline) continue;
    // A short write would leave half a command on the monitor: no way to finish it in order.
    throw new Error(n < 0 ? `sendmsg: errno ${errno}` : `sendmsg: short write (${n} of ${data.length})`);
  }
}
