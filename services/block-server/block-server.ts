// The block-server process: NBD listeners in front of an export registry, and the control
// operations the gRPC BlockService and the CLI expose (create/remove exports in target or
// proxy mode, background copy, re-pointing, promote, status, progress events). Exports
// created through createExport are recorded in an ExportTable when one is given, and
// restore() serves them again after a restart.
import { EventEmitter } from "node:events";
import fs from "node:fs";
import path from "node:path";
import { createLogger, type Logger } from "../common/log.js";
import { BlockServerError } from "./errors.js";
import type { Export } from "./export/export.js";
import { TargetBackend } from "./export/target.js";
import type { ExportRecord, ExportTable } from "./export-table.js";
import { fetchObserver } from "./metrics.js";
import { parseNbdUrl } from "./nbd/client/url.js";
import { NbdServer, type ServerLimits } from "./nbd/server/index.js";
import { formatAddress, type ListenAddress } from "./nbd/server/server.js";
import { BitmapFileError } from "./proxy/bitmap-file.js";
import type { HotSource } from "./proxy/copy-order.js";
import { PromoteError, ProxyBackend, type ProxyStats } from "./proxy/proxy-backend.js";

export type ExportMode = "target" | "proxy";

export interface TargetSpec {
  mode: "target";
  imagePath: string;
  /**
   * createExport: a new empty (sparse) image of this size, at imagePath or, without one, in the
   * cache directory (NAME.img); a file already there is refused. Deleted with the export.
   */
  sizeBytes?: number;
  /** The block-server created the image (set by createExport, kept in the record). */
  created?: boolean;
}

export interface ProxySpec {
  mode: "proxy";
  upstreamUrl: string;
  cachePath: string;
  blockSize?: number;
  startBackgroundCopy?: boolean;
  rateLimitBytesPerSecond?: number;
  /** Hot ranges of the upstream, e.g. its block-server's GetHotBlocks. */
  upstreamHot?: HotSource;
  /**
   * gRPC address of the upstream's block-server: recorded with the export, and made into
   * the hot source (BlockServerOptions.hotSourceFor) when upstreamHot is not given.
   */
  upstreamControl?: string;
  autoPromote?: boolean;
}

export interface CreateExportSpec {
  name: string;
  description?: string;
  readOnly?: boolean;
  source: TargetSpec | ProxySpec;
  /** The creator's fencing token (see fence()); absent or 0: unfenced. */
  fencingToken?: number;
}

export interface ExportInfo {
  name: string;
  mode: ExportMode;
  path: string;
  upstreamUrl: string;
  readOnly: boolean;
  size: number;
  blockSize: number;
  connections: number;
  description: string;
}

export interface ExportStatus {
  info: ExportInfo;
  blocksTotal: number;
  blocksLocal: number;
  bytesFetchedOnDemand: number;
  bytesFetchedBackground: number;
  bytesWrittenLocal: number;
  bytesRead: number;
  fetchLatency: { count: number; p50Ms: number; p99Ms: number; maxMs: number };
  copy: { running: boolean; rateBytesPerSec: number; inFlight: number; done: boolean; lastError: string };
  upstreamConnected: boolean;
  upstreamError: string;
  upstreamZeroCopy: boolean;
}

export type ProgressKind =
  | "copy-started"
  | "copy-stopped"
  | "copy-done"
  | "promoted"
  | "upstream-lost"
  | "upstream-restored"
  | "export-removed";

export interface ProgressEvent {
  name: string;
  kind: ProgressKind;
  message: string;
  time: number;
}

interface Entry {
  exp: Export;
  mode: ExportMode;
  path: string;
  /** Kept after a promote so status still reports what the relocation fetched. */
  proxy?: ProxyBackend;
  /** Set while a promote is swapping backends, so a second promote waits for it. */
  promoting?: Promise<void>;
  /** Its record in the export table; absent for exports that are not persisted. */
  record?: ExportRecord;
  /** Set once a removal started. */
  removing?: Promise<void>;
  /** The highest fencing token a call on it carried (0: none); kept in its record too. */
  fence: number;
  /** An image this block-server created for the export: deleted with it. */
  createdImage?: string;
}

/** A persisted export that could not be served again after a restart. */
interface Unrestored {
  record: ExportRecord;
  error: string;
  /** Retried with backoff (a proxy's upstream may come back); false: needs an operator. */
  retrying: boolean;
  attempts: number;
  delayMs: number;
  timer?: NodeJS.Timeout;
}

