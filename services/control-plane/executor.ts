// Drives one migration through the state table (states.ts), each transition persisted before
// it acts, by calling the two hosts' page-servers and block-servers; resumes after a restart.
// Each migration is one trace (migration-trace.ts): a span per phase, the peer calls in it.

import { setTimeout as sleep } from "node:timers/promises";
import { ExportMode } from "../../gen/vmhop/v1/block.js";
import { MigrationPhase, VmSpec, VmState, type WatchMigrationResponse } from "../../gen/vmhop/v1/page.js";
import type { Logger } from "../common/log.js";
import type { Store } from "../common/store/index.js";
import { StoreError } from "../common/store/index.js";
import type { AddressMover } from "./address.js";
import { type BlockServer, BlockServers, isStaleFence } from "./block-client.js";
import { type Bounded, destinationRunning, watchToEnd } from "./completing.js";
import { faultLatencyRecord } from "./fault-latency.js";
import { MigrationTrace } from "./migration-trace.js";
import type { PageServer, PageServers } from "./page-client.js";
import { isAlreadyExists, isNoAnswer, isNotFound } from "./peer-call.js";
import {
  ConflictError,
  type DiskRecord,
  type HostRecord,
  KEYS,
  type MigrationRecord,
  type ProgressPatch,
  readJson,
  recordProgress,
  transition,
  update,
  type VmRecord,
} from "./records.js";
import { isFinal, type MigrationEvent, pastSwitch, TransitionError } from "./states.js";
import { diskUrlAt, parseNbdUrl } from "./storage-plan.js";
import { adopt, DeposedError, drivenBy } from "./takeover.js";

const FAILED_PHASES = [MigrationPhase.MIGRATION_PHASE_FAILED, MigrationPhase.MIGRATION_PHASE_CANCELLED];

export interface ExecutorOptions {
  /**
   * The background disk copy's rate cap while memory still moves (bytes/s; 0 = none), so the
   * post-copy page stream keeps priority on the link; lifted once memory is complete.
   */
  diskCopyRateWhileMemory?: number;
  /** The cap once memory is complete (bytes/s; default 0 = none). */
  diskCopyRateAfterMemory?: number;
  /** How often a relocating disk's progress is read. */
  diskPollMs?: number;
  /**
   * completing: how long a destination page-server or store that does not answer is asked
   * again before the migration fails (default 120 s); the VM runs there meanwhile. Also the
   * bound on a destination still reporting the VM INCOMING once memory is complete, and on a
   * source watch without news that ends or breaks before a final phase (completing.ts).
   */
  completingRetryMs?: number;
  /**
   * Replicas: the leader generation this executor drives under. Each migration is taken over
   * first (takeover.ts) and every transition is refused once a newer leader has it.
   */
  generation?: number;
  /** Replicas: false once the lease is seen lost; the drivers stop at their next step. */
  stillLeading?: () => boolean;
}

/** The two ends of a migration. */
interface Ends {
  src: PageServer;
  dst: PageServer;
  spec: VmSpec;
  /** LAZY storage: the block-servers (absent: SHARED). */
  srcBlock?: BlockServer;
  dstBlock?: BlockServer;
  dstHost: HostRecord;
}

export class Executor {
  private readonly running = new Map<string, Promise<void>>();
  private readonly traces = new Map<string, MigrationTrace>();
  private closed = false;

  /** The block-servers' clients (also the liveness checks' clean-up of a host back up). */
  readonly blocks = new BlockServers();

  constructor(
    private readonly store: Store,
    private readonly pages: PageServers,
    private readonly log: Logger,
    private readonly address: AddressMover,
    private readonly opts: ExecutorOptions = {},
  ) {}

  /**
   * Runs (or resumes) a migration in the background; one driver per migration. `trace`: the
   * one MigrateVm started (absent: a resumed migration continues its recorded trace).
   */
  drive(migrationId: string, trace?: MigrationTrace): void {
    if (this.closed || this.running.has(migrationId)) {
      trace?.end("pending");
      return;
    }
    const p = this.traced(migrationId, trace)
      .catch((err) => this.log.warn("migration driver failed", { migration: migrationId, err }))
      .finally(() => this.running.delete(migrationId));
    this.running.set(migrationId, p);
  }

