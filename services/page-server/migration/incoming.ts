// Destination side of a migration: the channel server, a QEMU waiting for the stream (set up
// once per migration id: a retry gets the same answer, a failed set-up leaves nothing), the
// stream brought into it, and the destination's own view of the migration until it ends;
// also picks such a migration up again after a page-server restart.
import { rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { advertisedAddress } from "../../common/advertise.js";
import { parseListenAddress } from "../../common/listen-address.js";
import type { Logger } from "../../common/log.js";
import { ChannelServer, type IncomingTarget } from "../channel/inbound.js";
import type { ChannelPath } from "../channel/path-policy.js";
import { HostError } from "../errors.js";
import { faultLatencyObserver } from "../metrics.js";
import { FaultObserver } from "../postcopy/observer.js";
import { specDifference, type VmSpec } from "../vm/spec.js";
import { isLive } from "../vm/states.js";
import type { Vm } from "../vm/vm.js";
import { attachVmDevices, ensureDisk, type WarmPool } from "../vm/warm-pool.js";
import {
  handSocketToQemu,
  listenIncoming,
  type MigrationMode,
  recoverIncoming,
  setIncomingCapabilities,
} from "./driver.js";
import { isFinalPhase } from "./phase.js";
import type { MigrationRecord, MigrationTable } from "./record.js";
import { removeMigration, type SavedMigration, saveMigration } from "./saved.js";
import { parseMigrationInfo } from "./status.js";

export interface IncomingOptions {
  /** The mode the source will use; "auto" (the default) readies the destination for any. */
  mode?: MigrationMode | "auto";
  /**
   * Sets QEMU's postcopy-preempt lane now; the source's channel hello has the last word (the
   * capability is set again from it before QEMU listens), so both ends always match.
   */
  preempt?: boolean;
  /** The migration's fencing token (0 or unset: an unfenced caller); see fence.ts. */
  fencingToken?: number;
}

export interface IncomingContext {
  runRoot: string;
  log: Logger;
  table: MigrationTable;
  /** The host's default for the urgent lane (unset: as the source's hello says). */
  preempt?: boolean;
  /** Warm QEMUs to take instead of starting one (none: each set-up starts its own). */
  warm?: WarmPool;
  /** The host's VM registry. */
  vms: {
    define(spec: VmSpec): Vm;
    /** Registers a warm QEMU that became the VM of its spec in place of the defined one. */
    put(vm: Vm): void;
    find(vmId: string): Vm | undefined;
    /** Forgets a VM whose set-up failed. */
    drop(vm: Vm): void;
  };
}

export class Incoming {
  private readonly channel: ChannelServer;
  private address = "";
  /** Set-ups under way, by migration id: a retry meanwhile waits for the same one. */
  private readonly preparing = new Map<string, Promise<void>>();
  /** A warm QEMU's disk being attached, by migration id (awaited before QEMU listens). */
  private readonly disks = new Map<string, Promise<void>>();

  constructor(private readonly ctx: IncomingContext) {
    this.channel = new ChannelServer({ log: ctx.log });
  }

  /**
   * Listens, and from then on hands out `advertise` (HOST:PORT or HOST; unset: the bound
   * address) to sources; an address no peer can dial (0.0.0.0 without `advertise`) closes the
   * listener again and throws.
   */
  async listen(port: number, host: string, advertise?: string): Promise<string> {
    const bound = await this.channel.listen(port, host);
    try {
      this.address = advertisedAddress(parseListenAddress(bound), advertise, "--channel-advertise");
    } catch (err) {
      await this.channel.close();
      throw new HostError("invalid", `migration channel: ${(err as Error).message}`);
    }
    return this.address;
  }

  get channelAddress(): string {
    return this.address;
  }

  close(): Promise<void> {
    return this.channel.close();
  }

  /**
   * Starts QEMU waiting for the stream; returns the channel address for the source. The same
   * migration id again (for the same VM and spec) returns the same address, once the first
   * set-up is done; for another VM or spec it is refused, naming the difference.
   */
  async prepare(spec: VmSpec, migrationId: string, o: IncomingOptions = {}): Promise<string> {
    const known = this.ctx.table.find(migrationId);
    if (known) return this.again(known, spec);
    const setUp = this.setUp(spec, migrationId, o);
    this.preparing.set(migrationId, setUp);
    try {
      await setUp;
    } finally {
      // A retry after a failure may already have begun a set-up of its own under this id.
      if (this.preparing.get(migrationId) === setUp) this.preparing.delete(migrationId);
    }
    return this.address;
  }

  private async again(rec: MigrationRecord, spec: VmSpec): Promise<string> {
    const id = rec.id;
    if (rec.role !== "destination")
      throw new HostError(
        "exists",
        `migration ${id} is an outgoing migration of VM ${rec.vmId} on this host`,
      );
    if (rec.vmId !== spec.name)
      throw new HostError(
        "exists",
        `migration ${id} is already prepared here for VM ${rec.vmId}, not ${spec.name}`,
      );
    const vm = this.ctx.vms.find(rec.vmId);
    const diff = vm && specDifference(vm.spec, spec);
    if (diff)
      throw new HostError(
        "exists",
        `migration ${id} is already prepared here for VM ${rec.vmId} with another spec: ${diff}`,
      );
    await this.preparing.get(id); // a set-up still under way: its outcome is this answer too
    if (isFinalPhase(rec.phase))
      throw new HostError(
        "precondition",
        `migration ${id} already ended here (${rec.phase}${rec.error ? `: ${rec.error}` : ""})`,
      );
    return this.address;
  }

  private async setUp(spec: VmSpec, migrationId: string, o: IncomingOptions): Promise<void> {
    const defined = this.ctx.vms.define(spec);
    let vm = defined;
    const rec = this.ctx.table.add(migrationId, spec.name, "destination");
    // postcopy-ram on the destination is harmless for a pre-copy stream, so any mode but an
    // announced pre-copy gets it: with "auto" the source decides later. migrate-incoming
    // waits for the channel's hello: it says relay (a unix socket) or handoff (fd).
    const mode = o.mode === undefined || o.mode === "auto" ? "postcopy" : o.mode;
    try {
      const warm = this.ctx.warm?.take(spec);
      if (warm) {
        vm = warm;
        await this.fromWarm(warm, defined);
        rec.warmQemu = true;
      } else await vm.start({ incoming: true });
      await setIncomingCapabilities(vm, { mode, preempt: o.preempt ?? this.ctx.preempt });
      saveMigration(vm, { id: migrationId, role: "destination", mode, listening: false });
    } catch (err) {
      if (vm !== defined) this.ctx.vms.drop(defined);
      await this.undo(vm, migrationId);
      this.ctx.warm?.refill();
      throw err;
    }
    if (rec.warmQemu) {
      // The disk comes after this call has answered: its NBD handshake waits for the export
      // the control-plane opens beside it (across the WAN), while the address is prepared for
      // the tap that exists now. QEMU listens only once it has its disk (expect()).
      const disk = ensureDisk(vm, { log: this.ctx.log });
      disk.catch((err) =>
        this.ctx.log.warn("warm qemu: its disk could not be attached", { vm: spec.name, err }),
      );
      this.disks.set(migrationId, disk);
    }
    const target = this.expect(vm, rec, mode, false);
    vm.qmp.on("event", (e) => {
      if (e.event !== "RESUME") return;
      // The switch-over is past: the warm QEMU taken for it is replaced now, not during it.
      if (rec.warmQemu && rec.resumedAtMs === undefined) this.ctx.warm?.refill();
      rec.resumedAtMs ??= Date.now();
      if (rec.bytesBeforeResume === undefined && !target.handedOff)
        rec.bytesBeforeResume = target.counters.forward;
    });
    this.follow(vm, rec).catch((err) => this.ctx.log.warn("destination follow failed", { err }));
  }

  /**
   * A warm QEMU becomes the VM `defined` names: its NIC added (the tap exists from now on; the
   * disk follows in the background, see setUp), then moved into the VM's folder and
   * registered in place of the defined one.
   */
  private async fromWarm(warm: Vm, defined: Vm): Promise<void> {
    const started = Date.now();
    const origin = dirname(warm.paths.qmpSocket);
    await attachVmDevices(warm, defined.spec, "nic");
    warm.becomeVm(defined.spec, dirname(defined.paths.specFile));
    this.ctx.warm?.forget(origin);
    this.ctx.vms.put(warm);
    this.ctx.log.info("incoming QEMU: a warm one", {
      vm: defined.spec.name,
      pid: warm.pid,
      devicesMs: Date.now() - started,
    });
  }

  /** A set-up that failed leaves nothing: no record, no QEMU, nothing a restart would adopt. */
  private async undo(vm: Vm, migrationId: string): Promise<void> {
    this.ctx.table.forget(migrationId);
    this.ctx.vms.drop(vm);
    try {
      await vm.kill();
      rmSync(vm.paths.specFile, { force: true });
      removeMigration(vm);
    } catch (err) {
      this.ctx.log.warn("clean-up after a failed PrepareIncoming", { migration: migrationId, err });
    }
  }

  /** After a restart: the QEMU still waits for (or takes) the stream. */
  resume(vm: Vm, saved: SavedMigration): MigrationRecord {
    const rec = this.ctx.table.add(saved.id, vm.spec.name, "destination");
    // Records from before the handoff path have no flag: QEMU listened from the start then.
    this.expect(vm, rec, saved.mode ?? "postcopy", saved.listening ?? true);
    this.follow(vm, rec).catch((err) => this.ctx.log.warn("destination follow failed", { err }));
    return rec;
  }

  /**
   * Lets the channel bring `rec`'s stream into `vm`: relayed into a unix socket, or handed
   * over (QEMU takes the TCP connection); a recovery relays into a new socket.
   */
  private expect(vm: Vm, rec: MigrationRecord, mode: MigrationMode, listening: boolean): IncomingTarget {
    const dir = join(this.ctx.runRoot, vm.spec.name);
    const sock = join(dir, `incoming-${rec.id}.sock`);
    let attempt = 0;
    // migrate-incoming runs once, for whichever path the first connection asks for.
    let started: Promise<void> | undefined = listening ? Promise.resolve() : undefined;
    // The urgent lane as the source's hello says: QEMU takes capabilities until it listens.
    const once = (uri: () => Promise<string>, path: ChannelPath, preempt: boolean) =>
      (started ??= (async () => {
        // A warm QEMU's disk (attached in the background; after a restart, attached now).
        await (this.disks.get(rec.id) ?? ensureDisk(vm, { log: this.ctx.log }));
        await setIncomingCapabilities(vm, { mode, preempt });
        await listenIncoming(vm, await uri());
        rec.channelPath = path;
        rec.preempt = preempt && mode !== "precopy";
        saveMigration(vm, { id: rec.id, role: "destination", mode, listening: true });
      })().catch((err) => {
        started = undefined;
        throw err;
      }));
    const faults = new FaultObserver(this.ctx.log.child({ migration: rec.id }), faultLatencyObserver(rec));
    rec.faultTiming = faults;
    return this.channel.expect(rec.id, sock, {
      tap: (o) => faults.tap(o),
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

  /** The destination's own view (blocktime, its phase) until the migration ends or QEMU does. */
  private async follow(vm: Vm, rec: MigrationRecord): Promise<void> {
    const { table, log } = this.ctx;
    const countConnections = () => {
      rec.connections = this.channel.target(rec.id)?.connections ?? rec.connections;
    };
    while (!isFinalPhase(rec.phase)) {
      countConnections();
      if (!isLive(vm.state)) {
        rec.error = `destination QEMU ended: ${vm.endReason}`;
        table.update(rec, undefined, "failed");
        return;
      }
      try {
        // Short timeout: a paused post-copy destination may not answer until it recovers.
        table.update(
          rec,
          parseMigrationInfo(await vm.qmp.execute("query-migrate", undefined, { timeoutMs: 5000 })),
        );
      } catch (err) {
        if (isLive(vm.state)) log.warn("destination query-migrate failed", { err });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    countConnections();
    this.channel.forget(rec.id);
    rec.faultTiming?.finish();
    this.disks.delete(rec.id);
    if (rec.phase === "completed" || rec.phase === "failed")
      saveMigration(vm, { id: rec.id, role: rec.role, phase: rec.phase });
  }
}