/** What an opened, not yet registered, export holds. */
type Opened =
  | { mode: "target"; path: string; backend: TargetBackend }
  | { mode: "proxy"; path: string; proxy: ProxyBackend };

export interface BlockServerOptions {
  log?: Logger;
  /** The NBD server's limits (connections, per-connection memory, handshake time). */
  nbdLimits?: Partial<ServerLimits>;
  /** Where exports created with createExport are recorded; restore() serves them again. */
  table?: ExportTable;
  /** Builds a proxy's upstream hot-block source from its block-server's gRPC address. */
  hotSourceFor?: (address: string, exportName: string) => HotSource;
  /** Retry of a persisted proxy export whose upstream failed at restore (default 1 s doubling to 30 s). */
  restoreRetryMs?: { min: number; max: number };
  /**
   * Where a proxy export created without a cache path keeps it (DIR/NAME.cache): a caller such
   * as the control-plane names only the upstream, not this host's file system.
   */
  cacheDir?: string;
}

export interface RestoreResult {
  restored: string[];
  /** name -> why it is not served */
  unavailable: Record<string, string>;
  /** Persisted exports dropped because an export of the same name was given on the command line. */
  replaced: string[];
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

function specOf(r: ExportRecord): CreateExportSpec {
  const s = r.source;
  return {
    name: r.name,
    description: r.description,
    readOnly: r.readOnly,
    fencingToken: r.fencingToken,
    source:
      s.mode === "target"
        ? { mode: "target", imagePath: s.imagePath, created: s.created }
        : {
            mode: "proxy",
            upstreamUrl: s.upstreamUrl,
            cachePath: s.cachePath,
            blockSize: s.blockSize,
            startBackgroundCopy: s.copy,
            rateLimitBytesPerSecond: s.rateLimitBytesPerSecond,
            autoPromote: s.autoPromote,
            upstreamControl: s.upstreamControl,
          },
  };
}

function recordOf(spec: CreateExportSpec, opened: Opened): ExportRecord {
  const src = spec.source;
  return {
    name: spec.name,
    description: spec.description ?? "",
    readOnly: spec.readOnly ?? false,
    ...(spec.fencingToken ? { fencingToken: spec.fencingToken } : {}),
    source:
      src.mode === "target"
        ? {
            mode: "target",
            imagePath: path.resolve(src.imagePath),
            ...(src.created ? { created: true } : {}),
          }
        : {
            mode: "proxy",
            upstreamUrl: src.upstreamUrl,
            cachePath: path.resolve(src.cachePath),
            blockSize: opened.mode === "proxy" ? opened.proxy.blockSize : (src.blockSize ?? 0),
            copy: src.startBackgroundCopy ?? false,
            rateLimitBytesPerSecond: src.rateLimitBytesPerSecond ?? 0,
            autoPromote: src.autoPromote ?? false,
            upstreamControl: src.upstreamControl ?? "",
          },
  };
}

/** Why a persisted export cannot be opened at all: a file it needs is gone (undefined: none is). */
function missingFile(r: ExportRecord): string | undefined {
  const s = r.source;
  if (s.mode === "target")
    return fs.existsSync(s.imagePath) ? undefined : `its image ${s.imagePath} is missing`;
  if (!fs.existsSync(s.cachePath))
    return `its cache ${s.cachePath} is missing (it held the blocks already local and any writes made here)`;
  // Opening a proxy without its bitmap would start the cache over, losing local writes.
  if (!fs.existsSync(`${s.cachePath}.bitmap`))
    return `its bitmap ${s.cachePath}.bitmap is missing: the cache is not started over, since it may hold writes made here`;
  return undefined;
}

async function closeOpened(o: Opened): Promise<void> {
  await (o.mode === "target" ? o.backend : o.proxy).close().catch(() => {});
}

export class BlockServer extends EventEmitter {
  readonly nbd: NbdServer;
  private readonly entries = new Map<string, Entry>();
  private readonly unrestored = new Map<string, Unrestored>();
  private readonly log: Logger;
  private readonly table?: ExportTable;
  private readonly hotSourceFor?: (address: string, exportName: string) => HotSource;
  private readonly retryMs: { min: number; max: number };
  private readonly cacheDir?: string;
  private closing = false;

