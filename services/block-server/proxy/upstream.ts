// The proxy's upstream: a link that comes back by itself. The link is one NBD connection for
// small reads and block status, plus (once startFileFetch() named the cache) a second one
// whose READ data a worker splices straight into the cache file (file-fetcher.ts). Both are
// dialed together (dial.ts). At open, the disk is identified over whichever is up first
// (usually the second: its handshake is shorter), and the proxy serves without waiting for
// the second's worker thread (it may have to start): fetches go through the first connection
// until the thread has taken the second over. A server that takes one client at a time (qemu-nbd without --shared) gets no second connection:
// fetches then go through the first and are stored with a copy. When either connection
// drops, both reconnect with exponential backoff (emitting "lost" and "restored");
// reads retry across a reconnect for a bounded time and then fail with EIO, so a client
// never hangs on a dead upstream; that window counts from the loss, so once it has passed,
// reads fail at once until the upstream is back (a guest reading through a long outage is
// not stalled a window per read). switchTo() re-points it at another replica of the disk.
// Every new link (reconnect or re-point) is checked before it serves anything, with both its
// connections open: the same size and, through the proxy's `verify`, the same disk
// (identity.ts). One that fails is refused ("refused", logged once per reason) and the
// reconnect goes on trying; meanwhile reads fail at once with EIO, so a client never gets
// another disk's data.
import { EventEmitter } from "node:events";
import type { Logger } from "../../common/log.js";
import { BackendError } from "../export/backend.js";
import {
  type BlockStatusExtent,
  type NbdClient,
  type NbdClientOptions,
  NbdConnectionError,
} from "../nbd/client/client.js";
import { formatNbdUrl, parseNbdUrl } from "../nbd/client/url.js";
import { type Dialed, dial } from "./dial.js";
import { FileFetcher } from "./file-fetcher.js";
import { type ReadFn, UpstreamIdentityError } from "./identity.js";

/** The connections in use: replaced as a whole on reconnect or re-point. */
interface Link {
  client: NbdClient;
  fetcher?: FileFetcher;
  /** The data connection dialed with the client, until a fetcher takes it over. */
  spare?: Pick<Dialed, "second" | "dropSecond">;
}

/** Stores fetched bytes in the cache (the path taken without a data connection). */
export type StoreFetched = (offset: number, data: Buffer) => Promise<void>;

/** Names the disk an upstream serves from reads of it (e.g. identity.ts's fingerprint). */
export type Identify = (read: ReadFn, size: number) => Promise<string>;

