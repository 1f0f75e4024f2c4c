// The VMs of one compute host and their migrations: what the gRPC PageService exposes,
// without gRPC (so it is testable and usable in-process).
import { EventEmitter } from "node:events";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Logger, silentLogger } from "../common/log.js";
import type { Compression } from "./channel/compress-policy.js";
import { ChannelServer, type IncomingTarget } from "./channel/inbound.js";
import { ChannelOut, type OutboundOptions } from "./channel/outbound.js";
import {
  type ChannelPath,
  type ChannelPathChoice,
  checkPathRequest,
  choosePath,
  PathRequestError,
} from "./channel/path-policy.js";
import { newCounters, type RelayCounters } from "./channel/relay.js";
import { chooseMode, measureDirtyRate } from "./migration/auto.js";
import {
  followMigration,
  handSocketToQemu,
  listenIncoming,
  type MigrationError,
  type MigrationMode,
  type MigrationOptions,
  migrate,
  recoverIncoming,
  setIncomingCapabilities,
} from "./migration/driver.js";
import { isFinalPhase, type Phase, phaseOf } from "./migration/phase.js";
import { type MigrationProgress, parseMigrationInfo } from "./migration/status.js";
import type { VmSpec } from "./vm/spec.js";
import { isLive } from "./vm/states.js";
import { Vm } from "./vm/vm.js";

export class HostError extends Error {
  constructor(
    readonly kind: "not-found" | "exists" | "precondition" | "unavailable" | "invalid",
    message: string,
  ) {
    super(message);
    this.name = "HostError";
  }
}

export interface MigrationRecord {
  id: string;
  vmId: string;
  role: "source" | "destination";
  phase: Phase;
  progress?: MigrationProgress;
  /** Source side: bytes the page-server channel carried, as QEMU sent them and on the wire. */
  channelBytes: RelayCounters;
  /** Times a broken post-copy stream was re-opened (QEMU postcopy recovery). */
  recoveries: number;
  /**
   * Destination: stream bytes the channel had received when QEMU reported RESUME (an upper
   * bound on what had to cross before the VM ran here: the event comes a moment later).
   */
  bytesBeforeResume?: number;
  /**
   * How the stream crossed: "handoff" (the TCP connection given to QEMU on both ends, no
   * relay, so channelBytes stay 0) or "relay" (through the page-servers). A post-copy
   * recovery always relays.
   */
  channelPath?: ChannelPath;
  /** Source: the channel's round trip measured before the path was chosen (ms). */
  channelRttMs?: number;
  /** Source: why that path, e.g. "rtt 0.08 ms < 2 ms" or "requested; rtt 20.31 ms". */
  channelReason?: string;
  /** Source: the urgent lane (QEMU's postcopy-preempt) and compression the path runs with. */
  preempt?: boolean;
  compression?: Compression;
  /** Channel connections carried so far (QEMU opens a second one for the urgent lane). */
  connections: number;
  /** Source: host time from QEMU's `migrate` to the end seen (as the driver measures it). */
  wallMs?: number;
  /** Source: the mode used (what "auto" chose, and why). */
  mode?: MigrationMode;
  modeReason?: string;
  error?: string;
  events: EventEmitter<{ update: [MigrationRecord] }>;
}

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
}

export interface IncomingOptions {
  /** The mode the source will use; "auto" (the default) readies the destination for any. */
  mode?: MigrationMode | "auto";
  /**
   * Sets QEMU's postcopy-preempt lane now; the source's channel hello has the last word (the
   * capability is set again from it before QEMU listens), so both ends always match.
   */
  preempt?: boolean;
}

