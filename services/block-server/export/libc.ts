// The few libc calls Node's fs and net lack, through koffi: sparse-file seeking, hole
// punching, read-ahead hints, sendfile, and the splice/poll primitives of the proxy's fetch
// worker. Loaded lazily (per thread) so importing this module never fails on its own.
import koffi from "koffi";

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
export const POSIX_FADV_WILLNEED = 3;
const ENXIO = 6;

const RWF_NOWAIT = 0x08;
const EAGAIN = 11;

interface Libc {
  send: (fd: number, buf: Buffer, len: number, flags: number) => number;
  sendfile: (outFd: number, inFd: number, offset: Buffer, count: number) => number;
  cachestat: (nr: number, fd: number, range: Buffer, stat: Buffer, flags: number) => number;
  preadv2: (
    fd: number,
    iov: { iov_base: Buffer; iov_len: number }[],
    iovcnt: number,
    offset: number,
    flags: number,
  ) => number;
  lseek: (fd: number, offset: number, whence: number) => number;
  fallocate: (fd: number, mode: number, offset: number, length: number) => number;
  posix_fadvise: (fd: number, offset: number, length: number, advice: number) => number;
  recv: (fd: number, buf: Buffer, len: number, flags: number) => number;
  write: (fd: number, buf: Buffer, len: number) => number;
  read: (fd: number, buf: Buffer, len: number) => number;
  splice: (
    fdIn: number,
    offIn: Buffer | null,
    fdOut: number,
    offOut: Buffer | null,
    len: number,
    flags: number,
  ) => number;
  pipe2: (fds: Buffer, flags: number) => number;
  fcntl: (fd: number, cmd: number, arg: number) => number;
  poll: (fds: Buffer, nfds: number, timeout: number) => number;
  close: (fd: number) => number;
  eventfd: (initval: number, flags: number) => number;
  setsockopt: (fd: number, level: number, name: number, value: Buffer, len: number) => number;
  getsockopt: (fd: number, level: number, name: number, value: Buffer, len: Buffer) => number;
}

let libc: Libc | undefined;

function load(): Libc {
  if (libc) return libc;
  const lib = koffi.load("libc.so.6");
  koffi.struct("vmhop_iovec", { iov_base: "void *", iov_len: "size_t" });
  libc = {
    send: lib.func("int64_t send(int fd, const void *buf, size_t len, int flags)") as Libc["send"],
    sendfile: lib.func(
      "int64_t sendfile(int out_fd, int in_fd, void *offset, size_t count)",
    ) as Libc["sendfile"],
    // syscall() is variadic in C, but glibc's is plain register moves: a fixed prototype is
    // safe on x86_64/arm64 and avoids koffi's slow per-call variadic marshalling.
    cachestat: lib.func(
      "long syscall(long number, int fd, void *range, void *stat, int flags)",
    ) as Libc["cachestat"],
    preadv2: lib.func(
      "int64_t preadv2(int fd, const vmhop_iovec *iov, int iovcnt, int64_t offset, int flags)",
    ) as unknown as Libc["preadv2"],
    lseek: lib.func("int64_t lseek(int fd, int64_t offset, int whence)") as Libc["lseek"],
    fallocate: lib.func("int fallocate(int fd, int mode, int64_t offset, int64_t len)") as Libc["fallocate"],
    posix_fadvise: lib.func(
      "int posix_fadvise(int fd, int64_t offset, int64_t len, int advice)",
    ) as Libc["posix_fadvise"],
    recv: lib.func("int64_t recv(int fd, void *buf, size_t len, int flags)") as Libc["recv"],
    write: lib.func("int64_t write(int fd, const void *buf, size_t len)") as Libc["write"],
    read: lib.func("int64_t read(int fd, void *buf, size_t len)") as Libc["read"],
    splice: lib.func(
      "int64_t splice(int fd_in, void *off_in, int fd_out, void *off_out, size_t len, unsigned int flags)",
    ) as Libc["splice"],
    pipe2: lib.func("int pipe2(void *fds, int flags)") as Libc["pipe2"],
    // Variadic in C; the int-argument form is plain register moves (see syscall above).
    fcntl: lib.func("int fcntl(int fd, int cmd, int arg)") as Libc["fcntl"],
    poll: lib.func("int poll(void *fds, unsigned long nfds, int timeout)") as Libc["poll"],
    close: lib.func("int close(int fd)") as Libc["close"],
    eventfd: lib.func("int eventfd(unsigned int initval, int flags)") as Libc["eventfd"],
    setsockopt: lib.func(
      "int setsockopt(int fd, int level, int name, const void *value, unsigned int len)",
    ) as Libc["setsockopt"],
    getsockopt: lib.func(
      "int getsockopt(int fd, int level, int name, void *value, void *len)",
    ) as Libc["getsockopt"],
  };
  return libc;
}