  /** run() inside the migration's trace, whose span ends with the state the driver left. */
  private async traced(id: string, started?: MigrationTrace): Promise<void> {
    const m = (await readJson<MigrationRecord>(this.store, KEYS.migration(id)))?.value;
    if (!m || isFinal(m.state)) return started?.end(m?.state ?? "failed", m?.error);
    const t = started ?? MigrationTrace.resume(m);
    this.traces.set(id, t);
    this.log.info("migration trace", { migration: id, trace_id: t.traceId, resumed: !started });
    t.enter(m.state);
    try {
      await t.within(() => this.run(id));
    } catch (err) {
      t.error(err);
      throw err;
    } finally {
      this.traces.delete(id);
      const now = (await readJson<MigrationRecord>(this.store, KEYS.migration(id)).catch(() => null))?.value;
      t.end(now?.state ?? m.state, now?.error);
    }
  }

  /** Runs `fn` in the migration's current phase span: the peer calls it makes are its children. */
  private inPhase<T>(id: string, fn: () => T): T {
    const t = this.traces.get(id);
    return t ? t.within(fn) : fn();
  }

  /** A step with its own span under the migration's (the address moving, a clean-up). */
  private inStep<T>(id: string, name: string, fn: () => Promise<T>): Promise<T> {
    const t = this.traces.get(id);
    return t ? t.step(name, fn) : fn();
  }

  /** Closed, or (replicas) the lease seen lost: nothing more is persisted or undone. */
  private get stopped(): boolean {
    return this.closed || this.opts.stillLeading?.() === false;
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
    this.blocks.close();
  }

  private async step(id: string, event: MigrationEvent, patch: ProgressPatch & { error?: string } = {}) {
    if (this.stopped) throw new ShutdownError();
    const gen = this.opts.generation;
    const rec = await transition(this.store, id, event, patch, gen === undefined ? undefined : drivenBy(gen));
    this.log.info("migration", { migration: id, state: rec.state });
    this.traces.get(id)?.enter(rec.state);
    return rec;
  }

  private async run(id: string): Promise<void> {
    const gen = this.opts.generation;
    let m: MigrationRecord | undefined;
    try {
      m =
        gen === undefined
          ? (await readJson<MigrationRecord>(this.store, KEYS.migration(id)))?.value
          : await adopt(this.store, id, gen);
    } catch (err) {
      if (err instanceof DeposedError) return this.log.warn("deposed: not driving", { migration: id });
      throw err;
    }
    if (!m || isFinal(m.state) || this.closed) return;
    const ctx = await this.context(m).catch((err) => err as Error);
    if (ctx instanceof Error) return this.fail(m, ctx.message);
    try {
      let state = m.state;
      if (state === "pending" || state === "preparing") {
        if (state === "pending") {
          await this.checkClaim(m);
          await this.step(id, "prepare");
        }
        // Resumed in preparing (a restart): every step of it is idempotent, so it runs again;
        // nothing was sent yet, the source has not been asked to start.
        // The address is prepared as soon as the waiting QEMU holds the VM's tap at the
        // destination, beside the disk's export still opening; idempotent, so the second call
        // only acts when the first did not run (the incoming QEMU prepared once more).
        const network = () => this.inStep(id, "network prepare", () => this.address.prepare(id));
        const { channel, opened } = await this.inPhase(id, () => this.prepare(m, ctx, network));
        // The disk check beside the source's channel still being accepted (both only read).
        await Promise.all([
          network(),
          this.inStep(id, "disk check", () => this.checkDestinationDisk(m, ctx)),
          opened,
        ]);
        await this.step(id, "start");
        await this.inPhase(id, () => ctx.src.startMigration(m.vm_id, id, channel, m.mode, m.fencing_token));
        state = "migrating";
      }
      if (state === "migrating" || state === "switched") await this.inPhase(id, () => this.follow(m, ctx));
      if (state !== "relocating") await this.retrying(m, () => this.inPhase(id, () => this.settle(m, ctx)));
      // Before the disk's relocation, which may take long: the address needs nothing of it.
      await this.inStep(id, "network settle", () => this.address.settle(id));
      await this.inPhase(id, () => this.relocate(m, ctx));
    } catch (err) {
      if (err instanceof ShutdownError || this.stopped) return;
      if (err instanceof DeposedError || (await this.deposed(m))) {
        this.log.warn("deposed: a newer leader drives the migration", { migration: id });
        return;
      }
      if (err instanceof TransitionError) {
        // Someone else moved the record on (a cancel): clean up after it.
        const cur = (await readJson<MigrationRecord>(this.store, KEYS.migration(id)))?.value;
        if (cur && (cur.state === "failed" || cur.state === "cancelled"))
          await this.inStep(id, "clean-up", () => this.cleanUp(cur, ctx));
        return;
      }
      this.traces.get(id)?.error(err);
      await this.fail(m, (err as Error).message, ctx);
    }
  }

