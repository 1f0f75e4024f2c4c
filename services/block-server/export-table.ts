// The block-server's persisted export table: the exports created over gRPC (or the API), so a
// restarted block-server serves them again. Two homes: a state directory on local disk (the
// default; one JSON file replaced atomically, the directory locked while a block-server uses
// it) or the shared Store (`redis://…`, one key per export under a per-server key).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import koffi from "koffi";
import type { Store } from "../common/store/index.js";

/** An export as created, in a form that survives a restart (no functions). */
export interface ExportRecord {
  name: string;
  description: string;
  readOnly: boolean;
  source: TargetRecord | ProxyRecord;
  /** The highest fencing token a call on this export carried (absent: none, 0). */
  fencingToken?: number;
}

export interface TargetRecord {
  mode: "target";
  imagePath: string;
  /** The block-server created the image (CreateExport with a size): it is deleted with the export. */
  created?: boolean;
  /** Set when a proxy export was promoted: the upstream it was relocated from. */
  promotedFrom?: string;
}

export interface ProxyRecord {
  mode: "proxy";
  upstreamUrl: string;
  cachePath: string;
  blockSize: number;
  /** The background copy was running (it resumes after a restart). */
  copy: boolean;
  rateLimitBytesPerSecond: number;
  autoPromote: boolean;
  /** gRPC address of the upstream's block-server (its hot blocks), or "". */
  upstreamControl: string;
}

export interface ExportTable {
  /** Where the table lives, for logs and the ready line. */
  readonly where: string;
  load(): Promise<ExportRecord[]>;
  /** Adds or replaces a record; durable when it resolves. */
  put(rec: ExportRecord): Promise<void>;
  /** Drops a record (no-op if absent); durable when it resolves. */
  remove(name: string): Promise<void>;
  close(): Promise<void>;
}

export class ExportTableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ExportTableError";
  }
}

const FILE_VERSION = 1;

function checkRecord(r: unknown, where: string): ExportRecord {
  const bad = (why: string) =>
    new ExportTableError(`${where}: bad export record (${why}): ${JSON.stringify(r)}`);
  if (!r || typeof r !== "object") throw bad("not an object");
  const x = r as Record<string, unknown>;
  if (typeof x.name !== "string" || !x.name) throw bad("no name");
  const s = x.source as Record<string, unknown> | undefined;
  if (!s || (s.mode !== "target" && s.mode !== "proxy")) throw bad("source.mode is neither target nor proxy");
  if (s.mode === "target" && typeof s.imagePath !== "string") throw bad("target without imagePath");
  if (s.mode === "proxy" && (typeof s.upstreamUrl !== "string" || typeof s.cachePath !== "string"))
    throw bad("proxy without upstreamUrl or cachePath");
  if (
    x.fencingToken !== undefined &&
    !(Number.isSafeInteger(x.fencingToken) && (x.fencingToken as number) >= 0)
  )
    throw bad("fencingToken is not a non-negative integer");
  return x as unknown as ExportRecord;
}

/**
 * Where `vmhop block serve` keeps its table by default: one directory per NBD listen address
 * (two block-servers on one host never share one), under /var/lib/vmhop for root and
 * $XDG_STATE_HOME/vmhop (~/.local/state/vmhop) otherwise.
 */
export function defaultStateDir(nbdListen: string, env: NodeJS.ProcessEnv = process.env): string {
  const base =
    process.getuid?.() === 0
      ? "/var/lib/vmhop"
      : path.join(env.XDG_STATE_HOME || path.join(os.homedir(), ".local", "state"), "vmhop");
  return path.join(base, "block-server", nbdListen.replace(/[^A-Za-z0-9._-]/g, "_"));
}

let flockFn: ((fd: number, op: number) => number) | undefined;
const LOCK_EX = 2;
const LOCK_NB = 4;

/** flock(2): released by the kernel when the process dies, kill -9 included. */
function tryLock(fd: number): boolean {
  flockFn ??= koffi.load("libc.so.6").func("int flock(int fd, int operation)") as (
    fd: number,
    op: number,
  ) => number;
  if (flockFn(fd, LOCK_EX | LOCK_NB) === 0) return true;
  const e = koffi.errno();
  if (e === 11) return false; // EWOULDBLOCK: another process holds it
  throw new ExportTableError(`flock failed (errno ${e})`);
}

/**
 * The table as `DIR/exports.json`, rewritten whole on every change: written to
 * `exports.json.tmp`, fsynced, renamed over the old one, the directory fsynced. A crash at any
 * point leaves the old table or the new one, never a mix. `DIR/lock` is flock()ed while open,
 * so a second block-server on the same directory is refused instead of overwriting it.
 */
