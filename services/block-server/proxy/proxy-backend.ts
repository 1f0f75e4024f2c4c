// Proxy mode (lazy relocation, after xNBD's proxy): serves a disk at once while its blocks
// still live upstream. Local data sits in a sparse cache file (served through a
// TargetBackend), a persisted bitmap says which blocks are local. Reads of missing blocks
// fetch them (adjacent misses within one event-loop turn merge into one upstream request),
// which a worker splices from the upstream socket straight into the cache file; then they
// are answered from the cache like any local block (by sendfile where the connection can).
// Blocks the upstream reports as zeroes are never fetched: they become local holes.
// Writes stay local.
//
// Races: every block being fetched or written while missing has an entry in `busy`. A
// fetch only writes blocks it registered, and a write to a busy block waits for it first,
// so a late fetch can never overwrite a newer write (xNBD sets its bit before fetching for
// the same reason). Durability: FLUSH fdatasyncs the cache before the bitmap is written; a
// bit is set only once its block is stored.
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import { createLogger, type Logger } from "../../common/log.js";
import {
  type Alloc,
  type Backend,
  BackendError,
  type Capabilities,
  type Extent,
  type ReadPiece,
  type WriteZeroesOptions,
} from "../export/backend.js";
import { TargetBackend } from "../export/target.js";
import { BackgroundCopier, type CopyState } from "./background-copy.js";
import { BitSet } from "./bit-set.js";
import { BitmapFile, BitmapFileError } from "./bitmap-file.js";
import type { BlockBitmap } from "./block-bitmap.js";
import { CopyOrder, type HotSource } from "./copy-order.js";
import { blockSpan, mergeRuns, type Run, runBytes } from "./fetch-plan.js";
import { LatencyRecorder, type LatencySummary } from "./latency.js";
import { fingerprint, Upstream } from "./upstream.js";
import { ZeroMap } from "./zero-map.js";

export const DEFAULT_BLOCK_SIZE = 64 * 1024;
export const DEFAULT_MAX_REQUEST = 2 * 1024 * 1024;

export interface ProxyOptions {
  /** nbd://HOST:PORT/NAME or nbd+unix:///NAME?socket=PATH */
  upstreamUrl: string;
  cachePath: string;
  /** Default `${cachePath}.bitmap`. */
  bitmapPath?: string;
  /** Bytes per bitmap bit (power of two). Default 64 KiB, or the existing bitmap's. */
  blockSize?: number;
  /** Names the upstream disk in the bitmap header. Default: a content fingerprint. */
  identity?: string;
  /** Largest upstream request. Default 2 MiB. */
  maxRequestBytes?: number;
  /** Background copy: requests in flight (default 8) and rate limit (0 = unlimited). */
  copyConcurrency?: number;
  copyRateBytesPerSec?: number;
  /** Start the background copy right after opening. Default false. */
  copyOnOpen?: boolean;
  /** Hot-range sources for the copy order (add more later with addHotSource). */
  hotSources?: HotSource[];
  /** Bitmap persisted at most this often during the background copy. Default 1000 ms. */
  persistIntervalMs?: number;
  /** Upstream: reconnect backoff and how long reads retry before EIO. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  retryWindowMs?: number;
  log?: Logger;
}

export interface ProxyStats {
  size: number;
  blockSize: number;
  blocksTotal: number;
  blocksLocal: number;
  bytesFetchedOnDemand: number;
  bytesFetchedBackground: number;
  bytesWrittenLocally: number;
  fetchLatency: LatencySummary;
  copy: {
    state: CopyState;
    running: boolean;
    done: boolean;
    rateBytesPerSec: number;
    inFlight: number;
    concurrency: number;
    lastError: string | undefined;
  };
  upstream: {
    url: string;
    connected: boolean;
    /** Fetches go straight into the cache over a second connection. */
    zeroCopy: boolean;
    lastError: string | undefined;
    reconnects: number;
  };
  promoted: boolean;
}

/** Events: "copy-started", "copy-stopped", "copy-done", "upstream-lost" (Error),
 * "upstream-restored", "promoted", "fetch-error" (Error). */
export type ProxyEvent =
  | "copy-started"
  | "copy-stopped"
  | "copy-done"
  | "upstream-lost"
  | "upstream-restored"
  | "promoted"
  | "fetch-error";

/** A busy block: settles once it is local (stored or written), or on failure. */
interface Busy {
  promise: Promise<void>;
  resolve: () => void;
  reject: (e: Error) => void;
}

