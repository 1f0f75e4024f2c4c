// Fetches upstream ranges straight into the proxy's cache file: opens an NBD connection of
// its own (simple replies, so a READ's data follows its header unbroken), hands the socket
// to a fetch thread (fetch-thread-pool.ts) that splices the data into the file
// (fetch-worker.ts), and matches the thread's results to the callers' promises. Emits
// "close" (Error) once when the connection is gone; every read not answered by then fails
// with NbdConnectionError.
import { EventEmitter } from "node:events";
import { BackendError } from "../export/backend.js";
import { closeFd } from "../export/libc.js";
import { NbdClient, type NbdClientOptions, NbdConnectionError } from "../nbd/client/client.js";
import { type FetchThread, fetchThreads } from "./fetch-thread-pool.js";
import type { FetchResult } from "./fetch-worker.js";

interface Waiter {
  resolve: () => void;
  reject: (e: Error) => void;
}

export class FileFetcher extends EventEmitter {
  private readonly waiters = new Map<number, Waiter>();
  private nextId = 1;
  private closedWith: Error | undefined;
  private idle: (() => void)[] = [];
  private session = 0;
  /** Resolves once the thread is done with this connection (its descriptors closed). */
  private readonly detached: Promise<void>;
  private markDetached!: () => void;

  private constructor(
    private readonly thread: FetchThread,
    readonly size: number,
  ) {
    super();
    this.detached = new Promise((r) => {
      this.markDetached = r;
    });
  }

  /** Connects to `url` and has a fetch thread write what it reads into `cachePath`. */
  static async open(url: string, cachePath: string, opts: NbdClientOptions = {}): Promise<FileFetcher> {
    return FileFetcher.adopt(await FileFetcher.connect(url, opts), cachePath);
  }

  /**
   * A connection as a fetcher needs it: simple replies (a READ's data follows its header
   * unbroken), no block status. Usable as a plain client until adopt() takes it.
   */
  static connect(url: string, opts: NbdClientOptions = {}): Promise<NbdClient> {
    return NbdClient.connect(url, { ...opts, ...FileFetcher.CONNECTION });
  }

  /** The handshake a fetcher's connection needs (see connect()). */
  static readonly CONNECTION = { structuredReplies: false, blockStatus: false } as const;

  /**
   * Has a fetch thread take over `client` (from connect(), with no request in flight) and
   * write what it reads into `cachePath`. The client is unusable afterwards.
   */
  static async adopt(client: NbdClient, cachePath: string): Promise<FileFetcher> {
    if (client.structured) {
      client.destroy();
      throw new Error("a fetcher needs a connection with simple replies (FileFetcher.connect)");
    }
    const sockFd = client.detachFd();
    let thread: FetchThread;
    try {
      thread = fetchThreads.take();
    } catch (e) {
      closeFd(sockFd);
      throw e;
    }
    const f = new FileFetcher(thread, client.size);
    // From here the thread owns the socket. Setting up (opening the cache) belongs to
    // opening, not to the first reads, and a cache it cannot open fails here.
    const ready = new Promise<void>((resolve, reject) => {
      f.once("ready", resolve);
      f.once("close", reject);
    });
    f.session = f.thread.attach(sockFd, cachePath, {
      result: (m) => f.result(m),
      died: (err) => {
        f.fail(new NbdConnectionError(err.message));
        f.markDetached();
      },
    });
    await ready;
    return f;
  }

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  get inFlight(): number {
    return this.waiters.size;
  }

  /**
   * Copies upstream [offset, offset+length) to the same place in the cache file. Rejects
   * with NbdConnectionError when the connection is lost (worth a retry on a new one), or a
   * BackendError (EIO) for the server's error or a failed cache write.
   */
  read(offset: number, length: number): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const id = this.nextId++;
    return new Promise<void>((resolve, reject) => {
      this.waiters.set(id, { resolve, reject });
      this.thread.post({ op: "read", session: this.session, id, offset, length });
    });
  }

  private result(m: FetchResult): void {
    if ("ready" in m) {
      this.emit("ready");
      return;
    }
    if ("detached" in m) {
      this.fail(new NbdConnectionError("upstream data connection closed"));
      this.markDetached();
      return;
    }
    if ("fatal" in m) {
      this.fail(new NbdConnectionError(`upstream data connection: ${m.fatal}`));
      return;
    }
    const w = this.waiters.get(m.id);
    if (!w) return;
    this.waiters.delete(m.id);
    if (m.error === undefined) w.resolve();
    else w.reject(new BackendError(m.error, "EIO"));
    if (this.waiters.size === 0) this.wakeIdle();
  }

  private fail(err: Error): void {
    if (this.closedWith) return;
    this.closedWith = err;
    const n = this.waiters.size;
    const e = n > 0 ? new NbdConnectionError(`${err.message} with ${n} read(s) pending`) : err;
    for (const w of this.waiters.values()) w.reject(e);
    this.waiters.clear();
    this.wakeIdle();
    this.emit("close", err);
  }

  private wakeIdle(): void {
    const ws = this.idle;
    this.idle = [];
    for (const w of ws) w();
  }

  /** Drops the connection at once; reads in flight fail. */
  destroy(): void {
    this.thread.post({ op: "close", session: this.session });
    this.fail(new NbdConnectionError("upstream data connection closed"));
  }

  /** Lets reads in flight finish, then has the thread close the connection. */
  async close(): Promise<void> {
    while (this.waiters.size > 0 && !this.closedWith) await new Promise<void>((r) => this.idle.push(r));
    this.destroy();
    await this.detached;
  }
}
