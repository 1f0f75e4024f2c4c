// What the leader does when a host goes down (host-liveness.ts) with migrations on it. Before
// the switch-over the migration rolls back: the source is asked to abort (when it is not the
// one down) and the migration fails with the reason, its driver undoing the destination's side;
// the VM stays at the source. After the switch-over the destination owns the VM: the migration
// goes on, and its record says what was lost with the host, if anything.
import type { Logger } from "../common/log.js";
import type { Store } from "../common/store/index.js";
import type { LivenessRecord } from "./host-liveness.js";
import type { PageServers } from "./page-client.js";
import {
  type HostRecord,
  KEYS,
  type MigrationRecord,
  readJson,
  scanJson,
  transition,
  update,
} from "./records.js";
import { isFinal, pastSwitch, TransitionError } from "./states.js";

/** What a host that went down after the switch-over took with it, for the migration's record. */
export function lostWith(m: MigrationRecord, hostId: string): string {
  if (m.destination_host_id === hostId)
    return `the destination ${hostId} went down after the switch-over: the VM ran only there and is down with it`;
  const d = m.disk;
  if (d && !d.promoted && d.blocks_local < d.blocks_total)
    return `the source ${hostId} went down after the switch-over with ${d.blocks_total - d.blocks_local} of ${d.blocks_total} disk blocks still there: the guest sees I/O errors reading them until it is back`;
  return `nothing: the source ${hostId} went down after the switch-over, with the VM's memory and disk all at the destination`;
}

export async function onHostDown(
  store: Store,
  pages: PageServers,
  host: HostRecord,
  rec: LivenessRecord,
  log: Logger,
): Promise<void> {
  const on = (await scanJson<MigrationRecord>(store, KEYS.migrationPrefix)).filter(
    (m) => !isFinal(m.state) && (m.source_host_id === host.host_id || m.destination_host_id === host.host_id),
  );
  for (const m of on) {
    const why = `host ${host.host_id} is down (${rec.detail})`;
    if (!pastSwitch(m.state)) {
      if (m.state === "migrating" && m.source_host_id !== host.host_id) {
        const src = (await readJson<HostRecord>(store, KEYS.host(m.source_host_id)))?.value;
        if (src)
          await pages
            .get(src.page_server_address)
            .abortMigration(m.migration_id, m.fencing_token)
            .catch((err) => log.warn("host down: the source's abort", { migration: m.migration_id, err }));
      }
      const error =
        m.source_host_id === host.host_id
          ? `${why} before the switch-over: the VM stays at the source`
          : `${why} before the switch-over: rolled back, the VM runs at the source`;
      await transition(store, m.migration_id, "fail", { error }).catch((err) => {
        if (!(err instanceof TransitionError)) throw err;
      });
      log.warn("host down: migration rolled back", { migration: m.migration_id, error });
    } else {
      const lost = lostWith(m, host.host_id);
      await update<MigrationRecord>(store, KEYS.migration(m.migration_id), (cur) =>
        cur && !cur.lost ? { ...cur, lost } : (cur as MigrationRecord),
      );
      log.warn("host down after the switch-over", { migration: m.migration_id, lost });
    }
  }
}
