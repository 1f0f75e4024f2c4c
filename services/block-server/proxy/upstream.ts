// The proxy's upstream: one NBD connection that comes back by itself. When it drops, it
// reconnects with exponential backoff (emitting "lost" and "restored"); reads retry across
// a reconnect for a bounded time and then fail with EIO, so a client never hangs on a dead
// upstream. switchTo() re-points it at another replica of the same disk.
import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Logger } from "../../common/log.js";
import { BackendError } from "../export/backend.js";
import {
  type BlockStatusExtent,
  NbdClient,
  type NbdClientOptions,
  NbdConnectionError,
} from "../nbd/client/client.js";
import { formatNbdUrl, parseNbdUrl } from "../nbd/client/url.js";

export interface UpstreamOptions {
  log: Logger;
  /** First and largest wait between reconnect attempts. Defaults 100 ms and 5 s. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** How long a read keeps retrying across reconnects before EIO. Default 3 s. */
  retryWindowMs?: number;
  client?: NbdClientOptions;
}

export class Upstream extends EventEmitter {
  private client: NbdClient | undefined;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private backoff: number;
  private waiters = new Set<() => void>();
  lastError: string | undefined;
  reconnects = 0;

  private constructor(
    private _url: string,
    readonly size: number,
    private readonly opts: UpstreamOptions,
  ) {
    super();
    this.backoff = opts.backoffMinMs ?? 100;
  }

  /** Connects (once; throws if the upstream cannot be reached). */
  static async open(url: string, opts: UpstreamOptions): Promise<Upstream> {
    const canonical = formatNbdUrl(parseNbdUrl(url));
    const client = await NbdClient.connect(url, { connectTimeoutMs: 5000, ...opts.client });
    const u = new Upstream(canonical, client.size, opts);
    u.attach(client);
    return u;
  }

  get url(): string {
    return this._url;
  }

  get connected(): boolean {
    return this.client !== undefined;
  }

  /** True when the upstream can answer base:allocation block status. */
  get hasBlockStatus(): boolean {
    return this.client?.metaContextId !== undefined;
  }

  private attach(client: NbdClient): void {
    this.client = client;
    client.once("close", (err: Error) => {
      if (this.client !== client) return;
      this.client = undefined;
      if (this.closed) return;
      this.lastError = err.message;
      this.opts.log.warn("upstream lost", { url: this._url, err: err.message });
      this.emit("lost", err);
      this.scheduleReconnect();
    });
  }

  private scheduleReconnect(): void {
    if (this.closed || this.timer) return;
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, this.opts.backoffMaxMs ?? 5000);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.reconnect();
    }, wait);
  }

  private async reconnect(): Promise<void> {
    try {
      const c = await NbdClient.connect(this._url, { connectTimeoutMs: 5000, ...this.opts.client });
      if (c.size !== this.size) {
        c.destroy();
        throw new Error(`upstream size is now ${c.size}, expected ${this.size}`);
      }
      if (this.closed) return c.destroy();
      this.backoff = this.opts.backoffMinMs ?? 100;
      this.reconnects++;
      this.attach(c);
      this.opts.log.info("upstream restored", { url: this._url });
      this.emit("restored");
      for (const w of this.waiters) w();
      this.waiters.clear();
    } catch (e) {
      this.lastError = (e as Error).message;
      this.scheduleReconnect();
    }
  }

  /** The connection, waiting for a reconnect until `deadline` (performance.now() ms). */
  private async current(deadline: number): Promise<NbdClient | undefined> {
    while (!this.client && !this.closed) {
      const left = deadline - performance.now();
      if (left <= 0) return undefined;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, left);
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.waiters.add(done);
      });
    }
    return this.client;
  }

  private unavailable(what: string): BackendError {
    return new BackendError(
      `upstream ${this._url} unavailable for ${what}${this.lastError ? `: ${this.lastError}` : ""}`,
      "EIO",
    );
  }

  /**
   * Reads from upstream (into `into` when given, exactly `length` bytes), retrying across
   * reconnects for the retry window; else EIO.
   */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const deadline = performance.now() + (this.opts.retryWindowMs ?? 3000);
    for (;;) {
      if (this.closed) throw new BackendError("upstream is closed (proxy promoted or closed)", "EIO");
      const c = await this.current(deadline);
      if (!c) throw this.unavailable(`read at ${offset}+${length}`);
      try {
        return await c.read(offset, length, into);
      } catch (e) {
        if (!(e instanceof NbdConnectionError)) {
          throw new BackendError(
            `upstream read at ${offset}+${length} failed: ${(e as Error).message}`,
            "EIO",
          );
        }
        this.lastError = e.message;
        if (performance.now() >= deadline) throw this.unavailable(`read at ${offset}+${length}`);
      }
    }
  }

  /** Upstream block status, or undefined when it is not available right now. */
  async blockStatus(offset: number, length: number): Promise<BlockStatusExtent[] | undefined> {
    const c = this.client;
    if (!c || c.metaContextId === undefined) return undefined;
    try {
      return await c.blockStatus(offset, length);
    } catch {
      return undefined;
    }
  }

  /**
   * Re-points at another server. `verify` may inspect the new connection (e.g. compare a
   * fingerprint) and throw to refuse it; the size must match.
   */
  async switchTo(url: string, verify?: (c: NbdClient) => Promise<void>): Promise<void> {
    const canonical = formatNbdUrl(parseNbdUrl(url));
    const c = await NbdClient.connect(url, { connectTimeoutMs: 5000, ...this.opts.client });
    try {
      if (c.size !== this.size)
        throw new Error(
          `refusing upstream ${canonical}: its size ${c.size} differs from the disk's ${this.size}`,
        );
      await verify?.(c);
    } catch (e) {
      c.destroy();
      throw e;
    }
    const old = this.client;
    this._url = canonical;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.backoff = this.opts.backoffMinMs ?? 100;
    this.attach(c);
    for (const w of this.waiters) w();
    this.waiters.clear();
    this.emit("restored");
    // Requests already sent on the old connection finish there.
    if (old) void old.disconnect().catch(() => {});
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    for (const w of this.waiters) w();
    this.waiters.clear();
    const c = this.client;
    this.client = undefined;
    if (c) await c.disconnect().catch(() => c.destroy());
  }
}

/**
 * Identifies an upstream disk by content: SHA-256 over its size and its first and last
 * blocks. A restart or re-point against a different disk then fails instead of mixing disks.
 */
export async function fingerprint(
  read: (o: number, l: number) => Promise<Buffer>,
  size: number,
  blockSize: number,
): Promise<string> {
  const h = createHash("sha256");
  h.update(String(size));
  const first = Math.min(blockSize, size);
  if (first > 0) h.update(await read(0, first));
  const lastAt = Math.max(0, size - blockSize);
  if (lastAt > 0) h.update(await read(lastAt, size - lastAt));
  return `sha256:${h.digest("hex").slice(0, 32)}`;
}
