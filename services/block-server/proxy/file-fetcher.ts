// Fetches upstream ranges straight into the proxy's cache file: opens an NBD connection of
// its own (simple replies, so a READ's data follows its header unbroken), hands the socket
// to a worker thread that splices the data into the file (fetch-worker.ts), and matches the
// worker's results to the callers' promises. Emits "close" (Error) once when the connection
// is gone; every read not answered by then fails with NbdConnectionError.
import { EventEmitter } from "node:events";
import { MessageChannel, type MessagePort, type Worker } from "node:worker_threads";
import { startWorker } from "../../common/worker/start.js";
import { BackendError } from "../export/backend.js";
import { closeFd, eventFd, wakeEventFd } from "../export/libc.js";
import { NbdClient, type NbdClientOptions, NbdConnectionError } from "../nbd/client/client.js";
import type { FetchCommand, FetchResult, FetchWorkerData } from "./fetch-worker.js";

interface Waiter {
  resolve: () => void;
  reject: (e: Error) => void;
}

export class FileFetcher extends EventEmitter {
  private readonly waiters = new Map<number, Waiter>();
  private nextId = 1;
  private closedWith: Error | undefined;
  private idle: (() => void)[] = [];

  private constructor(
    private readonly worker: Worker,
    private readonly port: MessagePort,
    private readonly wakeFd: number,
    private readonly sleeping: Int32Array,
    readonly size: number,
  ) {
    super();
    port.on("message", (m: FetchResult) => this.result(m));
    worker.on("error", (e) => this.fail(new NbdConnectionError(`fetch worker failed: ${e.message}`)));
    worker.on("exit", () => {
      this.fail(new NbdConnectionError("fetch worker ended"));
      port.close();
      closeFd(wakeFd);
    });
  }

  /** Connects to `url` and starts the worker writing into `cachePath`. */
  static async open(url: string, cachePath: string, opts: NbdClientOptions = {}): Promise<FileFetcher> {
    const client = await NbdClient.connect(url, { ...opts, structuredReplies: false, blockStatus: false });
    const sockFd = client.detachFd();
    let wakeFd = -1;
    let f: FileFetcher;
    try {
      wakeFd = eventFd();
      const { port1, port2 } = new MessageChannel();
      const sleeping = new Int32Array(new SharedArrayBuffer(4));
      const data: FetchWorkerData = { sockFd, cachePath, wakeFd, sleeping, port: port2 };
      const worker = startWorker(new URL("./fetch-worker.ts", import.meta.url), data, "vmhop-fetch", [port2]);
      f = new FileFetcher(worker, port1, wakeFd, sleeping, client.size);
    } catch (e) {
      closeFd(sockFd);
      if (wakeFd >= 0) closeFd(wakeFd);
      throw e;
    }
    // From here the worker owns the socket and the fetcher the eventfd. The worker's start-up
    // (loading its module, opening the cache) belongs to opening, not to the first reads, and
    // a cache it cannot open fails here.
    await new Promise<void>((resolve, reject) => {
      f.once("ready", resolve);
      f.once("close", reject);
    });
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
      this.command({ op: "read", id, offset, length });
    });
  }

  private command(c: FetchCommand): void {
    this.port.postMessage(c);
    // A busy worker finds the command when it next looks; only a sleeping one needs the
    // wake (a syscall, and on a VM an interrupt to another CPU, saved per fetch otherwise).
    if (Atomics.load(this.sleeping, 0) === 1) wakeEventFd(this.wakeFd);
  }

  private result(m: FetchResult): void {
    if ("ready" in m) {
      this.emit("ready");
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
    if (!this.closedWith) this.command({ op: "close" });
    this.fail(new NbdConnectionError("upstream data connection closed"));
  }

  /** Lets reads in flight finish, then ends the worker (which closes the connection). */
  async close(): Promise<void> {
    while (this.waiters.size > 0 && !this.closedWith) await new Promise<void>((r) => this.idle.push(r));
    if (!this.closedWith) this.command({ op: "close" });
    this.fail(new NbdConnectionError("upstream data connection closed"));
    await new Promise<void>((r) => {
      if (this.worker.threadId < 0) r();
      else this.worker.once("exit", () => r());
    });
  }
}