/** Checks that a new connection serves the proxy's disk; throws UpstreamIdentityError if not. */
export type VerifyUpstream = (url: string, c: NbdClient) => Promise<void>;

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
  private link: Link | undefined;
  private cachePath: string | undefined;
  private store: StoreFetched | undefined;
  /** The upstream took no second connection last time we asked (logged once per change). */
  private single = false;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private backoff: number;
  private waiters = new Set<() => void>();
  lastError: string | undefined;
  reconnects = 0;
  /** Checks every link after the first (set by the proxy once it knows its disk). */
  verify: VerifyUpstream | undefined;
  /** Why the upstream last refused to be taken back (another disk), until a link is accepted. */
  private refusal: string | undefined;
  /** A link to a writable export was seen: the upstream's data may change under us. */
  private writableSeen = false;
  /** The first link's data connection while it comes up in the background. */
  private opening: Promise<void> | undefined;
  /** When the link was lost (performance.now() ms), until a new one is attached. */
  private lostAt: number | undefined;

  private constructor(
    private _url: string,
    readonly size: number,
    private readonly opts: UpstreamOptions,
    /** Cuts short connects still under way when the upstream is closed. */
    private readonly closer: AbortController,
  ) {
    super();
    this.backoff = opts.backoffMinMs ?? 100;
  }

  /**
   * Connects (once; throws if the upstream cannot be reached) and names the disk: `identify`
   * reads over whichever connection is up first, usually the data connection (its handshake
   * is two round trips shorter), so its reads overlap the first connection's handshake.
   * Returns once the first connection is up; `identity` settles later, and only once the
   * first connection, still open, sees the same size (then both reached the same server).
   */
  static async open(
    url: string,
    opts: UpstreamOptions,
    identify: Identify,
  ): Promise<{ upstream: Upstream; identity: Promise<string> }> {
    const canonical = formatNbdUrl(parseNbdUrl(url));
    const closer = new AbortController();
    const d = dial(url, opts.client, closer.signal);
    const firstClient = d.first.then((f) => f.client);
    const identity = (async () => {
      const c = await Promise.race([d.second.catch(() => firstClient), firstClient]);
      const id = await identify((o, l) => c.read(o, l), c.size);
      const first = await firstClient;
      if (c !== first && first.closed)
        throw new NbdConnectionError(
          `upstream ${canonical} closed the connection while the disk was identified`,
        );
      if (c !== first && c.size !== first.size)
        throw new UpstreamIdentityError(
          `refusing upstream ${canonical}: its connections see different sizes (${first.size} and ${c.size})`,
        );
      return id;
    })();
    identity.catch(() => {}); // the caller's once open() returned; never a stray rejection
    const { client } = await d.first;
    const u = new Upstream(canonical, client.size, opts, closer);
    u.attach({ client, spare: d });
    return { upstream: u, identity };
  }

  /**
   * From now on, fetches go into the cache file named `cachePath` (readToFile): straight, over
   * a second connection, or, where the upstream takes only one, read here and handed to
   * `store`. Returns at once: a fetch thread takes the second connection over in the
   * background (`dataReady` settles when it did, or the connection is known not to come), and
   * fetches go through the first one and `store` until then.
   */
  startFileFetch(cachePath: string, store: StoreFetched): void {
    this.cachePath = cachePath;
    this.store = store;
    const link = this.link;
    if (!link || link.fetcher || !link.spare) return;
    const opening = this.addFetcher(link).finally(() => {
      if (this.opening === opening) this.opening = undefined;
    });
    this.opening = opening;
  }

  /** Settles once the first link's data connection is up, or known not to come (never rejects). */
  dataReady(): Promise<void> {
    return this.opening ?? Promise.resolve();
  }

  /** Adds a data connection to `link` (still the current one when it is up), or leaves it without. */
  private async addFetcher(link: Link): Promise<void> {
    let fetcher: FileFetcher | undefined;
    try {
      fetcher = await this.takeSpare(this._url, link);
    } catch (e) {
      if (this.closed || this.link !== link) return;
      // The server answers the first connection but turned the second away (or its thread
      // failed): fetching goes on through the first; a reconnect tries both again.
      this.opts.log.warn(
        "no data connection to the upstream: fetching through the first, with a copy per byte",
        {
          url: this._url,
          err: (e as Error).message,
        },
      );
      return;
    }
    if (!fetcher) return;
    // Lost meanwhile (the reconnect opens its own) or closed: not needed.
    if (this.closed || this.link !== link || link.client.closed) return fetcher.close();
    // With the first connection still open, the server that connection reached (and the
    // proxy checked) is the one the second reached, as in a reconnect's check; the size is
    // cheap to check anyway.
    if (fetcher.size !== this.size) {
      this.opts.log.warn("upstream data connection refused: another size than the first connection's", {
        url: this._url,
        size: fetcher.size,
        expected: this.size,
      });
      return fetcher.close();
    }
    link.fetcher = fetcher;
    this.watch(link, fetcher);
  }

  /**
   * The link's data connection, handed to a fetch thread writing into the cache; undefined
   * when the upstream will not take a second connection (or it was taken already).
   */
  private async takeSpare(url: string, link: Link): Promise<FileFetcher | undefined> {
    const spare = link.spare;
    link.spare = undefined;
    if (!spare) return undefined;
    try {
      const f = await FileFetcher.adopt(await spare.second, this.cachePath!);
      if (this.single)
        this.opts.log.info("upstream took a second connection: fetching zero-copy again", { url });
      this.single = false;
      return f;
    } catch (e) {
      // A server it could reach a moment ago that does not answer a second connection.
      if (!(e instanceof NbdConnectionError) || link.client.closed || this.closed) throw e;
      if (!this.single)
        this.opts.log.warn(
          "no second connection to the upstream (it may take one client at a time): fetching through the first, with a copy per byte",
          {
            url,
            err: (e as Error).message,
          },
        );
      this.single = true;
      return undefined;
    }
  }

  /**
   * Opens a full link to `url`: both connections up when fetching to the cache (and the
   * server allows a second), else the second kept for startFileFetch().
   */
  private async connectLink(url: string): Promise<Link> {
    const d = dial(url, this.opts.client, this.closer.signal);
    const link: Link = { client: (await d.first).client, spare: d };
    if (this.cachePath === undefined) return link;
    try {
      link.fetcher = await this.takeSpare(url, link);
      return link;
    } catch (e) {
      Upstream.destroyLink(link);
      throw e;
    }
  }

  private static destroyLink(l: Link): void {
    l.client.destroy();
    l.fetcher?.destroy();
    l.spare?.dropSecond();
  }

  get url(): string {
    return this._url;
  }

  get connected(): boolean {
    return this.link !== undefined;
  }

  /** Fetches go straight into the cache over a second connection (see startFileFetch). */
  get zeroCopy(): boolean {
    return this.link?.fetcher !== undefined;
  }

  /** True when the upstream can answer base:allocation block status. */
  get hasBlockStatus(): boolean {
    return this.link?.client.metaContextId !== undefined;
  }

  /**
   * False only while every link so far went to an export flagged read-only
   * (NBD_FLAG_READ_ONLY): what it reported then still holds. Stays true once a writable one
   * was seen.
   */
  get mayChange(): boolean {
    return this.writableSeen;
  }

  /** The upstream now serves another disk: set until a link is accepted again. */
  get refused(): string | undefined {
    return this.refusal;
  }

  private attach(link: Link): void {
    if (!link.client.readOnly) this.writableSeen = true;
    this.refusal = undefined;
    this.lostAt = undefined;
    this.link = link;
    this.watch(link, link.client);
    if (link.fetcher) this.watch(link, link.fetcher);
  }

  /** Either connection closing loses the whole link. */
  private watch(link: Link, conn: EventEmitter): void {
    conn.once("close", (err: Error) => {
      if (this.link !== link) return;
      this.link = undefined;
      this.lostAt = performance.now();
      Upstream.destroyLink(link);
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

  /** The check every link after the first passes before it serves anything (identity.ts). */
  private async check(url: string, l: Link): Promise<void> {
    if (l.client.size !== this.size)
      throw new UpstreamIdentityError(
        `refusing upstream ${url}: its size ${l.client.size} differs from the disk's ${this.size}`,
      );
    await this.verify?.(url, l.client);
  }

  private refuse(e: UpstreamIdentityError): void {
    if (this.refusal !== e.message) {
      this.opts.log.error(
        "upstream refused: it serves another disk; reads of blocks not yet local fail with EIO until it serves this disk again or the proxy is re-pointed",
        { url: this._url, err: e.message },
      );
      this.emit("refused", e);
    }
    this.refusal = e.message;
  }

  private async reconnect(): Promise<void> {
    let l: Link | undefined;
    try {
      l = await this.connectLink(this._url);
      // With both connections open: a server replaced meanwhile closed the first one.
      await this.check(this._url, l);
      if (this.closed) return Upstream.destroyLink(l);
      this.backoff = this.opts.backoffMinMs ?? 100;
      this.reconnects++;
      this.attach(l);
      this.opts.log.info("upstream restored", { url: this._url });
      this.emit("restored");
      for (const w of this.waiters) w();
      this.waiters.clear();
    } catch (e) {
      if (l) Upstream.destroyLink(l);
      this.lastError = (e as Error).message;
      if (e instanceof UpstreamIdentityError) this.refuse(e);
      this.scheduleReconnect();
    }
  }

  /** The link, waiting for a reconnect until `deadline` (performance.now() ms). */
  private async current(deadline: number): Promise<Link | undefined> {
    while (!this.link && !this.closed) {
      if (this.refusal !== undefined) return undefined; // another disk: no point waiting
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
    return this.link;
  }

  private unavailable(what: string): BackendError {
    return new BackendError(
      `upstream ${this._url} unavailable for ${what}${this.lastError ? `: ${this.lastError}` : ""}`,
      "EIO",
    );
  }

  /** Reads exactly `length` bytes from upstream, retrying across reconnects for the retry window; else EIO. */
  read(offset: number, length: number): Promise<Buffer> {
    return this.retrying(`read at ${offset}+${length}`, (l) => l.client.read(offset, length));
  }

  /**
   * Copies [offset, offset+length) into the same place of the cache file named by
   * startFileFetch(): spliced by the data connection's worker, or, without one, read here and
   * handed to the store callback. Retries like read().
   */
  readToFile(offset: number, length: number): Promise<void> {
    const store = this.store;
    if (!store) throw new Error("readToFile before startFileFetch");
    return this.retrying(`read at ${offset}+${length}`, async (l) => {
      if (l.fetcher) return l.fetcher.read(offset, length);
      return store(offset, await l.client.read(offset, length));
    });
  }

  /**
   * Runs `op` on the current link, again on the next one after a connection loss, until the
   * retry window ends: the window from the request or from the loss, whichever ends first.
   */
  private async retrying<T>(what: string, op: (l: Link) => Promise<T>): Promise<T> {
    const window = this.opts.retryWindowMs ?? 3000;
    const deadline = Math.min(performance.now(), this.lostAt ?? Number.POSITIVE_INFINITY) + window;
    for (;;) {
      if (this.closed) throw new BackendError("upstream is closed (proxy promoted or closed)", "EIO");
      const l = await this.current(deadline);
      if (!l) throw this.unavailable(what);
      try {
        return await op(l);
      } catch (e) {
        if (e instanceof BackendError) throw e;
        if (!(e instanceof NbdConnectionError))
          throw new BackendError(`upstream ${what} failed: ${(e as Error).message}`, "EIO");
        this.lastError = e.message;
        if (performance.now() >= deadline) throw this.unavailable(what);
      }
    }
  }

  /**
   * Upstream block status (one extent with `reqOne`), or undefined when it is not available
   * right now.
   */
  async blockStatus(
    offset: number,
    length: number,
    opts: { reqOne?: boolean } = {},
  ): Promise<BlockStatusExtent[] | undefined> {
    const c = this.link?.client;
    if (!c || c.metaContextId === undefined) return undefined;
    try {
      return await c.blockStatus(offset, length, opts);
    } catch {
      return undefined;
    }
  }

  /** Re-points at another server, refused (as a reconnect would be) unless it serves the same disk. */
  async switchTo(url: string): Promise<void> {
    const canonical = formatNbdUrl(parseNbdUrl(url));
    const l = await this.connectLink(url);
    try {
      await this.check(canonical, l);
    } catch (e) {
      Upstream.destroyLink(l);
      throw e;
    }
    const old = this.link;
    this._url = canonical;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.backoff = this.opts.backoffMinMs ?? 100;
    this.attach(l);
    for (const w of this.waiters) w();
    this.waiters.clear();
    this.emit("restored");
    // Requests already sent on the old connections finish there.
    if (old) {
      void old.client.disconnect().catch(() => {});
      void old.fetcher?.close();
      old.spare?.dropSecond();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.closer.abort();
    for (const w of this.waiters) w();
    this.waiters.clear();
    await this.opening; // its connection dropped, or a fetcher it made destroyed
    const l = this.link;
    this.link = undefined;
    l?.spare?.dropSecond();
    if (l) await Promise.all([l.client.disconnect().catch(() => l.client.destroy()), l.fetcher?.close()]);
  }
}