  private async context(m: MigrationRecord): Promise<Ends> {
    const host = async (hostId: string) => {
      const h = await readJson<HostRecord>(this.store, KEYS.host(hostId));
      if (!h) throw new Error(`host ${hostId} is no longer registered`);
      return h.value;
    };
    const vm = await readJson<VmRecord>(this.store, KEYS.vm(m.vm_id));
    if (!vm) throw new Error(`VM ${m.vm_id} is no longer registered`);
    const [srcHost, dstHost] = [await host(m.source_host_id), await host(m.destination_host_id)];
    const lazy = m.disk !== undefined;
    return {
      src: this.pages.get(srcHost.page_server_address),
      dst: this.pages.get(dstHost.page_server_address),
      spec: VmSpec.fromJSON(vm.value.spec),
      srcBlock: lazy ? this.blocks.get(srcHost.block_server_address) : undefined,
      dstBlock: lazy ? this.blocks.get(dstHost.block_server_address) : undefined,
      dstHost,
    };
  }

  /**
   * preparing: the destination's disk (LAZY: a proxy export of the source's, no copy yet) and
   * the destination's QEMU waiting for the memory, its disk on that export. Both at once: the
   * block-server holds the QEMU's NBD handshake until the export it names is open (its
   * upstream is across the WAN). `afterIncoming` (the address's preparation) runs once the
   * waiting QEMU is there, beside the export still opening (a warm QEMU attaches its disk
   * later). Returns the migration channel's address there, and the source's opening of that
   * channel ahead (never rejects: a start opens its own when it failed).
   */
  private async prepare(
    m: MigrationRecord,
    ctx: Ends,
    afterIncoming: () => Promise<void>,
  ): Promise<{ channel: string; opened: Promise<void> }> {
    const { disk } = m;
    const dstBlock = ctx.dstBlock;
    const proxy =
      disk && dstBlock && ctx.srcBlock
        ? dstBlock
            .createProxy(disk.destination_export, disk.source_url, ctx.srcBlock.address, m.fencing_token)
            .catch(async (err) => {
              // Prepared before a restart: this migration's proxy of the source disk is there already.
              if (!isAlreadyExists(err)) throw err;
              if (!(await dstBlock.isProxyOf(disk.destination_export, disk.source_url))) throw err;
            })
        : Promise.resolve();
    const spec = { ...ctx.spec, diskNbdUrl: this.diskUrl(m, ctx) };
    const incoming = () => ctx.dst.prepareIncoming(spec, m.migration_id, m.mode, m.fencing_token);
    const first = incoming();
    const addressed = first.then(afterIncoming);
    // The source's channel, opened meanwhile: accepted once the disk is attached there, so the
    // start that follows sends at once. Its failure only costs that: the start opens its own.
    const opened = first
      .then((channel) =>
        ctx.src.openMigrationChannel(m.vm_id, m.migration_id, channel, m.mode, m.fencing_token),
      )
      .catch((err) => this.log.info("the channel was not opened ahead", { migration: m.migration_id, err }));
    const [made, waiting, network] = await Promise.allSettled([proxy, first, addressed]);
    // The disk's error says more than the QEMU that could not open it (the clean-up stops that QEMU).
    if (made.status === "rejected") throw made.reason;
    if (waiting.status === "fulfilled") {
      if (network.status === "rejected") throw network.reason;
      return { channel: waiting.value, opened };
    }
    if (!disk) throw waiting.reason;
    // The QEMU may have asked for its disk before the create reached the block-server (then
    // it was refused as unknown); a failed set-up leaves nothing, so once more, sequentially.
    this.log.info("preparing: the incoming QEMU failed beside the disk's export; once more", {
      migration: m.migration_id,
      err: waiting.reason,
    });
    const channel = await incoming().catch(async (err: unknown) => {
      // Twice no QEMU on its disk: if the disk's block-server is the cause, that is the reason.
      await this.checkDestinationDisk(m, ctx);
      throw err;
    });
    return { channel, opened: Promise.resolve() };
  }

