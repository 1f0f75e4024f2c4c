// Proxy mode (lazy relocation, after xNBD's proxy): serves a disk at once while its blocks
// still live upstream. Local data sits in a sparse cache file (served through a
// TargetBackend), a persisted bitmap says which blocks are local. Reads of missing blocks
// fetch them (adjacent misses within one event-loop turn merge into one upstream request),
// which a worker splices from the upstream socket straight into the cache file; then they
// are answered from the cache like any local block (by sendfile where the connection can).
// Writes stay local.
//
// Zeroes: the upstream's block status (zero-map.ts, learned from open on) says which blocks
// read as zeroes. While the upstream cannot have changed since (every link so far went to an
// export flagged read-only), those blocks are never fetched: they become local holes, and
// block status of missing blocks is answered without a round trip. A writable upstream may
// fill a hole at any time, so then the map is only a hint: such blocks are read over the
// first connection with structured replies (a hole costs a chunk header on the wire) and
// stored as holes or data as they are now, and block status of missing blocks asks upstream
// (one request per call, one extent for REQ_ONE).
//
// Races: the block claims (block-claims.ts) say which blocks are being fetched or changed
// while missing. A fetch only stores blocks it claimed, and a write to a claimed block waits
// for it first, so a late fetch can never overwrite a newer write (xNBD sets its bit before
// fetching for the same reason). Once close() begins no new claim, and so no fetch, starts.
// Durability: FLUSH fdatasyncs the cache before the bitmap is written; a bit is set only
// once its block is stored. A change to a block whose bit is not yet durable is recorded in
// the write journal (write-journal.ts) before it is acknowledged, so a crash of the process
// keeps it as a target export would.
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
import { BlockClaims, type Claim } from "./block-claims.js";
import { CopyOrder, type HotSource } from "./copy-order.js";
import { blockSpan, mergeRuns, type Run, runBytes } from "./fetch-plan.js";
import { checkUpstream, fingerprint, isFingerprint } from "./identity.js";
import { LatencyRecorder, type LatencySummary } from "./latency.js";
import { Upstream } from "./upstream.js";
import { currentBootId, WriteJournal } from "./write-journal.js";
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
  /** Told each on-demand fetch's duration in ms (the block-server's /metrics histogram). */
  onDemandFetch?: (ms: number) => void;
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
    /** Why the upstream is refused (it serves another disk now), while it is. */
    refused: string | undefined;
    /** Its zero blocks are trusted without asking again (a read-only upstream). */
    zeroesTrusted: boolean;
  };
  promoted: boolean;
}

/** Events: "copy-started", "copy-stopped", "copy-done", "upstream-lost" (Error),
 * "upstream-restored", "upstream-refused" (Error: it serves another disk), "promoted",
 * "fetch-error" (Error). */
export type ProxyEvent =
  | "copy-started"
  | "copy-stopped"
  | "copy-done"
  | "upstream-lost"
  | "upstream-restored"
  | "upstream-refused"
  | "promoted"
  | "fetch-error";

/** Why promote() or whenCopied() did not succeed. */
export class PromoteError extends Error {
  constructor(
    message: string,
    /** incomplete: blocks are missing (and no wait); in-progress / promoted: another promote
     * owns the swap; stopped: the copy stopped while waiting; closed: the proxy closed. */
    readonly reason: "incomplete" | "in-progress" | "promoted" | "stopped" | "closed",
  ) {
    super(message);
    this.name = "PromoteError";
  }
}

interface Waiter {
  resolve: () => void;
  reject: (e: Error) => void;
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
  /** The upstream disk's identity (retaken when the copy starts: see startCopy). */
  private _identity: string;
  /** Blocks being fetched, or changed while missing. */
  private readonly claims: BlockClaims;
  private demandQueue: Claim[] = [];
  private demandScheduled = false;
  private persistChain: Promise<void> = Promise.resolve();
  private readonly latency = new LatencyRecorder();
  private readonly onDemandFetch?: (ms: number) => void;
  /**
   * Blocks this process fetched as data and nothing has changed since: they hold no hole,
   * so a read of them may go out by sendfile without asking the file system (SEEK_HOLE
   * takes the inode lock the fetch worker's writes hold).
   */
  private readonly fetchedData: BitSet;
  private learning: Promise<void> = Promise.resolve();
  /** The zero map's first block-status reply, asked by open() (settled() waits for it). */
  private firstZeroes: Promise<void> = Promise.resolve();
  private readonly copier: BackgroundCopier;
  private readonly order: CopyOrder;
  private counters = { demand: 0, background: 0, written: 0 };
  private _promoted = false;
  /** The one promote allowed: set by its call, before any await. */
  private promotion: Promise<TargetBackend> | undefined;
  /** whenCopied() callers, settled when the copy finishes, stops or the proxy closes. */
  private copyWaiters: Waiter[] = [];
  private closing: Promise<void> | undefined;