  constructor(opts: BlockServerOptions = {}) {
    super();
    this.setMaxListeners(0);
    this.log = opts.log ?? createLogger({ svc: "block-server" });
    this.nbd = new NbdServer({ log: this.log.child({ part: "nbd" }), limits: opts.nbdLimits });
    this.table = opts.table;
    this.hotSourceFor = opts.hotSourceFor;
    this.retryMs = opts.restoreRetryMs ?? { min: 1000, max: 30_000 };
    this.cacheDir = opts.cacheDir;
  }

  /** A proxy spec without a cache path gets one in the cache directory (names are file-safe: NAME_RE). */
  private withCachePath(spec: CreateExportSpec): CreateExportSpec {
    const src = spec.source;
    if (src.mode !== "proxy" || src.cachePath) return spec;
    if (!this.cacheDir)
      throw new BlockServerError(
        "invalid",
        "proxy export needs a cache path (or a block-server started with a cache directory, --cache-dir)",
      );
    fs.mkdirSync(this.cacheDir, { recursive: true });
    return { ...spec, source: { ...src, cachePath: path.join(this.cacheDir, `${spec.name}.cache`) } };
  }

  /**
   * A target spec with a size: creates its new empty image (path defaulting to the cache
   * directory's NAME.img) and returns the spec naming it, marked created.
   */
  private createImage(spec: CreateExportSpec): CreateExportSpec {
    const src = spec.source;
    if (src.mode !== "target" || !src.sizeBytes) return spec;
    let imagePath = src.imagePath;
    if (!imagePath) {
      if (!this.cacheDir)
        throw new BlockServerError(
          "invalid",
          "a new image needs a path (or a block-server started with a cache directory, --cache-dir)",
        );
      fs.mkdirSync(this.cacheDir, { recursive: true });
      imagePath = path.join(this.cacheDir, `${spec.name}.img`);
    }
    let fd: number;
    try {
      fd = fs.openSync(imagePath, "wx");
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === "EEXIST")
        throw new BlockServerError("exists", `image ${imagePath} already exists: not overwritten`);
      throw new BlockServerError("invalid", `cannot create image ${imagePath}: ${e.message}`);
    }
    try {
      fs.ftruncateSync(fd, src.sizeBytes);
    } finally {
      fs.closeSync(fd);
    }
    return { ...spec, source: { mode: "target", imagePath, created: true } };
  }

  /** Where exports are recorded, or undefined when they are not. */
  get stateLocation(): string | undefined {
    return this.table?.where;
  }

  listen(addr: string): Promise<ListenAddress> {
    return this.nbd.listen(addr);
  }

  nbdAddresses(): string[] {
    return this.nbd.addresses().map(formatAddress);
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (e) return e;
    const u = this.unrestored.get(name);
    if (u) throw new BlockServerError("unavailable", this.unrestoredMessage(name, u));
    throw new BlockServerError("not-found", `no export named ${JSON.stringify(name)}`);
  }

  private unrestoredMessage(name: string, u: Unrestored): string {
    return (
      `export ${name} is persisted but not served: ${u.error}; ` +
      (u.retrying
        ? `retrying (${u.attempts} attempt(s) so far)`
        : "remove it, or put the file back and restart the block-server")
    );
  }

  /** Persisted exports not served (after a restart), with the reason. */
  unavailable(): Record<string, string> {
    return Object.fromEntries([...this.unrestored].map(([n, u]) => [n, this.unrestoredMessage(n, u)]));
  }

  /** Reserves a name for a create; throws if it is taken. */
  private claim(name: string): void {
    if (this.closing) throw new BlockServerError("unavailable", "the block-server is shutting down");
    const u = this.unrestored.get(name);
    if (u)
      throw new BlockServerError(
        "exists",
        `export ${JSON.stringify(name)} already exists (${this.unrestoredMessage(name, u)})`,
      );
    if (this.entries.has(name) || this.nbd.exports.isReserved(name))
      throw new BlockServerError("exists", `export ${JSON.stringify(name)} already exists`);
    this.nbd.exports.reserve(name);
  }

  private proxyOf(name: string, what: string): ProxyBackend {
    const e = this.entry(name);
    if (!e.proxy || e.mode !== "proxy")
      throw new BlockServerError(
        "precondition",
        `export ${name} is in ${e.mode} mode: ${what} needs a proxy export`,
      );
    return e.proxy;
  }

