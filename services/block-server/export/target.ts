// Target mode: an export served from a raw image file. Sparse-aware (SEEK_DATA/SEEK_HOLE for
// block status and hole chunks; TRIM and WRITE_ZEROES punch holes). One fd shared by every
// connection, so all connections see the same data and FLUSH covers them all (multi-conn safe).
import * as fs from "node:fs";
import { MAX_REQUEST_LENGTH, NBD_STATE_HOLE, NBD_STATE_ZERO } from "../nbd/protocol/constants.js";
import {
  type Alloc,
  type Backend,
  BackendError,
  type Capabilities,
  type Extent,
  type ReadPiece,
  type WriteZeroesOptions,
} from "./backend.js";
import {
  adviseWillNeed,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  fallocate,
  isCached,
  preadCached,
  SEEK_DATA,
  SEEK_HOLE,
  seek,
} from "./libc.js";

/** Holes shorter than this inside a read are read as data: fewer, larger chunks. */
const MIN_HOLE_CHUNK = 64 * 1024;
/** Most extents returned by one blockStatus call (a reply stays small). */
const MAX_EXTENTS = 4096;
const ZEROES = Buffer.alloc(1 << 20);

export interface TargetOptions {
  readOnly?: boolean;
}

/** Reads all of `buf` from `position`: from the page cache inline when it is there, else via the threadpool. */
function preadFull(fd: number, buf: Buffer, position: number): Promise<Buffer> {
  const cached = preadCached(fd, buf, position);
  if (cached === buf.length) return Promise.resolve(buf);
  return new Promise((resolve, reject) => {
    let done = cached;
    const step = () =>
      fs.read(fd, buf, done, buf.length - done, position + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) {
          // Past the end of a file that shrank under us: the rest reads as zeroes.
          buf.fill(0, done);
          return resolve(buf);
        }
        done += n;
        if (done < buf.length) step();
        else resolve(buf);
      });
    step();
  });
}

function pwriteFull(fd: number, buf: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = () =>
      fs.write(fd, buf, done, buf.length - done, position + done, (err, n) => {
        if (err) return reject(err);
        done += n;
        if (done < buf.length) step();
        else resolve();
      });
    step();
  });
}

/** IOV_MAX on Linux: at most this many pieces per writev call. */
const IOV_MAX = 1024;

function pwritevFull(fd: number, parts: Buffer[], position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let i = 0; // first piece not fully written
    let skip = 0; // bytes of parts[i] already written
    let pos = position;
    const step = () => {
      const batch = parts.slice(i, i + IOV_MAX);
      if (skip > 0) batch[0] = batch[0].subarray(skip);
      fs.writev(fd, batch, pos, (err, n) => {
        if (err) return reject(err);
        pos += n;
        while (i < parts.length && n >= parts[i].length - skip) {
          n -= parts[i].length - skip;
          skip = 0;
          i++;
        }
        skip += n;
        if (i < parts.length) step();
        else resolve();
      });
    };
    step();
  });
}

function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

export class TargetBackend implements Backend {
  readonly size: number;
  readonly caps: Capabilities;
  readonly blockSizes = { minimum: 1, preferred: 4096, maximum: MAX_REQUEST_LENGTH };
  private fd: number;
  private closed = false;
  /**
   * A range the last SEEK_HOLE showed to hold no hole, so sequential reads ask the file
   * system once per extent rather than per request; forgotten whenever a hole is punched.
   */
  private knownData = { start: 0, end: 0 };

  /** Opens `path` (must exist; a raw image). Throws the fs error if it cannot. */
  constructor(
    readonly path: string,
    opts: TargetOptions = {},
  ) {
    const readOnly = opts.readOnly ?? false;
    this.fd = fs.openSync(path, readOnly ? "r" : "r+");
    const st = fs.fstatSync(this.fd);
    if (!st.isFile()) {
      fs.closeSync(this.fd);
      throw new Error(`${path}: not a regular file`);
    }
    this.size = st.size;
    const rw = !readOnly;
    this.caps = {
      readOnly,
      flush: true,
      fua: rw,
      trim: rw,
      writeZeroes: rw,
      fastZero: rw,
      cache: true,
      blockStatus: true,
      multiConn: true,
    };
  }

  private check(): number {
    if (this.closed) throw new BackendError("export backend is closed", "ESHUTDOWN");
    return this.fd;
  }

  async read(offset: number, length: number, alloc: Alloc = Buffer.allocUnsafe): Promise<Buffer> {
    return preadFull(this.check(), alloc(length), offset);
  }

