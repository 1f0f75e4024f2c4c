// The control-plane without gRPC: host and VM registries and migrations, durable in the
// Store, carried out by the hosts' page-servers. grpc.ts maps its ControlError to statuses.

import { isIPv4, isIPv6 } from "node:net";
import { StorageMode } from "../../gen/vmhop/v1/control.js";
import { HandoverMode } from "../../gen/vmhop/v1/netreach.js";
import { MigrationMode, type Vm, VmSpec, VmState } from "../../gen/vmhop/v1/page.js";
import { type Logger, silentLogger } from "../common/log.js";
import type { Store, Unsubscribe } from "../common/store/index.js";
import { inSpan } from "../common/tracing.js";
import { vmSpecProblem } from "../common/vm-spec-validation.js";
import { AddressMover } from "./address.js";
import { ControlError } from "./control-error.js";
import { Executor, type ExecutorOptions } from "./executor.js";
import { onHostDown, onHostUp } from "./host-down.js";
import { HostLiveness, type LivenessRecord, readLiveness } from "./host-liveness.js";
import { HostPower, type HostPowerOptions, type PowerAction, type PowerResult } from "./host-power.js";
import { HostRegistry } from "./hosts.js";
import { newMigrationId } from "./migration-id.js";
import { ATTR, MigrationTrace } from "./migration-trace.js";
import { decideMode } from "./mode-safety.js";
import { NetreachAnchor } from "./netreach-client.js";
import { hasAddresses, needsRollback, planNetwork, type VmAddresses } from "./network-states.js";
import { PageServers } from "./page-client.js";
import {
  ConflictError,
  HOLD_CREATE,
  HOLD_DELETE,
  type HostRecord,
  KEYS,
  type MigrationRecord,
  readJson,
  scanJson,
  transition,
  update,
  type VmRecord,
} from "./records.js";
import { currentLeader } from "./replica.js";
import { isFinal, pastSwitch, TransitionError } from "./states.js";
import { planStorage, type StoragePlan, StoragePlanError } from "./storage-plan.js";
import { type NewDisk, VmLifecycle } from "./vm-lifecycle.js";
import { WarmShapes } from "./warm-shapes.js";

export type { NewDisk };
export { ControlError };

export interface MigrateRequest {
  vmId: string;
  destinationHostId: string;
  mode?: MigrationMode;
  requestId?: string;
  storage?: StorageMode;
  /** netreach.proto HandoverMode (0: the anchor's default). */
  handoverMode?: number;
}

/** A VM as the registry knows it, with the page-server's live view when it answers. */
export interface ClusterVmView {
  record: VmRecord;
  vm: Vm;
}