  /**
   * Admits a call carrying fencing token `token` on export `name` (call it before acting). A
   * token lower than the highest the export has seen is refused, so a newer migration that took
   * the export over is not undone by an older one; a higher one is remembered, recorded with the
   * export before this resolves (a restart keeps it). 0 is an unfenced caller (CLI, tests):
   * always admitted, and it changes nothing. The check and the raise happen at once, before any
   * await, so of two concurrent calls the lower one is refused once the higher one got in. An
   * export that is not there is left to the call itself to report.
   */
  async fence(name: string, token: number): Promise<void> {
    if (!token) return;
    const e = this.entries.get(name);
    const u = e ? undefined : this.unrestored.get(name);
    if (!e && !u) return;
    const seen = e ? e.fence : (u!.record.fencingToken ?? 0);
    if (token < seen)
      throw new BlockServerError(
        "precondition",
        `stale fencing token ${token} for export ${name} (seen ${seen})`,
      );
    if (token === seen) return;
    const record = e ? e.record : u!.record;
    if (e) e.fence = token;
    // Not recorded (the command line's export): kept in memory. Being removed: its record goes.
    if (!record || !this.table || e?.removing) return;
    record.fencingToken = token;
    try {
      await this.table.put(record);
    } catch (err) {
      throw new BlockServerError(
        "unavailable",
        `cannot record fencing token ${token} of export ${name} in ${this.table.where}: ${(err as Error).message}`,
      );
    }
  }

  /**
   * Opens an export and serves it. With a table it is recorded there before it is served
   * (unless persist is false: an export given on the command line), so it comes back after
   * a restart.
   */
  async createExport(given: CreateExportSpec, opts: { persist?: boolean } = {}): Promise<ExportInfo> {
    if (!NAME_RE.test(given.name))
      throw new BlockServerError(
        "invalid",
        `bad export name ${JSON.stringify(given.name)}: 1-128 characters of letters, digits, '.', '_', ':', '-'`,
      );
    let spec = this.withCachePath(given);
    this.claim(spec.name);
    try {
      spec = this.createImage(spec);
    } catch (err) {
      this.nbd.exports.release(spec.name);
      throw err;
    }
    const created = spec.source.mode === "target" && spec.source.created ? spec.source.imagePath : "";
    try {
      const opened = await this.open(spec);
      let record: ExportRecord | undefined;
      if (this.table && (opts.persist ?? true)) {
        record = recordOf(spec, opened);
        try {
          await this.table.put(record);
        } catch (err) {
          await closeOpened(opened);
          throw new BlockServerError(
            "unavailable",
            `export ${spec.name} not created: cannot record it in ${this.table.where}: ${(err as Error).message}`,
          );
        }
      }
      await this.register(spec, opened, record);
    } catch (err) {
      if (created) fs.rmSync(created, { force: true });
      throw err;
    } finally {
      this.nbd.exports.release(spec.name);
    }
    return this.info(spec.name);
  }

  /** Opens what an export serves, without serving it yet. */
  private async open(spec: CreateExportSpec): Promise<Opened> {
    const src = spec.source;
    if (src.mode === "target") {
      if (!src.imagePath) throw new BlockServerError("invalid", "target export needs an image path");
      if (!fs.existsSync(src.imagePath))
        throw new BlockServerError("invalid", `image ${src.imagePath} does not exist`);
      try {
        return {
          mode: "target",
          path: src.imagePath,
          backend: new TargetBackend(src.imagePath, { readOnly: spec.readOnly }),
        };
      } catch (err) {
        throw new BlockServerError(
          "invalid",
          `cannot open image ${src.imagePath}: ${(err as Error).message}`,
        );
      }
    }
    if (!src.cachePath) throw new BlockServerError("invalid", "proxy export needs a cache path");
    try {
      parseNbdUrl(src.upstreamUrl);
    } catch (err) {
      throw new BlockServerError("invalid", (err as Error).message);
    }
    try {
      const proxy = await ProxyBackend.open({
        upstreamUrl: src.upstreamUrl,
        cachePath: src.cachePath,
        blockSize: src.blockSize || undefined,
        copyRateBytesPerSec: src.rateLimitBytesPerSecond,
        onDemandFetch: fetchObserver(spec.name),
        log: this.log,
      });
      return { mode: "proxy", path: src.cachePath, proxy };
    } catch (err) {
      // A local copy that belongs to another disk needs an operator (or discardLocalCopy), not
      // a retry; an upstream that does not answer may come back.
      throw new BlockServerError(
        err instanceof BitmapFileError ? "precondition" : "unavailable",
        `cannot open proxy export ${spec.name}: ${(err as Error).message}`,
      );
    }
  }

