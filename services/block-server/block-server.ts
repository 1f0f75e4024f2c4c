// The block-server process: NBD listeners in front of an export registry, and the control
// operations the gRPC BlockService and the CLI expose (create/remove exports in target or
// proxy mode, background copy, re-pointing, promote, status, progress events).
import { EventEmitter } from "node:events";
import fs from "node:fs";
import { createLogger, type Logger } from "../common/log.js";
import { BlockServerError } from "./errors.js";
import type { Export } from "./export/export.js";
import { TargetBackend } from "./export/target.js";
import { parseNbdUrl } from "./nbd/client/url.js";
import { NbdServer } from "./nbd/server/index.js";
import { formatAddress, type ListenAddress } from "./nbd/server/server.js";
import type { HotSource } from "./proxy/copy-order.js";
import { ProxyBackend, type ProxyStats } from "./proxy/proxy-backend.js";

export type ExportMode = "target" | "proxy";

export interface TargetSpec {
  mode: "target";
  imagePath: string;
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
  autoPromote?: boolean;
}

export interface CreateExportSpec {
  name: string;
  description?: string;
  readOnly?: boolean;
  source: TargetSpec | ProxySpec;
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
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export class BlockServer extends EventEmitter {
  readonly nbd: NbdServer;
  private readonly entries = new Map<string, Entry>();
  private readonly log: Logger;

  constructor(opts: { log?: Logger } = {}) {
    super();
    this.setMaxListeners(0);
    this.log = opts.log ?? createLogger({ svc: "block-server" });
    this.nbd = new NbdServer({ log: this.log.child({ part: "nbd" }) });
  }

  listen(addr: string): Promise<ListenAddress> {
    return this.nbd.listen(addr);
  }

  nbdAddresses(): string[] {
    return this.nbd.addresses().map(formatAddress);
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) throw new BlockServerError("not-found", `no export named ${JSON.stringify(name)}`);
    return e;
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

  async createExport(spec: CreateExportSpec): Promise<ExportInfo> {
    if (!NAME_RE.test(spec.name))
      throw new BlockServerError(
        "invalid",
        `bad export name ${JSON.stringify(spec.name)}: 1-128 characters of letters, digits, '.', '_', ':', '-'`,
      );
    if (this.entries.has(spec.name))
      throw new BlockServerError("exists", `export ${JSON.stringify(spec.name)} already exists`);
    const src = spec.source;
    if (src.mode === "target") {
      if (!src.imagePath) throw new BlockServerError("invalid", "target export needs an image path");
      if (!fs.existsSync(src.imagePath))
        throw new BlockServerError("invalid", `image ${src.imagePath} does not exist`);
      let backend: TargetBackend;
      try {
        backend = new TargetBackend(src.imagePath, { readOnly: spec.readOnly });
      } catch (err) {
        throw new BlockServerError(
          "invalid",
          `cannot open image ${src.imagePath}: ${(err as Error).message}`,
        );
      }
      const exp = this.nbd.exports.add({
        name: spec.name,
        description: spec.description,
        readOnly: spec.readOnly,
        backend,
      });
      this.entries.set(spec.name, { exp, mode: "target", path: src.imagePath });
      this.log.info("export created", {
        name: spec.name,
        mode: "target",
        image: src.imagePath,
        size: backend.size,
      });
      return this.info(spec.name);
    }
    if (!src.cachePath) throw new BlockServerError("invalid", "proxy export needs a cache path");
    try {
      parseNbdUrl(src.upstreamUrl);
    } catch (err) {
      throw new BlockServerError("invalid", (err as Error).message);
    }
    let proxy: ProxyBackend;
    try {
      proxy = await ProxyBackend.open({
        upstreamUrl: src.upstreamUrl,
        cachePath: src.cachePath,
        blockSize: src.blockSize || undefined,
        copyRateBytesPerSec: src.rateLimitBytesPerSecond,
        log: this.log,
      });
    } catch (err) {
      throw new BlockServerError(
        "unavailable",
        `cannot open proxy export ${spec.name}: ${(err as Error).message}`,
      );
    }
    const exp = this.nbd.exports.add({
      name: spec.name,
      description: spec.description,
      readOnly: spec.readOnly,
      backend: proxy,
    });
    const entry: Entry = { exp, mode: "proxy", path: src.cachePath, proxy };
    this.entries.set(spec.name, entry);
    // Destination heat first (what this host's VM touches), then the source's.
    proxy.addHotSource(() => exp.heat.hottest(256));
    if (src.upstreamHot) proxy.addHotSource(src.upstreamHot);
    this.wireProxyEvents(spec.name, entry, proxy, src.autoPromote ?? false);
    this.log.info("export created", {
      name: spec.name,
      mode: "proxy",
      upstream: src.upstreamUrl,
      cache: src.cachePath,
      local: `${proxy.bitmap.local}/${proxy.bitmap.blocks}`,
    });
    if (src.startBackgroundCopy) proxy.startCopy();
    if (src.autoPromote && proxy.bitmap.complete) await this.promote(spec.name);
    return this.info(spec.name);
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

  async removeExport(name: string): Promise<void> {
    const e = this.entry(name);
    this.entries.delete(name);
    await this.nbd.exports.remove(name);
    // The registry closed the export's current backend; a proxy that was swapped out by a
    // promote was closed then. Close the proxy if it is still the one serving.
    if (e.proxy && e.mode === "proxy") await e.proxy.close().catch(() => {});
    this.emitProgress({ name, kind: "export-removed", message: "", time: Date.now() });
    this.log.info("export removed", { name });
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
    return this.status(name);
  }

  async stopCopy(name: string): Promise<ExportStatus> {
    await this.proxyOf(name, "stopping a background copy").stopCopy();
    return this.status(name);
  }

  setRateLimit(name: string, bytesPerSec: number): ExportStatus {
    if (!(bytesPerSec >= 0))
      throw new BlockServerError("invalid", `rate limit must be >= 0, got ${bytesPerSec}`);
    this.proxyOf(name, "a rate limit").setRateLimit(bytesPerSec);
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
      await p.whenCopied();
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

  async close(): Promise<void> {
    for (const name of [...this.entries.keys()]) await this.removeExport(name).catch(() => {});
    await this.nbd.close();
  }
}