/** A libc failure carrying the errno name in `code`, like Node's own system errors. */
export class SysError extends Error {
  constructor(
    call: string,
    readonly errnoValue: number,
  ) {
    const code = errnoName(errnoValue);
    super(`${call}: ${code}`);
    this.code = code;
  }
  readonly code: string;
}

function errnoName(n: number): string {
  const os = koffi.os?.errno as Record<string, number> | undefined;
  if (os) for (const [k, v] of Object.entries(os)) if (v === n) return k;
  return `errno ${n}`;
}

/**
 * lseek(SEEK_DATA/SEEK_HOLE). Synchronous: it only walks the extent tree. Returns `null` when
 * there is no more data after `offset` (ENXIO), so callers can treat the rest as a hole.
 */
export function seek(fd: number, offset: number, whence: number): number | null {
  const r = load().lseek(fd, offset, whence);
  if (r >= 0) return r;
  const e = koffi.errno();
  if (e === ENXIO) return null;
  throw new SysError(whence === SEEK_DATA ? "lseek(SEEK_DATA)" : "lseek(SEEK_HOLE)", e);
}

/**
 * fallocate, synchronously: koffi's async calls cannot report errno, and we need it to tell
 * "unsupported" from real failures. Requests are at most 32 MiB, which ext4/xfs handle fast.
 */
export function fallocate(fd: number, mode: number, offset: number, length: number): void {
  if (load().fallocate(fd, mode, offset, length) !== 0) throw new SysError("fallocate", koffi.errno());
}

let nowaitWorks = true;

/**
 * pread(RWF_NOWAIT) on the calling thread: copies whatever is already in the page cache
 * without blocking (a 256 KiB read costs about a memcpy, far less than a threadpool hop).
 * Returns the bytes read (0 when nothing was cached or the kernel does not support it).
 */
export function preadCached(fd: number, buf: Buffer, offset: number): number {
  if (!nowaitWorks) return 0;
  const r = load().preadv2(fd, [{ iov_base: buf, iov_len: buf.length }], 1, offset, RWF_NOWAIT);
  if (r >= 0) return r;
  if (koffi.errno() !== EAGAIN) nowaitWorks = false; // EOPNOTSUPP and friends: stop trying
  return 0;
}

function writeU64LE(b: Buffer, n: number, at: number): void {
  b.writeUInt32LE(n >>> 0, at);
  b.writeUInt32LE(Math.floor(n / 0x1_0000_0000), at + 4);
}

const SYS_CACHESTAT = 451; // same number on x86_64 and arm64 (Linux >= 6.5)
const PAGE = 4096;
let cachestatWorks = process.arch === "x64" || process.arch === "arm64";
const csRange = Buffer.alloc(16);
const csStat = Buffer.alloc(40);

/**
 * True when every page of [offset, offset+length) is in the page cache (cachestat(2)), so
 * reading it cannot block on the disk. False when unsure (older kernels: always false).
 */
export function isCached(fd: number, offset: number, length: number): boolean {
  if (!cachestatWorks || length <= 0) return false;
  writeU64LE(csRange, offset, 0);
  writeU64LE(csRange, length, 8);
  const r = load().cachestat(SYS_CACHESTAT, fd, csRange, csStat, 0);
  if (r !== 0) {
    cachestatWorks = false;
    return false;
  }
  const pages = Math.floor((offset + length - 1) / PAGE) - Math.floor(offset / PAGE) + 1;
  return csStat.readUInt32LE(4) > 0 || csStat.readUInt32LE(0) >= pages;
}