  /** Serves an opened export under spec.name (reserved by the caller). */
  private async register(spec: CreateExportSpec, opened: Opened, record?: ExportRecord): Promise<void> {
    if (this.closing) {
      await closeOpened(opened);
      throw new BlockServerError("unavailable", "the block-server is shutting down");
    }
    const src = spec.source;
    if (opened.mode === "target") {
      const exp = this.nbd.exports.add({
        name: spec.name,
        description: spec.description,
        readOnly: spec.readOnly,
        backend: opened.backend,
      });
      const createdImage = src.mode === "target" && src.created ? opened.path : undefined;
      this.entries.set(spec.name, {
        exp,
        mode: "target",
        path: opened.path,
        record,
        fence: spec.fencingToken ?? 0,
        createdImage,
      });
      this.log.info("export created", {
        name: spec.name,
        mode: "target",
        image: opened.path,
        size: opened.backend.size,
        persisted: !!record,
      });
      return;
    }
    if (src.mode !== "proxy") throw new Error("unreachable: a proxy opened for a target spec");
    const proxy = opened.proxy;
    const exp = this.nbd.exports.add({
      name: spec.name,
      description: spec.description,
      readOnly: spec.readOnly,
      backend: proxy,
    });
    const entry: Entry = {
      exp,
      mode: "proxy",
      path: opened.path,
      proxy,
      record,
      fence: spec.fencingToken ?? 0,
    };
    this.entries.set(spec.name, entry);
    // Destination heat first (what this host's VM touches), then the source's.
    proxy.addHotSource(() => exp.heat.hottest(256));
    if (src.upstreamHot) proxy.addHotSource(src.upstreamHot);
    else if (src.upstreamControl && this.hotSourceFor)
      proxy.addHotSource(this.hotSourceFor(src.upstreamControl, parseNbdUrl(src.upstreamUrl).exportName));
    this.wireProxyEvents(spec.name, entry, proxy, src.autoPromote ?? false);
    this.log.info("export created", {
      name: spec.name,
      mode: "proxy",
      upstream: src.upstreamUrl,
      cache: opened.path,
      local: `${proxy.bitmap.local}/${proxy.bitmap.blocks}`,
      persisted: !!record,
    });
    if (src.startBackgroundCopy) proxy.startCopy();
    if (src.autoPromote && proxy.bitmap.complete) await this.promote(spec.name);
  }

  /**
   * Serves again the exports recorded in the table (call once, before listening). A record
   * whose name an export given on the command line already took is dropped (the command
   * line wins). One that cannot be opened is reported (log, status, unavailable()) instead of
   * failing the start: a missing file waits for an operator, a proxy whose upstream failed is
   * retried with backoff.
   */
  async restore(): Promise<RestoreResult> {
    const out: RestoreResult = { restored: [], unavailable: {}, replaced: [] };
    if (!this.table) return out;
    const records = await this.table.load();
    await Promise.all(
      records.map(async (rec) => {
        if (this.entries.has(rec.name) || this.nbd.exports.isReserved(rec.name)) {
          const e = this.entries.get(rec.name);
          this.log.warn(
            "persisted export dropped: an export of the same name was given on the command line, and that one wins",
            { name: rec.name, dropped: rec, serving: e ? { mode: e.mode, path: e.path } : undefined },
          );
          await this.table!.remove(rec.name);
          out.replaced.push(rec.name);
          return;
        }
        const missing = missingFile(rec);
        if (missing) {
          this.markUnrestored(rec, missing, false);
          return;
        }
        const spec = specOf(rec);
        this.claim(rec.name);
        try {
          await this.register(spec, await this.open(spec), rec);
          out.restored.push(rec.name);
          this.log.info("export restored", { name: rec.name, mode: rec.source.mode });
        } catch (err) {
          // A target that will not open is a file problem; a proxy may be waiting for its upstream.
          this.markUnrestored(rec, (err as Error).message, rec.source.mode === "proxy");
        } finally {
          this.nbd.exports.release(rec.name);
        }
      }),
    );
    out.unavailable = this.unavailable();
    out.restored.sort();
    return out;
  }

