// Embedded store: a Map with lazy expiry and an in-process event bus. Same semantics as
// the Redis store for everything one process can observe.
import { EventEmitter } from "node:events";
import { checkTtl, type SetOptions, type Store, StoreError, type Unsubscribe } from "./store.js";

const INTEGER = /^(0|-?[1-9][0-9]*)$/;

interface Entry {
  value: string;
  expiresAt?: number;
}

export class MemoryStore implements Store {
  readonly kind = "memory" as const;
  private readonly data = new Map<string, Entry>();
  private readonly bus = new EventEmitter();
  private closed = false;

  constructor() {
    this.bus.setMaxListeners(0);
  }

  private live(key: string): Entry | undefined {
    this.check();
    const e = this.data.get(key);
    if (e?.expiresAt !== undefined && e.expiresAt <= Date.now()) {
      this.data.delete(key);
      return undefined;
    }
    return e;
  }

  private check(): void {
    if (this.closed) throw new StoreError("store is closed");
  }

  private put(key: string, value: string, opts?: SetOptions): void {
    checkTtl(opts);
    this.data.set(key, { value, expiresAt: opts?.ttlMs ? Date.now() + opts.ttlMs : undefined });
  }

  async get(key: string): Promise<string | null> {
    return this.live(key)?.value ?? null;
  }

  async set(key: string, value: string, opts?: SetOptions): Promise<void> {
    this.check();
    this.put(key, value, opts);
  }

  async del(key: string): Promise<boolean> {
    const existed = this.live(key) !== undefined;
    this.data.delete(key);
    return existed;
  }

  async compareAndSet(
    key: string,
    expected: string | null,
    value: string,
    opts?: SetOptions,
  ): Promise<boolean> {
    checkTtl(opts); // a bad TTL is refused whatever the comparison would give, as on Redis
    const cur = this.live(key)?.value ?? null;
    if (cur !== expected) return false;
    this.put(key, value, opts);
    return true;
  }

  async compareAndDelete(key: string, expected: string): Promise<boolean> {
    if (this.live(key)?.value !== expected) return false;
    this.data.delete(key);
    return true;
  }

  async incr(key: string): Promise<number> {
    const e = this.live(key);
    const cur = e?.value ?? "0";
    // What Redis takes as an integer: decimal digits, an optional minus, no leading zero or space.
    const n = INTEGER.test(cur) ? Number(cur) : Number.NaN;
    if (!Number.isSafeInteger(n + 1)) throw new StoreError(`value of ${key} is not an integer`);
    // Like Redis's INCR, the key keeps its TTL.
    this.data.set(key, { value: String(n + 1), expiresAt: e?.expiresAt });
    return n + 1;
  }

  async scan(prefix: string): Promise<Array<[string, string]>> {
    this.check();
    const out: Array<[string, string]> = [];
    for (const key of this.data.keys()) {
      if (!key.startsWith(prefix)) continue;
      const e = this.live(key);
      if (e) out.push([key, e.value]);
    }
    return out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }

  async publish(channel: string, message: string): Promise<void> {
    this.check();
    // Asynchronous delivery, as with Redis: a publisher never runs subscribers inline.
    setImmediate(() => this.bus.emit(channel, message));
  }

  async subscribe(channel: string, onMessage: (message: string) => void): Promise<Unsubscribe> {
    this.check();
    this.bus.on(channel, onMessage);
    return async () => {
      this.bus.off(channel, onMessage);
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.bus.removeAllListeners();
  }
}
