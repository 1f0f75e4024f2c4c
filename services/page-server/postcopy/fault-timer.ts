// Times each post-copy fault: from the destination QEMU's page request (return path) to the
// moment that page passes on its way in (urgent lane or main stream), both as the
// destination page-server's relay sees them. Pure apart from the clock it is given.
// Bounded: at most MAX_OUTSTANDING requests wait (the oldest is dropped and counted beyond).
import { PAGE_SIZE } from "./ram-stream.js";
import type { PageRequest } from "./return-path.js";

export const MAX_OUTSTANDING = 4096;
/** Offsets stay below 2^40 (1 TiB); the block's number goes above them in one safe integer. */
const BLOCK_SHIFT = 2 ** 40;
const MAX_BLOCKS = 1024;

export class FaultTimer {
  /** Key (block number, offset of the request's last target page) → request time; oldest first. */
  private readonly open = new Map<number, number>();
  private readonly blocks = new Map<string, number>();
  /** Page requests seen (a repeat of one still waiting counts once). */
  requests = 0;
  /** Requests whose page came: each is one latency. */
  answered = 0;
  /** Requests dropped unanswered because too many waited. */
  dropped = 0;

  constructor(
    private readonly onLatency: (ms: number) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  get waiting(): number {
    return this.open.size;
  }

  request(r: PageRequest): void {
    // A huge page is placed once its last target page is in: that one answers it.
    const key = this.key(r.block, r.start + Math.max(r.length, PAGE_SIZE) - PAGE_SIZE);
    if (key === undefined || this.open.has(key)) return;
    if (this.open.size >= MAX_OUTSTANDING) {
      const oldest = this.open.keys().next().value as number;
      this.open.delete(oldest);
      this.dropped++;
    }
    this.open.set(key, this.now());
    this.requests++;
  }

  page(block: string, offset: number): void {
    if (this.open.size === 0) return;
    const key = this.key(block, offset);
    if (key === undefined) return;
    const at = this.open.get(key);
    if (at === undefined) return;
    this.open.delete(key);
    this.answered++;
    this.onLatency(this.now() - at);
  }

  clear(): void {
    this.open.clear();
  }

  private key(block: string, offset: number): number | undefined {
    let n = this.blocks.get(block);
    if (n === undefined) {
      if (this.blocks.size >= MAX_BLOCKS) return undefined;
      n = this.blocks.size;
      this.blocks.set(block, n);
    }
    return offset >= BLOCK_SHIFT ? undefined : n * BLOCK_SHIFT + offset;
  }
}
