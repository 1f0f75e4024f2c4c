// Carries one migration through the state table (states.ts) by driving the two hosts'
// page-servers, persisting each step first. A restarted control-plane calls drive() again
// for every migration that is not final and resumes from the recorded state.
import { status } from "@grpc/grpc-js";
import { MigrationPhase, VmSpec, VmState, type WatchMigrationResponse } from "../../gen/vmhop/v1/page.js";
import type { Logger } from "../common/log.js";
import type { Store } from "../common/store/index.js";
import { type PageServer, PageServerError, type PageServers } from "./page-client.js";
import {
  ConflictError,
  type HostRecord,
  KEYS,
  type MigrationRecord,
  readJson,
  recordProgress,
  transition,
  update,
  type VmRecord,
} from "./records.js";
import { isFinal, type MigrationEvent, pastSwitch, TransitionError } from "./states.js";

const FAILED_PHASES = [MigrationPhase.MIGRATION_PHASE_FAILED, MigrationPhase.MIGRATION_PHASE_CANCELLED];

export class Executor {
  private readonly running = new Map<string, Promise<void>>();
  private closed = false;

  constructor(
    private readonly store: Store,
    private readonly pages: PageServers,
    private readonly log: Logger,
  ) {}

  /** Runs (or resumes) a migration in the background; one driver per migration. */
  drive(migrationId: string): void {
    if (this.closed || this.running.has(migrationId)) return;
    const p = this.run(migrationId)
      .catch((err) => this.log.warn("migration driver failed", { migration: migrationId, err }))
      .finally(() => this.running.delete(migrationId));
    this.running.set(migrationId, p);
  }

  /** Resolves once no driver runs (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running.values()]);
  }

  /**
   * Stops persisting: drivers still running leave their migration in its current state for
   * the next control-plane to resume (a shutdown must not fail migrations).
   */
  close(): void {
    this.closed = true;
  }

  private async step(id: string, event: MigrationEvent, patch: Partial<MigrationRecord> = {}) {
    if (this.closed) throw new ShutdownError();
    const rec = await transition(this.store, id, event, patch);
    this.log.info("migration", { migration: id, state: rec.state });
    return rec;
  }

  private async run(id: string): Promise<void> {
    const m = (await readJson<MigrationRecord>(this.store, KEYS.migration(id)))?.value;
    if (!m || isFinal(m.state)) return;
    const ctx = await this.context(m).catch((err) => err as Error);
    if (ctx instanceof Error) return this.fail(m, ctx.message);
    const { src, dst, spec } = ctx;
    try {
      let state = m.state;
      if (state === "pending") {
        await this.step(id, "prepare");
        const channel = await dst.prepareIncoming(spec, id, m.mode);
        await this.step(id, "start");
        await src.startMigration(m.vm_id, id, channel, m.mode);
        state = "migrating";
      } else if (state === "preparing") {
        // Whether PrepareIncoming was answered is unknown and its channel address lost.
        return await this.fail(
          m,
          "the control-plane restarted while preparing the destination; nothing was sent and the VM stays at the source",
          dst,
        );
      }
      if (state === "migrating" || state === "switched") await this.follow(m, src, dst);
      await this.finish(m, dst);
    } catch (err) {
      if (err instanceof ShutdownError) return;
      if (err instanceof TransitionError) {
        // Someone else moved the record on (a cancel): clean up after it.
        const cur = (await readJson<MigrationRecord>(this.store, KEYS.migration(id)))?.value;
        if (cur && (cur.state === "failed" || cur.state === "cancelled")) await this.cleanUp(cur, dst);
        return;
      }
      await this.fail(m, (err as Error).message, dst);
    }
  }

  private async context(m: MigrationRecord) {
    const host = async (hostId: string) => {
      const h = await readJson<HostRecord>(this.store, KEYS.host(hostId));
      if (!h) throw new Error(`host ${hostId} is no longer registered`);
      return this.pages.get(h.value.page_server_address);
    };
    const vm = await readJson<VmRecord>(this.store, KEYS.vm(m.vm_id));
    if (!vm) throw new Error(`VM ${m.vm_id} is no longer registered`);
    return {
      src: await host(m.source_host_id),
      dst: await host(m.destination_host_id),
      spec: VmSpec.fromJSON(vm.value.spec),
    };
  }

