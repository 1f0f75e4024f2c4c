// Source side of a migration: picks the mode and the channel's path, drives QEMU's outgoing
// stream to its end (re-opening the channel when post-copy breaks), and afterwards ends the
// source QEMU; also picks such a migration up again after a page-server restart.
import { renameSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../../common/log.js";
import { unsafeQemu } from "../../common/precopy-hazard.js";
import type { Compression } from "../channel/compress-policy.js";
import { ChannelOut, type OutboundOptions } from "../channel/outbound.js";
import {
  type ChannelPathChoice,
  checkPathRequest,
  choosePath,
  PathRequestError,
} from "../channel/path-policy.js";
import { newCounters } from "../channel/relay.js";
import type { PageRequest } from "../channel/return-path.js";
import { HostError } from "../errors.js";
import { qemuInfo } from "../vm/qemu-info.js";
import type { Vm } from "../vm/vm.js";
import { chooseMode, measureDirtyRate } from "./auto.js";
import {
  followMigration,
  handSocketToQemu,
  type MigrationError,
  type MigrationMode,
  type MigrationOptions,
  type MigrationResult,
  migrate,
} from "./driver.js";
import { OpenedAhead } from "./opened-ahead.js";
import type { MigrationRecord, MigrationTable } from "./record.js";
import { ringPages } from "./ring-pages.js";
import { type SavedMigration, saveMigration } from "./saved.js";

export interface StartMigrationOptions {
  vmId: string;
  migrationId: string;
  channelAddress: string;
  mode: MigrationMode | "auto";
  hybridRounds?: number;
  hybridSeconds?: number;
  maxBandwidth?: number;
  /** Default: the host's `channelPath` ("auto": from the measured round trip, path-policy.ts). */
  channelPath?: ChannelPathChoice;
  /** Deflate the relayed channel; default: the host's `compression`. "on" needs the relay. */
  compression?: Compression;
  /**
   * QEMU's postcopy-preempt lane; default: the host's `preempt`, else on when relayed. The
   * channel's hello tells the destination, which sets it before its QEMU listens.
   */
  preempt?: boolean;
  /** The migration's fencing token (0 or unset: an unfenced caller); see fence.ts. */
  fencingToken?: number;
}

/** A host's defaults for the migrations that do not say. */
export interface OutgoingDefaults {
  /**
   * QEMU's postcopy-preempt lane (true needs the relay). Unset: on whenever the stream is
   * relayed.
   */
  preempt?: boolean;
  /** Relay compression (default "auto": only on a slow link). */
  compression?: Compression;
  /**
   * "auto" (the default) hands the channel's TCP connection to QEMU on a near link and relays
   * on a far one (path-policy.ts), or always "handoff" / "relay".
   */
  channelPath?: ChannelPathChoice;
  /** Link bandwidth assumed by mode "auto" when a migration sets no cap (bytes/s; default 1 Gbit/s). */
  linkBandwidth?: number;
}

export interface OutgoingContext {
  runRoot: string;
  log: Logger;
  table: MigrationTable;
  defaults: OutgoingDefaults;
}

/** A migration's channel, open to the destination, with the mode and path chosen. */
interface Ready {
  out: ChannelOut;
  plan: { mode: MigrationMode; hybridRounds?: number; reason: string };
  /** Relayed post-copy: the virtio ring pages to send ahead at the switch-over. */
  rings?: Promise<PageRequest[]>;
}

export class Outgoing {
  /** Migrations whose channel is being opened (not yet in the table): a repeated start is refused. */
  private readonly opening = new Set<string>();
  /** Channels opened ahead of their StartMigration (OpenMigrationChannel). */
  private readonly ahead: OpenedAhead<Ready>;

  constructor(private readonly ctx: OutgoingContext) {
    this.ahead = new OpenedAhead<Ready>(ctx.log);
  }

  /**
   * Picks the mode, opens the channel (measuring the link and choosing the path from it;
   * failing here if the destination refuses), then migrates in the background. A channel
   * opened ahead for this migration with the same options is used as it is.
   */
  async start(vm: Vm, o: StartMigrationOptions): Promise<MigrationRecord> {
    const { table } = this.ctx;
    checkMigratable(vm, o);
    // A caller that lost its answer (a control-plane restarted mid-call) may ask again while
    // the first start still opens its channel: one migration per id either way.
    if (table.find(o.migrationId) || this.opening.has(o.migrationId))
      throw new HostError("exists", `migration ${o.migrationId} already known here`);
    this.opening.add(o.migrationId);
    try {
      const ready = (await this.takeAhead(o)) ?? (await this.ready(vm, o));
      return this.launch(vm, o, ready);
    } finally {
      this.opening.delete(o.migrationId);
    }
  }

  /**
   * Opens the channel of a migration still being prepared at the destination: the link timed,
   * the path chosen, every connection accepted (the destination answers once its QEMU
   * listens), the rings looked up; QEMU is not told anything. The StartMigration that follows
   * with the same options then starts at once. Asked again with the same options it answers
   * the same; closed by abort(), by a start with other options, or after OPENED_AHEAD_TTL_MS.
   */
  async openAhead(vm: Vm, o: StartMigrationOptions): Promise<{ path: string; rttMs?: number }> {
    checkMigratable(vm, o);
    if (this.ctx.table.find(o.migrationId) || this.opening.has(o.migrationId))
      throw new HostError("exists", `migration ${o.migrationId} already started here`);
    const r = await this.ahead.get(o, () => this.ready(vm, o));
    await r.out.laneReady();
    return { path: r.out.plan?.path ?? (r.out.handoff ? "handoff" : "relay"), rttMs: r.out.rttMs };
  }

  /** Closes a channel opened ahead; whether there was one. */
  abortAhead(migrationId: string): boolean {
    return this.ahead.drop(migrationId, "aborted");
  }

  /** The vmId a channel opened ahead was opened for, if any (for the caller's fence check). */
  aheadVm(migrationId: string): string | undefined {
    return this.ahead.vmOf(migrationId);
  }

  /** Closes every channel opened ahead (shutdown). */
  closeAhead(): void {
    this.ahead.dropAll("shutting down");
  }

  /** The channel opened ahead for `o`, taken for its start; undefined to open one afresh. */
  private async takeAhead(o: StartMigrationOptions): Promise<Ready | undefined> {
    const taken = this.ahead.take(o);
    if (!taken) return undefined;
    const r = await taken.catch((err: Error) => {
      this.ctx.log.info("the channel opened ahead failed; opening afresh", { migration: o.migrationId, err });
      return undefined;
    });
    if (r && !r.out.intact) {
      this.ctx.log.info("the channel opened ahead was closed; opening afresh", { migration: o.migrationId });
      await r.out.close();
      return undefined;
    }
    return r;
  }

  /** Mode and path chosen, the channel open (not yet used by QEMU). */
  private async ready(vm: Vm, o: StartMigrationOptions): Promise<Ready> {
    const { defaults } = this.ctx;
    const request = {
      path: o.channelPath ?? defaults.channelPath,
      compression: o.compression ?? defaults.compression,
      preempt: o.preempt ?? defaults.preempt,
      postcopy: o.mode !== "precopy",
    };
    try {
      checkPathRequest(request);
    } catch (err) {
      if (err instanceof PathRequestError) throw new HostError("invalid", err.message);
      throw err;
    }
    let plan: Ready["plan"];
    // `auto` never pre-copies where pre-copy corrupts the guest (this QEMU, this VM's accelerator).
    const hazard = o.mode === "auto" ? unsafeQemu((await qemuInfo()).version, vm.accel) : undefined;
    try {
      plan = hazard
        ? { mode: "postcopy", reason: `no pre-copy: this host runs ${hazard}` }
        : o.mode === "auto"
          ? chooseMode({
              dirtyBytesPerSec: await measureDirtyRate(vm),
              bandwidthBytesPerSec: o.maxBandwidth || defaults.linkBandwidth || 125_000_000,
              memoryBytes: vm.spec.memoryMib * 2 ** 20,
            })
          : { mode: o.mode, hybridRounds: o.hybridRounds, reason: "requested" };
    } catch (err) {
      throw new HostError("unavailable", `auto mode: ${(err as Error).message}`);
    }
    request.postcopy = plan.mode !== "precopy";
    const out = this.channelOut(o.vmId, o.migrationId, o.channelAddress, 0, {
      choose: (rtt) => choosePath(request, rtt),
    });
    try {
      await out.open();
    } catch (err) {
      await out.close();
      throw new HostError("unavailable", (err as Error).message);
    }
    // Post-copy: the VM's virtio rings, looked up once the channel's round trip is measured
    // (nothing else runs in this process meanwhile to skew it), answered by the switch (sendAhead).
    const rings = request.postcopy ? this.ringPages(vm, o.migrationId) : undefined;
    return { out, plan, rings };
  }

  /** Records the migration and starts QEMU's stream on the ready channel (in the background). */
  private launch(vm: Vm, o: StartMigrationOptions, { out, plan, rings }: Ready): MigrationRecord {
    const { table, log } = this.ctx;
    const chosen = out.plan!;
    const rec = table.add(o.migrationId, o.vmId, "source");
    rec.channelPath = chosen.path;
    rec.channelRttMs = out.rttMs;
    rec.channelReason = chosen.reason;
    rec.preempt = chosen.preempt;
    rec.compression = chosen.compression;
    rec.mode = plan.mode;
    rec.modeReason = plan.reason;
    log.info(`channel: ${chosen.path} (${chosen.reason})`, {
      migration: o.migrationId,
      preempt: chosen.preempt,
      compression: chosen.compression,
    });
    log.info("migration mode", { migration: o.migrationId, mode: plan.mode, reason: plan.reason });
    const saved: SavedMigration = {
      id: o.migrationId,
      role: "source",
      channelAddress: o.channelAddress,
      mode: plan.mode,
      hybridRounds: plan.hybridRounds,
      hybridSeconds: o.hybridSeconds,
      maxBandwidth: o.maxBandwidth,
      compression: chosen.compression,
      preempt: chosen.preempt,
      channelPath: chosen.path,
    };
    saveMigration(vm, saved);
    this.run(vm, rec, saved, out, rings);
    return rec;
  }

  /**
   * After a restart: follows the stream QEMU is already sending (the old channel died with the
   * old process: post-copy pauses and is recovered on a new channel).
   */
  resume(vm: Vm, saved: SavedMigration): MigrationRecord {
    const rec = this.ctx.table.add(saved.id, vm.spec.name, "source");
    rec.mode = saved.mode;
    rec.modeReason = "resumed after a page-server restart";
    rec.channelPath = saved.channelPath;
    rec.preempt = saved.preempt;
    rec.compression = saved.compression;
    this.run(vm, rec, saved);
    return rec;
  }

  private channelOut(
    vmId: string,
    migrationId: string,
    peer: string,
    attempt: number,
    path: Pick<OutboundOptions, "choose" | "compression" | "preempt">,
  ): ChannelOut {
    return new ChannelOut({
      migrationId,
      peer,
      ...path,
      socketPath: join(
        this.ctx.runRoot,
        vmId,
        `outgoing-${migrationId}${attempt ? `-r${attempt}` : ""}.sock`,
      ),
      recover: attempt > 0,
      log: this.ctx.log,
    });
  }

  /** Drives an outgoing migration to its end: on `first` when given, else the one QEMU runs. */
  private run(
    vm: Vm,
    rec: MigrationRecord,
    saved: SavedMigration,
    first?: ChannelOut,
    rings?: Promise<PageRequest[]>,
  ): void {
    const { table, log } = this.ctx;
    let out = first;
    let attempt = 0;
    let carried = newCounters(); // by channels already closed
    let carriedConnections = 0;
    const countBytes = () => {
      const now = out?.counters ?? newCounters();
      rec.connections = carriedConnections + (out?.connections ?? 0);
      rec.channelBytes = {
        forward: carried.forward + now.forward,
        backward: carried.backward + now.backward,
        wireForward: carried.wireForward + now.wireForward,
        wireBackward: carried.wireBackward + now.wireBackward,
      };
    };
    // A broken post-copy stream is re-opened on a fresh channel; the destination recovers.
    const recover = async () => {
      countBytes();
      carried = { ...rec.channelBytes };
      carriedConnections = rec.connections;
      await out?.close();
      // Always relayed (the destination runs migrate-recover on a unix socket), with the same settings.
      out = this.channelOut(rec.vmId, rec.id, saved.channelAddress!, ++attempt, {
        compression: saved.compression,
        preempt: saved.preempt,
      });
      await out.open();
      rec.recoveries++;
      log.info("post-copy recovery: channel re-opened", { migration: rec.id, attempt });
      return out.qemuUri;
    };
    const opts: MigrationOptions = {
      mode: saved.mode!,
      preempt: saved.preempt ?? false,
      maxBandwidth: saved.maxBandwidth || undefined,
      hybridRounds: saved.hybridRounds || undefined,
      hybridSeconds: saved.hybridSeconds || undefined,
      recover,
      onProgress: (p) => {
        countBytes();
        table.update(rec, p);
      },
    };
    // Relayed post-copy: the rings the destination's device load reads go out ahead of its faults.
    if (first && !first.handoff && rings) opts.sendAhead = this.sendAhead(rec, first, rings);
    const start = async () => {
      if (!first) return followMigration(vm, opts);
      if (!first.handoff) return migrate(vm, first.qemuUri, opts);
      const sock = first.handoffSocket();
      const uri = await handSocketToQemu(vm, `vmhop-${rec.id}`, sock).finally(() => sock.destroy());
      return migrate(vm, uri, opts);
    };
    const completed = (r: MigrationResult) => {
      countBytes();
      rec.wallMs = r.wallMs;
      table.update(rec, r.final);
      this.record(vm, { ...saved, phase: "completed" });
    };
    const failed = (err: unknown) => {
      rec.error = out?.lastError ? `${(err as Error).message} (${out.lastError})` : (err as Error).message;
      const progress = (err as MigrationError).progress;
      table.update(rec, progress, progress?.status === "cancelled" ? "cancelled" : "failed");
      this.record(vm, { ...saved, phase: "failed" });
    };
    // The end is handled apart from the stream: a clean-up that fails after a completed
    // migration must not turn it into a failed one.
    start()
      .then(
        async (r) => {
          try {
            completed(r);
            await this.retire(vm, rec, saved);
          } finally {
            // A completed stream may still be queued here: let it drain (destroying it
            // truncated the destination's stream while the source reported success).
            await out?.finish();
          }
        },
        async (err: unknown) => {
          try {
            failed(err);
          } finally {
            await out?.close();
          }
        },
      )
      .catch((err: unknown) => log.warn("ending the migration failed", { migration: rec.id, err }));
  }

  /** The VM's virtio ring pages (ring-pages.ts), or none if QEMU cannot say. */
  private ringPages(vm: Vm, migrationId: string): Promise<PageRequest[]> {
    return ringPages(vm.qmp, vm.spec.memoryMib * 2 ** 20).catch((err: unknown) => {
      this.ctx.log.info("post-copy: no ring pages to send ahead", {
        migration: migrationId,
        error: (err as Error).message,
      });
      return [];
    });
  }

  /** What asks the source QEMU for the ring pages (MigrationOptions.sendAhead says when). */
  private sendAhead(rec: MigrationRecord, out: ChannelOut, rings: Promise<PageRequest[]>): () => void {
    const { log } = this.ctx;
    return () =>
      void rings.then((p) => {
        rec.pagesSentAhead = Math.max(rec.pagesSentAhead ?? 0, out.requestPages(p));
        log.info("post-copy: pages asked for ahead of the destination's faults", {
          migration: rec.id,
          pages: rec.pagesSentAhead,
        });
        log.debug("post-copy: the pages asked for", {
          migration: rec.id,
          offsets: p.map((x) => x.start.toString(16)),
        });
      });
  }

  /** Saves the migration's end; that can fail too (run folder gone at shutdown): logged. */
  private record(vm: Vm, saved: SavedMigration): void {
    try {
      saveMigration(vm, saved);
    } catch (err) {
      this.ctx.log.warn("cannot record the migration's end", { migration: saved.id, err });
    }
  }

  /**
   * The VM lives at the destination now: this host forgets it (spec.json retired, so a restart
   * does not adopt it) and its QEMU ends. Each step is tried; what fails is logged and kept
   * in the record and migration.json as `cleanupError`, the migration staying completed.
   */
  private async retire(vm: Vm, rec: MigrationRecord, saved: SavedMigration): Promise<void> {
    const errors: string[] = [];
    try {
      renameSync(vm.paths.specFile, `${vm.paths.specFile}.migrated`);
    } catch (err) {
      errors.push(`retiring spec.json: ${(err as Error).message}`);
    }
    try {
      await vm.stop();
    } catch (err) {
      errors.push(`stopping the source QEMU: ${(err as Error).message}`);
    }
    if (errors.length === 0) return;
    rec.cleanupError = errors.join("; ");
    this.ctx.log.warn("clean-up after a completed migration failed", {
      migration: rec.id,
      error: rec.cleanupError,
    });
    this.record(vm, { ...saved, phase: "completed", cleanupError: rec.cleanupError });
  }
}

function checkMigratable(vm: Vm, o: StartMigrationOptions): void {
  if (vm.state !== "running" && vm.state !== "paused")
    throw new HostError("precondition", `VM ${o.vmId} is ${vm.state}, cannot migrate`);
}