  private markUnrestored(record: ExportRecord, error: string, retrying: boolean): void {
    const u: Unrestored = { record, error, retrying, attempts: 1, delayMs: this.retryMs.min };
    this.unrestored.set(record.name, u);
    this.log.error("persisted export not served", {
      name: record.name,
      error,
      next: retrying ? `retrying in ${u.delayMs} ms` : "remove it, or put the file back and restart",
    });
    if (retrying) this.scheduleRetry(u);
  }

  private scheduleRetry(u: Unrestored): void {
    u.timer = setTimeout(() => {
      u.timer = undefined;
      void this.retryRestore(u);
    }, u.delayMs);
    u.delayMs = Math.min(u.delayMs * 2, this.retryMs.max);
  }

  private async retryRestore(u: Unrestored): Promise<void> {
    const name = u.record.name;
    const current = () => !this.closing && this.unrestored.get(name) === u;
    if (!current()) return;
    const spec = specOf(u.record);
    let opened: Opened;
    try {
      const missing = missingFile(u.record);
      if (missing) throw new Error(missing);
      opened = await this.open(spec);
    } catch (err) {
      if (!current()) return;
      u.attempts++;
      const error = (err as Error).message;
      if (error !== u.error)
        this.log.warn("persisted export still not served", { name, error, attempts: u.attempts });
      u.error = error;
      this.scheduleRetry(u);
      return;
    }
    if (!current()) {
      await closeOpened(opened); // removed (or shutting down) meanwhile
      return;
    }
    this.unrestored.delete(name);
    this.nbd.exports.reserve(name);
    try {
      await this.register(spec, opened, u.record);
      this.log.info("export restored", { name, mode: u.record.source.mode, attempts: u.attempts + 1 });
    } catch (err) {
      this.log.error("persisted export not served", { name, error: (err as Error).message });
    } finally {
      this.nbd.exports.release(name);
    }
  }

  /** Changes an export's record (not awaited by callers that must stay synchronous). */
  private updateRecord(name: string, e: Entry, change: (r: ExportRecord) => void): Promise<void> {
    if (!e.record || !this.table || e.removing || this.entries.get(name) !== e) return Promise.resolve();
    change(e.record);
    return this.table.put(e.record).catch((err: Error) =>
      this.log.error("cannot record a change of an export: after a restart it comes back as before", {
        name,
        record: e.record,
        err: err.message,
      }),
    );
  }

  private wireProxyEvents(name: string, entry: Entry, proxy: ProxyBackend, autoPromote: boolean): void {
    const emit = (kind: ProgressKind, message = "") =>
      this.emitProgress({ name, kind, message, time: Date.now() });
    proxy.on("copy-started", () => emit("copy-started"));
    proxy.on("copy-stopped", () => emit("copy-stopped"));
    proxy.on("copy-done", () => {
      emit("copy-done", "every block is local");
      if (autoPromote && entry.mode === "proxy")
        this.promote(name).catch((err) => this.log.warn("auto-promote failed", { name, err }));
    });
    proxy.on("upstream-lost", (err: Error) => emit("upstream-lost", err.message));
    proxy.on("upstream-restored", () => emit("upstream-restored"));
  }

  private emitProgress(ev: ProgressEvent): void {
    this.emit("progress", ev);
  }

  /**
   * Stops serving an export and drops its record: it stays removed after a restart. With
   * `discardLocalCopy` (proxy exports only) its cache file, bitmap and journal are deleted too.
   */
  async removeExport(name: string, opts: { discardLocalCopy?: boolean } = {}): Promise<void> {
    const u = this.unrestored.get(name);
    const cache = u
      ? u.record.source.mode === "proxy"
        ? u.record.source.cachePath
        : undefined
      : this.entries.get(name)?.mode === "proxy"
        ? this.entries.get(name)?.path
        : undefined;
    if (opts.discardLocalCopy && !cache && (u || this.entries.has(name)))
      throw new BlockServerError(
        "precondition",
        `export ${name} is not a proxy: its image is not a local copy to discard`,
      );
    await this.removeServed(name);
    if (opts.discardLocalCopy && cache) await discardLocalCopy(cache);
  }