function deferred(): Busy {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((a, b) => {
    resolve = a;
    reject = b;
  });
  promise.catch(() => {}); // waiters use allSettled or their own fetch's promise
  return { promise, resolve, reject };
}

export class ProxyBackend extends EventEmitter implements Backend {
  readonly size: number;
  readonly blockSize: number;
  readonly maxRequestBlocks: number;
  readonly caps: Capabilities = {
    readOnly: false,
    flush: true,
    fua: true,
    trim: true,
    writeZeroes: true,
    fastZero: true,
    cache: true,
    blockStatus: true,
    multiConn: true,
  };
  readonly blockSizes: { minimum: number; preferred: number; maximum: number };
  readonly bitmap: BlockBitmap;
  readonly identity: string;
  /** Blocks being fetched, or written while missing. */
  private readonly busy = new Map<number, Busy>();
  private demandQueue: number[] = [];
  private demandScheduled = false;
  private persistChain: Promise<void> = Promise.resolve();
  private readonly latency = new LatencyRecorder();
  private readonly zeroMap: ZeroMap;
  /**
   * Blocks this process fetched as data and nothing has changed since: they hold no hole,
   * so a read of them may go out by sendfile without asking the file system (SEEK_HOLE
   * takes the inode lock the fetch worker's writes hold).
   */
  private readonly fetchedData: BitSet;
  private learning: Promise<void> = Promise.resolve();
  private readonly copier: BackgroundCopier;
  private readonly order: CopyOrder;
  private counters = { demand: 0, background: 0, written: 0 };
  private _promoted = false;
  private closed = false;

  private constructor(
    readonly cachePath: string,
    private readonly bm: BitmapFile,
    private readonly local: TargetBackend,
    private readonly upstream: Upstream,
    opts: ProxyOptions,
    private readonly log: Logger,
  ) {
    super();
    this.size = local.size;
    this.blockSize = bm.header.blockSize;
    this.identity = bm.header.identity;
    this.bitmap = bm.bitmap;
    this.maxRequestBlocks = Math.max(
      1,
      Math.floor((opts.maxRequestBytes ?? DEFAULT_MAX_REQUEST) / this.blockSize),
    );
    this.blockSizes = local.blockSizes;
    this.zeroMap = new ZeroMap(this.size, this.blockSize);
    this.fetchedData = new BitSet(this.bitmap.blocks);
    this.order = new CopyOrder(this.bitmap, this.blockSize, [...(opts.hotSources ?? [])]);
    this.copier = new BackgroundCopier(this, this.order, {
      concurrency: opts.copyConcurrency,
      rateBytesPerSec: opts.copyRateBytesPerSec,
      persistIntervalMs: opts.persistIntervalMs,
    });
    this.copier.on("started", () => this.emit("copy-started"));
    this.copier.on("stopped", () => this.emit("copy-stopped"));
    this.copier.on("done", () => {
      this.log.info("background copy done", { blocks: this.bitmap.blocks });
      this.emit("copy-done");
    });
    this.copier.on("error-fetch", (e: Error) => this.emit("fetch-error", e));
    upstream.on("lost", (e: Error) => this.emit("upstream-lost", e));
    upstream.on("restored", () => this.emit("upstream-restored"));
  }