export interface PageHostOptions {
  runRoot: string;
  /** host (and port, 0 = any) the migration channel listens on. */
  channelHost?: string;
  channelPort?: number;
  /**
   * Default for migrations that do not say: QEMU's postcopy-preempt lane (true needs the
   * relay). Unset: on whenever the stream is relayed.
   */
  preempt?: boolean;
  /** Default for migrations that do not say: relay compression (default "auto": only on a slow link). */
  compression?: Compression;
  /**
   * Default for migrations that do not say: "auto" (the default) hands the channel's TCP
   * connection to QEMU on a near link and relays on a far one (path-policy.ts), or always
   * "handoff" / "relay".
   */
  channelPath?: ChannelPathChoice;
  /** Link bandwidth assumed by mode "auto" when a migration sets no cap (bytes/s; default 1 Gbit/s). */
  linkBandwidth?: number;
  log?: Logger;
}

/** What a restarted page-server needs to pick a migration up again (beside the VM's files). */
interface SavedMigration {
  id: string;
  role: "source" | "destination";
  channelAddress?: string;
  mode?: MigrationMode;
  hybridRounds?: number;
  hybridSeconds?: number;
  maxBandwidth?: number;
  compression?: Compression;
  preempt?: boolean;
  /** Source: the path chosen. */
  channelPath?: ChannelPath;
  /** Destination: QEMU was told where to take the stream (migrate-incoming ran). */
  listening?: boolean;
  /** Set once it ended. */
  phase?: "completed" | "failed";
}

const migrationFile = (vm: Vm) => join(vm.paths.specFile, "..", "migration.json");

function saveMigration(vm: Vm, m: SavedMigration): void {
  writeFileSync(migrationFile(vm), JSON.stringify(m));
}

function loadMigration(vm: Vm): SavedMigration | undefined {
  const f = migrationFile(vm);
  return existsSync(f) ? (JSON.parse(readFileSync(f, "utf8")) as SavedMigration) : undefined;
}

export class PageHost {
  private readonly vms = new Map<string, Vm>();
  private readonly migrations = new Map<string, MigrationRecord>();
  private readonly channel: ChannelServer;
  private channelAddress = "";
  private readonly log: Logger;

  constructor(private readonly opts: PageHostOptions) {
    this.log = (opts.log ?? silentLogger).child({ svc: "page-server" });
    this.channel = new ChannelServer({ log: this.log });
  }

  async open(): Promise<void> {
    mkdirSync(this.opts.runRoot, { recursive: true });
    await this.adoptAll();
    this.channelAddress = await this.channel.listen(
      this.opts.channelPort ?? 0,
      this.opts.channelHost ?? "127.0.0.1",
    );
    this.log.info("migration channel listening", { address: this.channelAddress });
  }

  /**
   * Closes the channel and stops every VM, or with keepVms leaves the QEMUs running for the
   * next page-server on this run folder to adopt.
   */
  async close(opts: { keepVms?: boolean } = {}): Promise<void> {
    await Promise.all(
      [...this.vms.values()].map((vm) => (opts.keepVms ? vm.detach() : vm.stop(3000).catch(() => vm.kill()))),
    );
    await this.channel.close();
  }

  get channelListenAddress(): string {
    return this.channelAddress;
  }

  list(): Vm[] {
    return [...this.vms.values()];
  }

  get(vmId: string): Vm {
    const vm = this.vms.get(vmId);
    if (!vm) throw new HostError("not-found", `no VM ${vmId} on this host`);
    return vm;
  }

  /** Registers a VM (QEMU not started). Redefining a VM that has ended replaces it. */
  define(spec: VmSpec): Vm {
    const old = this.vms.get(spec.name);
    if (old && (isLive(old.state) || old.state === "stopping"))
      throw new HostError("exists", `VM ${spec.name} is ${old.state} on this host`);
    const vm = new Vm(spec, { runDir: join(this.opts.runRoot, spec.name), log: this.log });
    this.vms.set(spec.name, vm);
    return vm;
  }

  async start(vmId: string): Promise<Vm> {
    let vm = this.get(vmId);
    if (vm.state === "stopped" || vm.state === "crashed") vm = this.define(vm.spec);
    if (vm.state !== "defined")
      throw new HostError("precondition", `VM ${vmId} is ${vm.state}, cannot start`);
    await vm.start();
    return vm;
  }

