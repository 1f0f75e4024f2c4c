// One leader among the control-plane replicas on one Store: a lease key taken with
// set-if-absent and a TTL (Redis SET NX PX, as a compare-and-set from null), renewed by its
// holder with a compare-and-set of the same value, lost on any renewal that fails. Each
// acquisition takes a new generation from a store-wide counter (the control-plane passes its
// fencing counter, so a generation is above every fencing token issued before it): the
// generation a leader acts under tells peers and records which leader is newer.
import { setTimeout as sleep } from "node:timers/promises";
import { type Logger, silentLogger } from "../common/log.js";
import type { Store } from "../common/store/index.js";

/** The lease's value in the store. */
export interface LeaseHolder {
  holder: string;
  generation: number;
  since_unix_ms: number;
}

export interface LeaderLeaseOptions {
  /** The lease key. */
  key: string;
  /** The store-wide counter generations come from. */
  generationKey: string;
  /** This contender's name (unique among the replicas). */
  holder: string;
  /** How long the lease lives without a renewal (default 3 s). */
  ttlMs?: number;
  /** How often the holder renews (default a third of the TTL). */
  renewMs?: number;
  /** How often a contender tries to take a free lease (default the renew period). */
  retryMs?: number;
  log?: Logger;
  /** Called when this contender becomes leader under `generation`. */
  onAcquired?: (generation: number) => void;
  /** Called when it stops being leader (a renewal refused or failed, or stop()). */
  onLost?: (generation: number, why: string) => void;
}

export class LeaderLease {
  private held?: { value: string; generation: number; renewedAt: number };
  private stopped = false;
  private loop?: Promise<void>;
  private readonly ttlMs: number;
  private readonly renewMs: number;
  private readonly retryMs: number;
  private readonly log: Logger;
  private wake?: AbortController;

  constructor(
    private readonly store: Store,
    private readonly opts: LeaderLeaseOptions,
  ) {
    this.ttlMs = opts.ttlMs ?? 3000;
    this.renewMs = opts.renewMs ?? Math.max(1, Math.floor(this.ttlMs / 3));
    this.retryMs = opts.retryMs ?? this.renewMs;
    if (!(this.renewMs < this.ttlMs))
      throw new Error(`lease renewal period ${this.renewMs} ms must be below its TTL ${this.ttlMs} ms`);
    this.log = opts.log ?? silentLogger;
  }

  /** The lease as the store has it (null: no leader). */
  static async read(store: Store, key: string): Promise<LeaseHolder | null> {
    const raw = await store.get(key);
    return raw ? (JSON.parse(raw) as LeaseHolder) : null;
  }

  /**
   * The generation this contender leads under, or undefined. A lease not renewed within its TTL
   * counts as lost here too (a stalled process), even before the renewal loop notices.
   */
  get generation(): number | undefined {
    const h = this.held;
    if (!h || Date.now() - h.renewedAt >= this.ttlMs) return undefined;
    return h.generation;
  }

  isLeader(): boolean {
    return this.generation !== undefined;
  }

  /**
   * Contends (and, once leader, renews) in the background until stop(). Resolves once the first
   * attempt is over (its onAcquired called if it won), so a caller can say whether it leads.
   */
  start(): Promise<void> {
    this.loop ??= this.run();
    return this.first;
  }

  private firstDone!: () => void;
  private readonly first = new Promise<void>((resolve) => {
    this.firstDone = resolve;
  });

  /** Stops contending; a held lease is released, so another replica takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.abort();
    this.firstDone();
    await this.loop;
    const h = this.held;
    if (h) {
      this.lose("stopped");
      await this.store.compareAndDelete(this.opts.key, h.value).catch(() => false);
    }
  }

  private lose(why: string): void {
    const h = this.held;
    if (!h) return;
    this.held = undefined;
    this.log.warn("leader lease lost", { holder: this.opts.holder, generation: h.generation, why });
    this.opts.onLost?.(h.generation, why);
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      if (this.held) await this.renew();
      else await this.tryAcquire();
      this.firstDone();
      if (this.stopped) break;
      this.wake = new AbortController();
      await sleep(this.held ? this.renewMs : this.retryMs, undefined, { signal: this.wake.signal }).catch(
        () => {},
      );
    }
  }

  private async tryAcquire(): Promise<void> {
    try {
      if ((await this.store.get(this.opts.key)) !== null) return;
      const generation = await this.store.incr(this.opts.generationKey);
      const holder: LeaseHolder = { holder: this.opts.holder, generation, since_unix_ms: Date.now() };
      const value = JSON.stringify(holder);
      const renewedAt = Date.now();
      if (!(await this.store.compareAndSet(this.opts.key, null, value, { ttlMs: this.ttlMs }))) return;
      if (this.stopped) {
        await this.store.compareAndDelete(this.opts.key, value).catch(() => false);
        return;
      }
      this.held = { value, generation, renewedAt };
      this.log.info("leader lease acquired", { holder: this.opts.holder, generation });
      this.opts.onAcquired?.(generation);
    } catch (err) {
      this.log.warn("leader lease: cannot contend", { err });
    }
  }

  private async renew(): Promise<void> {
    const h = this.held!;
    const at = Date.now();
    let ok: boolean;
    try {
      ok = await this.store.compareAndSet(this.opts.key, h.value, h.value, { ttlMs: this.ttlMs });
    } catch (err) {
      // Whether it reached the store is unknown: another replica may take over once the TTL
      // passes, so this one stops acting as leader now.
      this.lose(`renewal failed: ${(err as Error).message}`);
      return;
    }
    if (!ok) this.lose("renewal refused: the lease expired or another replica holds it");
    else if (Date.now() - at >= this.ttlMs) this.lose("renewal answered after the lease's TTL");
    else if (this.held === h) h.renewedAt = at;
  }
}