const MSG_DONTWAIT = 0x40;
const MSG_MORE = 0x8000;

/**
 * send(2) with MSG_MORE on a non-blocking socket: a reply header the kernel holds back to
 * go out in the same segment as the data that follows. Returns bytes sent (0 if full).
 */
export function sendMore(sockFd: number, buf: Buffer): number {
  const r = load().send(sockFd, buf, buf.length, MSG_MORE | MSG_DONTWAIT);
  if (r >= 0) return r;
  const e = koffi.errno();
  if (e === EAGAIN) return 0;
  throw new SysError("send", e);
}

const sfOffset = Buffer.alloc(8);

/**
 * sendfile(2) from a file to a non-blocking socket, synchronously: returns the bytes sent
 * (0 when the socket buffer is full). Only call it with data known to be cached.
 */
export function sendfile(sockFd: number, fileFd: number, offset: number, count: number): number {
  writeU64LE(sfOffset, offset, 0);
  const r = load().sendfile(sockFd, fileFd, sfOffset, count);
  if (r >= 0) return r;
  const e = koffi.errno();
  if (e === EAGAIN) return 0;
  throw new SysError("sendfile", e);
}

/** Read-ahead hint; failures are ignored (it is advisory). */
export function adviseWillNeed(fd: number, offset: number, length: number): void {
  load().posix_fadvise(fd, offset, length, POSIX_FADV_WILLNEED);
}

// ---- descriptors, pipes and splice (the proxy's fetch worker) ----

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;
const EINTR = 4;

const F_DUPFD_CLOEXEC = 1030;

/**
 * A second descriptor for the same open socket or file, close-on-exec like Node's own: a
 * plain dup(2) would leak it into every process spawned later (tsx's esbuild service held
 * an upstream NBD connection open for a minute that way, and its server could not stop).
 */
export function dup(fd: number): number {
  const r = load().fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r < 0) throw new SysError("fcntl(F_DUPFD_CLOEXEC)", koffi.errno());
  return r;
}

/** close(2); errors are ignored (the descriptor is gone either way). */
export function closeFd(fd: number): void {
  load().close(fd);
}

/** A non-blocking eventfd: a counter one thread bumps (wake) to end another's poll. */
export function eventFd(): number {
  const r = load().eventfd(0, O_NONBLOCK | O_CLOEXEC);
  if (r < 0) throw new SysError("eventfd", koffi.errno());
  return r;
}

const one = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
const drainBuf = Buffer.alloc(8);

export function wakeEventFd(fd: number): void {
  load().write(fd, one, 8);
}

/** Resets an eventfd's counter (non-blocking). */
export function drainEventFd(fd: number): void {
  load().read(fd, drainBuf, 8);
}

/** A pipe (blocking, close-on-exec), enlarged to `size` bytes where the system allows. */
export function pipe(size: number): { read: number; write: number; size: number } {
  const fds = Buffer.alloc(8);
  if (load().pipe2(fds, O_CLOEXEC) !== 0) throw new SysError("pipe2", koffi.errno());
  const p = { read: fds.readInt32LE(0), write: fds.readInt32LE(4), size: 65536 };
  const got = load().fcntl(p.write, F_SETPIPE_SZ, size);
  if (got > 0) p.size = got; // else the 64 KiB default (pipe-max-size caps unprivileged users)
  return p;
}

export const SPLICE_F_MOVE = 1;
export const SPLICE_F_NONBLOCK = 2;

/**
 * splice(2) from or to a pipe. `fileOffset` (when given) is the file position to use, and
 * is advanced by the bytes moved. Returns bytes moved, or -1 for EAGAIN (nothing ready on a
 * non-blocking end). EINTR is retried.
 */
