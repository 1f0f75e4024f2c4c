// Migration channels opened ahead of their StartMigration (OpenMigrationChannel), by migration
// id. Each is kept until its start takes it, until an abort or a request with other options
// drops it, or until it expires unused (its destination's QEMU gave up long before).
import type { Logger } from "../../common/log.js";
import type { StartMigrationOptions } from "./outgoing.js";

/** What an opening resolves to: at least the channel, to close when dropped. */
export interface Opened {
  out: { close(): Promise<void> };
}

interface Entry<T extends Opened> {
  o: StartMigrationOptions;
  ready: Promise<T>;
  timer?: NodeJS.Timeout;
}

/** An opened-ahead channel unused this long is closed. */
export const OPENED_AHEAD_TTL_MS = 60_000;

export class OpenedAhead<T extends Opened> {
  private readonly entries = new Map<string, Entry<T>>();

  constructor(
    private readonly log: Logger,
    private readonly ttlMs = OPENED_AHEAD_TTL_MS,
  ) {}

  /**
   * The opening for `o`: the one under way or done with the same options, else `open()`'s
   * (one with other options is dropped first). Its expiry starts once it is open.
   */
  get(o: StartMigrationOptions, open: () => Promise<T>): Promise<T> {
    const id = o.migrationId;
    const had = this.entries.get(id);
    if (had && sameStart(had.o, o)) return had.ready;
    if (had) this.drop(id, "asked again with other options");
    const entry: Entry<T> = { o, ready: open() };
    this.entries.set(id, entry);
    entry.ready.then(
      () => {
        if (this.entries.get(id) !== entry) return;
        entry.timer = setTimeout(() => this.drop(id, `not started within ${this.ttlMs} ms`), this.ttlMs);
        entry.timer.unref();
      },
      () => {
        if (this.entries.get(id) === entry) this.entries.delete(id);
      },
    );
    return entry.ready;
  }

  /**
   * Takes the opening for `o` out (its start uses it); undefined when there is none or it was
   * opened with other options (then dropped).
   */
  take(o: StartMigrationOptions): Promise<T> | undefined {
    const e = this.entries.get(o.migrationId);
    if (!e) return undefined;
    if (!sameStart(e.o, o)) {
      this.drop(o.migrationId, "started with other options");
      return undefined;
    }
    this.entries.delete(o.migrationId);
    clearTimeout(e.timer);
    return e.ready;
  }

  /** The VM a channel was opened ahead for, if any (for the caller's fence check). */
  vmOf(migrationId: string): string | undefined {
    return this.entries.get(migrationId)?.o.vmId;
  }

  /** Closes the channel opened ahead for `id`; whether there was one. */
  drop(id: string, why: string): boolean {
    const e = this.entries.get(id);
    if (!e) return false;
    this.entries.delete(id);
    clearTimeout(e.timer);
    e.ready.then(
      (r) => r.out.close(),
      () => {},
    );
    this.log.info("channel opened ahead closed", { migration: id, why });
    return true;
  }

  /** Closes every one (shutdown). */
  dropAll(why: string): void {
    for (const id of [...this.entries.keys()]) this.drop(id, why);
  }
}

/** Whether two starts ask for the same migration (the fencing token aside). */
export function sameStart(a: StartMigrationOptions, b: StartMigrationOptions): boolean {
  const key = ({ fencingToken: _, ...rest }: StartMigrationOptions) =>
    JSON.stringify(
      Object.entries(rest)
        .filter(([, v]) => v !== undefined)
        .sort(),
    );
  return key(a) === key(b);
}
