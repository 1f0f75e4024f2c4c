// The proxy's block claims: which blocks are local, which are being fetched, and which a
// local change (WRITE, WRITE_ZEROES, TRIM) holds while they are missing. Pure bookkeeping
// over the bitmap, no I/O: the proxy (proxy-backend.ts) does the fetching and storing and
// tells this module when a claim is stored or failed, as nbdkit keeps backend.c apart from
// the protocol.
//
// The rules (xNBD sets a block's bit before fetching it for the same reason):
// - a block is claimed by at most one fetch or one change at a time;
// - a fetch stores only blocks it claimed: a claim is made before the fetch's first await;
// - a change to a block claimed by a fetch waits until that fetch settles, so a late fetch
//   never overwrites a newer write;
// - a read of a claimed block waits for the claim; someone else's claim failing only means
//   "look again", one's own failing fails the request;
// - a block's bit is set only when its claim is stored (its data is in the cache);
// - once closed, no new claim is given: no fetch starts during or after close.
import { BackendError } from "../export/backend.js";
import type { BlockBitmap } from "./block-bitmap.js";

export type ClaimKind = "fetch" | "change";

export interface Claim {
  readonly block: number;
  readonly kind: ClaimKind;
  /** Settles once the block is local (stored), or with the claim's failure. */
  readonly promise: Promise<void>;
}

interface Held extends Claim {
  /** A fetch claim that a fetch has taken on (claimRun): no second fetch may take it. */
  issued: boolean;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class BlockClaims {
  private readonly held = new Map<number, Held>();
  private _closed = false;

  constructor(readonly bitmap: BlockBitmap) {}

  isLocal(b: number): boolean {
    return this.bitmap.has(b);
  }

  /** What holds block b right now, if anything. */
  kind(b: number): ClaimKind | undefined {
    return this.held.get(b)?.kind;
  }

  isBusy(b: number): boolean {
    return this.held.has(b);
  }

  /** Claims held now. */
  get count(): number {
    return this.held.size;
  }

  get closed(): boolean {
    return this._closed;
  }

  /** From now on every new claim is refused (ESHUTDOWN); claims held settle as usual. */
  close(): void {
    this._closed = true;
  }

  private checkOpen(): void {
    if (this._closed) throw new BackendError("proxy backend is closed", "ESHUTDOWN");
  }

  private take(b: number, kind: ClaimKind, issued: boolean): Held {
    this.checkOpen();
    if (this.bitmap.has(b)) throw new Error(`block ${b} is local: it cannot be claimed`);
    const cur = this.held.get(b);
    if (cur) throw new Error(`block ${b} is already claimed by a ${cur.kind}`);
    let resolve!: () => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<void>((a, r) => {
      resolve = a;
      reject = r;
    });
    promise.catch(() => {}); // waiters use allSettled or their own claim's promise
    const c: Held = { block: b, kind, issued, promise, resolve, reject };
    this.held.set(b, c);
    return c;
  }

  /**
   * Claims a free missing block for a fetch that will be issued later (the proxy's demand
   * batch): `claimRun` takes it on then.
   */
  claimFetch(b: number): Claim {
    return this.take(b, "fetch", false);
  }

  /**
   * The claims a fetch of blocks [first, first+count) stores: it takes on fetch claims made
   * with claimFetch and not yet issued, and claims the free blocks. A block that is local,
   * held by a change or by another fetch is refused (Error): a fetch never writes it.
   */
  claimRun(first: number, count: number): Claim[] {
    this.checkOpen();
    for (let b = first; b < first + count; b++) {
      const c = this.held.get(b);
      if (this.bitmap.has(b)) throw new Error(`block ${b} is local: a fetch must not store it`);
      if (c && (c.kind !== "fetch" || c.issued))
        throw new Error(`block ${b} is held by ${c.kind === "fetch" ? "another fetch" : "a change"}`);
    }
    const out: Claim[] = [];
    for (let b = first; b < first + count; b++) {
      const c = this.held.get(b);
      if (c) {
        c.issued = true;
        out.push(c);
      } else out.push(this.take(b, "fetch", true));
    }
    return out;
  }

  /** The claims' blocks are stored: their bits are set and their waiters go on. */
  stored(claims: Iterable<Claim>): void {
    for (const c of claims) {
      const h = this.held.get(c.block);
      if (h !== c) throw new Error(`block ${c.block}: storing a claim that is not held`);
      this.bitmap.set(c.block);
      this.held.delete(c.block);
      h.resolve();
    }
  }

  /** The claims failed: their blocks are free (still missing) again; waiters look again. */
  failed(claims: Iterable<Claim>, err: Error): void {
    for (const c of claims) {
      const h = this.held.get(c.block);
      if (h !== c) continue; // already settled
      this.held.delete(c.block);
      h.reject(err);
    }
  }

  /**
   * Resolves once blocks [first, last] are local: waits on claims held by others, and
   * claims the free ones for a fetch, handing each to `demand` (which must issue it). Fails
   * when one of its own fetches fails, or once closed.
   */
  async ensureLocal(first: number, last: number, demand: (c: Claim) => void): Promise<void> {
    for (;;) {
      const others = new Set<Promise<void>>();
      const mine: Promise<void>[] = [];
      for (let b = first; b <= last; b++) {
        if (this.bitmap.has(b)) continue;
        const c = this.held.get(b);
        if (c) others.add(c.promise);
        else {
          const m = this.claimFetch(b);
          demand(m);
          mine.push(m.promise);
        }
      }
      if (mine.length === 0 && others.size === 0) return;
      await Promise.all([Promise.all(mine), Promise.allSettled(others)]);
    }
  }

  /**
   * Before changing blocks [first, last] locally: blocks `covers` says the change replaces
   * entirely are claimed for it (never fetched; readers wait for the change). Missing blocks
   * it changes only in part are fetched first (via `demand`, as in ensureLocal) when
   * `fetchPartial`, else left missing. Blocks held by others are waited for. Returns the
   * change's claims: pass them to stored() once the change is in the cache, or failed().
   */
  async claimChange(
    first: number,
    last: number,
    covers: (b: number) => boolean,
    fetchPartial: boolean,
    demand: (c: Claim) => void,
  ): Promise<Claim[]> {
    const mine = new Map<number, Claim>();
    try {
      for (;;) {
        const others = new Set<Promise<void>>();
        const partial: Promise<void>[] = [];
        for (let b = first; b <= last; b++) {
          if (this.bitmap.has(b) || mine.has(b)) continue;
          const c = this.held.get(b);
          if (c) others.add(c.promise);
          else if (covers(b)) mine.set(b, this.take(b, "change", true));
          else if (fetchPartial) {
            const m = this.claimFetch(b);
            demand(m);
            partial.push(m.promise);
          }
        }
        if (partial.length === 0 && others.size === 0) return [...mine.values()];
        await Promise.all([Promise.all(partial), Promise.allSettled(others)]);
      }
    } catch (e) {
      this.failed(mine.values(), e as Error);
      throw e;
    }
  }

  /** Resolves once every claim held now has settled. */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.held.values()].map((c) => c.promise));
  }
}