/** The VM's disk URL as its spec says (empty: no disk). */
export function diskUrlOf(vm: VmRecord): string {
  return VmSpec.fromJSON(vm.spec).diskNbdUrl;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** The VM's home addresses, checked; a VM with some needs a tap and a MAC to be reached on. */
function checkAddresses(spec: VmSpec, a: VmAddresses | undefined): VmAddresses | undefined {
  if (!hasAddresses(a)) return undefined;
  for (const x of a.home_ipv6)
    if (!isIPv6(x)) throw new ControlError("invalid", `invalid IPv6 home address ${JSON.stringify(x)}`);
  for (const x of a.home_ipv4)
    if (!isIPv4(x)) throw new ControlError("invalid", `invalid IPv4 home address ${JSON.stringify(x)}`);
  if (!spec.nicTap) throw new ControlError("invalid", "a VM with home addresses needs a tap (spec nic_tap)");
  if (!MAC.test(spec.nicMac))
    throw new ControlError(
      "invalid",
      `a VM with home addresses needs a lower-case MAC aa:bb:cc:dd:ee:ff (spec nic_mac), got ${JSON.stringify(spec.nicMac)}`,
    );
  return { home_ipv6: [...a.home_ipv6], home_ipv4: [...a.home_ipv4] };
}

export interface ControlPlaneOptions {
  log?: Logger;
  reachMs?: number;
  executor?: ExecutorOptions;
  /** The netreach anchor's gRPC address; absent: VMs keep no address across sites. */
  netreach?: string;
  /**
   * Lets an explicit pre-copy or hybrid run where it corrupts guests (QEMU < 8.0 under TCG):
   * for tests whose pre-copy is rolled back before the switch-over. `auto` stays safe.
   */
  allowUnsafePrecopy?: boolean;
  /** How often a VM left held by a stopped CreateVm/DeleteVm is settled again while its host does not answer. */
  repairRetryMs?: number;
  /** Power drivers' credentials and wait limits. */
  power?: HostPowerOptions;
  /** Host liveness checks (leader only, with a lease): period, deadline; absent: defaults. */
  liveness?: { everyMs?: number; deadlineMs?: number; downAfter?: number };
  /**
   * Telling every host's page-server the VM shapes to keep warm incoming QEMUs of (while
   * leading; warm-shapes.ts): the period, or false for never. Default: every 5 s.
   */
  warmShapes?: { everyMs?: number } | false;
  /** Replicas: how often the leader scans the store for migrations to drive (besides the notifications). */
  pickupMs?: number;
}

/** What this control-plane drives while it leads (one process without a lease: always). */
interface Leading {
  executor: Executor;
  generation?: number;
  stop: () => Promise<void>;
}

export class ControlPlane {
  private readonly pages = new PageServers();
  private leading?: Leading;
  private readonly log: Logger;
  private readonly anchor?: NetreachAnchor;
  private readonly address: AddressMover;
  private readonly vms: VmLifecycle;
  private readonly hosts: HostRegistry;
  private readonly power: HostPower;

  constructor(
    readonly store: Store,
    private readonly opts: ControlPlaneOptions = {},
  ) {
    const log = opts.log ?? silentLogger;
    this.log = log;
    this.anchor = opts.netreach ? new NetreachAnchor(opts.netreach) : undefined;
    this.hosts = new HostRegistry(store, this.pages, opts.reachMs ?? 3000);
    this.address = new AddressMover(store, this.anchor, log);
    // A new VM with home addresses is placed in netreach at its host's site once QEMU runs.
    const place = (vm: VmRecord, host: HostRecord, undo: () => Promise<unknown>) =>
      hasAddresses(vm.network) && this.anchor ? this.placeAddress(vm, host, undo) : Promise.resolve();
    const unplace = async (vm: VmRecord) => {
      if (this.anchor && vm.network) await this.anchor.deregister(vm.vm_id);
    };
    this.vms = new VmLifecycle(store, this.pages, log, place, unplace, opts.repairRetryMs);
    this.power = new HostPower(
      store,
      log,
      { vmsKeepingOn: (id) => this.vmsKeepingOn(id), reachable: async (h) => void (await this.reachable(h)) },
      opts.power,
    );
  }

  /**
   * Resumes every migration a previous control-plane left unfinished; releases VMs still held
   * by a migration that ended before its switch-over (or whose record was never written); and
   * settles VMs a stopped CreateVm or DeleteVm left held (in the background while their host
   * does not answer). A VM held by a migration that failed after its switch-over stays held:
   * which host runs it needs a person (DeleteVm removes it).
   */
  open(): Promise<string[]> {
    return this.lead();
  }

  /**
   * Starts driving migrations: those left unfinished, and (under a leader `generation`) every
   * migration any replica records from now on, picked up from the store's notifications and a
   * short scan. Returns the migrations it resumed. Without a generation (one process, no lease)
   * the migrations this process records are driven directly.
   */
  async lead(generation?: number, stillLeading?: () => boolean): Promise<string[]> {
    await this.standDown();
    const executor = new Executor(this.store, this.pages, this.log, this.address, {
      ...this.opts.executor,
      generation,
      stillLeading,
    });
    let unsubscribe: Unsubscribe | undefined;
    let timer: NodeJS.Timeout | undefined;
    let liveness: HostLiveness | undefined;
    const warm =
      this.opts.warmShapes === false
        ? undefined
        : new WarmShapes(this.store, this.pages, { ...this.opts.warmShapes, log: this.log });
    this.leading = {
      executor,
      generation,
      stop: async () => {
        clearInterval(timer);
        executor.close();
        await Promise.all([unsubscribe?.().catch(() => {}), liveness?.stop(), warm?.stop()]);
      },
    };
    warm?.start();
    if (generation !== undefined) {
      liveness = new HostLiveness(this.store, {
        ...this.opts.liveness,
        log: this.log,
        onDown: (host, rec) =>
          void onHostDown(this.store, this.pages, host, rec, this.log).catch((err) =>
            this.log.warn("host down", { host: host.host_id, err }),
          ),
        onUp: (host) =>
          void onHostUp(this.store, this.pages, executor.blocks, host, this.log).catch((err) =>
            this.log.warn("host back up", { host: host.host_id, err }),
          ),
      });
      liveness.start();
      const pick = (m: MigrationRecord) => {
        if (!isFinal(m.state)) executor.drive(m.migration_id);
      };
      unsubscribe = await this.store
        .subscribe(KEYS.migrations, (msg) => pick(JSON.parse(msg) as MigrationRecord))
        .catch((err) => {
          this.log.warn("leader: no migration notifications, scanning only", { err });
          return undefined;
        });
      timer = setInterval(() => {
        this.listMigrations().then(
          (all) => all.forEach(pick),
          () => {},
        );
      }, this.opts.pickupMs ?? 2000);
    }
    return this.resume(executor);
  }

  /** Stops driving (a lost lease): running drivers stop persisting at their next step. */
  async standDown(): Promise<void> {
    const l = this.leading;
    this.leading = undefined;
    await l?.stop();
  }

  /** The leader generation this control-plane drives under (undefined: not leading; 0: no lease). */
  get leaderGeneration(): number | undefined {
    return this.leading ? (this.leading.generation ?? 0) : undefined;
  }

  private async resume(executor: Executor): Promise<string[]> {
    const all = await this.listMigrations();
    const byId = new Map(all.map((m) => [m.migration_id, m]));
    for (const vm of await this.listVmRecords()) {
      if (vm.migration_id === HOLD_CREATE || vm.migration_id === HOLD_DELETE) {
        this.vms.repair(vm);
        continue;
      }
      // A migration recorded since the scan above (another replica's MigrateVm) is read afresh.
      const m =
        byId.get(vm.migration_id) ??
        (vm.migration_id
          ? (await readJson<MigrationRecord>(this.store, KEYS.migration(vm.migration_id)))?.value
          : undefined);
      if (vm.migration_id && (!m || (isFinal(m.state) && m.state !== "done" && !failedAfterSwitch(m))))
        await update<VmRecord>(this.store, KEYS.vm(vm.vm_id), (cur) =>
          cur && cur.migration_id === vm.migration_id ? { ...cur, migration_id: "" } : (cur as VmRecord),
        );
    }
    // Ended before its switch-over with the destination's network still prepared (a cancel
    // whose driver stopped before undoing it): undone now.
    for (const m of all.filter((x) => x.state === "failed" || x.state === "cancelled"))
      if (needsRollback(m.network)) await this.address.rollBack(m.migration_id, m.error);
    const open = all.filter((m) => !isFinal(m.state));
    for (const m of open) executor.drive(m.migration_id);
    return open.map((m) => m.migration_id);
  }

  /** Stops driving migrations (they stay as recorded, for the next control-plane). */
  close(): void {
    void this.standDown();
    this.vms.close();
    this.pages.close();
    this.anchor?.close();
  }

  /** Resolves when no migration driver runs. */
  async idle(): Promise<void> {
    await this.leading?.executor.idle();
  }

  /** Adds or updates a host whose page-server answers (hosts.ts). */
  registerHost(h: HostRecord): Promise<HostRecord> {
    return this.hosts.register(h);
  }

  /** Forgets a host with nothing on it or moving to or from it (hosts.ts). */
  deregisterHost(hostId: string): Promise<void> {
    return this.hosts.deregister(hostId);
  }

  async host(hostId: string): Promise<HostRecord> {
    if (!hostId) throw new ControlError("invalid", "host_id is required");
    const h = await readJson<HostRecord>(this.store, KEYS.host(hostId));
    if (!h) throw new ControlError("not-found", `unknown host ${hostId}`);
    return h.value;
  }

  listHosts(): Promise<HostRecord[]> {
    return scanJson<HostRecord>(this.store, KEYS.hostPrefix);
  }

  /** The hosts, the leading replica (null: none now) and the leader's liveness of each host. */
  async hostsStatus() {
    const [hosts, leader, liveness] = await Promise.all([
      this.listHosts(),
      currentLeader(this.store),
      readLiveness(this.store),
    ]);
    return { hosts, leader, liveness: liveness as LivenessRecord[] };
  }

  /**
   * Asleep: switched off through the host's power driver (bookkeeping without one); refused
   * while a VM is on the host or migrating from or to it. Awake: woken and up, or marked failed.
   */
  async setHostAsleep(hostId: string, asleep: boolean): Promise<HostRecord> {
    return (await this.power.act(hostId, asleep ? "off" : "on")).host;
  }

  /** `vmhop control power HOST on|off|status` (see host-power.ts). */
  powerHost(hostId: string, action: string): Promise<PowerResult> {
    return this.power.act(hostId, action as PowerAction);
  }

  /** The VMs on a host or migrating from or to it: each keeps the host on. */
  private async vmsKeepingOn(hostId: string): Promise<string[]> {
    const on = (await this.listVmRecords()).filter((v) => v.host_id === hostId).map((v) => v.vm_id);
    // From it too: a LAZY disk is read from the source's block-server until relocation ends.
    const moving = (await this.listMigrations())
      .filter((m) => !isFinal(m.state) && (m.destination_host_id === hostId || m.source_host_id === hostId))
      .map((m) => m.vm_id);
    return [...new Set([...on, ...moving])];
  }

  private async reachable(h: HostRecord) {
    const ps = this.pages.get(h.page_server_address);
    try {
      await ps.reachable(this.opts.reachMs ?? 3000);
    } catch (err) {
      throw new ControlError("unavailable", `host ${h.host_id}: ${(err as Error).message}`);
    }
    return ps;
  }

  /**
   * Defines and starts the VM on the host's page-server, then records it; with `disk`, first
   * creates its export on the host's block-server (named after the VM); with addresses, places
   * it in netreach at the host's site. One span: the calls to the host's services are its children.
   */
  createVm(spec: VmSpec | undefined, hostId: string, addresses?: VmAddresses, disk?: NewDisk) {
    const attrs = { [ATTR.vm]: spec?.vmId ?? "", [ATTR.host]: hostId };
    return inSpan("create VM", attrs, () => this.createVmNow(spec, hostId, addresses, disk));
  }

  private async createVmNow(
    spec: VmSpec | undefined,
    hostId: string,
    addresses?: VmAddresses,
    disk?: NewDisk,
  ): Promise<ClusterVmView> {
    if (!spec) throw new ControlError("invalid", "spec is required");
    // The page-server's own check of id and sizes, before anything is recorded or asked.
    const problem = vmSpecProblem(spec);
    if (problem) throw new ControlError("invalid", problem);
    const network = checkAddresses(spec, addresses);
    const host = await this.host(hostId);
    if (host.asleep) throw new ControlError("precondition", `host ${hostId} is asleep`);
    // Placed in netreach at its host's site once QEMU runs; the binding's generation is the
    // VM's fencing token, so the creation takes token 1 (a migration's switch-over is newer).
    const place = network && this.anchor;
    if (place && !host.site)
      throw new ControlError(
        "precondition",
        `host ${hostId} has no site: the VM's addresses cannot be placed`,
      );
    const ps = await this.reachable(host);
    // The binding's generation is the VM's fencing token, so a placed creation takes a token
    // (from the store-wide counter: a migration's switch-over is newer).
    const fencing_token = place ? await this.store.incr(KEYS.fenceSeq) : 0;
    return this.vms.create(spec, host, ps, disk, { fencing_token, ...(network ? { network } : {}) });
  }

  /** Stops and forgets the VM on its host, removes the disk export CreateVm made, deletes the record. */
  async deleteVm(vmId: string): Promise<void> {
    if (!vmId) throw new ControlError("invalid", "vm_id is required");
    await inSpan("delete VM", { [ATTR.vm]: vmId }, () => this.vms.delete(vmId));
  }

  /** Registers the VM's binding at its host's site; on failure the VM is stopped (`undo`). */
  private async placeAddress(vm: VmRecord, host: HostRecord, undo: () => Promise<unknown>): Promise<void> {
    const spec = VmSpec.fromJSON(vm.spec);
    const fail = async (why: string) => {
      await undo().catch(() => {});
      throw new ControlError(
        "unavailable",
        `placing VM ${vm.vm_id}'s addresses at site ${host.site}: ${why}`,
      );
    };
    try {
      const ack = await this.anchor!.place({
        vmId: vm.vm_id,
        mac: spec.nicMac,
        ...vm.network!,
        site: host.site,
        port: spec.nicTap,
        generation: vm.fencing_token,
      });
      if (!ack.accepted) await fail(ack.reason);
    } catch (err) {
      if (err instanceof ControlError) throw err;
      await fail((err as Error).message);
    }
  }

  private async vmRecord(vmId: string): Promise<VmRecord> {
    if (!vmId) throw new ControlError("invalid", "vm_id is required");
    const v = await readJson<VmRecord>(this.store, KEYS.vm(vmId));
    if (!v) throw new ControlError("not-found", `unknown VM ${vmId}`);
    return v.value;
  }

  private listVmRecords(): Promise<VmRecord[]> {
    return scanJson<VmRecord>(this.store, KEYS.vmPrefix);
  }

  /** The registry's record plus the page-server's view (state UNSPECIFIED, last_error set, when it does not answer). */
  private async view(record: VmRecord): Promise<ClusterVmView> {
    const spec = VmSpec.fromJSON(record.spec);
    const offline = (why: string): Vm => ({
      spec,
      state: VmState.VM_STATE_UNSPECIFIED,
      qemuPid: 0,
      serialLogPath: "",
      lastError: why,
      cpuSeconds: 0,
    });
    const host = await readJson<HostRecord>(this.store, KEYS.host(record.host_id));
    if (!host) return { record, vm: offline(`host ${record.host_id} is not registered`) };
    try {
      return { record, vm: await this.pages.get(host.value.page_server_address).inspect(record.vm_id) };
    } catch (err) {
      return { record, vm: offline((err as Error).message) };
    }
  }

  async getVm(vmId: string): Promise<ClusterVmView> {
    return this.view(await this.vmRecord(vmId));
  }

  async listVms(hostId = ""): Promise<ClusterVmView[]> {
    const records = (await this.listVmRecords()).filter((v) => !hostId || v.host_id === hostId);
    return Promise.all(records.map((r) => this.view(r)));
  }

  /**
   * Records a migration as pending and starts it in the background. Checks first what can be
   * checked now (VM, hosts, both page-servers reachable); `requestId` makes a retry idempotent.
   */
  async migrateVm(req: MigrateRequest): Promise<MigrationRecord> {
    if (req.requestId) {
      const prior = await this.byRequest(req);
      if (prior) return prior;
    }
    const vm = await this.vmRecord(req.vmId);
    const dst = await this.host(req.destinationHostId);
    if (vm.host_id === dst.host_id)
      throw new ControlError("invalid", `VM ${vm.vm_id} already runs on host ${dst.host_id}`);
    if (dst.asleep) throw asleepRefusal(dst);
    if (vm.migration_id) throw busy(vm);
    const src = await this.host(vm.host_id);
    let plan: StoragePlan;
    try {
      plan = planStorage(req.storage ?? StorageMode.STORAGE_MODE_UNSPECIFIED, diskUrlOf(vm), src, dst);
    } catch (err) {
      if (err instanceof StoragePlanError) throw new ControlError("precondition", err.message);
      throw err;
    }
    await Promise.all([this.reachable(src), this.reachable(dst)]);
    if (req.mode !== undefined && !MigrationMode[req.mode])
      throw new ControlError("invalid", `unknown mode ${req.mode}`);
    // No pre-copy where it corrupts guests (mode-safety.ts).
    const decided = decideMode(
      req.mode ?? MigrationMode.MIGRATION_MODE_UNSPECIFIED,
      await Promise.all([this.hosts.qemu(src), this.hosts.qemu(dst)]),
      this.opts.allowUnsafePrecopy,
    );
    if (decided.mode === undefined) throw new ControlError("precondition", decided.refused);
    if (decided.note)
      (this.opts.log ?? silentLogger).info("migration mode", { vm: vm.vm_id, note: decided.note });
    const mode = decided.mode;
    const handoverMode = req.handoverMode ?? 0;
    if (handoverMode < 0 || !HandoverMode[handoverMode])
      throw new ControlError("invalid", `unknown handover_mode ${handoverMode}`);
    const id = newMigrationId();
    // The fence the claim below raises the VM's to (it refuses if another claim came first).
    const fencingToken = Math.max(await this.store.incr(KEYS.fenceSeq), vm.fencing_token + 1);
    const now = Date.now();
    const rec: MigrationRecord = {
      migration_id: id,
      request_id: req.requestId ?? "",
      vm_id: vm.vm_id,
      source_host_id: src.host_id,
      destination_host_id: dst.host_id,
      mode,
      state: "pending",
      fencing_token: fencingToken,
      error: "",
      bytes_sent: 0,
      downtime_ms: 0,
      created_unix_ms: now,
      updated_unix_ms: now,
      storage: plan.storage,
      disk: plan.disk,
      entered_unix_ms: { pending: now },
      network: planNetwork(
        {
          netreach: this.anchor !== undefined,
          addresses: vm.network,
          tap: VmSpec.fromJSON(vm.spec).nicTap,
          fromSite: src.site,
          toSite: dst.site,
          mode: handoverMode,
          generation: fencingToken,
        },
        now,
      ),
    };
    // The migration's trace begins here; its record keeps the trace for a resumed driver.
    const trace = MigrationTrace.start(rec);
    if (trace.traceparent) rec.trace_parent = trace.traceparent;
    // The record first, then the request_id pointing at it, then the VM's claim: whoever finds
    // the request_id finds its migration. A record whose claim never came (a crash in between)
    // holds nothing; the executor fails it on the next start.
    const raw = JSON.stringify(rec);
    await this.store.compareAndSet(KEYS.migration(id), null, raw);
    if (req.requestId && !(await this.claimRequest(req.requestId, id))) {
      await this.store.compareAndDelete(KEYS.migration(id), raw);
      trace.end("cancelled", `request_id ${req.requestId} was started by another call`);
      const prior = await this.byRequest(req);
      if (prior) return prior;
      throw new ControlError(
        "unavailable",
        `request_id ${req.requestId} is being started by another call: retry`,
      );
    }
    // The per-VM lock and the fence in one compare-and-set on the VM record.
    try {
      await update<VmRecord>(this.store, KEYS.vm(vm.vm_id), (cur) => {
        if (!cur) throw new ControlError("not-found", `unknown VM ${vm.vm_id}`);
        if (cur.migration_id) throw busy(cur);
        if (cur.host_id !== src.host_id)
          throw new ControlError("precondition", `VM ${vm.vm_id} moved to ${cur.host_id} meanwhile`);
        if (cur.fencing_token !== vm.fencing_token)
          throw new ControlError("precondition", `VM ${vm.vm_id} was claimed by another migration meanwhile`);
        return { ...cur, migration_id: id, fencing_token: rec.fencing_token };
      });
    } catch (err) {
      // Kept as a failed migration with the reason: the request_id answers it from now on.
      const error = `not started: ${(err as Error).message}`;
      trace.end("failed", error);
      await transition(this.store, id, "fail", { error });
      throw err;
    }
    // The leader drives it: this process if it leads, else the leader on the notification.
    await this.store.publish(KEYS.migrations, raw);
    if (this.leading) this.leading.executor.drive(id, trace);
    else trace.end("pending"); // the leader's driver continues the trace from the record
    return rec;
  }

  /** request_id → migration id, unless another call claimed it (false). A claim whose record is gone is replaced. */
  private async claimRequest(requestId: string, id: string): Promise<boolean> {
    const key = KEYS.request(requestId);
    if (await this.store.compareAndSet(key, null, id)) return true;
    const prior = await this.store.get(key);
    // From before records were written first: a crash between the claim and the record.
    if (prior && !(await this.store.get(KEYS.migration(prior))))
      return this.store.compareAndSet(key, prior, id);
    return false;
  }

  /** The migration a request_id started (its record is written before the request_id is claimed). */
  private async byRequest(req: MigrateRequest): Promise<MigrationRecord | undefined> {
    const id = await this.store.get(KEYS.request(req.requestId!));
    if (!id) return undefined;
    const m = (await readJson<MigrationRecord>(this.store, KEYS.migration(id)))?.value;
    if (!m) return undefined; // an orphaned claim: claimRequest replaces it
    if (m.vm_id !== req.vmId || m.destination_host_id !== req.destinationHostId)
      throw new ControlError(
        "invalid",
        `request_id ${req.requestId} was used for migration ${id} of VM ${m.vm_id} to ${m.destination_host_id}`,
      );
    return m;
  }

  async getMigration(id: string): Promise<MigrationRecord> {
    if (!id) throw new ControlError("invalid", "migration_id is required");
    const m = await readJson<MigrationRecord>(this.store, KEYS.migration(id));
    if (!m) throw new ControlError("not-found", `unknown migration ${id}`);
    return m.value;
  }

  /** Newest first. */
  async listMigrations(vmId = ""): Promise<MigrationRecord[]> {
    const all = await scanJson<MigrationRecord>(this.store, KEYS.migrationPrefix);
    return all.filter((m) => !vmId || m.vm_id === vmId).sort((a, b) => b.created_unix_ms - a.created_unix_ms);
  }

  /** Before the switch only: the source aborts, the VM keeps running there. */
  async cancelMigration(id: string): Promise<MigrationRecord> {
    const m = await this.getMigration(id);
    if (isFinal(m.state)) return m;
    if (pastSwitch(m.state))
      throw new ControlError(
        "precondition",
        `migration ${id} is ${m.state}: past the switch-over, it cannot be cancelled`,
      );
    if (m.state === "migrating") {
      const src = await this.host(m.source_host_id);
      try {
        await this.pages.get(src.page_server_address).abortMigration(id, m.fencing_token);
      } catch (err) {
        throw new ControlError(
          "precondition",
          `migration ${id} cannot be cancelled: ${(err as Error).message}`,
        );
      }
    }
    try {
      return await transition(this.store, id, "cancel", { error: "cancelled on request" });
    } catch (err) {
      if (err instanceof TransitionError)
        throw new ControlError(
          "precondition",
          `migration ${id} moved on to ${err.from}: it cannot be cancelled`,
        );
      throw err;
    }
  }

  /** Calls onRecord for each migration transition (of `migrationId`, or all). */
  watch(migrationId: string, onRecord: (m: MigrationRecord) => void): Promise<Unsubscribe> {
    return this.store.subscribe(KEYS.migrations, (msg) => {
      const m = JSON.parse(msg) as MigrationRecord;
      if (!migrationId || m.migration_id === migrationId) onRecord(m);
    });
  }
}

/**
 * A migration to a sleeping host is refused rather than waking it implicitly: waking takes
 * minutes and powers hardware, so it is an explicit step (the placement service wakes its
 * plan's hosts_to_wake before their moves).
 */
function asleepRefusal(dst: HostRecord): ControlError {
  const id = dst.host_id;
  const how = `wake it first (vmhop control power ${id} on)`;
  const msg =
    dst.power_state === "failed"
      ? `destination host ${id} failed to power on (${dst.power_error}); ${how}`
      : dst.power_state === "waking"
        ? `destination host ${id} is still waking: retry once it is up`
        : `destination host ${id} is asleep: ${how}`;
  return new ControlError("precondition", msg);
}

function busy(vm: VmRecord): ControlError {
  return new ControlError(
    "precondition",
    vm.migration_id === HOLD_CREATE
      ? `VM ${vm.vm_id} is still being created`
      : vm.migration_id === HOLD_DELETE
        ? `VM ${vm.vm_id} is being deleted`
        : `VM ${vm.vm_id} is already migrating (${vm.migration_id}): one migration per VM at a time`,
  );
}

/** Failed once the VM may have run at the destination: the VM stays held (see open()). */
function failedAfterSwitch(m: MigrationRecord): boolean {
  const at = m.entered_unix_ms ?? {};
  return m.state === "failed" && (at.switched !== undefined || at.completing !== undefined);
}

export { ConflictError };