  private async removeServed(name: string): Promise<void> {
    const u = this.unrestored.get(name);
    if (u) {
      await this.dropRecord(name);
      if (u.timer) clearTimeout(u.timer);
      this.unrestored.delete(name);
      this.emitProgress({ name, kind: "export-removed", message: "", time: Date.now() });
      this.log.info("export removed", { name, wasServed: false });
      return;
    }
    const e = this.entry(name);
    if (e.removing) return e.removing;
    e.removing = (async () => {
      if (e.record) await this.dropRecord(name);
      await this.drop(name, e);
      if (e.createdImage) fs.rmSync(e.createdImage, { force: true });
      this.emitProgress({ name, kind: "export-removed", message: "", time: Date.now() });
      this.log.info("export removed", { name });
    })();
    try {
      await e.removing;
    } catch (err) {
      e.removing = undefined;
      throw err;
    }
  }

  private async dropRecord(name: string): Promise<void> {
    if (!this.table) return;
    try {
      await this.table.remove(name);
    } catch (err) {
      throw new BlockServerError(
        "unavailable",
        `export ${name} not removed: cannot update ${this.table.where}: ${(err as Error).message}`,
      );
    }
  }

  /** Stops serving an export (its record, if any, is kept). */
  private async drop(name: string, e: Entry): Promise<void> {
    if (this.entries.get(name) === e) this.entries.delete(name);
    await this.nbd.exports.remove(name);
    // The registry closed the export's current backend; a proxy that was swapped out by a
    // promote was closed then. Close the proxy if it is still the one serving.
    if (e.proxy && e.mode === "proxy") await e.proxy.close().catch(() => {});
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  info(name: string): ExportInfo {
    const e = this.entry(name);
    const ps = e.mode === "proxy" ? e.proxy?.stats() : undefined;
    return {
      name,
      mode: e.mode,
      path: e.path,
      upstreamUrl: e.mode === "proxy" ? (ps?.upstream.url ?? "") : "",
      readOnly: e.exp.readOnly,
      size: e.exp.size,
      blockSize: e.proxy?.blockSize ?? e.exp.backend.blockSizes.preferred,
      connections: e.exp.connections,
      description: e.exp.description,
    };
  }

  status(name: string): ExportStatus {
    const e = this.entry(name);
    const info = this.info(name);
    const st = e.exp.snapshot();
    const ps: ProxyStats | undefined = e.proxy?.stats();
    const blocksTotal = ps?.blocksTotal ?? Math.ceil(info.size / info.blockSize);
    return {
      info,
      blocksTotal,
      // A target export (and a promoted one) holds every block.
      blocksLocal: e.mode === "target" ? blocksTotal : (ps?.blocksLocal ?? 0),
      bytesFetchedOnDemand: ps?.bytesFetchedOnDemand ?? 0,
      bytesFetchedBackground: ps?.bytesFetchedBackground ?? 0,
      bytesWrittenLocal: e.mode === "proxy" ? (ps?.bytesWrittenLocally ?? 0) : st.bytesWritten,
      bytesRead: st.bytesRead,
      fetchLatency: ps?.fetchLatency ?? { count: 0, p50Ms: 0, p99Ms: 0, maxMs: 0 },
      copy: {
        running: e.mode === "proxy" && (ps?.copy.running ?? false),
        rateBytesPerSec: ps?.copy.rateBytesPerSec ?? 0,
        inFlight: e.mode === "proxy" ? (ps?.copy.inFlight ?? 0) : 0,
        done: e.mode === "target" || (ps?.copy.done ?? false),
        lastError: ps?.copy.lastError ?? "",
      },
      upstreamConnected: e.mode === "proxy" && (ps?.upstream.connected ?? false),
      upstreamError: e.mode === "proxy" ? (ps?.upstream.lastError ?? "") : "",
      upstreamZeroCopy: e.mode === "proxy" && (ps?.upstream.zeroCopy ?? false),
    };
  }

  startCopy(name: string, opts: { rateBytesPerSec?: number } = {}): ExportStatus {
    const p = this.proxyOf(name, "a background copy");
    if (opts.rateBytesPerSec) p.setRateLimit(opts.rateBytesPerSec);
    p.startCopy();
    void this.updateRecord(name, this.entry(name), (r) => {
      if (r.source.mode !== "proxy") return;
      r.source.copy = true;
      if (opts.rateBytesPerSec) r.source.rateLimitBytesPerSecond = opts.rateBytesPerSec;
    });
    return this.status(name);
  }

  async stopCopy(name: string): Promise<ExportStatus> {
    await this.proxyOf(name, "stopping a background copy").stopCopy();
    await this.updateRecord(name, this.entry(name), (r) => {
      if (r.source.mode === "proxy") r.source.copy = false;
    });
    return this.status(name);
  }

  setRateLimit(name: string, bytesPerSec: number): ExportStatus {
    if (!(bytesPerSec >= 0))
      throw new BlockServerError("invalid", `rate limit must be >= 0, got ${bytesPerSec}`);
    this.proxyOf(name, "a rate limit").setRateLimit(bytesPerSec);
    void this.updateRecord(name, this.entry(name), (r) => {
      if (r.source.mode === "proxy") r.source.rateLimitBytesPerSecond = bytesPerSec;
    });
    return this.status(name);
  }

  async setUpstream(name: string, url: string): Promise<ExportStatus> {
    const p = this.proxyOf(name, "re-pointing the upstream");
    try {
      parseNbdUrl(url);
    } catch (err) {
      throw new BlockServerError("invalid", (err as Error).message);
    }
    try {
      await p.setUpstream(url);
    } catch (err) {
      throw new BlockServerError("precondition", (err as Error).message);
    }
    await this.updateRecord(name, this.entry(name), (r) => {
      if (r.source.mode === "proxy") r.source.upstreamUrl = url;
    });
    return this.status(name);
  }

  /**
   * Turns a proxy export whose blocks are all local into a target export on its cache file,
   * without disconnecting clients. With wait, starts the copy if needed and waits for it.
   */
  async promote(name: string, opts: { wait?: boolean } = {}): Promise<ExportStatus> {
    const e = this.entry(name);
    if (e.mode === "target") return this.status(name);
    if (e.promoting) {
      await e.promoting;
      return this.status(name);
    }
    const p = e.proxy!;
    if (!p.bitmap.complete) {
      if (!opts.wait)
        throw new BlockServerError(
          "precondition",
          `cannot promote ${name}: ${p.bitmap.blocks - p.bitmap.local} of ${p.bitmap.blocks} blocks are not local yet (start the background copy, or promote with wait)`,
        );
      p.startCopy();
      await p.whenCopied().catch((err) => {
        // The copy stopped or the export went while waiting: a refusal, not an internal error.
        if (err instanceof PromoteError)
          throw new BlockServerError("precondition", `cannot promote ${name}: ${err.message}`);
        throw err;
      });
      // Another caller may have promoted (or begun to) while this one waited (TypeScript's
      // narrowing from before the await does not know that).
      if ((e.mode as Entry["mode"]) === "target") return this.status(name);
      if (e.promoting) {
        await e.promoting;
        return this.status(name);
      }
    }
    e.promoting = (async () => {
      const target = await p.promote();
      const old = await e.exp.setBackend(target);
      e.mode = "target";
      await old.close();
    })();
    try {
      await e.promoting;
    } finally {
      e.promoting = undefined;
    }
    // After a restart it is a target on the cache file: the upstream is no longer needed.
    await this.updateRecord(name, e, (r) => {
      if (r.source.mode === "proxy")
        r.source = { mode: "target", imagePath: r.source.cachePath, promotedFrom: r.source.upstreamUrl };
    });
    this.emitProgress({
      name,
      kind: "promoted",
      message: "now in target mode; upstream dropped",
      time: Date.now(),
    });
    this.log.info("export promoted", { name });
    return this.status(name);
  }

  hotBlocks(name: string, limit = 4096): { offset: number; length: number }[] {
    return this.entry(name)
      .exp.heat.hottest(limit)
      .map((r) => ({ offset: r.offset, length: r.length }));
  }

  /** Stops serving every export; the table keeps their records for the next start. */
  async close(): Promise<void> {
    this.closing = true;
    for (const u of this.unrestored.values()) if (u.timer) clearTimeout(u.timer);
    this.unrestored.clear();
    for (const [name, e] of [...this.entries]) {
      await this.drop(name, e).catch(() => {});
      this.emitProgress({ name, kind: "export-removed", message: "block-server closing", time: Date.now() });
    }
    await this.nbd.close();
  }
}

/** Deletes a proxy's cache file with its bitmap and journal (what ProxyBackend.open keeps beside it). */
async function discardLocalCopy(cache: string): Promise<void> {
  for (const f of [cache, `${cache}.bitmap`, `${cache}.bitmap.journal`])
    await fs.promises.rm(f, { force: true });
}