  private constructor(
    readonly cachePath: string,
    private readonly bm: BitmapFile,
    private readonly local: TargetBackend,
    private readonly upstream: Upstream,
    private readonly journal: WriteJournal | undefined,
    /** Which blocks the upstream holds as zeroes (zero-map.ts), learned from open on. */
    private readonly zeroMap: ZeroMap,
    opts: ProxyOptions,
    private readonly log: Logger,
  ) {
    super();
    this.size = local.size;
    this.blockSize = bm.header.blockSize;
    this._identity = bm.header.identity;
    this.bitmap = bm.bitmap;
    this.maxRequestBlocks = Math.max(
      1,
      Math.floor((opts.maxRequestBytes ?? DEFAULT_MAX_REQUEST) / this.blockSize),
    );
    this.blockSizes = local.blockSizes;
    this.onDemandFetch = opts.onDemandFetch;
    this.claims = new BlockClaims(this.bitmap);
    this.fetchedData = new BitSet(this.bitmap.blocks);
    this.order = new CopyOrder(this.bitmap, this.blockSize, [...(opts.hotSources ?? [])]);
    this.copier = new BackgroundCopier(this, this.order, {
      concurrency: opts.copyConcurrency,
      rateBytesPerSec: opts.copyRateBytesPerSec,
      persistIntervalMs: opts.persistIntervalMs,
    });
    this.copier.on("started", () => this.emit("copy-started"));
    this.copier.on("stopped", () => {
      this.settleCopyWaiters();
      this.emit("copy-stopped");
    });
    this.copier.on("done", () => {
      this.log.info("background copy done", { blocks: this.bitmap.blocks });
      this.settleCopyWaiters();
      this.emit("copy-done");
    });
    this.copier.on("error-fetch", (e: Error) => this.emit("fetch-error", e));
    // Every later link (reconnect, re-point) must serve this disk, as a restart must.
    upstream.verify = (url, c) =>
      checkUpstream(
        url,
        { size: c.size, read: (o, l) => c.read(o, l) },
        { size: this.size, blockSize: this.blockSize, identity: this._identity },
      );
    upstream.on("lost", (e: Error) => this.emit("upstream-lost", e));
    upstream.on("restored", () => this.emit("upstream-restored"));
    upstream.on("refused", (e: Error) => this.emit("upstream-refused", e));
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
    // The identity: the caller's, or the upstream's fingerprint.
    const given = opts.identity;
    const { upstream, identity: identified } = await Upstream.open(
      opts.upstreamUrl,
      {
        log,
        backoffMinMs: opts.backoffMinMs,
        backoffMaxMs: opts.backoffMaxMs,
        retryWindowMs: opts.retryWindowMs,
      },
      async (read, size) => given ?? fingerprint(read, size),
    );
    let bm: BitmapFile | undefined;
    let local: TargetBackend | undefined;
    let journal: WriteJournal | undefined;
    try {
      const size = upstream.size;
      // The zero map's first block-status request goes out while the fingerprint is still
      // being read (usually over the data connection, up first: see Upstream.open). Not
      // waited for: a block not yet known as zeroes is fetched like any other, and the export
      // opens a round trip sooner (on a migration's critical path).
      const zeroMap = new ZeroMap(size, blockSize);
      const firstZeroes = zeroMap
        .learn(
          (o, l) => upstream.blockStatus(o, l),
          () => false,
          1,
        )
        .catch(() => {}); // learnRestOfZeroes reports a failure to learn
      const identity = await identified;
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
      // Not waited for: until the data connection is up, fetches go through the first one.
      upstream.startFileFetch(opts.cachePath, (o, data) => cache.write(o, data, false));
      journal = await openJournal(`${bitmapPath}.journal`, bm, cache, existing !== undefined, log);
      const p = new ProxyBackend(opts.cachePath, bm, local, upstream, journal, zeroMap, opts, log);
      p.learnRestOfZeroes(firstZeroes);
      if (opts.copyOnOpen) p.startCopy();
      return p;
    } catch (e) {
      await journal?.close();
      await local?.close();
      await bm?.close();
      await upstream.close();
      throw e;
    }
  }

