// The order of the background copy: hot blocks first (recently used at the destination,
// then at the source), then everything else sequentially from a cursor. Hot lists are
// refreshed in the background at most every refreshMs, so next() never waits for them.
import type { BlockBitmap } from "./block-bitmap.js";

export interface HotRange {
  offset: number;
  length: number;
}

/** Hot ranges, hottest first: the export's HeatTracker, or the source's GetHotBlocks. */
export type HotSource = () => HotRange[] | Promise<HotRange[]>;

/** Most hot blocks queued per refresh (the rest of the disk is copied in order anyway). */
const MAX_HOT_BLOCKS = 8192;

export class CopyOrder {
  private hot: number[] = [];
  private cursor = 0;
  private lastRefresh = Number.NEGATIVE_INFINITY;
  private refreshing = false;

  constructor(
    private readonly bitmap: BlockBitmap,
    private readonly blockSize: number,
    private readonly sources: HotSource[],
    private readonly refreshMs = 1000,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** The next block to copy (missing and not busy), or -1 when none is left right now. */
  next(busy: (b: number) => boolean): number {
    this.maybeRefresh();
    while (this.hot.length > 0) {
      const b = this.hot.shift()!;
      if (!this.bitmap.has(b) && !busy(b)) return b;
    }
    for (let pass = 0; pass < 2; pass++) {
      let b = this.bitmap.nextMissing(this.cursor);
      while (b >= 0 && busy(b)) b = this.bitmap.nextMissing(b + 1);
      if (b >= 0) {
        this.cursor = b + 1;
        return b;
      }
      // Blocks skipped as busy earlier may have failed and be missing again: rescan once.
      this.cursor = 0;
    }
    return -1;
  }

  /** Fetches hot lists now (tests; or when a hint arrives). */
  async refresh(): Promise<void> {
    this.lastRefresh = this.now();
    const blocks: number[] = [];
    const seen = new Set<number>();
    for (const src of this.sources) {
      let ranges: HotRange[];
      try {
        ranges = await src();
      } catch {
        continue; // a source that fails (e.g. the old host is gone) just contributes nothing
      }
      for (const r of ranges) {
        const first = Math.floor(r.offset / this.blockSize);
        const last = Math.min(
          this.bitmap.blocks - 1,
          Math.floor((r.offset + Math.max(1, r.length) - 1) / this.blockSize),
        );
        for (let b = first; b <= last && blocks.length < MAX_HOT_BLOCKS; b++) {
          if (b < 0 || seen.has(b) || this.bitmap.has(b)) continue;
          seen.add(b);
          blocks.push(b);
        }
      }
    }
    this.hot = blocks;
  }

  private maybeRefresh(): void {
    if (this.refreshing || this.sources.length === 0 || this.now() - this.lastRefresh < this.refreshMs)
      return;
    this.refreshing = true;
    void this.refresh().finally(() => {
      this.refreshing = false;
    });
  }

  addSource(src: HotSource): void {
    this.sources.push(src);
    this.lastRefresh = Number.NEGATIVE_INFINITY;
  }
}
