// A leader replica taking a migration over before it drives it: the record is stamped with the
// leader's generation (a newer leader's stamp refuses an older leader's transitions), and a
// migration another leader drove before is re-fenced: its fencing token (and the held VM's)
// raised to a new value of the store-wide counter, so the peers (page-servers, block-servers)
// and the VM registry refuse the deposed leader's calls as soon as they see the new token.
import type { Store } from "../common/store/index.js";
import { ConflictError, KEYS, type MigrationRecord, readJson, update, type VmRecord } from "./records.js";
import { isFinal } from "./states.js";

/** A newer leader drives the migration: this one must stop touching it. */
export class DeposedError extends ConflictError {
  constructor(migrationId: string, generation: number, newer: number | undefined) {
    super(`migration ${migrationId} is driven by leader generation ${newer}, not ${generation}: deposed`);
    this.name = "DeposedError";
  }
}

/** Refuses a transition unless the record is still driven by `generation`. */
export function drivenBy(generation: number): (cur: MigrationRecord) => void {
  return (cur) => {
    if (cur.driver_generation !== generation)
      throw new DeposedError(cur.migration_id, generation, cur.driver_generation);
  };
}

class Skip extends Error {}
class Raced extends Error {}

/**
 * The migration stamped as driven by `generation` (re-fenced if another leader drove it), or the
 * record as it is when final (or undefined if gone). DeposedError when a newer leader has it.
 */
export async function adopt(
  store: Store,
  migrationId: string,
  generation: number,
): Promise<MigrationRecord | undefined> {
  for (;;) {
    try {
      return await adoptOnce(store, migrationId, generation);
    } catch (err) {
      if (!(err instanceof Raced)) throw err;
    }
  }
}

async function adoptOnce(
  store: Store,
  migrationId: string,
  generation: number,
): Promise<MigrationRecord | undefined> {
  const cur = (await readJson<MigrationRecord>(store, KEYS.migration(migrationId)))?.value;
  if (!cur || isFinal(cur.state)) return cur;
  const prev = cur.driver_generation;
  if (prev === generation) return cur;
  if (prev !== undefined && prev > generation) throw new DeposedError(migrationId, generation, prev);
  let token = cur.fencing_token;
  if (prev !== undefined) {
    token = await store.incr(KEYS.fenceSeq);
    // The VM first: from here the deposed driver cannot move it (its token no longer matches).
    await update<VmRecord>(store, KEYS.vm(cur.vm_id), (vm) => {
      if (!vm || vm.migration_id !== migrationId) throw new Skip();
      return { ...vm, fencing_token: Math.max(token, vm.fencing_token) };
    }).catch((err) => {
      if (!(err instanceof Skip)) throw err;
    });
  }
  return update<MigrationRecord>(store, KEYS.migration(migrationId), (m) => {
    if (!m) throw new ConflictError(`migration ${migrationId} vanished from the store`);
    if ((m.driver_generation ?? 0) > generation)
      throw new DeposedError(migrationId, generation, m.driver_generation);
    // Another leader stamped it meanwhile: looked at again from the start.
    if (m.driver_generation !== prev) throw new Raced();
    if (prev === undefined) return { ...m, driver_generation: generation };
    const takeover = {
      generation,
      from_generation: prev,
      fencing_token: token,
      unix_ms: Date.now(),
      state: m.state,
    };
    return {
      ...m,
      driver_generation: generation,
      fencing_token: Math.max(token, m.fencing_token),
      takeovers: [...(m.takeovers ?? []), takeover],
    };
  });
}
