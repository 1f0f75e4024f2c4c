// The end of a migration's memory part, bounded on every side: the source's watch followed
// again when it ends or breaks before a final phase (a page-server restarting, a stream cut),
// and the destination's VM waited for while it still reports INCOMING (QEMU's RESUME not yet
// seen there just after the source reported completion). Each wait has a bound: past it the
// migration fails with the reason instead of staying where it is.
import { setTimeout as sleep } from "node:timers/promises";
import { MigrationPhase, VmState, type WatchMigrationResponse } from "../../gen/vmhop/v1/page.js";
import type { PageServer } from "./page-client.js";
import { isNoAnswer } from "./peer-call.js";

const FINAL_PHASES = [
  MigrationPhase.MIGRATION_PHASE_COMPLETED,
  MigrationPhase.MIGRATION_PHASE_FAILED,
  MigrationPhase.MIGRATION_PHASE_CANCELLED,
];

export interface Bounded {
  /** How long without news (or with the destination still waiting) before giving up. */
  withinMs: number;
  /** True once the driver must stop (shut down, deposed): the wait ends with what it has. */
  stopped: () => boolean;
  /** Each time it asks again, with why. */
  again?: (why: string) => void;
}

/**
 * Follows the source's migration to its final phase: the watch is opened again (after a
 * short back-off) when it ends before a final phase or its page-server does not answer, until
 * `withinMs` pass without any news. Other errors (NOT_FOUND, a refusal) are thrown as they are.
 */
export async function watchToEnd(
  src: PageServer,
  migrationId: string,
  onUpdate: (u: WatchMigrationResponse) => void,
  o: Bounded,
): Promise<WatchMigrationResponse> {
  let news = Date.now();
  let last: WatchMigrationResponse | undefined;
  const seen = (u: WatchMigrationResponse) => {
    news = Date.now();
    last = u;
    onUpdate(u);
  };
  for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
    let why: string;
    try {
      const end = await src.watchMigration(migrationId, seen);
      if (FINAL_PHASES.includes(end.phase)) return end;
      why = `the source's watch ended in ${MigrationPhase[end.phase]}`;
    } catch (err) {
      if (!isNoAnswer(err)) throw err;
      why = (err as Error).message;
    }
    if (o.stopped()) throw new Error(`stopped following the migration: ${why}`);
    if (Date.now() + delay - news > o.withinMs)
      throw new Error(
        `no final news from the source for ${Math.round((Date.now() - news) / 1000)} s (${why}); last phase ${
          last ? MigrationPhase[last.phase] : "none"
        }`,
      );
    o.again?.(why);
    await sleep(delay);
  }
}

/**
 * Resolves once the destination reports the VM RUNNING; asks again while it still reports it
 * arriving (INCOMING), up to `withinMs`; any other state (stopped, crashed, paused, unknown) is
 * an answer and fails at once. A destination that does not answer is the caller's to retry.
 */
export async function destinationRunning(dst: PageServer, vmId: string, o: Bounded): Promise<void> {
  const since = Date.now();
  for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
    const at = (await dst.inspect(vmId)).state;
    if (at === VmState.VM_STATE_RUNNING) return;
    const state = VmState[at] ?? String(at);
    if (at !== VmState.VM_STATE_INCOMING)
      throw new Error(`the destination reports the VM ${state} after the migration completed`);
    if (o.stopped() || Date.now() + delay - since > o.withinMs)
      throw new Error(
        `the destination still reports the VM ${state} ${Math.round((Date.now() - since) / 1000)} s after the migration completed`,
      );
    o.again?.(`the destination reports the VM ${state}`);
    await sleep(delay);
  }
}