  /**
   * Right before the source is asked to start: the destination's block-server still serves the
   * disk's export. Post-copy switches over as soon as the stream starts, and from then on the VM
   * runs only on that export; a block-server that died while the destination was prepared
   * (its waiting QEMU cannot tell) rolls the migration back here instead.
   */
  private async checkDestinationDisk(m: MigrationRecord, ctx: Ends): Promise<void> {
    if (!m.disk || !ctx.dstBlock) return;
    const name = m.disk.destination_export;
    const served = await ctx.dstBlock.isProxyOf(name, m.disk.source_url).catch((err: Error) => {
      throw new Error(
        `the destination's block-server ${ctx.dstBlock!.address} does not serve the disk's export ${name} before the switch-over (rolled back): ${err.message}`,
      );
    });
    if (!served)
      throw new Error(
        `the destination's block-server ${ctx.dstBlock.address} no longer serves this migration's proxy export ${name} before the switch-over`,
      );
  }

  private diskUrl(m: MigrationRecord, ctx: Ends): string {
    return diskUrlAt(m.disk, ctx.dstHost, ctx.spec.diskNbdUrl);
  }

  /** The VM runs at the destination: its disk's background copy starts (capped while memory moves). */
  private async startDiskCopy(m: MigrationRecord, ctx: Ends): Promise<void> {
    if (!m.disk || !ctx.dstBlock) return;
    await ctx.dstBlock.startCopy(
      m.disk.destination_export,
      this.opts.diskCopyRateWhileMemory ?? 0,
      m.fencing_token,
    );
  }

