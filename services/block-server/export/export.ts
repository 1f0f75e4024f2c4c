// One named export: what it serves (a swappable Backend), who is connected, and counters.
// The backend can be swapped at runtime (proxy -> target on promote) without disconnecting
// clients: each request pins the backend it started on, and the swap waits for requests
// still running on the old backend before handing it back to be closed.
import type { Backend } from "./backend.js";
import { HeatTracker } from "./heat.js";

export interface ExportStats {
  bytesRead: number;
  bytesWritten: number;
  requests: number;
  errors: number;
  connections: number;
  /** Connections accepted over the export's lifetime. */
  totalConnections: number;
}

/** A client connection as the export sees it: something it can hang up on. */
export interface ExportClient {
  close(reason: string): void;
}

export interface ExportOptions {
  name: string;
  description?: string;
  readOnly?: boolean;
  backend: Backend;
  heat?: HeatTracker;
}

export class Export {
  readonly name: string;
  readonly description: string;
  private _backend: Backend;
  private readonly _readOnly: boolean;
  /** Recently touched ranges, recorded by the server on every READ and WRITE. */
  readonly heat: HeatTracker;
  readonly stats: Omit<ExportStats, "connections"> = {
    bytesRead: 0,
    bytesWritten: 0,
    requests: 0,
    errors: 0,
    totalConnections: 0,
  };
  /** Requests by NBD command type (index), beside stats.requests: read by /metrics at scrape. */
  readonly requestsByCommand = new Float64Array(8);
  private readonly clients = new Set<ExportClient>();
  private readonly inflight = new Map<Backend, number>();
  private readonly waiters = new Map<Backend, (() => void)[]>();
  private removed = false;

  constructor(opts: ExportOptions) {
    if (opts.name.length > 4096) throw new Error("export name longer than 4096 bytes");
    this.name = opts.name;
    this.description = opts.description ?? "";
    this._readOnly = opts.readOnly ?? false;
    this._backend = opts.backend;
    this.heat = opts.heat ?? new HeatTracker();
  }

  /** A request of NBD command `type` is served (a plain increment: the request path stays cheap). */
  request(type: number): void {
    this.stats.requests++;
    if (type < this.requestsByCommand.length) this.requestsByCommand[type]++;
  }

  get backend(): Backend {
    return this._backend;
  }

  get size(): number {
    return this._backend.size;
  }

  /** Read-only if configured so or if the backend cannot write. */
  get readOnly(): boolean {
    return this._readOnly || this._backend.caps.readOnly;
  }

  get connections(): number {
    return this.clients.size;
  }

  get isRemoved(): boolean {
    return this.removed;
  }

  snapshot(): ExportStats {
    return { ...this.stats, connections: this.clients.size };
  }

  /**
   * Serves new requests from `next` at once; resolves with the old backend when no request
   * is still running on it (the caller closes it). The size must not change: connected
   * clients were told it.
   */
  async setBackend(next: Backend): Promise<Backend> {
    const old = this._backend;
    if (next === old) return old;
    if (next.size !== old.size)
      throw new Error(`export ${this.name}: new backend size ${next.size} != ${old.size}`);
    this._backend = next;
    await this.drain(old);
    return old;
  }

  /** A request starts: pins and returns the current backend. Pair with end(). */
  begin(): Backend {
    const b = this._backend;
    this.inflight.set(b, (this.inflight.get(b) ?? 0) + 1);
    return b;
  }

  end(b: Backend): void {
    const n = (this.inflight.get(b) ?? 1) - 1;
    if (n > 0) {
      this.inflight.set(b, n);
      return;
    }
    this.inflight.delete(b);
    const wake = this.waiters.get(b);
    this.waiters.delete(b);
    if (wake) for (const w of wake) w();
  }

  /** Resolves when no request is running on `b`. */
  private drain(b: Backend): Promise<void> {
    if (!this.inflight.has(b)) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.waiters.get(b) ?? [];
      list.push(resolve);
      this.waiters.set(b, list);
    });
  }

  /** Requests running on any backend of this export. */
  get requestsInFlight(): number {
    let n = 0;
    for (const v of this.inflight.values()) n += v;
    return n;
  }

  /** Registers a connection; returns the function that unregisters it. */
  attach(client: ExportClient): () => void {
    if (this.removed) throw new Error(`export ${this.name} was removed`);
    this.clients.add(client);
    this.stats.totalConnections++;
    return () => {
      this.clients.delete(client);
    };
  }

  /** Marks the export removed and hangs up on its clients; waits for running requests. */
  async shutdown(reason: string): Promise<void> {
    this.removed = true;
    for (const c of [...this.clients]) c.close(reason);
    await Promise.all([...this.inflight.keys()].map((b) => this.drain(b)));
  }
}