  /**
   * Opens a proxy: connects to the upstream, then opens (or creates) the cache and its
   * bitmap. An existing bitmap for another disk (size, block size or identity) is refused.
   */
  static async open(opts: ProxyOptions): Promise<ProxyBackend> {
    const log = (opts.log ?? createLogger({ svc: "block-server" })).child({ proxy: opts.cachePath });
    const bitmapPath = opts.bitmapPath ?? `${opts.cachePath}.bitmap`;
    const existing = fs.existsSync(bitmapPath) ? await BitmapFile.peekHeader(bitmapPath) : undefined;
    const blockSize = opts.blockSize ?? existing?.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (!(blockSize >= 512) || (blockSize & (blockSize - 1)) !== 0)
      throw new Error(`proxy block size must be a power of two >= 512, got ${blockSize}`);
    const upstream = await Upstream.open(opts.upstreamUrl, {
      log,
      backoffMinMs: opts.backoffMinMs,
      backoffMaxMs: opts.backoffMaxMs,
      retryWindowMs: opts.retryWindowMs,
    });
    let bm: BitmapFile | undefined;
    let local: TargetBackend | undefined;
    try {
      const size = upstream.size;
      const identity = opts.identity ?? (await fingerprint((o, l) => upstream.read(o, l), size, blockSize));
      if (existing) {
        bm = await BitmapFile.open(bitmapPath, { size, blockSize, identity });
        if (!fs.existsSync(opts.cachePath))
          throw new BitmapFileError(
            bitmapPath,
            `its cache ${opts.cachePath} is missing (remove the bitmap to start over)`,
          );
        const st = fs.statSync(opts.cachePath);
        if (st.size !== size)
          throw new BitmapFileError(
            bitmapPath,
            `cache ${opts.cachePath} is ${st.size} bytes, the disk ${size}`,
          );
        log.info("proxy resumed", { local: bm.bitmap.local, blocks: bm.bitmap.blocks });
      } else {
        // A fresh cache is all holes: nothing stale from an earlier use of the file survives.
        fs.writeFileSync(opts.cachePath, "");
        fs.truncateSync(opts.cachePath, size);
        bm = await BitmapFile.create(bitmapPath, { size, blockSize, identity });
      }
      local = new TargetBackend(opts.cachePath);
      const cache = local;
      await upstream.startFileFetch(opts.cachePath, (o, data) => cache.write(o, data, false));
      const p = new ProxyBackend(opts.cachePath, bm, local, upstream, opts, log);
      await p.learnZeroes();
      if (opts.copyOnOpen) p.startCopy();
      return p;
    } catch (e) {
      await local?.close();
      await bm?.close();
      await upstream.close();
      throw e;
    }
  }

  /**
   * Learns which blocks the upstream holds as zeroes: the first reply now (one round trip,
   * which covers a whole simple image), the rest in the background.
   */
  private async learnZeroes(): Promise<void> {
    const status = (o: number, l: number) => this.upstream.blockStatus(o, l);
    const stop = () => this.closed;
    await this.zeroMap.learn(status, stop, 1);
    this.learning = this.zeroMap.learn(status, stop).catch((e: Error) => {
      this.log.warn("learning the upstream's zero blocks stopped", { err: e.message });
    });
  }

  // ---- block bookkeeping ----

  isBusy(block: number): boolean {
    return this.busy.has(block);
  }

  runLength(run: Run): number {
    return runBytes(run, this.blockSize, this.size).length;
  }

  /** Block b lies entirely inside [offset, offset+length) (the last block may be short). */
  private covers(b: number, offset: number, length: number): boolean {
    const start = b * this.blockSize;
    return start >= offset && Math.min(start + this.blockSize, this.size) <= offset + length;
  }

  /** Fetches a run of registered-or-free blocks; registers them before its first await. */
  fetchRun(run: Run, source: "demand" | "background"): Promise<void> {
    const ds: Busy[] = [];
    for (let b = run.first; b < run.first + run.count; b++) {
      let d = this.busy.get(b);
      if (!d) {
        d = deferred();
        this.busy.set(b, d);
      }
      ds.push(d);
    }
    return this.doFetch(run, source, ds);
  }

  private async doFetch(run: Run, source: "demand" | "background", ds: Busy[]): Promise<void> {
    const { offset, length } = runBytes(run, this.blockSize, this.size);
    const t0 = performance.now();
    try {
      let fetched = 0;
      await Promise.all(
        this.splitZero(run).map((r) => {
          const bytes = runBytes(r, this.blockSize, this.size);
          if (r.zero)
            return this.local.writeZeroes(bytes.offset, bytes.length, {
              fua: false,
              noHole: false,
              fastZero: false,
            });
          fetched += bytes.length;
          return this.upstream.readToFile(bytes.offset, bytes.length).then(() => {
            this.fetchedData.fill(true, r.first, r.count);
          });
        }),
      );
      if (source === "demand") {
        this.latency.record(performance.now() - t0);
        this.counters.demand += fetched;
      } else this.counters.background += fetched;
      this.bitmap.setRange(run.first, run.count);
      for (let i = 0; i < ds.length; i++) {
        this.busy.delete(run.first + i);
        ds[i].resolve();
      }
    } catch (e) {
      const err =
        e instanceof BackendError
          ? e
          : new BackendError(`fetch at ${offset}+${length} failed: ${(e as Error).message}`, "EIO");
      for (let i = 0; i < ds.length; i++) {
        this.busy.delete(run.first + i);
        ds[i].reject(err);
      }
      throw err;
    }
  }

