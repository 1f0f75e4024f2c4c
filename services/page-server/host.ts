// The VMs of one compute host and their migrations: what the gRPC PageService exposes,
// without gRPC (so it is testable and usable in-process). This file is the VM registry and
// the fence on migration calls; the migrations themselves are migration/outgoing.ts and
// migration/incoming.ts, what survives a restart migration/saved.ts.
import { existsSync, mkdirSync, readdirSync, renameSync } from "node:fs";
import { join } from "node:path";
import { type Logger, silentLogger } from "../common/log.js";
import { HostError } from "./errors.js";
import { Fences } from "./fence.js";
import { Incoming, type IncomingOptions } from "./migration/incoming.js";
import { Outgoing, type OutgoingDefaults, type StartMigrationOptions } from "./migration/outgoing.js";
import { isFinalPhase } from "./migration/phase.js";
import { type MigrationRecord, MigrationTable } from "./migration/record.js";
import { loadMigration } from "./migration/saved.js";
import { type QemuInfo, qemuInfo } from "./vm/qemu-info.js";
import { type VmSpec, validateSpec } from "./vm/spec.js";
import { isLive } from "./vm/states.js";
import { Vm } from "./vm/vm.js";
import { type VmShape, WarmPool } from "./vm/warm-pool.js";

export { HostError } from "./errors.js";
export type { IncomingOptions } from "./migration/incoming.js";
export type { StartMigrationOptions } from "./migration/outgoing.js";
export type { MigrationRecord } from "./migration/record.js";

/** The host's own settings; the OutgoingDefaults apply to migrations that do not say. */
export interface PageHostOptions extends OutgoingDefaults {
  runRoot: string;
  /** host (and port, 0 = any) the migration channel listens on. */
  channelHost?: string;
  channelPort?: number;
  /**
   * What sources are told to dial for the channel (HOST:PORT, or HOST for the bound port);
   * unset: the bound address, refused at open() when it is 0.0.0.0 or ::.
   */
  channelAdvertise?: string;
  /**
   * Most warm incoming QEMUs kept for the shapes set with setWarmShapes (vm/warm-pool.ts);
   * 0 (the default here; `vmhop page serve --warm-max`) keeps none.
   */
  warmMax?: number;
  log?: Logger;
}

/** Where the warm QEMUs run, under the run folder (not a VM's folder: never adopted). */
const WARM_DIR = ".warm";

export class PageHost {
  private readonly vms = new Map<string, Vm>();
  private readonly table = new MigrationTable();
  private readonly fences: Fences;
  private readonly incoming: Incoming;
  private readonly outgoing: Outgoing;
  private readonly log: Logger;
  readonly warm: WarmPool;

  constructor(private readonly opts: PageHostOptions) {
    this.log = (opts.log ?? silentLogger).child({ svc: "page-server" });
    this.warm = new WarmPool({ root: join(opts.runRoot, WARM_DIR), max: opts.warmMax ?? 0, log: this.log });
    this.fences = new Fences(opts.runRoot);
    const ctx = { runRoot: opts.runRoot, log: this.log, table: this.table };
    this.outgoing = new Outgoing({ ...ctx, defaults: opts });
    this.incoming = new Incoming({
      ...ctx,
      preempt: opts.preempt,
      warm: this.warm,
      vms: {
        define: (spec) => this.define(spec),
        put: (vm) => {
          this.vms.set(vm.spec.name, vm);
        },
        find: (vmId) => this.vms.get(vmId),
        drop: (vm) => {
          if (this.vms.get(vm.spec.name) === vm) this.vms.delete(vm.spec.name);
        },
      },
    });
  }

  async open(): Promise<void> {
    mkdirSync(this.opts.runRoot, { recursive: true });
    // Asked now, so DescribeHost answers at once (the control-plane gives it a deadline).
    void qemuInfo();
    this.warm.open();
    await this.adoptAll();
    const address = await this.incoming.listen(
      this.opts.channelPort ?? 0,
      this.opts.channelHost ?? "127.0.0.1",
      this.opts.channelAdvertise,
    );
    this.log.info("migration channel listening", { advertised: address });
  }

  /**
   * Closes the channel and stops every VM, or with keepVms leaves the QEMUs running for the
   * next page-server on this run folder to adopt.
   */
  async close(opts: { keepVms?: boolean } = {}): Promise<void> {
    // Warm QEMUs hold no VM: stopped either way (a restart starts its own).
    await this.warm.close();
    this.outgoing.closeAhead();
    await Promise.all(
      [...this.vms.values()].map((vm) => (opts.keepVms ? vm.detach() : vm.stop(3000).catch(() => vm.kill()))),
    );
    await this.incoming.close();
  }

