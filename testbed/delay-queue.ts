// Items waiting for their delivery time, in arrival order, served by one timer: the timer
// is armed for the head only, so a busy stream costs one timer, not one per chunk.
// `deliver` may return false to say the consumer is full; call resume() when it drains.
import { performance } from "node:perf_hooks";

export interface Timed<T> {
  at: number;
  item: T;
  bytes: number;
}

export class DelayQueue<T> {
  private items: Timed<T>[] = [];
  private head = 0;
  private timer: NodeJS.Timeout | undefined;
  private blocked = false;
  private closed = false;
  /** Bytes currently waiting. */
  bytes = 0;

  constructor(private readonly deliver: (item: T) => boolean) {}

  get length(): number {
    return this.items.length - this.head;
  }

  push(at: number, item: T, bytes: number): void {
    if (this.closed) return;
    this.items.push({ at, item, bytes });
    this.bytes += bytes;
    if (this.length === 1) this.pump();
  }

  /** Holds delivery until resume() (e.g. while the consumer is still connecting). */
  hold(): void {
    this.blocked = true;
  }

  /** The consumer can take more (e.g. a socket's 'drain'). */
  resume(): void {
    this.blocked = false;
    this.pump();
  }

  /** Drops everything and stops the timer. */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.items = [];
    this.head = 0;
    this.bytes = 0;
  }

  private pump = (): void => {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const now = performance.now();
    while (!this.blocked && !this.closed && this.head < this.items.length) {
      const e = this.items[this.head];
      if (e.at > now) break;
      this.items[this.head++] = undefined as unknown as Timed<T>;
      this.bytes -= e.bytes;
      if (!this.deliver(e.item)) this.blocked = true;
    }
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    if (this.closed || this.blocked || this.head >= this.items.length) return;
    // Timers may fire a little early against performance.now(); the loop above re-checks, so
    // nothing is ever delivered before its time (tests rely on that lower bound).
    this.timer = setTimeout(this.pump, Math.max(1, Math.ceil(this.items[this.head].at - now)));
  };
}