  /** A run cut where the upstream's known-zero blocks start and stop. */
  private splitZero(run: Run): (Run & { zero: boolean })[] {
    const out: (Run & { zero: boolean })[] = [];
    for (let b = run.first; b < run.first + run.count; b++) {
      const zero = this.zeroMap.has(b);
      const last = out[out.length - 1];
      if (last && last.zero === zero) last.count++;
      else out.push({ first: b, count: 1, zero });
    }
    return out;
  }

  /** Makes [first, last] local: waits on fetches in flight, merges the rest into fetches. */
  private async ensureLocal(first: number, last: number): Promise<void> {
    for (;;) {
      const others = new Set<Promise<void>>();
      const mine: Promise<void>[] = [];
      for (let b = first; b <= last; b++) {
        if (this.bitmap.has(b)) continue;
        const d = this.busy.get(b);
        if (d) others.add(d.promise);
        else mine.push(this.queueDemand(b));
      }
      if (mine.length === 0 && others.size === 0) return;
      // Our own fetches fail the request; someone else's failure just means "look again".
      await Promise.all([Promise.all(mine), Promise.allSettled(others)]);
    }
  }

  /** Queues a block for the next demand batch (this event-loop turn's misses, merged). */
  private queueDemand(b: number): Promise<void> {
    const d = deferred();
    this.busy.set(b, d);
    this.demandQueue.push(b);
    if (!this.demandScheduled) {
      this.demandScheduled = true;
      setImmediate(() => this.issueDemand());
    }
    return d.promise;
  }

  private issueDemand(): void {
    this.demandScheduled = false;
    const blocks = this.demandQueue.sort((a, b) => a - b);
    this.demandQueue = [];
    for (const run of mergeRuns(blocks, this.maxRequestBlocks))
      this.fetchRun(run, "demand").catch((e: Error) => {
        this.log.warn("on-demand fetch failed", { first: run.first, count: run.count, err: e.message });
        this.emit("fetch-error", e);
      });
  }

  /**
   * Before changing [offset, offset+length) locally: blocks fully covered are claimed (no
   * fetch needed, readers wait for us); partly covered missing blocks are fetched first when
   * `fetchPartial`, else left alone. Returns the claims; pass them to commit() or release().
   */
  private async claim(offset: number, length: number, fetchPartial: boolean): Promise<Map<number, Busy>> {
    const { first, last } = blockSpan(offset, length, this.blockSize);
    const mine = new Map<number, Busy>();
    try {
      for (;;) {
        const others = new Set<Promise<void>>();
        const partial: number[] = [];
        for (let b = first; b <= last; b++) {
          if (this.bitmap.has(b) || mine.has(b)) continue;
          const d = this.busy.get(b);
          if (d) others.add(d.promise);
          else if (this.covers(b, offset, length)) {
            const c = deferred();
            this.busy.set(b, c);
            mine.set(b, c);
          } else if (fetchPartial) partial.push(b);
        }
        if (partial.length === 0 && others.size === 0) return mine;
        await Promise.all([Promise.all(partial.map((b) => this.queueDemand(b))), Promise.allSettled(others)]);
      }
    } catch (e) {
      this.release(mine, e as Error);
      throw e;
    }
  }

  private commit(claims: Map<number, Busy>): void {
    for (const [b, d] of claims) {
      this.bitmap.set(b);
      this.busy.delete(b);
      d.resolve();
    }
    if (claims.size > 0) this.copier.checkDone();
  }

  private release(claims: Map<number, Busy>, e: Error): void {
    for (const [b, d] of claims) {
      this.busy.delete(b);
      d.reject(e);
    }
  }

  private async locally(
    offset: number,
    length: number,
    fetchPartial: boolean,
    op: () => Promise<void>,
  ): Promise<void> {
    this.check();
    const claims = await this.claim(offset, length, fetchPartial);
    const { first, last } = blockSpan(offset, length, this.blockSize);
    this.fetchedData.fill(false, first, last - first + 1);
    try {
      await op();
    } catch (e) {
      this.release(claims, e as Error);
      throw e;
    }
    this.commit(claims);
  }

  private check(): void {
    if (this.closed) throw new BackendError("proxy backend is closed", "ESHUTDOWN");
  }

