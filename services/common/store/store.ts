// The state-store interface every service uses for durable shared state (hosts, VMs,
// migrations, bindings, leases). Two implementations with identical semantics: Redis
// (durable, shared between processes) and an embedded in-process map (single process,
// the default when no Redis URL is configured). Values are strings; callers store JSON.
import { ServiceError } from "../errors.js";

export interface SetOptions {
  /** Expire the key after this many milliseconds. */
  ttlMs?: number;
}

export type Unsubscribe = () => Promise<void>;

export interface Store {
  readonly kind: "redis" | "memory";
  get(key: string): Promise<string | null>;
  set(key: string, value: string, opts?: SetOptions): Promise<void>;
  /** Returns true when the key existed. */
  del(key: string): Promise<boolean>;
  /**
   * Atomically sets key to value only if its current value equals expected (null: the key
   * must be absent). Returns whether it was set. The basis for leases and optimistic updates.
   */
  compareAndSet(key: string, expected: string | null, value: string, opts?: SetOptions): Promise<boolean>;
  /** Atomically deletes key only if its current value equals expected. */
  compareAndDelete(key: string, expected: string): Promise<boolean>;
  /** Atomic counter (fencing tokens, generation numbers); starts at 1. */
  incr(key: string): Promise<number>;
  /** Every key starting with prefix, with its value, sorted by key. */
  scan(prefix: string): Promise<Array<[string, string]>>;
  publish(channel: string, message: string): Promise<void>;
  subscribe(channel: string, onMessage: (message: string) => void): Promise<Unsubscribe>;
  close(): Promise<void>;
}

/** The store failed or is unreachable: unavailable, so a caller answers UNAVAILABLE and may retry. */
export class StoreError extends ServiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("unavailable", message, options);
    this.name = "StoreError";
  }
}

/** Both stores refuse the same bad TTLs with the same message. */
export function checkTtl(opts?: SetOptions): void {
  if (opts?.ttlMs !== undefined && !(opts.ttlMs > 0))
    throw new StoreError(`ttlMs must be > 0, got ${opts.ttlMs}`);
}
