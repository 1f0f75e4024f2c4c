// What the leader does when a host goes down (host-liveness.ts) with migrations on it. Before
// the switch-over the migration rolls back: the source is asked to abort (when it is not the
// one down) and the migration fails with the reason, its driver undoing the destination's side;
// the VM stays at the source. After the switch-over the destination owns the VM: the migration
// goes on, and its record says what was lost with the host, if anything. A host back up is
// rid of what such a rollback could not undo while it was down: the waiting destination QEMU,
// and the proxy export of the disk (its restarted block-server restores it).
import { setTimeout as sleep } from "node:timers/promises";
import { VmState } from "../../gen/vmhop/v1/page.js";
import type { Logger } from "../common/log.js";
import type { Store } from "../common/store/index.js";
import type { BlockServer, BlockServers } from "./block-client.js";
import type { LivenessRecord } from "./host-liveness.js";
import type { PageServers } from "./page-client.js";
import { isNoAnswer, isNotFound, isRefusedNow } from "./peer-call.js";
import {
  type HostRecord,
  KEYS,
  type MigrationRecord,
  readJson,
  scanJson,
  transition,
  update,
  type VmRecord,
} from "./records.js";
import { isFinal, pastSwitch, TransitionError } from "./states.js";

/**
 * What a host that went down after the switch-over took with it, for the migration's record;
 * `why`: what its liveness checks found (which service stopped answering); `pageServerDown`:
 * its page-server was among them.
 */
export function lostWith(m: MigrationRecord, hostId: string, why = "", pageServerDown = true): string {
  const because = why ? ` (${why})` : "";
  if (m.destination_host_id === hostId)
    return `the destination ${hostId} went down after the switch-over: the VM ran only there and is down with it${because}`;
  // switched: post-copy under way, memory not complete; the pages still at the source die with
  // its page-server (not with its block-server alone: then only disk blocks are lost, below).
  if (m.state === "switched" && pageServerDown) {
    const left = m.memory?.bytes_remaining
      ? `${(m.memory.bytes_remaining / 2 ** 20).toFixed(1)} MiB`
      : "part";
    return `the source ${hostId} went down during post-copy with ${left} of the VM's memory still there: the VM at the destination stalls on those pages (post-copy cannot finish unless the source comes back)${because}`;
  }
  const d = m.disk;
  const errors = `the guest sees I/O errors reading them until it is back${because}`;
  // No progress recorded yet (the copy had not reported): not "nothing", the blocks are there.
  if (d && !d.promoted && d.blocks_total === 0)
    return `the source ${hostId} went down after the switch-over before the disk's copy reported progress, with the blocks not yet copied still there: ${errors}`;
  if (d && !d.promoted && d.blocks_local < d.blocks_total)
    return `the source ${hostId} went down after the switch-over with ${d.blocks_total - d.blocks_local} of ${d.blocks_total} disk blocks still there: ${errors}`;
  return `nothing: the source ${hostId} went down after the switch-over, with the VM's memory and disk all at the destination${because}`;
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
      // The liveness detail lists each failed check as "<service> <address>: why", "; "-joined.
      const pageServerDown = rec.detail.split("; ").some((p) => p.startsWith("page-server "));
      const lost = lostWith(m, host.host_id, rec.detail, pageServerDown);
      await update<MigrationRecord>(store, KEYS.migration(m.migration_id), (cur) =>
        cur && !cur.lost ? { ...cur, lost } : (cur as MigrationRecord),
      );
      log.warn("host down after the switch-over", { migration: m.migration_id, lost });
    }
  }
}

/** Past a client channel's longest reconnect back-off (peer-call.ts CHANNEL: 2 s). */
const RECONNECT_WAIT_MS = 2500;

/**
 * A call to a host just seen up: the health check reached it, but this client's channel may
 * still be waiting out its reconnect back-off and fail at once; then once more after it.
 */
async function askedTwice<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (!isNoAnswer(err)) throw err;
    await sleep(RECONNECT_WAIT_MS);
    return fn();
  }
}

/**
 * Removes a rolled-back migration's proxy export `name` left on a block-server, with its partial
 * copy. No status first: a restarted block-server may hold it persisted but unable to serve it
 * (its source disk changed since the open), so only the block-server can tell what it is. It
 * refuses to discard anything but a proxy's copy, and the fence refuses an export a later
 * migration acted on: both leave it alone (false), as does its absence.
 */
async function removeLeftProxy(block: BlockServer, name: string, fencingToken: number): Promise<boolean> {
  try {
    await block.remove(name, fencingToken, true);
    return true;
  } catch (err) {
    if (isNotFound(err) || isRefusedNow(err)) return false;
    throw err;
  }
}

/**
 * A host back up: the incoming QEMUs of migrations to it that ended before their switch-over
 * while it was down (the rollback could not stop them then; its restarted page-server adopted
 * them) are stopped, and their disks' proxy exports removed, under the migration's fencing
 * token, unless the VM lives there now (an export only while no other migration holds the VM: it
 * may be using that export).
 */
export async function onHostUp(
  store: Store,
  pages: PageServers,
  blocks: BlockServers,
  host: HostRecord,
  log: Logger,
): Promise<void> {
  const ended = (await scanJson<MigrationRecord>(store, KEYS.migrationPrefix)).filter(
    (m) =>
      (m.state === "failed" || m.state === "cancelled") &&
      m.destination_host_id === host.host_id &&
      m.entered_unix_ms?.switched === undefined &&
      m.entered_unix_ms?.completing === undefined,
  );
  const ps = pages.get(host.page_server_address);
  for (const m of ended) {
    const vm = (await readJson<VmRecord>(store, KEYS.vm(m.vm_id)))?.value;
    if (!vm || vm.host_id === host.host_id) continue;
    if (m.disk && host.block_server_address && !vm.migration_id) {
      const block = blocks.get(host.block_server_address);
      const name = m.disk.destination_export;
      await askedTwice(() => removeLeftProxy(block, name, m.fencing_token))
        .then((removed) => {
          if (removed)
            log.info("host back up: removed a rolled-back migration's proxy export", {
              migration: m.migration_id,
              export: name,
            });
        })
        .catch((err) =>
          log.warn("host back up: cannot remove a proxy export", { migration: m.migration_id, err }),
        );
    }
    const at = await askedTwice(() => ps.inspect(m.vm_id)).catch(() => undefined);
    if (!at || at.state === VmState.VM_STATE_STOPPED) continue;
    if (at.state === VmState.VM_STATE_RUNNING) {
      log.warn("host back up: a VM runs there that the registry places elsewhere; left alone", {
        host: host.host_id,
        vm: m.vm_id,
        migration: m.migration_id,
      });
      continue;
    }
    await ps
      .stop(m.vm_id, true, m.fencing_token)
      .then(() =>
        log.info("host back up: stopped a rolled-back migration's waiting QEMU", {
          migration: m.migration_id,
        }),
      )
      .catch((err) =>
        log.warn("host back up: cannot stop a waiting QEMU", { migration: m.migration_id, err }),
      );
  }
}