  private allLocal(offset: number, length: number): boolean {
    if (this.bitmap.complete) return true;
    const { first, last } = blockSpan(offset, length, this.blockSize);
    return this.bitmap.hasAll(first, last);
  }

  // ---- Backend ----

  // A local read starts at once (no await first): one issued before a write copies what was
  // there before that write reaches the file.
  async read(offset: number, length: number, alloc: Alloc = Buffer.allocUnsafe): Promise<Buffer> {
    const fetching = this.makeLocal(offset, length);
    if (fetching) await fetching;
    return this.local.read(offset, length, alloc);
  }

  async readSparse(offset: number, length: number, alloc?: Alloc): Promise<ReadPiece[]> {
    const fetching = this.makeLocal(offset, length);
    if (fetching) await fetching;
    return this.local.readSparse(offset, length, alloc);
  }

  /** Local, cached ranges go out by sendfile like a target's (see Backend.cachedFileRange). */
  cachedFileRange(offset: number, length: number): { fd: number; offset: number } | null {
    if (this.closed || !this.allLocal(offset, length)) return null;
    const { first, last } = blockSpan(offset, length, this.blockSize);
    return this.local.cachedFileRange(offset, length, this.fetchedData.allSet(first, last));
  }

  /** Fetches what [offset, offset+length) misses; undefined when it is all local already. */
  makeLocal(offset: number, length: number): Promise<void> | undefined {
    this.check();
    if (this.allLocal(offset, length)) return undefined;
    const { first, last } = blockSpan(offset, length, this.blockSize);
    return this.ensureLocal(first, last);
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await this.locally(offset, data.length, true, () => this.local.write(offset, data, false));
    this.counters.written += data.length;
    if (fua) await this.flush();
  }

  async writeZeroes(offset: number, length: number, opts: WriteZeroesOptions): Promise<void> {
    await this.locally(offset, length, true, () =>
      this.local.writeZeroes(offset, length, { ...opts, fua: false }),
    );
    this.counters.written += length;
    if (opts.fua) await this.flush();
  }

