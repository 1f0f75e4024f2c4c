// Which parts of an export were read or written recently. The proxy's background copier
// asks for the hottest ranges first. Heat decays exponentially with a half-life, applied
// lazily on touch (so record() is a few map operations per block, no timers).

export interface HeatRange {
  offset: number;
  length: number;
  /** Decayed access count at the time of the query. */
  score: number;
}

export interface HeatOptions {
  /** Granularity of tracking in bytes (power of two). Default 1 MiB. */
  blockSize?: number;
  /** Time for a block's heat to halve. Default 30 s. */
  halfLifeMs?: number;
  /** Most blocks tracked; the coldest are forgotten beyond it. Default 65536. */
  maxBlocks?: number;
  /** Clock, for tests. */
  now?: () => number;
}

interface Cell {
  score: number;
  at: number;
}

export class HeatTracker {
  readonly blockSize: number;
  private readonly lambda: number;
  private readonly maxBlocks: number;
  private readonly now: () => number;
  private readonly cells = new Map<number, Cell>();

  constructor(opts: HeatOptions = {}) {
    this.blockSize = opts.blockSize ?? 1 << 20;
    if (!(this.blockSize > 0) || (this.blockSize & (this.blockSize - 1)) !== 0)
      throw new Error(`heat block size must be a power of two, got ${this.blockSize}`);
    this.lambda = Math.LN2 / (opts.halfLifeMs ?? 30_000);
    this.maxBlocks = opts.maxBlocks ?? 65536;
    this.now = opts.now ?? Date.now;
  }

  /** Notes an access to [offset, offset+length). Each block touched gains 1. */
  record(offset: number, length: number): void {
    if (length <= 0) return;
    const t = this.now();
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((offset + length - 1) / this.blockSize);
    for (let b = first; b <= last; b++) {
      const c = this.cells.get(b);
      if (c) {
        c.score = c.score * Math.exp(-this.lambda * (t - c.at)) + 1;
        c.at = t;
      } else this.cells.set(b, { score: 1, at: t });
    }
    if (this.cells.size > this.maxBlocks * 1.25) this.prune(t);
  }

  /** Up to `limit` ranges, hottest first; adjacent blocks of equal heat are not merged. */
  hottest(limit = 64): HeatRange[] {
    const t = this.now();
    const all: HeatRange[] = [];
    for (const [b, c] of this.cells)
      all.push({ offset: b * this.blockSize, length: this.blockSize, score: this.decayed(c, t) });
    all.sort((x, y) => y.score - x.score || x.offset - y.offset);
    return all.slice(0, limit);
  }

  /** Forgets everything (e.g. once every block is local). */
  clear(): void {
    this.cells.clear();
  }

  get size(): number {
    return this.cells.size;
  }

  private decayed(c: Cell, t: number): number {
    return c.score * Math.exp(-this.lambda * (t - c.at));
  }

  private prune(t: number): void {
    const scored = [...this.cells].map(([b, c]) => [b, this.decayed(c, t)] as const);
    scored.sort((x, y) => x[1] - y[1]);
    for (let i = 0; i < scored.length - this.maxBlocks; i++) this.cells.delete(scored[i][0]);
  }
}