  /** `noHoles`: the caller knows the range holds no hole (skips asking the file system). */
  cachedFileRange(offset: number, length: number, noHoles = false): { fd: number; offset: number } | null {
    if (this.closed) return null;
    if (!isCached(this.fd, offset, length)) return null;
    // A hole inside should go out as a hole chunk: take the normal path then.
    const known = offset >= this.knownData.start && offset + length <= this.knownData.end;
    if (!noHoles && !known) {
      const hole = seek(this.fd, offset, SEEK_HOLE) ?? this.size;
      if (hole < offset + length) return null;
      this.knownData = { start: offset, end: hole };
    }
    return { fd: this.fd, offset };
  }

  async readSparse(offset: number, length: number, alloc: Alloc = Buffer.allocUnsafe): Promise<ReadPiece[]> {
    const fd = this.check();
    const end = offset + length;
    // Fast path: no hole starts inside the range (one syscall).
    const firstHole = seek(fd, offset, SEEK_HOLE) ?? this.size;
    if (firstHole >= end) return [{ offset, data: await this.read(offset, length, alloc) }];
    // Plan the pieces first (merging data separated by small holes), then read them.
    const plan: { offset: number; length: number; hole: boolean }[] = [];
    const add = (from: number, to: number, hole: boolean) => {
      const last = plan[plan.length - 1];
      if (last && !last.hole && !hole) last.length += to - from;
      else plan.push({ offset: from, length: to - from, hole });
    };
    let pos = offset;
    while (pos < end) {
      const hole = Math.min(seek(fd, pos, SEEK_HOLE) ?? this.size, end);
      if (hole > pos) add(pos, hole, false);
      if (hole >= end) break;
      const data = Math.min(seek(fd, hole, SEEK_DATA) ?? this.size, end);
      add(hole, data, data - hole >= MIN_HOLE_CHUNK || data >= end);
      pos = data;
    }
    return Promise.all(
      plan.map(
        (p): Promise<ReadPiece> =>
          p.hole
            ? Promise.resolve({ offset: p.offset, hole: p.length })
            : preadFull(fd, alloc(p.length), p.offset).then((data) => ({ offset: p.offset, data })),
      ),
    );
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const fd = this.check();
    await pwriteFull(fd, data, offset);
    if (fua) await fdatasync(fd);
  }

  async writev(offset: number, parts: Buffer[], fua: boolean): Promise<void> {
    const fd = this.check();
    await pwritevFull(fd, parts, offset);
    if (fua) await fdatasync(fd);
  }

  async flush(): Promise<void> {
    return fdatasync(this.check());
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    const fd = this.check();
    this.knownData = { start: 0, end: 0 };
    try {
      fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    } catch {
      return; // TRIM is advisory: a filesystem that cannot punch holes just keeps the data.
    }
    if (fua) await fdatasync(fd);
  }

  async writeZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    const fd = this.check();
    const modes = opts.noHole
      ? [FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE]
      : [FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE];
    let done = false;
    this.knownData = { start: 0, end: 0 };
    for (const mode of modes) {
      try {
        fallocate(fd, mode, offset, length);
        done = true;
        break;
      } catch {
        // try the next way
      }
    }
    if (!done) {
      if (opts.fastZero) throw new BackendError("fast zeroing is not supported here", "ENOTSUP");
      for (let at = offset; at < offset + length; at += ZEROES.length)
        await pwriteFull(fd, ZEROES.subarray(0, Math.min(ZEROES.length, offset + length - at)), at);
    }
    if (opts.fua) await fdatasync(fd);
  }

  async cache(offset: number, length: number): Promise<void> {
    adviseWillNeed(this.check(), offset, length);
  }

  async blockStatus(offset: number, length: number, maxExtents = MAX_EXTENTS): Promise<Extent[]> {
    const fd = this.check();
    const end = offset + length;
    const max = Math.max(1, Math.min(maxExtents, MAX_EXTENTS));
    const extents: Extent[] = [];
    let pos = offset;
    while (pos < end && extents.length < max) {
      const data = Math.min(seek(fd, pos, SEEK_DATA) ?? this.size, end);
      if (data > pos) {
        extents.push({ length: data - pos, flags: NBD_STATE_HOLE | NBD_STATE_ZERO });
        pos = data;
        if (pos >= end || extents.length >= max) break;
      }
      const hole = Math.min(seek(fd, pos, SEEK_HOLE) ?? this.size, end);
      extents.push({ length: hole - pos, flags: 0 });
      pos = hole;
    }
    return extents;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }
}