  /** Follows the source page-server's view until the migration ends; switched on post-copy. */
  private async follow(m: MigrationRecord, src: PageServer, dst: PageServer): Promise<void> {
    let chain: Promise<unknown> = Promise.resolve();
    let switched = m.state === "switched";
    let lastBytes = -1;
    const onUpdate = (u: WatchMigrationResponse) => {
      const switchNow = !switched && u.phase === MigrationPhase.MIGRATION_PHASE_POSTCOPY;
      if (switchNow) switched = true;
      const progress = { bytes_sent: u.bytesSent, downtime_ms: u.downtimeMs };
      const changed = u.bytesSent !== lastBytes;
      chain = chain.then(async () => {
        if (switchNow) await this.step(m.migration_id, "switch", progress);
        // Progress only when the byte count changed; a lost progress write is not fatal.
        else if (changed && !this.closed)
          await recordProgress(this.store, m.migration_id, progress).catch(() => {});
      });
      chain.catch(() => {}); // observed when awaited below; no unhandled rejection meanwhile
      lastBytes = u.bytesSent;
    };
    let last: WatchMigrationResponse;
    try {
      last = await src.watchMigration(m.migration_id, onUpdate);
    } catch (err) {
      await chain;
      // The source no longer knows it (it restarted): the destination tells where the VM runs.
      if (err instanceof PageServerError && err.code === status.NOT_FOUND) {
        const at = await dst.inspect(m.vm_id).catch(() => undefined);
        if (at?.state === VmState.VM_STATE_RUNNING) {
          await this.step(m.migration_id, "complete");
          return;
        }
      }
      throw err;
    }
    await chain;
    if (FAILED_PHASES.includes(last.phase))
      throw new Error(
        `page-server migration ${MigrationPhase[last.phase]}: ${last.error || "no reason given"}`,
      );
    if (last.phase !== MigrationPhase.MIGRATION_PHASE_COMPLETED)
      throw new Error(`page-server migration ended in ${MigrationPhase[last.phase]}`);
    await this.step(m.migration_id, "complete", { bytes_sent: last.bytesSent, downtime_ms: last.downtimeMs });
  }

  /** completing → done: the VM registry names the destination, under the migration's fence. */
  private async finish(m: MigrationRecord, dst: PageServer): Promise<void> {
    const at = await dst.inspect(m.vm_id);
    if (at.state !== VmState.VM_STATE_RUNNING)
      throw new Error(`the destination reports the VM ${VmState[at.state]} after the migration completed`);
    await update<VmRecord>(this.store, KEYS.vm(m.vm_id), (vm) => {
      if (!vm || vm.migration_id !== m.migration_id || vm.fencing_token !== m.fencing_token)
        throw new ConflictError(
          `VM ${m.vm_id} is no longer held by migration ${m.migration_id} (fencing token ${m.fencing_token})`,
        );
      return { ...vm, host_id: m.destination_host_id, migration_id: "" };
    });
    await this.step(m.migration_id, "finish");
  }

  /**
   * → failed. The destination is cleaned up and the VM released first, so a client that sees
   * "failed" can migrate the VM again at once.
   */
  private async fail(m: MigrationRecord, error: string, dst?: PageServer): Promise<void> {
    if (this.closed) return;
    const before = (await readJson<MigrationRecord>(this.store, KEYS.migration(m.migration_id)))?.value ?? m;
    await this.cleanUp(before, dst, pastSwitch(before.state));
    try {
      await this.step(m.migration_id, "fail", { error });
    } catch (err) {
      if (!(err instanceof TransitionError)) throw err;
    }
    this.log.warn("migration failed", { migration: m.migration_id, error });
  }

  /**
   * After a failure or cancel before the switch: the destination's waiting QEMU is stopped
   * (the VM runs only at the source) and the VM is released for another migration.
   */
  private async cleanUp(m: MigrationRecord, dst?: PageServer, switched = false): Promise<void> {
    if (dst && !switched) {
      const at = await dst.inspect(m.vm_id).catch(() => undefined);
      if (at && at.state !== VmState.VM_STATE_RUNNING && at.state !== VmState.VM_STATE_STOPPED)
        await dst.stop(m.vm_id, true).catch((err) => this.log.warn("destination clean-up", { err }));
    }
    // After a broken switch the VM stays held: which host runs it needs a person to decide.
    if (switched) return;
    await update<VmRecord>(this.store, KEYS.vm(m.vm_id), (vm) => {
      if (!vm || vm.migration_id !== m.migration_id) throw new ReleasedError();
      return { ...vm, migration_id: "" };
    }).catch((err) => {
      if (!(err instanceof ReleasedError)) throw err;
    });
  }
}

class ShutdownError extends Error {}
class ReleasedError extends Error {}
