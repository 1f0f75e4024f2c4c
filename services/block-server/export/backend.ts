// What an NBD export serves from. The NBD connection code talks only to this interface;
// target mode (an image file) and proxy mode (lazy relocation from an upstream) implement
// it. Offsets and lengths are already range-checked by the connection layer.

/** One extent of base:allocation block status. */
export interface Extent {
  length: number;
  /** NBD_STATE_HOLE (1) | NBD_STATE_ZERO (2), as in the NBD spec's base:allocation. */
  flags: number;
}

export interface WriteZeroesOptions {
  fua: boolean;
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated. */
  noHole: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP rather than fall back to writing zeroes. */
  fastZero: boolean;
}

export interface Capabilities {
  readOnly: boolean;
  flush: boolean;
  fua: boolean;
  trim: boolean;
  writeZeroes: boolean;
  fastZero: boolean;
  cache: boolean;
  blockStatus: boolean;
  /** Safe to serve over several connections at once (consistent across connections). */
  multiConn: boolean;
}

/** Errors a backend may throw, mapped by the connection layer to NBD error codes. */
export class BackendError extends Error {
  constructor(
    message: string,
    /** errno name: EIO, ENOSPC, EINVAL, ENOTSUP, EPERM, EOVERFLOW, ESHUTDOWN */
    readonly errno: "EIO" | "ENOSPC" | "EINVAL" | "ENOTSUP" | "EPERM" | "EOVERFLOW" | "ESHUTDOWN",
  ) {
    super(message);
    this.name = "BackendError";
  }
}

/** Allocates a buffer of exactly n bytes (uninitialised). */
export type Alloc = (n: number) => Buffer;

/**
 * A piece of a sparse read: data, or a hole (reads as zeroes) the server sends as a hole chunk.
 * `sent`, when given, is called once the server no longer needs `data` (sent or dropped), so a
 * backend can lend a buffer it recycles.
 */
export type DataPiece = { offset: number; data: Buffer; sent?: () => void };
export type ReadPiece = DataPiece | { offset: number; hole: number };

export interface Backend {
  readonly size: number;
  readonly caps: Capabilities;
  /** Preferred/minimum block sizes advertised with NBD_INFO_BLOCK_SIZE. */
  readonly blockSizes: { minimum: number; preferred: number; maximum: number };
  /**
   * Reads [offset, offset+length). When `alloc` is given, the returned data should live in a
   * buffer from alloc(n): the server then recycles it once sent (no fresh pages per request).
   * A backend that returns some other buffer (e.g. one it keeps) is fine: it is never recycled.
   */
  read(offset: number, length: number, alloc?: Alloc): Promise<Buffer>;
  /**
   * Optional: a read that reports holes instead of reading zeroes. Pieces are in order and
   * cover exactly [offset, offset+length). Used for structured replies; `read` otherwise.
   */
  readSparse?(offset: number, length: number, alloc?: Alloc): Promise<ReadPiece[]>;
  /** `data` belongs to the server and is reused once the promise settles: copy it to keep it. */
  /**
   * Optional zero-copy path for READ: when [offset, offset+length) is plain data (no holes)
   * that is entirely in the page cache, the file descriptor and file offset holding it, so the
   * server may sendfile(2) it synchronously without blocking; null otherwise. The fd stays
   * valid while the request is in flight (Export.begin/end).
   */
  cachedFileRange?(offset: number, length: number): { fd: number; offset: number } | null;
  /**
   * Optional: brings [offset, offset+length) into local storage before a READ (a proxy
   * fetches its missing blocks), so the reply can then go out like any local data, by
   * sendfile. Undefined when it already is local.
   */
  makeLocal?(offset: number, length: number): Promise<void> | undefined;
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /**
   * Optional: a write given as consecutive pieces (the received network chunks), saving the
   * copy into one buffer. Same ownership rule as `write`.
   */
  writev?(offset: number, parts: Buffer[], fua: boolean): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void>;
  /** Advisory: bring the range close (proxy: fetch it now). */
  cache(offset: number, length: number): Promise<void>;
  /**
   * Extents covering at least the first byte of [offset, offset+length). `maxExtents` says
   * how many the caller will use (1 for a client's REQ_ONE): looking further is wasted work,
   * and fewer (a shorter answer) is always allowed.
   */
  blockStatus(offset: number, length: number, maxExtents?: number): Promise<Extent[]>;
  close(): Promise<void>;
}