  async stop(vmId: string, force = false): Promise<Vm> {
    const vm = this.get(vmId);
    if (force) await vm.kill();
    else await vm.stop();
    return vm;
  }

  migration(id: string): MigrationRecord {
    const m = this.migrations.get(id);
    if (!m) throw new HostError("not-found", `no migration ${id} on this host`);
    return m;
  }

  /** Destination: starts QEMU waiting for the stream; returns the channel address for the source. */
  async prepareIncoming(spec: VmSpec, migrationId: string, o: IncomingOptions = {}): Promise<string> {
    if (this.migrations.has(migrationId))
      throw new HostError("exists", `migration ${migrationId} already known here`);
    const vm = this.define(spec);
    const rec = this.record(migrationId, spec.name, "destination");
    await vm.start({ incoming: true });
    // postcopy-ram on the destination is harmless for a pre-copy stream, so any mode but an
    // announced pre-copy gets it: with "auto" the source decides later. migrate-incoming
    // waits for the channel's hello: it says relay (a unix socket) or handoff (fd).
    const mode = o.mode === undefined || o.mode === "auto" ? "postcopy" : o.mode;
    await setIncomingCapabilities(vm, { mode, preempt: o.preempt ?? this.opts.preempt });
    saveMigration(vm, { id: migrationId, role: "destination", mode, listening: false });
    const target = this.expectIncoming(vm, rec, mode, false);
    vm.qmp.on("event", (e) => {
      if (e.event === "RESUME" && rec.bytesBeforeResume === undefined && !target.handedOff)
        rec.bytesBeforeResume = target.counters.forward;
    });
    this.followDestination(vm, rec).catch((err) => this.log.warn("destination follow failed", { err }));
    return this.channelAddress;
  }

  /**
   * Lets the channel bring `rec`'s stream into `vm`: relayed into a unix socket, or handed
   * over (QEMU takes the TCP connection); a recovery relays into a new socket.
   */
  private expectIncoming(
    vm: Vm,
    rec: MigrationRecord,
    mode: MigrationMode,
    listening: boolean,
  ): IncomingTarget {
    const dir = join(this.opts.runRoot, vm.spec.name);
    const sock = join(dir, `incoming-${rec.id}.sock`);
    let attempt = 0;
    // migrate-incoming runs once, for whichever path the first connection asks for.
    let started: Promise<void> | undefined = listening ? Promise.resolve() : undefined;
    // The urgent lane as the source's hello says: QEMU takes capabilities until it listens.
    const once = (uri: () => Promise<string>, path: ChannelPath, preempt: boolean) =>
      (started ??= (async () => {
        await setIncomingCapabilities(vm, { mode, preempt });
        await listenIncoming(vm, await uri());
        rec.channelPath = path;
        rec.preempt = preempt && mode !== "precopy";
        saveMigration(vm, { id: rec.id, role: "destination", mode, listening: true });
      })().catch((err) => {
        started = undefined;
        throw err;
      }));
    return this.channel.expect(rec.id, sock, {
      listen: ({ preempt }) => once(async () => `unix:${sock}`, "relay", preempt),
      handoff: async (peer) => {
        if (started) throw new Error("QEMU already waits for this migration's stream elsewhere");
        await once(() => handSocketToQemu(vm, `vmhop-${rec.id}`, peer), "handoff", false);
      },
      recover: async () => {
        const again = join(dir, `incoming-${rec.id}-r${++attempt}.sock`);
        await recoverIncoming(vm, `unix:${again}`);
        rec.recoveries = attempt;
        return again;
      },
    });
  }