export function splice(
  fdIn: number,
  fdOut: number,
  len: number,
  flags: number,
  fileOffset?: { in?: Buffer; out?: Buffer },
): number {
  return uninterrupted("splice", () =>
    load().splice(fdIn, fileOffset?.in ?? null, fdOut, fileOffset?.out ?? null, len, flags),
  );
}

/** Runs a libc call again while EINTR interrupts it: its result, -1 for EAGAIN, or throws. */
function uninterrupted(name: string, call: () => number): number {
  for (;;) {
    const r = call();
    if (r >= 0) return r;
    const e = koffi.errno();
    if (e === EAGAIN) return -1;
    if (e !== EINTR) throw new SysError(name, e);
  }
}

/** recv(2) without blocking: bytes received, 0 at end of stream, -1 when nothing is ready. */
export function recvNow(fd: number, buf: Buffer): number {
  return uninterrupted("recv", () => load().recv(fd, buf, buf.length, MSG_DONTWAIT));
}

/** send(2) without blocking: bytes sent, 0 when the socket buffer is full. */
export function sendNow(fd: number, buf: Buffer): number {
  return Math.max(
    0,
    uninterrupted("send", () => load().send(fd, buf, buf.length, MSG_DONTWAIT)),
  );
}

export const POLLIN = 0x1;
export const POLLOUT = 0x4;
const POLLERR_HUP = 0x8 | 0x10;

/**
 * poll(2) on a few descriptors, blocking the calling thread (a worker's) until one is ready
 * or `timeoutMs` passes (-1: no limit). Returns each descriptor's ready events, in order;
 * errors and hang-ups count as ready (the next call on it reports them).
 */
export function pollFds(fds: { fd: number; events: number }[], timeoutMs: number): number[] {
  const b = Buffer.alloc(8 * fds.length);
  fds.forEach((f, i) => {
    b.writeInt32LE(f.fd, i * 8);
    b.writeInt16LE(f.events, i * 8 + 4);
  });
  for (;;) {
    const r = load().poll(b, fds.length, timeoutMs);
    if (r >= 0) break;
    const e = koffi.errno();
    if (e !== EINTR) throw new SysError("poll", e);
  }
  return fds.map((f, i) => {
    const rev = b.readInt16LE(i * 8 + 6);
    return rev & POLLERR_HUP ? rev | f.events : rev;
  });
}

const IPPROTO_TCP = 6;
const TCP_CONGESTION = 13;

/**
 * Sets a TCP socket's congestion control by name (e.g. "reno", always permitted). Returns
 * false, changing nothing, where refused: not a TCP socket, or an algorithm not allowed.
 */
export function setCongestionControl(fd: number, name: string): boolean {
  const v = Buffer.from(name);
  return load().setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, v, v.length) === 0;
}

const TCP_NOTSENT_LOWAT = 25;

/**
 * Caps the bytes a TCP socket holds queued but not yet sent (TCP_NOTSENT_LOWAT): a write
 * beyond it is refused (EAGAIN) and the socket polls writable only once the unsent bytes
 * fall below it. Returns false where refused.
 */
export function setNotSentLowat(fd: number, bytes: number): boolean {
  const v = Buffer.alloc(4);
  v.writeUInt32LE(bytes);
  return load().setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, v, 4) === 0;
}

/** The socket's TCP_NOTSENT_LOWAT (0: unset, the system default applies); -1 if unreadable. */
export function notSentLowat(fd: number): number {
  const v = Buffer.alloc(4);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(4);
  if (load().getsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, v, len) !== 0) return -1;
  return v.readUInt32LE(0);
}

const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_SNDBUFFORCE = 32;

/**
 * Sets a socket's send buffer: SO_SNDBUFFORCE where allowed (root), else SO_SNDBUF (capped
 * by net.core.wmem_max). Best effort: failures leave the kernel's autotuning in place.
 */
export function setSendBuffer(fd: number, bytes: number): void {
  const v = Buffer.alloc(4);
  v.writeInt32LE(bytes);
  if (load().setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, v, 4) !== 0)
    load().setsockopt(fd, SOL_SOCKET, SO_SNDBUF, v, 4);
}