  /**
   * Follows the source page-server's view until the migration ends; switched on post-copy.
   * `again`: the source was just asked to start once more (see below).
   */
  private async follow(m: MigrationRecord, ctx: Ends, again = false): Promise<void> {
    const { src, dst } = ctx;
    let chain: Promise<unknown> = Promise.resolve();
    let switched = m.state === "switched";
    let lastBytes = -1;
    let lastRemaining = -1;
    const onUpdate = (u: WatchMigrationResponse) => {
      const switchNow = !switched && u.phase === MigrationPhase.MIGRATION_PHASE_POSTCOPY;
      if (switchNow) switched = true;
      const progress = memoryProgress(u);
      const changed = u.bytesSent !== lastBytes || u.bytesRemaining !== lastRemaining;
      chain = chain.then(async () => {
        if (switchNow) {
          // The address follows at once: its switch-over decides how long the VM is unreachable.
          await Promise.all([
            this.switchAddress(m),
            this.step(m.migration_id, "switch", progress).then(() =>
              this.inPhase(m.migration_id, () => this.startDiskCopy(m, ctx)),
            ),
          ]);
        }
        // Progress only when the byte count changed; a lost progress write is not fatal.
        else if (changed && !this.closed)
          await recordProgress(this.store, m.migration_id, progress).catch(() => {});
      });
      chain.catch(() => {}); // observed when awaited below; no unhandled rejection meanwhile
      lastBytes = u.bytesSent;
      lastRemaining = u.bytesRemaining;
    };
    let last: WatchMigrationResponse;
    try {
      last = await watchToEnd(src, m.migration_id, onUpdate, this.bounded(m, "following the source"));
    } catch (err) {
      await chain;
      // The source no longer knows it (it restarted): the destination tells where the VM runs.
      if (isNotFound(err)) {
        const at = await dst.inspect(m.vm_id).catch(() => undefined);
        if (at?.state === VmState.VM_STATE_RUNNING) {
          await this.step(m.migration_id, "complete");
          await Promise.all([
            this.switchAddress(m),
            this.inPhase(m.migration_id, () => this.startDiskCopy(m, ctx)),
          ]);
          return;
        }
        // A control-plane killed between recording `migrating` and the source's StartMigration
        // (resumed now): the source never started and the destination still waits. Asked
        // again, once; PrepareIncoming answers the same channel, and a start still under way
        // from the dead process is refused as known (then followed).
        if (!switched && !again && at?.state === VmState.VM_STATE_INCOMING) {
          this.log.info("the source never started the migration: asking it again", {
            migration: m.migration_id,
          });
          // The address was prepared before `migrating` was recorded.
          const { channel, opened } = await this.prepare(m, ctx, async () => {});
          await opened;
          await src.startMigration(m.vm_id, m.migration_id, channel, m.mode, m.fencing_token).catch((e) => {
            if (!isAlreadyExists(e)) throw e;
          });
          return this.follow(m, ctx, true);
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
    // What the switch-over cost: the destination counted what arrived before its VM resumed.
    const atDst = await dst.peekMigration(m.migration_id).catch(() => undefined);
    const progress = memoryProgress(last);
    progress.memory.bytes_before_resume = atDst?.bytesBeforeResume;
    progress.memory.resumed_unix_ms = atDst?.resumedUnixMs;
    progress.memory.fault_latency = faultLatencyRecord(atDst?.faultLatency);
    progress.memory.destination_warm_qemu = atDst?.warmQemu;
    await this.step(m.migration_id, "complete", progress);
    // Pre-copy has no switch before completion: the VM runs at the destination from now.
    if (!switched)
      await Promise.all([
        this.switchAddress(m),
        this.inPhase(m.migration_id, () => this.startDiskCopy(m, ctx)),
      ]);
  }

  /** The VM runs at the destination: its address follows (a span of its own). */
  private switchAddress(m: MigrationRecord): Promise<void> {
    return this.inStep(m.migration_id, "network switch-over", () => this.address.switchOver(m.migration_id));
  }

  /** MigrateVm writes a migration before it claims the VM: one whose claim never came holds nothing to move. */
  private async checkClaim(m: MigrationRecord): Promise<void> {
    const vm = (await readJson<VmRecord>(this.store, KEYS.vm(m.vm_id)))?.value;
    if (vm?.migration_id !== m.migration_id || vm.fencing_token !== m.fencing_token)
      throw new Error(
        `MigrateVm stopped before it claimed VM ${m.vm_id} (a control-plane restart): nothing was done; migrate it again`,
      );
  }

  /**
   * Runs `fn` again while it fails for want of an answer (a peer UNAVAILABLE or past its
   * deadline, the store unreachable), up to completingRetryMs: past the switch-over the VM runs
   * at the destination, and a passing outage must not leave its migration failed and the VM held.
   */
  private async retrying(m: MigrationRecord, fn: () => Promise<void>): Promise<void> {
    const until = Date.now() + (this.opts.completingRetryMs ?? 120_000);
    for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
      try {
        return await fn();
      } catch (err) {
        if (!isTransient(err) || Date.now() + delay > until || this.closed) throw err;
        this.log.warn("completing: no answer, asking again", { migration: m.migration_id, err });
        await sleep(delay);
      }
    }
  }

  /** The bound of a wait on a peer (completing.ts): completingRetryMs, logged each time it asks again. */
  private bounded(m: MigrationRecord, what: string): Bounded {
    return {
      withinMs: this.opts.completingRetryMs ?? 120_000,
      stopped: () => this.stopped,
      again: (why) => this.log.warn(`${what}: asking again`, { migration: m.migration_id, why }),
    };
  }

  /**
   * completing → relocating: the VM registry names the destination (and the disk URL it uses
   * there), under the migration's fence, and lets the VM go: it may move on while its disk is
   * still being pulled here.
   */
  private async settle(m: MigrationRecord, ctx: Ends): Promise<void> {
    await destinationRunning(ctx.dst, m.vm_id, this.bounded(m, "completing"));
    const diskNbdUrl = this.diskUrl(m, ctx);
    await update<VmRecord>(this.store, KEYS.vm(m.vm_id), (vm) => {
      // Moved here and released already, under this migration's (or an older) token: by this
      // step before a crash, or by the driver a newer leader took it over from.
      if (
        vm &&
        !vm.migration_id &&
        vm.host_id === m.destination_host_id &&
        vm.fencing_token <= m.fencing_token
      )
        return vm;
      if (!vm || vm.migration_id !== m.migration_id || vm.fencing_token !== m.fencing_token)
        throw new ConflictError(
          `VM ${m.vm_id} is no longer held by migration ${m.migration_id} (fencing token ${m.fencing_token})`,
        );
      const spec = VmSpec.toJSON({ ...VmSpec.fromJSON(vm.spec), diskNbdUrl }) as VmRecord["spec"];
      return { ...vm, host_id: m.destination_host_id, spec, migration_id: "" };
    });
    await this.step(m.migration_id, "relocate");
  }

  /**
   * relocating → done: LAZY storage pulls every block (the copy's cap lifted now that memory is
   * complete), promotes the destination's export to a target and releases the source's.
   *
   * The VM may move on before its disk is all here (A→B, then B→C while B still copies): C's
   * proxy reads through B's export, and that next migration removes B's export only once C
   * holds every block. B's export gone and the VM elsewhere therefore means the disk needs
   * nothing here or at the source any more: the source export is released and this ends. So
   * does a call on the export refused for a stale fencing token: a later migration of the VM
   * (a higher token) has acted on it since, so it is that one's now.
   */
  private async relocate(m: MigrationRecord, ctx: Ends): Promise<void> {
    const { disk } = m;
    if (disk && ctx.dstBlock && ctx.srcBlock) {
      const name = disk.destination_export;
      const token = m.fencing_token;
      // The copy runs at its after-memory rate; started here too, since a control-plane that
      // stopped between the switch-over and starting it left none (a promoted export, after a
      // restart between promote and finish, needs nothing).
      const first = await ctx.dstBlock.status(name).catch((err) => {
        if (isNotFound(err)) return undefined;
        throw err;
      });
      try {
        if (first?.export?.mode === ExportMode.EXPORT_MODE_PROXY) {
          await ctx.dstBlock.setRate(name, this.opts.diskCopyRateAfterMemory ?? 0, token);
          await ctx.dstBlock.startCopy(name, 0, token);
        }
        let last = "";
        for (;;) {
          if (this.closed) throw new ShutdownError();
          const st = await ctx.dstBlock.status(name);
          const now: DiskRecord = {
            ...disk,
            blocks_total: st.blocksTotal,
            blocks_local: st.blocksLocal,
            bytes_fetched_on_demand: st.bytesFetchedOnDemand,
            bytes_fetched_background: st.bytesFetchedBackground,
          };
          const key = JSON.stringify(now);
          if (key !== last) await recordProgress(this.store, m.migration_id, { disk: now }).catch(() => {});
          last = key;
          if (st.backgroundCopy?.lastError && !st.backgroundCopy.running)
            throw new Error(`the disk's background copy stopped: ${st.backgroundCopy.lastError}`);
          if (st.blocksTotal > 0 && st.blocksLocal >= st.blocksTotal) {
            await ctx.dstBlock.promote(name, token);
            await this.releaseSource(disk, ctx.srcBlock, token);
            await this.step(m.migration_id, "finish", { disk: { ...now, promoted: true } });
            return;
          }
          await sleep(this.opts.diskPollMs ?? 250);
        }
      } catch (err) {
        if (!(isStaleFence(err) || (isNotFound(err) && (await this.movedOn(m))))) throw err;
        await this.releaseSource(disk, ctx.srcBlock, token);
        this.log.info("the VM moved on before its disk was all here; the next migration took it", {
          migration: m.migration_id,
          why: (err as Error).message,
        });
        await this.step(m.migration_id, "finish");
        return;
      }
    }
    await this.step(m.migration_id, "finish");
  }

  /**
   * The source QEMU is gone (the page-server ended it when memory completed) and the disk is
   * whole elsewhere: nothing reads the source export any more. Gone already, or refused for a
   * stale token (a later migration of the VM made an export of that name there since): not ours.
   * A source that was itself a migration's destination holds the disk as a proxy's local copy:
   * that is deleted too, or a later migration back to this host would find it and refuse it as
   * another disk's. A target export's image (the disk the VM was created with) stays.
   */
  private async releaseSource(disk: DiskRecord, src: BlockServer, fencingToken: number): Promise<void> {
    const name = parseNbdUrl(disk.source_url)?.name ?? disk.destination_export;
    // A proxy there (the VM had come to that host lazily) goes with its local copy; a VM's own
    // image stays. Asked first, so that no call is made only to be refused.
    const release = async () => {
      const st = await src.status(name);
      await src.remove(name, fencingToken, st.export?.mode === ExportMode.EXPORT_MODE_PROXY);
    };
    await release().catch((err) => {
      if (!isNotFound(err) && !isStaleFence(err)) throw err;
    });
  }

  /** Replicas: a newer leader took the migration over (its record no longer names this generation). */
  private async deposed(m: MigrationRecord): Promise<boolean> {
    const gen = this.opts.generation;
    if (gen === undefined) return false;
    const cur = await readJson<MigrationRecord>(this.store, KEYS.migration(m.migration_id)).catch(() => null);
    return cur !== null && cur.value.driver_generation !== gen;
  }

  /** The VM record names another host than this migration's destination: it moved on. */
  private async movedOn(m: MigrationRecord): Promise<boolean> {
    const vm = await readJson<VmRecord>(this.store, KEYS.vm(m.vm_id));
    return vm !== null && vm.value.host_id !== m.destination_host_id;
  }

  /**
   * → failed. The destination is cleaned up and the VM released first, so a client that sees
   * "failed" can migrate the VM again at once.
   */
  private async fail(m: MigrationRecord, error: string, ctx?: Ends): Promise<void> {
    if (this.stopped) return;
    const before = (await readJson<MigrationRecord>(this.store, KEYS.migration(m.migration_id)))?.value ?? m;
    // A newer leader drives it: its clean-up is not this one's to do.
    if (this.opts.generation !== undefined && before.driver_generation !== this.opts.generation) return;
    await this.inStep(m.migration_id, "clean-up", () =>
      this.cleanUp(before, ctx, pastSwitch(before.state), error),
    );
    try {
      await this.step(m.migration_id, "fail", { error });
    } catch (err) {
      if (!(err instanceof TransitionError)) throw err;
    }
    this.log.warn("migration failed", { migration: m.migration_id, error });
  }

  /**
   * After a failure or cancel before the switch: the destination's waiting QEMU is stopped
   * (the VM runs only at the source, on its untouched disk and address), the destination's proxy
   * export removed and its network preparation undone; the VM is released for another migration.
   */
  private async cleanUp(m: MigrationRecord, ctx?: Ends, switched = false, why = m.error): Promise<void> {
    if (!switched)
      await this.address
        .rollBack(m.migration_id, why || "the migration ended before its switch-over")
        .catch((err) => this.log.warn("destination network clean-up", { err }));
    if (ctx && !switched) {
      // A channel the source opened ahead (or a stream not yet switched) goes first.
      await ctx.src
        .abortMigration(m.migration_id, m.fencing_token)
        .catch((err) => this.log.debug("source abort at clean-up", { err }));
      const at = await ctx.dst.inspect(m.vm_id).catch(() => undefined);
      if (at && at.state !== VmState.VM_STATE_RUNNING && at.state !== VmState.VM_STATE_STOPPED)
        await ctx.dst
          .stop(m.vm_id, true, m.fencing_token)
          .catch((err) => this.log.warn("destination clean-up", { err }));
      if (m.disk && ctx.dstBlock)
        await ctx.dstBlock
          .removeProxyOf(m.disk.destination_export, m.disk.source_url, m.fencing_token)
          .catch((err) => this.log.warn("destination disk clean-up", { err }));
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

/** No answer (yet): worth asking again. A peer's refusal or a fence conflict is an answer. */
function isTransient(err: unknown): boolean {
  return err instanceof StoreError || isNoAnswer(err);
}

class ShutdownError extends Error {}
class ReleasedError extends Error {}

/** A page-server's view of the memory stream as the record keeps it. */
function memoryProgress(
  u: WatchMigrationResponse,
): Required<Pick<ProgressPatch, "bytes_sent" | "downtime_ms" | "memory">> {
  return {
    bytes_sent: u.bytesSent,
    downtime_ms: u.downtimeMs,
    memory: {
      bytes_remaining: u.bytesRemaining,
      pages_requested_on_fault: u.pagesRequestedOnFault,
      pages_sent_ahead: u.pagesSentAhead,
      recoveries: u.recoveries,
    },
  };
}