  get channelListenAddress(): string {
    return this.incoming.channelAddress;
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

  /**
   * Forgets a VM that does not run: no longer listed, and its spec is set aside (spec.json →
   * spec.json.undefined, logs kept) so a restarted page-server does not adopt it again.
   */
  undefine(vmId: string): void {
    const vm = this.get(vmId);
    if (isLive(vm.state) || vm.state === "stopping")
      throw new HostError("precondition", `VM ${vmId} is ${vm.state}: stop it before undefining it`);
    if (existsSync(vm.paths.specFile)) renameSync(vm.paths.specFile, `${vm.paths.specFile}.undefined`);
    this.vms.delete(vmId);
  }

  /** `fencingToken`: a migration's rollback stopping the destination's waiting QEMU (fence.ts). */
  async stop(vmId: string, force = false, fencingToken = 0): Promise<Vm> {
    const vm = this.get(vmId);
    this.fences.check(vmId, fencingToken);
    if (force) await vm.kill();
    else await vm.stop();
    return vm;
  }

  /**
   * The VM shapes to keep a warm incoming QEMU of (the whole set, replacing the last one; the
   * first `warmMax` are served): returns those served. See vm/warm-pool.ts.
   */
  setWarmShapes(shapes: VmShape[]): VmShape[] {
    return this.warm.setShapes(shapes);
  }

  /** The QEMU version and accelerator VMs get here (DescribeHost). */
  describe(): Promise<QemuInfo> {
    return qemuInfo();
  }

  /** Every migration this page-server knows (both roles), oldest first. */
  migrations(): MigrationRecord[] {
    return this.table.list();
  }

  migration(id: string): MigrationRecord {
    return this.table.get(id);
  }

  /**
   * Destination: starts QEMU waiting for the stream; returns the channel address for the source.
   * Idempotent per migration id (migration/incoming.ts).
   */
  async prepareIncoming(spec: VmSpec, migrationId: string, o: IncomingOptions = {}): Promise<string> {
    this.fences.check(validateSpec(spec).name, o.fencingToken);
    return this.incoming.prepare(spec, migrationId, o);
  }

  /** Source: migrates a running VM to a prepared destination (in the background). */
  async startMigration(o: StartMigrationOptions): Promise<MigrationRecord> {
    const vm = this.get(o.vmId);
    this.fences.check(o.vmId, o.fencingToken);
    return this.outgoing.start(vm, o);
  }

  /**
   * Source: opens a migration's channel ahead of its StartMigration (outgoing.openAhead), while
   * the destination still prepares; nothing is sent.
   */
  async openMigrationChannel(o: StartMigrationOptions): Promise<{ path: string; rttMs?: number }> {
    const vm = this.get(o.vmId);
    this.fences.check(o.vmId, o.fencingToken);
    return this.outgoing.openAhead(vm, o);
  }

  /** Before the switch-over only; a migration that ended is left as it is. */
  async abortMigration(id: string, fencingToken = 0): Promise<void> {
    const aheadVm = this.outgoing.aheadVm(id);
    if (aheadVm !== undefined && !this.table.find(id)) {
      this.fences.check(aheadVm, fencingToken);
      this.outgoing.abortAhead(id);
      return;
    }
    const rec = this.migration(id);
    this.fences.check(rec.vmId, fencingToken);
    if (isFinalPhase(rec.phase)) return;
    const vm = this.get(rec.vmId);
    if (rec.phase === "postcopy" || rec.phase === "paused")
      throw new HostError("precondition", `migration ${id} is past the switch-over; it cannot be aborted`);
    await vm.qmp.execute("migrate_cancel");
  }

  /**
   * After a restart: adopts the QEMUs earlier runs left in runRoot, and picks up their
   * unfinished migrations. Nothing in one VM's folder keeps the others from being adopted.
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
      try {
        const saved = loadMigration(vm);
        if (!saved || saved.phase || !isLive(vm.state)) continue;
        if (saved.role === "source") this.outgoing.resume(vm, saved);
        else this.incoming.resume(vm, saved);
      } catch (err) {
        this.log.warn("cannot pick up the migration of an adopted VM; left as it is", {
          vm: vm.spec.name,
          err,
        });
      }
    }
  }
}