  /** Whole blocks in the range become local holes; partial blocks are left as they are (TRIM is advisory). */
  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    const bs = this.blockSize;
    const start = Math.ceil(offset / bs) * bs;
    const end = offset + length >= this.size ? this.size : Math.floor((offset + length) / bs) * bs;
    if (end <= start) return;
    await this.locally(start, end - start, false, () => this.local.trim(start, end - start, false));
    if (fua) await this.flush();
  }

  async cache(offset: number, length: number): Promise<void> {
    this.check();
    const { first, last } = blockSpan(offset, length, this.blockSize);
    await this.ensureLocal(first, last);
  }

  /** Cache data, then the bitmap (in that order), one persist at a time. */
  flush(): Promise<void> {
    this.check();
    return this.persist();
  }

  persist(): Promise<void> {
    const p = this.persistChain.then(() => this.bm.persist(() => this.local.flush()));
    this.persistChain = p.catch(() => {});
    return p;
  }

  /** Local blocks from the cache (holes included); missing ones from upstream when it can say. */
  async blockStatus(offset: number, length: number, maxExtents = 1024): Promise<Extent[]> {
    this.check();
    const end = Math.min(this.size, offset + length);
    const bs = this.blockSize;
    const max = Math.max(1, Math.min(maxExtents, 1024));
    const extents: Extent[] = [];
    let pos = offset;
    let askedUpstream = false;
    while (pos < end && extents.length < max) {
      const b = Math.floor(pos / bs);
      const isLocal = this.bitmap.has(b);
      let runEnd = Math.min(end, (b + 1) * bs);
      while (runEnd < end && this.bitmap.has(Math.floor(runEnd / bs)) === isLocal)
        runEnd = Math.min(end, runEnd + bs);
      if (isLocal) extents.push(...(await this.local.blockStatus(pos, runEnd - pos, max - extents.length)));
      else if (pos < this.zeroMap.learnedTo) {
        // Learned at open: no round trip (qemu asks one extent at a time, over a WAN too).
        const known = this.zeroMap.extents(
          pos,
          Math.min(runEnd, this.zeroMap.learnedTo),
          max - extents.length,
        );
        extents.push(...known);
        runEnd = known.reduce((at, x) => at + x.length, pos);
      } else {
        if (askedUpstream) break; // one round trip per call; the client asks again
        askedUpstream = true;
        const up = await this.upstream.blockStatus(pos, runEnd - pos);
        if (up && up.length > 0) {
          let at = pos;
          for (const e of up) {
            const len = Math.min(e.length, runEnd - at);
            if (len <= 0) break;
            extents.push({ length: len, flags: e.flags });
            at += len;
          }
          runEnd = at;
        } else extents.push({ length: runEnd - pos, flags: 0 });
      }
      pos = runEnd;
    }
    return mergeExtents(extents);
  }

  // ---- control ----

  startCopy(): void {
    this.check();
    this.copier.start();
  }

  stopCopy(): Promise<void> {
    return this.copier.stop();
  }

  setRateLimit(bytesPerSec: number): void {
    this.copier.setRate(bytesPerSec);
  }

  /** E.g. `() => exp.heat.hottest(64)` for the export, or the source's GetHotBlocks. */
  addHotSource(src: HotSource): void {
    this.order.addSource(src);
  }

  /** Waits until every block is local and a running copy has finished (and persisted). */
  whenCopied(): Promise<void> {
    const s = this.copier.state;
    if (s === "done" || (this.bitmap.complete && s !== "running")) return Promise.resolve();
    return new Promise((r) => this.once("copy-done", () => r()));
  }

  /**
   * Re-points the upstream at another replica of the same disk. Refused if the size (or,
   * with a content identity, the fingerprint) differs.
   */
  async setUpstream(url: string): Promise<void> {
    this.check();
    await this.upstream.switchTo(url, async (c) => {
      if (!this.identity.startsWith("sha256:")) return;
      const fp = await fingerprint((o, l) => c.read(o, l), this.size, this.blockSize);
      if (fp !== this.identity)
        throw new Error(
          `refusing upstream ${url}: it holds a different disk (fingerprint ${fp}, expected ${this.identity})`,
        );
    });
    this.log.info("upstream re-pointed", { url: this.upstream.url });
  }

  get promoted(): boolean {
    return this._promoted;
  }

  /**
   * When every block is local: stops the copy, makes everything durable, drops the upstream
   * and returns a target backend on the cache file, for Export.setBackend(). This proxy keeps
   * answering requests already running on it (all local); close it once the export let go.
   */
  async promote(): Promise<TargetBackend> {
    this.check();
    if (!this.bitmap.complete)
      throw new Error(
        `cannot promote: ${this.bitmap.blocks - this.bitmap.local} of ${this.bitmap.blocks} blocks are not local yet`,
      );
    await this.copier.stop();
    await this.persist();
    const target = new TargetBackend(this.cachePath);
    this._promoted = true;
    await this.upstream.close();
    this.log.info("promoted to target", { cache: this.cachePath });
    this.emit("promoted");
    return target;
  }

  stats(): ProxyStats {
    const s = this.copier.state;
    return {
      size: this.size,
      blockSize: this.blockSize,
      blocksTotal: this.bitmap.blocks,
      blocksLocal: this.bitmap.local,
      bytesFetchedOnDemand: this.counters.demand,
      bytesFetchedBackground: this.counters.background,
      bytesWrittenLocally: this.counters.written,
      fetchLatency: this.latency.summary(),
      copy: {
        state: s,
        running: s === "running",
        done: this.bitmap.complete,
        rateBytesPerSec: this.copier.bucket.bytesPerSecond,
        inFlight: this.copier.inFlight,
        concurrency: this.copier.concurrency,
        lastError: this.copier.lastError,
      },
      upstream: {
        url: this.upstream.url,
        connected: this.upstream.connected,
        zeroCopy: this.upstream.zeroCopy,
        lastError: this.upstream.lastError,
        reconnects: this.upstream.reconnects,
      },
      promoted: this._promoted,
    };
  }

  /** Resolves once every fetch and local change now in flight has settled (stored and marked, or failed). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.busy.values()].map((d) => d.promise));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.copier.stop();
    // Fetches still in flight (a client's, the copy's last) finish first, so the final
    // bitmap records what they stored.
    await this.settled();
    try {
      await this.persist();
    } catch (e) {
      this.log.warn("final persist failed", { err: (e as Error).message });
    }
    this.closed = true;
    await this.learning;
    await this.upstream.close();
    await this.bm.close();
    await this.local.close();
  }
}

function mergeExtents(ext: Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of ext) {
    const last = out[out.length - 1];
    if (last && last.flags === e.flags) last.length += e.length;
    else if (e.length > 0) out.push({ ...e });
  }
  return out;
}