  /**
   * Source: picks the mode, opens the channel (measuring the link and choosing the path from
   * it; failing here if the destination refuses), then migrates in the background.
   */
  async startMigration(o: StartMigrationOptions): Promise<MigrationRecord> {
    const vm = this.get(o.vmId);
    if (vm.state !== "running" && vm.state !== "paused")
      throw new HostError("precondition", `VM ${o.vmId} is ${vm.state}, cannot migrate`);
    if (this.migrations.has(o.migrationId))
      throw new HostError("exists", `migration ${o.migrationId} already known here`);
    const request = {
      path: o.channelPath ?? this.opts.channelPath,
      compression: o.compression ?? this.opts.compression,
      preempt: o.preempt ?? this.opts.preempt,
      postcopy: o.mode !== "precopy",
    };
    try {
      checkPathRequest(request);
    } catch (err) {
      if (err instanceof PathRequestError) throw new HostError("invalid", err.message);
      throw err;
    }
    let plan: { mode: MigrationMode; hybridRounds?: number; reason: string };
    try {
      plan =
        o.mode === "auto"
          ? chooseMode({
              dirtyBytesPerSec: await measureDirtyRate(vm),
              bandwidthBytesPerSec: o.maxBandwidth || this.opts.linkBandwidth || 125_000_000,
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
      throw new HostError("unavailable", (err as Error).message);
    }
    const chosen = out.plan!;
    const rec = this.record(o.migrationId, o.vmId, "source");
    rec.channelPath = chosen.path;
    rec.channelRttMs = out.rttMs;
    rec.channelReason = chosen.reason;
    rec.preempt = chosen.preempt;
    rec.compression = chosen.compression;
    rec.mode = plan.mode;
    rec.modeReason = plan.reason;
    this.log.info(`channel: ${chosen.path} (${chosen.reason})`, {
      migration: o.migrationId,
      preempt: chosen.preempt,
      compression: chosen.compression,
    });
    this.log.info("migration mode", { migration: o.migrationId, mode: plan.mode, reason: plan.reason });
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
    this.runOutgoing(vm, rec, saved, out);
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
        this.opts.runRoot,
        vmId,
        `outgoing-${migrationId}${attempt ? `-r${attempt}` : ""}.sock`,
      ),
      recover: attempt > 0,
      log: this.log,
    });
  }

  /**
   * Drives an outgoing migration to its end. With `first` it starts one on that channel;
   * without, it picks up the one QEMU is already sending (after a page-server restart, whose
   * channel died with the old process: post-copy pauses and is recovered on a new channel).
   */
  private runOutgoing(vm: Vm, rec: MigrationRecord, saved: SavedMigration, first?: ChannelOut): void {
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
      this.log.info("post-copy recovery: channel re-opened", { migration: rec.id, attempt });
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
        this.update(rec, p);
      },
    };
    const start = async () => {
      if (!first) return followMigration(vm, opts);
      if (!first.handoff) return migrate(vm, first.qemuUri, opts);
      const sock = first.handoffSocket();
      const uri = await handSocketToQemu(vm, `vmhop-${rec.id}`, sock).finally(() => sock.destroy());
      return migrate(vm, uri, opts);
    };
    let completed = false;
    start()
      .then(async (r) => {
        completed = true;
        countBytes();
        rec.wallMs = r.wallMs;
        this.update(rec, r.final);
        saveMigration(vm, { ...saved, phase: "completed" });
        // The VM lives at the destination now: this host forgets it, and its QEMU ends.
        renameSync(vm.paths.specFile, `${vm.paths.specFile}.migrated`);
        await vm.stop();
      })
      .catch((err: unknown) => {
        rec.error = out?.lastError ? `${(err as Error).message} (${out.lastError})` : (err as Error).message;
        const progress = (err as MigrationError).progress;
        this.update(rec, progress, progress?.status === "cancelled" ? "cancelled" : "failed");
        saveMigration(vm, { ...saved, phase: "failed" });
      })
      // Recording the end can fail too (run folder gone at shutdown): never an unhandled rejection.
      .catch((err: unknown) => this.log.warn("cannot record the migration's end", { migration: rec.id, err }))
      // A completed stream may still be queued here: let it drain (destroying it truncated the
      // destination's stream while the source reported success).
      .finally(() => (completed ? out?.finish() : out?.close()));
  }

  /**
   * After a restart: adopts the QEMUs earlier runs left in runRoot, and picks up their
   * unfinished migrations.
   */
  private async adoptAll(): Promise<void> {
    for (const name of readdirSync(this.opts.runRoot)) {
      const dir = join(this.opts.runRoot, name);
      let vm: Vm | undefined;
      try {
        vm = await Vm.attach(dir, { log: this.log });
      } catch (err) {
        this.log.warn("cannot adopt a VM left by an earlier run", { dir, err });
        continue;
      }
      if (!vm) continue;
      this.vms.set(vm.spec.name, vm);
      this.log.info("adopted VM", { vm: vm.spec.name, state: vm.state });
      const saved = loadMigration(vm);
      if (!saved || saved.phase || !isLive(vm.state)) continue;
      const rec = this.record(saved.id, vm.spec.name, saved.role);
      if (saved.role === "source") {
        rec.mode = saved.mode;
        rec.modeReason = "resumed after a page-server restart";
        rec.channelPath = saved.channelPath;
        rec.preempt = saved.preempt;
        rec.compression = saved.compression;
        this.runOutgoing(vm, rec, saved);
      } else {
        // Records from before the handoff path have no flag: QEMU listened from the start then.
        this.expectIncoming(vm, rec, saved.mode ?? "postcopy", saved.listening ?? true);
        this.followDestination(vm, rec).catch((err) => this.log.warn("destination follow failed", { err }));
      }
    }
  }

  async abortMigration(id: string): Promise<void> {
    const rec = this.migration(id);
    if (isFinalPhase(rec.phase)) return;
    const vm = this.get(rec.vmId);
    if (rec.phase === "postcopy" || rec.phase === "paused")
      throw new HostError("precondition", `migration ${id} is past the switch-over; it cannot be aborted`);
    await vm.qmp.execute("migrate_cancel");
  }

  private record(id: string, vmId: string, role: MigrationRecord["role"]): MigrationRecord {
    const rec: MigrationRecord = {
      id,
      vmId,
      role,
      phase: "setup",
      channelBytes: newCounters(),
      recoveries: 0,
      connections: 0,
      events: new EventEmitter(),
    };
    this.migrations.set(id, rec);
    return rec;
  }

  private update(rec: MigrationRecord, p?: MigrationProgress, phase?: Phase): void {
    if (isFinalPhase(rec.phase)) return;
    if (p) rec.progress = p;
    rec.phase = phase ?? (p ? phaseOf(p.status) : rec.phase);
    rec.events.emit("update", rec);
  }

  /** The destination's own view (blocktime, its phase) until the migration ends or QEMU does. */
  private async followDestination(vm: Vm, rec: MigrationRecord): Promise<void> {
    const countConnections = () => {
      rec.connections = this.channel.target(rec.id)?.connections ?? rec.connections;
    };
    while (!isFinalPhase(rec.phase)) {
      countConnections();
      if (!isLive(vm.state)) {
        rec.error = `destination QEMU ended: ${vm.endReason}`;
        this.update(rec, undefined, "failed");
        return;
      }
      try {
        // Short timeout: a paused post-copy destination may not answer until it recovers.
        this.update(
          rec,
          parseMigrationInfo(await vm.qmp.execute("query-migrate", undefined, { timeoutMs: 5000 })),
        );
      } catch (err) {
        if (isLive(vm.state)) this.log.warn("destination query-migrate failed", { err });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    countConnections();
    this.channel.forget(rec.id);
    if (rec.phase === "completed" || rec.phase === "failed")
      saveMigration(vm, { id: rec.id, role: rec.role, phase: rec.phase });
  }
}