export class FileExportTable implements ExportTable {
  readonly where: string;
  private readonly records = new Map<string, ExportRecord>();
  private writing: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly dir: string,
    private readonly lockFd: number,
  ) {
    this.where = path.join(dir, "exports.json");
  }

  static async open(dir: string): Promise<FileExportTable> {
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new ExportTableError(`cannot create state directory ${dir}: ${(err as Error).message}`);
    }
    const lockPath = path.join(dir, "lock");
    const fd = fs.openSync(lockPath, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    let ok = false;
    try {
      if (!tryLock(fd)) {
        const holder = fs.readFileSync(lockPath, "utf8").trim();
        throw new ExportTableError(
          `state directory ${dir} is in use by another block-server${holder ? ` (pid ${holder})` : ""}: give this one its own --state-dir`,
        );
      }
      fs.ftruncateSync(fd, 0);
      fs.writeSync(fd, `${process.pid}\n`, 0);
      const t = new FileExportTable(dir, fd);
      t.read();
      ok = true;
      return t;
    } finally {
      if (!ok) fs.closeSync(fd);
    }
  }

  private read(): void {
    fs.rmSync(`${this.where}.tmp`, { force: true }); // a write a crash interrupted
    let text: string;
    try {
      text = fs.readFileSync(this.where, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
      throw new ExportTableError(`cannot read ${this.where}: ${(err as Error).message}`);
    }
    let doc: { version?: unknown; exports?: unknown };
    try {
      doc = JSON.parse(text);
    } catch (err) {
      throw new ExportTableError(
        `${this.where} is not valid JSON (${(err as Error).message}): fix it or move it aside`,
      );
    }
    if (doc.version !== FILE_VERSION || !Array.isArray(doc.exports))
      throw new ExportTableError(
        `${this.where}: unknown format (version ${JSON.stringify(doc.version)}, this block-server reads ${FILE_VERSION})`,
      );
    for (const r of doc.exports) {
      const rec = checkRecord(r, this.where);
      this.records.set(rec.name, rec);
    }
  }

  async load(): Promise<ExportRecord[]> {
    return [...this.records.values()].map((r) => structuredClone(r));
  }

  put(rec: ExportRecord): Promise<void> {
    this.records.set(rec.name, structuredClone(rec));
    return this.save();
  }

  remove(name: string): Promise<void> {
    if (!this.records.delete(name)) return this.writing;
    return this.save();
  }

  /** Queues a write of the table as it is now; resolves when that write is durable. */
  private save(): Promise<void> {
    if (this.closed) return Promise.reject(new ExportTableError(`${this.where}: table is closed`));
    const text = `${JSON.stringify({ version: FILE_VERSION, exports: [...this.records.values()] }, null, 2)}\n`;
    const next = this.writing.catch(() => {}).then(() => this.write(text));
    this.writing = next;
    return next;
  }

  private async write(text: string): Promise<void> {
    const tmp = `${this.where}.tmp`;
    try {
      const f = await fs.promises.open(tmp, "w", 0o600);
      try {
        await f.writeFile(text);
        await f.datasync();
      } finally {
        await f.close();
      }
      await fs.promises.rename(tmp, this.where);
      const d = await fs.promises.open(this.dir, "r");
      try {
        await d.sync();
      } finally {
        await d.close();
      }
    } catch (err) {
      throw new ExportTableError(`cannot write ${this.where}: ${(err as Error).message}`);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.writing.catch(() => {});
    fs.closeSync(this.lockFd); // releases the lock
  }
}

/**
 * The table in the shared Store (Redis): `block-server/KEY/exports/NAME` holds one record as
 * JSON. KEY names this block-server (default HOSTNAME/NBD-LISTEN-ADDRESS); two block-servers
 * must not share one (nothing here stops them).
 */
export class StoreExportTable implements ExportTable {
  readonly where: string;
  private readonly prefix: string;

  constructor(
    private readonly store: Store,
    key: string,
    url: string,
  ) {
    this.prefix = `block-server/${key}/exports/`;
    this.where = `${url.replace(/\/\/[^@/]*@/, "//")} ${this.prefix}*`;
  }

  async load(): Promise<ExportRecord[]> {
    const rows = await this.store.scan(this.prefix);
    return rows.map(([k, v]) => {
      try {
        return checkRecord(JSON.parse(v), k);
      } catch (err) {
        if (err instanceof ExportTableError) throw err;
        throw new ExportTableError(`${k} is not valid JSON (${(err as Error).message})`);
      }
    });
  }

  async put(rec: ExportRecord): Promise<void> {
    await this.store.set(this.prefix + rec.name, JSON.stringify(rec));
  }

  async remove(name: string): Promise<void> {
    await this.store.del(this.prefix + name);
  }

  close(): Promise<void> {
    return this.store.close();
  }
}

/** Default key of a block-server in the shared Store: HOSTNAME/NBD-LISTEN-ADDRESS. */
export function defaultStateKey(nbdListen: string): string {
  return `${os.hostname()}/${nbdListen}`;
}
