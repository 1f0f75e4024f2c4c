// Times each post-copy fault: from the destination QEMU's page request (return path) to the
// moment that page passes on its way in (urgent lane or main stream), both as the
// destination page-server's relay sees them. Pure apart from the clock it is given.
// A request for a page that already passed since the switch to post-copy (queued on its way
// into QEMU, which had not read it yet) is not timed, only counted: when QEMU reads it is not
// seen here. Bounded: at most MAX_OUTSTANDING requests wait (the oldest is dropped and
// counted beyond) and the last RECENT_PAGES pages passed are remembered.
import { PAGE_SIZE } from "./ram-stream.js";
import type { PageRequest } from "./return-path.js";

export const MAX_OUTSTANDING = 4096;
/** 64 MiB of pages: more than the relay's and QEMU's socket buffers hold. */
export const RECENT_PAGES = 16384;
/** Offsets stay below 2^40 (1 TiB); the block's number goes above them in one safe integer. */
const BLOCK_SHIFT = 2 ** 40;
const MAX_BLOCKS = 1024;

export class FaultTimer {
  /** Key (block number, offset of the request's last target page) → request time; oldest first. */
  private readonly open = new Map<number, number>();
  private readonly blocks = new Map<string, number>();
  /** Pages passed since the switch to post-copy, the last RECENT_PAGES (undefined before it). */
  private recent: Set<number> | undefined;
  /** The same keys in a ring, to forget the oldest (a Set's first entry is slow to find). */
  private readonly ring = new Float64Array(RECENT_PAGES).fill(-1);
  private ringAt = 0;
  /** Page requests seen (a repeat of one still waiting counts once). */
  requests = 0;
  /** Requests whose page came: each is one latency. */
  answered = 0;
  /** Requests dropped unanswered: too many waited, or the timing finished before their page. */
  dropped = 0;
  /** Requests for a page already on its way in: not timed. */
  inFlight = 0;

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
    this.requests++;
    if (this.recent?.has(key)) {
      this.inFlight++;
      return;
    }
    if (this.open.size >= MAX_OUTSTANDING) {
      const oldest = this.open.keys().next().value as number;
      this.open.delete(oldest);
      this.dropped++;
    }
    this.open.set(key, this.now());
  }

  /**
   * The switch to post-copy passed (the device-state package): from here each page is sent
   * once, so one that passed and is asked for later was on its way in.
   */
  switched(): void {
    this.recent = new Set();
    this.ring.fill(-1);
  }

  page(block: string, offset: number): void {
    const recent = this.recent;
    if (!recent) return;
    const key = this.key(block, offset);
    if (key === undefined) return;
    if (!recent.has(key)) {
      const old = this.ring[this.ringAt]!;
      if (old >= 0) recent.delete(old);
      this.ring[this.ringAt] = key;
      this.ringAt = (this.ringAt + 1) % RECENT_PAGES;
      recent.add(key);
    }
    const at = this.open.get(key);
    if (at === undefined) return;
    this.open.delete(key);
    this.answered++;
    this.onLatency(this.now() - at);
  }

  /** No more pages will come: what still waits counts as dropped, and the memory goes. */
  finish(): void {
    this.dropped += this.open.size;
    this.open.clear();
    this.recent = undefined;
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
