// A control-plane replica: every replica answers the API from the shared store; the one that
// holds the leader lease (leader-lease.ts) drives the migrations. It leads on acquiring the
// lease (resuming every unfinished migration, then picking up new ones) and stops driving the
// moment it sees the lease lost.
import type { Logger } from "../common/log.js";
import type { Store } from "../common/store/index.js";
import type { ControlPlane } from "./control-plane.js";
import { LeaderLease, type LeaseHolder } from "./leader-lease.js";
import { KEYS } from "./records.js";

export interface ReplicaOptions {
  /** This replica's name, unique among the replicas (the lease's holder). */
  id: string;
  /** The lease's TTL: how long a dead leader keeps the others waiting (default 5 s). */
  leaseTtlMs?: number;
  log: Logger;
}

/** The leader the store names (null: none now). */
export function currentLeader(store: Store): Promise<LeaseHolder | null> {
  return LeaderLease.read(store, KEYS.leader);
}

export class Replica {
  private readonly lease: LeaderLease;
  /** lead/stand down one after the other, in the order the lease changed. */
  private chain: Promise<unknown> = Promise.resolve();
  /** The migrations resumed on the last acquisition. */
  resumed: string[] = [];

  constructor(
    cp: ControlPlane,
    store: Store,
    readonly opts: ReplicaOptions,
  ) {
    this.lease = new LeaderLease(store, {
      key: KEYS.leader,
      generationKey: KEYS.fenceSeq,
      holder: opts.id,
      // The embedded store has one process: it leads for good (no late renewal may cost it that).
      ttlMs: store.kind === "memory" ? 24 * 3600_000 : (opts.leaseTtlMs ?? 5000),
      log: opts.log,
      onAcquired: (g) =>
        this.queue(async () => {
          this.resumed = await cp.lead(g, () => this.lease.generation === g);
          opts.log.info("leading", { replica: opts.id, generation: g, resumed: this.resumed });
        }),
      onLost: (g, why) =>
        this.queue(async () => {
          await cp.standDown();
          opts.log.warn("stopped driving migrations: lease lost", { replica: opts.id, generation: g, why });
        }),
    });
  }

  private queue(fn: () => Promise<void>): void {
    this.chain = this.chain.then(fn).catch((err) => this.opts.log.warn("replica leadership change", { err }));
  }

  /** Contends for the lease; resolves once the first attempt (and, if it won, the resumption) is over. */
  async start(): Promise<void> {
    await this.lease.start();
    await this.chain;
  }

  /** The generation it leads under, or undefined. */
  get generation(): number | undefined {
    return this.lease.generation;
  }

  /** Releases the lease (another replica takes over at once); migrations stay as recorded. */
  async stop(): Promise<void> {
    await this.lease.stop();
    await this.chain;
  }
}