  /**
   * Learns in the background which blocks past the first block-status reply (asked by open():
   * it covers a whole simple image) the upstream holds as zeroes.
   */
  private learnRestOfZeroes(first: Promise<void>): void {
    const status = (o: number, l: number) => this.upstream.blockStatus(o, l);
    this.firstZeroes = first;
    this.learning = first
      .then(() => this.zeroMap.learn(status, () => this.claims.closed))
      .catch((e: Error) => {
        this.log.warn("learning the upstream's zero blocks stopped", { err: e.message });
      });
  }

  // ---- block bookkeeping ----

  isBusy(block: number): boolean {
    return this.claims.isBusy(block);
  }

  runLength(run: Run): number {
    return runBytes(run, this.blockSize, this.size).length;
  }

  /** Block b lies entirely inside [offset, offset+length) (the last block may be short). */
  private covers(b: number, offset: number, length: number): boolean {
    const start = b * this.blockSize;
    return start >= offset && Math.min(start + this.blockSize, this.size) <= offset + length;
  }

  /**
   * The upstream's zero blocks hold now as when they were learned: every link so far went to
   * a read-only export. Otherwise a hole then may hold data now.
   */
  private get zeroesTrusted(): boolean {
    return !this.upstream.mayChange;
  }

  /** Fetches a run of free blocks (the background copy's); claims them before returning. */
  fetchRun(run: Run, source: "demand" | "background"): Promise<void> {
    let claims: Claim[];
    try {
      claims = this.claims.claimRun(run.first, run.count);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.doFetch(run, source, claims);
  }

  private async doFetch(run: Run, source: "demand" | "background", claims: Claim[]): Promise<void> {
    const { offset, length } = runBytes(run, this.blockSize, this.size);
    const t0 = performance.now();
    try {
      let fetched = 0;
      const trusted = this.zeroesTrusted;
      await Promise.all(
        this.splitZero(run).map((r) => {
          const bytes = runBytes(r, this.blockSize, this.size);
          if (r.zero && trusted)
            return this.local.writeZeroes(bytes.offset, bytes.length, {
              fua: false,
              noHole: false,
              fastZero: false,
            });
          fetched += bytes.length;
          if (r.zero) return this.fetchChecked(r, bytes.offset, bytes.length);
          return this.upstream.readToFile(bytes.offset, bytes.length).then(() => {
            this.fetchedData.fill(true, r.first, r.count);
          });
        }),
      );
      if (source === "demand") {
        const ms = performance.now() - t0;
        this.latency.record(ms);
        this.onDemandFetch?.(ms);
        this.counters.demand += fetched;
      } else this.counters.background += fetched;
      this.claims.stored(claims);
    } catch (e) {
      const err =
        e instanceof BackendError
          ? e
          : new BackendError(`fetch at ${offset}+${length} failed: ${(e as Error).message}`, "EIO");
      this.claims.failed(claims, err);
      throw err;
    }
  }

  /**
   * Blocks the upstream once reported as zeroes, from an upstream that may have changed
   * since: read as they are now over the structured connection (holes cost a chunk header),
   * stored as holes where they still read as zeroes and as data elsewhere.
   */
  private async fetchChecked(r: Run, offset: number, length: number): Promise<void> {
    const data = await this.upstream.read(offset, length);
    const bs = this.blockSize;
    const stores: Promise<void>[] = [];
    let at = 0;
    while (at < length) {
      const zero = isZero(data, at, Math.min(length, at + bs));
      let end = Math.min(length, at + bs);
      while (end < length && isZero(data, end, Math.min(length, end + bs)) === zero)
        end = Math.min(length, end + bs);
      if (zero)
        stores.push(
          this.local.writeZeroes(offset + at, end - at, { fua: false, noHole: false, fastZero: false }),
        );
      else {
        stores.push(this.local.write(offset + at, data.subarray(at, end), false));
        this.fetchedData.fill(true, r.first + at / bs, Math.ceil((end - at) / bs));
      }
      at = end;
    }
    await Promise.all(stores);
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

  /** Queues a claimed block for the next demand batch (this event-loop turn's misses, merged). */
  private readonly queueDemand = (c: Claim): void => {
    this.demandQueue.push(c);
    if (!this.demandScheduled) {
      this.demandScheduled = true;
      setImmediate(() => this.issueDemand());
    }
  };

  private issueDemand(): void {
    this.demandScheduled = false;
    const queued = new Map(this.demandQueue.map((c) => [c.block, c]));
    this.demandQueue = [];
    const blocks = [...queued.keys()].sort((a, b) => a - b);
    for (const run of mergeRuns(blocks, this.maxRequestBlocks)) {
      let claims: Claim[];
      try {
        claims = this.claims.claimRun(run.first, run.count); // takes on the queued claims
      } catch (e) {
        // Closed meanwhile: the queued claims fail, their readers with them.
        const mine: Claim[] = [];
        for (let b = run.first; b < run.first + run.count; b++) mine.push(queued.get(b)!);
        this.claims.failed(mine, e as Error);
        continue;
      }
      this.doFetch(run, "demand", claims).catch((e: Error) => {
        this.log.warn("on-demand fetch failed", { first: run.first, count: run.count, err: e.message });
        this.emit("fetch-error", e);
      });
    }
  }

  /** Makes blocks [first, last] local: waits on claims held, fetches the rest (merged). */
  private ensureLocal(first: number, last: number): Promise<void> {
    return this.claims.ensureLocal(first, last, this.queueDemand);
  }

  /**
   * Changes [offset, offset+length) locally with `op`: blocks it covers entirely are claimed
   * (never fetched, readers wait), partly covered missing blocks are fetched first when
   * `fetchPartial`. The change is journaled (blocks whose bit is not yet durable) before
   * its claims are stored and it is acknowledged.
   */
  private async locally(
    offset: number,
    length: number,
    fetchPartial: boolean,
    op: () => Promise<void>,
  ): Promise<void> {
    this.check();
    const { first, last } = blockSpan(offset, length, this.blockSize);
    const claims = await this.claims.claimChange(
      first,
      last,
      (b) => this.covers(b, offset, length),
      fetchPartial,
      this.queueDemand,
    );
    this.fetchedData.fill(false, first, last - first + 1);
    try {
      await op();
      const mine = new Set(claims.map((c) => c.block));
      // Only blocks this change made or found local: a partly covered block left missing
      // (fetchPartial false) was not changed.
      await this.journal?.add(
        first,
        last,
        (b) => this.bm.isDurable(b) || (!this.bitmap.has(b) && !mine.has(b)),
      );
    } catch (e) {
      this.claims.failed(claims, e as Error);
      throw e;
    }
    this.claims.stored(claims);
    if (claims.length > 0) this.copier.checkDone();
  }

  private check(): void {
    if (this.claims.closed) throw new BackendError("proxy backend is closed", "ESHUTDOWN");
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
    if (this.claims.closed || !this.allLocal(offset, length)) return null;
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
    const trusted = this.zeroesTrusted;
    while (pos < end && extents.length < max) {
      const b = Math.floor(pos / bs);
      const isLocal = this.bitmap.has(b);
      let runEnd = Math.min(end, (b + 1) * bs);
      while (runEnd < end && this.bitmap.has(Math.floor(runEnd / bs)) === isLocal)
        runEnd = Math.min(end, runEnd + bs);
      if (isLocal) extents.push(...(await this.local.blockStatus(pos, runEnd - pos, max - extents.length)));
      else if (trusted && pos < this.zeroMap.learnedTo) {
        // Learned from a read-only upstream: no round trip (qemu asks one extent at a time,
        // over a WAN too).
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
        const up = await this.upstream.blockStatus(pos, runEnd - pos, { reqOne: max - extents.length === 1 });
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

  get identity(): string {
    return this._identity;
  }

  /**
   * Starts the background copy. Its start says the upstream no longer changes (a migration
   * starts it at the switch-over, once the source VM has stopped): a writable upstream's
   * fingerprint is taken again then, over the link already checked, and saved in the bitmap
   * header. Otherwise a source VM that wrote its first block between the open and the
   * switch-over would make its own disk look like another one to every later reconnect or
   * restart, and the copy would stall for good once the upstream dropped.
   */
  startCopy(): void {
    this.check();
    this.copier.start();
    if (this.upstream.mayChange && isFingerprint(this._identity))
      this.identityChain = this.identityChain.then(() => this.retakeIdentity());
  }

  private identityChain: Promise<void> = Promise.resolve();

  private async retakeIdentity(): Promise<void> {
    try {
      const id = await fingerprint((o, l) => this.upstream.read(o, l), this.size);
      if (id === this._identity || this.claims.closed) return;
      // The journal first: a crash between the two leaves a bitmap that refuses the upstream
      // (loud), never a journal ignored as another disk's (unflushed writes silently lost).
      await this.journal?.setIdentity({ ...this.bm.header, identity: id });
      await this.bm.setIdentity(id);
      this.log.info("upstream disk's fingerprint retaken as the copy starts (it changed since the open)", {
        was: this._identity,
        now: id,
      });
      this._identity = id;
    } catch (err) {
      this.log.warn("cannot retake the upstream disk's fingerprint as the copy starts", { err });
    }
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

  /**
   * Resolves once every block is local and a running copy has finished (and persisted).
   * Rejects (PromoteError) when no copy is running and blocks are missing, when the copy
   * stops first, or when the proxy closes (e.g. its export was removed).
   */
  whenCopied(): Promise<void> {
    const s = this.copier.state;
    if (s === "done" || (this.bitmap.complete && s !== "running")) return Promise.resolve();
    if (this.claims.closed) return Promise.reject(this.copyEnded("closed"));
    if (s !== "running") return Promise.reject(this.copyEnded("stopped"));
    return new Promise((resolve, reject) => this.copyWaiters.push({ resolve, reject }));
  }

  private copyEnded(why: "stopped" | "closed"): PromoteError {
    const missing = `${this.bitmap.blocks - this.bitmap.local} of ${this.bitmap.blocks} blocks are not local`;
    return why === "closed"
      ? new PromoteError(`proxy closed (export removed?) while ${missing}`, "closed")
      : new PromoteError(`background copy is not running while ${missing}: start it`, "stopped");
  }

  /** The copy finished or stopped (or the proxy closes): whenCopied() callers learn which. */
  private settleCopyWaiters(): void {
    const ws = this.copyWaiters;
    if (ws.length === 0) return;
    this.copyWaiters = [];
    const s = this.copier.state;
    if (s === "done" || (this.bitmap.complete && s !== "running")) for (const w of ws) w.resolve();
    else {
      const e = this.copyEnded(this.claims.closed ? "closed" : "stopped");
      for (const w of ws) w.reject(e);
    }
  }

  /**
   * Re-points the upstream at another replica of the same disk. Refused if the size (or,
   * with a content identity, the fingerprint) differs: the check of a reconnect and a restart.
   */
  async setUpstream(url: string): Promise<void> {
    this.check();
    await this.upstream.switchTo(url);
    this.log.info("upstream re-pointed", { url: this.upstream.url });
  }

  get promoted(): boolean {
    return this._promoted;
  }

  /**
   * When every block is local (with `wait`: starts the copy and waits for it): stops the
   * copy, makes everything durable, drops the upstream and returns a target backend on the
   * cache file, for Export.setBackend(). Only one call promotes: another while it runs or
   * after it is refused (PromoteError "in-progress" / "promoted"), so a second target is
   * never made. This proxy keeps answering requests already running on it (all local);
   * close it once the export let go.
   */
  promote(opts: { wait?: boolean } = {}): Promise<TargetBackend> {
    if (this._promoted) return Promise.reject(new PromoteError("already promoted", "promoted"));
    if (this.promotion)
      return Promise.reject(new PromoteError("a promote of this proxy is already under way", "in-progress"));
    try {
      this.check();
    } catch (e) {
      return Promise.reject(e);
    }
    if (!this.bitmap.complete && !opts.wait)
      return Promise.reject(
        new PromoteError(
          `cannot promote: ${this.bitmap.blocks - this.bitmap.local} of ${this.bitmap.blocks} blocks are not local yet`,
          "incomplete",
        ),
      );
    const p = this.doPromote();
    this.promotion = p;
    // One that failed (the copy stopped, the proxy closed) may be tried again.
    p.catch(() => {
      if (this.promotion === p) this.promotion = undefined;
    });
    return p;
  }

  private async doPromote(): Promise<TargetBackend> {
    if (!this.bitmap.complete) {
      this.startCopy();
      await this.whenCopied();
    }
    await this.copier.stop();
    this.check();
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
        refused: this.upstream.refused,
        zeroesTrusted: this.zeroesTrusted,
      },
      promoted: this._promoted,
    };
  }

  /**
   * Settles once the upstream's data connection (zero-copy fetches) is up, or known not to
   * come: open() does not wait for it, and fetches go through the first connection meanwhile.
   */
  dataReady(): Promise<void> {
    return this.upstream.dataReady();
  }

  /**
   * Resolves once every fetch and local change now in flight has settled (stored and marked,
   * or failed), and the zero map's first reply with them.
   */
  async settled(): Promise<void> {
    await Promise.all([this.claims.settled(), this.firstZeroes]);
  }

  /**
   * Refuses new requests and claims at once (no fetch starts from here: ESHUTDOWN), stops
   * the copy (whenCopied() callers are told), lets fetches and changes in flight finish,
   * persists, then closes the upstream and files.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.claims.close();
    this.settleCopyWaiters();
    await this.copier.stop();
    // Fetches still in flight (a client's, the copy's last) finish first, so the final
    // bitmap records what they stored.
    await this.claims.settled();
    try {
      await this.persist();
    } catch (e) {
      this.log.warn("final persist failed", { err: (e as Error).message });
    }
    await this.learning;
    await this.upstream.close();
    await this.journal?.close();
    await this.bm.close();
    await this.local.close();
  }
}

/** Zero bytes to compare against (grown to the largest block asked about). */
let zeroes = Buffer.alloc(0);

/** True when data[from, to) is all zero bytes (a native compare: a disk may be mostly holes). */
function isZero(data: Buffer, from: number, to: number): boolean {
  const n = to - from;
  if (zeroes.length < n) zeroes = Buffer.alloc(n);
  return data.subarray(from, to).equals(zeroes.subarray(0, n));
}

/**
 * The write journal for this cache: what one left by a crash in this boot is taken back
 * first (its blocks become local and durable), then a fresh one starts. None where the
 * system has no boot id.
 */
async function openJournal(
  path: string,
  bm: BitmapFile,
  cache: TargetBackend,
  resumed: boolean,
  log: Logger,
): Promise<WriteJournal | undefined> {
  const bootId = currentBootId();
  if (!bootId) {
    log.warn("no boot id on this system: unflushed writes are not kept across a crash of the process");
    return undefined;
  }
  if (resumed) {
    const r = await WriteJournal.recover(path, bm.header, bootId);
    if (r.kind === "blocks") {
      let n = 0;
      for (let b = 0; b < bm.bitmap.blocks; b++)
        if (r.bits.has(b) && !bm.bitmap.has(b)) {
          bm.bitmap.set(b);
          n++;
        }
      if (n > 0) {
        // Durable before the journal that names them is emptied.
        await bm.persist(() => cache.flush());
        log.info("kept writes acknowledged before a crash (same boot, not yet flushed)", { blocks: n });
      }
    } else if (r.kind === "other-boot" && r.blocks > 0)
      log.warn(
        "write journal from an earlier boot ignored: blocks written but never flushed before the machine restarted read as the upstream's data again (an NBD server may lose unflushed writes; flushed ones are kept)",
        { blocks: r.blocks },
      );
    else if (r.kind === "unusable") log.warn("write journal ignored", { path, why: r.why });
  }
  return WriteJournal.create(path, bm.header, bootId);
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
