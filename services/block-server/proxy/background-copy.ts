// Background copy: pulls every missing block with up to `concurrency` upstream requests in
// flight, through a token bucket, in CopyOrder's order. Blocks that became local (or are
// being fetched for a reader) meanwhile are skipped, never fetched twice.
import { EventEmitter } from "node:events";
import type { BlockBitmap } from "./block-bitmap.js";
import type { CopyOrder } from "./copy-order.js";
import { type Run, runFrom } from "./fetch-plan.js";
import { TokenBucket } from "./token-bucket.js";

export type CopyState = "idle" | "running" | "stopped" | "done";
type CopyEvent = "start" | "stop" | "finish";

/** Allowed transitions; anything else is a no-op. */
const TRANSITIONS: Record<CopyState, Partial<Record<CopyEvent, CopyState>>> = {
  idle: { start: "running", finish: "done" },
  running: { stop: "stopped", finish: "done" },
  stopped: { start: "running", finish: "done" },
  done: {},
};

/** What the copier needs from the proxy. */
export interface CopyHost {
  readonly bitmap: BlockBitmap;
  readonly maxRequestBlocks: number;
  /** A fetch or a local write holds this block right now. */
  isBusy(block: number): boolean;
  /** Bytes a run covers (the last block may be short). */
  runLength(run: Run): number;
  /** Starts fetching a run; registers it as busy before returning. */
  fetchRun(run: Run, source: "background"): Promise<void>;
  /** Makes progress durable (called now and then, and when done). */
  persist(): Promise<void>;
}

export interface CopyOptions {
  concurrency?: number;
  rateBytesPerSec?: number;
  /** Persist the bitmap at most this often while copying. Default 1000 ms. */
  persistIntervalMs?: number;
  /** Pause after a failed fetch before trying again. Default 500 ms. */
  errorBackoffMs?: number;
}

export class BackgroundCopier extends EventEmitter {
  private _state: CopyState = "idle";
  private active = 0;
  private pumping = false;
  private idleWaiters: (() => void)[] = [];
  private lastPersist = performance.now();
  private retryTimer: NodeJS.Timeout | undefined;
  /** A fetch failed: no new one until the backoff timer fires (an upstream that fails at
   * once must not become a loop of failing fetches that never yields to the event loop). */
  private backingOff = false;
  readonly bucket: TokenBucket;
  concurrency: number;
  lastError: string | undefined;

  constructor(
    private readonly host: CopyHost,
    private readonly order: CopyOrder,
    private readonly opts: CopyOptions = {},
  ) {
    super();
    this.concurrency = opts.concurrency ?? 8;
    if (!(this.concurrency >= 1)) throw new Error("copy concurrency must be >= 1");
    this.bucket = new TokenBucket(opts.rateBytesPerSec ?? 0);
  }

  get state(): CopyState {
    return this._state;
  }

  get inFlight(): number {
    return this.active;
  }

  private to(ev: CopyEvent): boolean {
    const next = TRANSITIONS[this._state][ev];
    if (!next) return false;
    this._state = next;
    return true;
  }

  start(): void {
    if (this.host.bitmap.complete) {
      if (this.to("finish")) this.emit("done");
      return;
    }
    if (!this.to("start")) return;
    this.emit("started");
    void this.pump();
  }

  /** Stops issuing requests; resolves when those in flight have finished. */
  async stop(): Promise<void> {
    if (this.to("stop")) this.emit("stopped");
    clearTimeout(this.retryTimer);
    this.backingOff = false;
    while (this.active > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
  }

  setRate(bytesPerSec: number): void {
    this.bucket.setRate(bytesPerSec);
  }

  /** Called by the proxy when blocks became local another way (e.g. all written). */
  checkDone(): void {
    if (this._state === "running" && this.active === 0 && this.host.bitmap.complete) void this.finish();
  }

  private async finish(): Promise<void> {
    if (!this.to("finish")) return;
    try {
      await this.host.persist();
    } catch (e) {
      this.lastError = (e as Error).message;
    }
    this.emit("done");
  }

  private later(ms: number): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.backingOff = false;
      void this.pump();
    }, ms);
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      const maxBytes = this.host.maxRequestBlocks * (this.host.runLength({ first: 0, count: 1 }) || 1);
      while (this._state === "running" && this.active < this.concurrency && !this.backingOff) {
        // Tokens first: a block picked must be fetched at once, or a reader would wait on the limiter.
        await this.bucket.take(maxBytes);
        if (this._state !== "running") {
          this.bucket.refund(maxBytes);
          break;
        }
        const busy = (b: number) => this.host.isBusy(b);
        const start = this.order.next(busy);
        if (start < 0) {
          this.bucket.refund(maxBytes);
          if (this.active === 0) {
            if (this.host.bitmap.complete) void this.finish();
            else this.later(20); // the rest is being fetched for readers: look again soon
          }
          break;
        }
        const bm = this.host.bitmap;
        const run = runFrom(start, bm.blocks, this.host.maxRequestBlocks, (b) => !bm.has(b) && !busy(b));
        this.bucket.refund(maxBytes - this.host.runLength(run));
        this.active++;
        this.host.fetchRun(run, "background").then(
          () => this.settled(false),
          (e: Error) => {
            this.lastError = e.message;
            this.emit("error-fetch", e);
            this.settled(true);
          },
        );
      }
    } finally {
      this.pumping = false;
    }
  }

  private settled(failed: boolean): void {
    this.active--;
    if (this.active === 0) {
      for (const w of this.idleWaiters) w();
      this.idleWaiters = [];
    }
    const now = performance.now();
    if (now - this.lastPersist >= (this.opts.persistIntervalMs ?? 1000)) {
      this.lastPersist = now;
      this.host.persist().catch((e: Error) => {
        this.lastError = e.message;
      });
    }
    if (failed) {
      this.backingOff = true;
      this.later(this.opts.errorBackoffMs ?? 500);
    } else void this.pump();
  }
}
