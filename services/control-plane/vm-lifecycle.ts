// Creating and deleting VMs on their hosts, and finishing either after a crash. While the
// page-server and block-server are being set up or torn down the VM record is held ("create",
// "delete" in migration_id), so no migration starts meanwhile; open() resolves holds it finds.
import { type Vm, VmSpec, VmState } from "../../gen/vmhop/v1/page.js";
import { kindOfStatus } from "../common/grpc/status.js";
import type { Logger } from "../common/log.js";
import type { Store } from "../common/store/index.js";
import { type BlockServer, BlockServers } from "./block-client.js";
import { ControlError } from "./control-error.js";
import type { PageServer, PageServers } from "./page-client.js";
import { isNoAnswer, isNotFound, PeerError } from "./peer-call.js";
import {
  HOLD_CREATE,
  HOLD_DELETE,
  type HostRecord,
  KEYS,
  type MigrationRecord,
  readJson,
  scanJson,
  type VmRecord,
} from "./records.js";
import { isFinal } from "./states.js";
import { parseNbdUrl } from "./storage-plan.js";

/** A new disk for a VM: an image on the host served in place, or a new empty one of sizeBytes. */
export interface NewDisk {
  imagePath: string;
  sizeBytes: number;
}

/** States in which a VM's QEMU may run: DeleteVm stops it first. */
const LIVE = [
  VmState.VM_STATE_RUNNING,
  VmState.VM_STATE_PAUSED,
  VmState.VM_STATE_INCOMING,
  VmState.VM_STATE_MIGRATING,
];

const ignoreNotFound = (err: unknown) => {
  if (!isNotFound(err)) throw err;
};

export class VmLifecycle {
  private readonly blocks = new BlockServers();
  private readonly timers = new Set<NodeJS.Timeout>();
  private closed = false;

  constructor(
    private readonly store: Store,
    private readonly pages: PageServers,
    private readonly log: Logger,
    /** Runs once the new VM runs (netreach placement); on failure it stops the VM (`undo`) and throws. */
    private readonly place: (vm: VmRecord, host: HostRecord, undo: () => Promise<unknown>) => Promise<void>,
    /** Removes a deleted VM's addresses from netreach (nothing when it has none or there is no netreach). */
    private readonly unplace: (vm: VmRecord) => Promise<void>,
    private readonly retryMs = 2000,
  ) {}

  close(): void {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.blocks.close();
  }

  /**
   * Records the VM held by "create", creates its disk export when asked, defines and starts it
   * on `ps`, then frees the record. A failure undoes what was done (the export, the definition)
   * and drops the record.
   */
  async create(
    spec: VmSpec,
    host: HostRecord,
    ps: PageServer,
    disk: NewDisk | undefined,
    extra: Pick<VmRecord, "fencing_token" | "network">,
  ): Promise<{ record: VmRecord; vm: Vm }> {
    let full = spec;
    let block: BlockServer | undefined;
    if (disk) {
      if (spec.diskNbdUrl)
        throw new ControlError(
          "invalid",
          "give the VM's disk either as spec.disk_nbd_url (an existing export) or as disk (a new one), not both",
        );
      if (!disk.imagePath && !disk.sizeBytes)
        throw new ControlError("invalid", "disk needs an image_path or a size_bytes");
      if (!host.block_server_address || !host.block_nbd_address)
        throw new ControlError(
          "precondition",
          `host ${host.host_id} has no block-server registered: a disk cannot be created there`,
        );
      block = this.blocks.get(host.block_server_address);
      // An export of that name already there is someone else's: refused before anything is held.
      const there = await block.status(spec.vmId).then(
        () => true,
        (err) => {
          if (isNotFound(err)) return false;
          throw unavailable(`creating VM ${spec.vmId}'s disk on ${host.host_id}`, err);
        },
      );
      if (there)
        throw new ControlError(
          "exists",
          `host ${host.host_id}'s block-server already has an export ${spec.vmId}: it is not the control-plane's`,
        );
      full = { ...spec, diskNbdUrl: `nbd://${host.block_nbd_address}/${encodeURIComponent(spec.vmId)}` };
    }
    const record: VmRecord = {
      vm_id: spec.vmId,
      spec: VmSpec.toJSON(full) as VmRecord["spec"],
      host_id: host.host_id,
      migration_id: HOLD_CREATE,
      ...extra,
      ...(disk ? { disk_export: spec.vmId } : {}),
    };
    const raw = JSON.stringify(record);
    if (!(await this.store.compareAndSet(KEYS.vm(spec.vmId), null, raw)))
      throw new ControlError("exists", `VM ${spec.vmId} already exists`);
    let exported = false;
    try {
      if (block && disk) {
        await block.createTarget(spec.vmId, disk.imagePath, disk.sizeBytes);
        exported = true;
      }
      await ps.define(full);
      const vm = await ps.start(spec.vmId);
      await this.place(record, host, () => ps.stop(spec.vmId, true, 0));
      const created = { ...record, migration_id: "" };
      await this.store.compareAndSet(KEYS.vm(spec.vmId), raw, JSON.stringify(created));
      return { record: created, vm };
    } catch (err) {
      // Undone before the record goes: a retry finds nothing of this attempt in its way.
      await ps
        .undefine(spec.vmId)
        .catch(ignoreNotFound)
        .catch((e) => this.log.warn("undoing a create: undefine", { vm: spec.vmId, err: e }));
      if (exported)
        await block!
          .remove(spec.vmId, 0)
          .catch((e) => this.log.warn("undoing a create: the disk export", { vm: spec.vmId, err: e }));
      await this.store.compareAndDelete(KEYS.vm(spec.vmId), raw);
      // A peer's refusal keeps its status (QEMU's own reason for a VM that does not start is
      // INVALID_ARGUMENT, a host short of memory RESOURCE_EXHAUSTED); no answer is UNAVAILABLE.
      if (err instanceof PeerError) throw fromPeer(`creating VM ${spec.vmId} on ${host.host_id}`, err);
      throw err;
    }
  }

  /**
   * Refused while a migration of the VM runs (also one still relocating its disk) or while it
   * is being created. Holds the record ("delete"), then tears it down (deleteHeld).
   */
  async delete(vmId: string): Promise<void> {
    for (;;) {
      const cur = await readJson<VmRecord>(this.store, KEYS.vm(vmId));
      if (!cur) throw new ControlError("not-found", `unknown VM ${vmId}`);
      const vm = cur.value;
      if (vm.migration_id === HOLD_CREATE)
        throw new ControlError("precondition", `VM ${vmId} is still being created`);
      const migrations = (await scanJson<MigrationRecord>(this.store, KEYS.migrationPrefix)).filter(
        (m) => m.vm_id === vmId,
      );
      const running = migrations.find((m) => !isFinal(m.state));
      if (running)
        throw new ControlError(
          "precondition",
          `VM ${vmId} is migrating (${running.migration_id}, ${running.state}): delete it once the migration ended`,
        );
      if (vm.disk_export) await this.exportHost(vm); // its block-server must be known before anything goes
      let held = vm;
      if (vm.migration_id !== HOLD_DELETE) {
        // A VM still held by a migration that failed after its switch-over may run at its
        // destination: stopped there too.
        const holder = migrations.find((m) => m.migration_id === vm.migration_id);
        const on = [vm.host_id, ...(holder ? [holder.destination_host_id] : [])];
        held = { ...vm, migration_id: HOLD_DELETE, deleting_on: [...new Set(on)] };
        if (!(await this.store.compareAndSet(KEYS.vm(vmId), cur.raw, JSON.stringify(held)))) continue;
      }
      try {
        await this.deleteHeld(held);
      } catch (err) {
        if (err instanceof PeerError) throw unavailable(`deleting VM ${vmId} (retry; it stays held)`, err);
        throw err;
      }
      return;
    }
  }

  /**
   * A VM held by "delete": stopped and undefined on its page-servers (one that no longer knows
   * it is fine), its own disk export removed, its record deleted.
   */
  private async deleteHeld(vm: VmRecord): Promise<void> {
    await this.unplace(vm);
    for (const hostId of vm.deleting_on ?? [vm.host_id]) {
      const host = await readJson<HostRecord>(this.store, KEYS.host(hostId));
      if (!host) continue; // no longer registered: nothing to ask there
      const ps = this.pages.get(host.value.page_server_address);
      const at = await ps
        .inspect(vm.vm_id)
        .catch((err) => (isNotFound(err) ? undefined : Promise.reject(err)));
      // The VM's token: at least the newest any of its migrations showed this page-server.
      if (at && LIVE.includes(at.state))
        await ps.stop(vm.vm_id, false, vm.fencing_token).catch(ignoreNotFound);
      if (at) await ps.undefine(vm.vm_id).catch(ignoreNotFound);
    }
    if (vm.disk_export) {
      const block = await this.exportHost(vm);
      // The VM's fencing token is the highest any of its migrations carried to the export.
      await this.blocks
        .get(block.block_server_address)
        .remove(vm.disk_export, vm.fencing_token)
        .catch(ignoreNotFound);
    }
    await this.store.compareAndDelete(KEYS.vm(vm.vm_id), JSON.stringify(vm));
    this.log.info("VM deleted", { vm: vm.vm_id });
  }

  /** The host whose block-server serves the VM's own export (its disk URL names its NBD address). */
  private async exportHost(vm: VmRecord): Promise<HostRecord> {
    const url = VmSpec.fromJSON(vm.spec).diskNbdUrl;
    const at = parseNbdUrl(url)?.address;
    const hosts = await scanJson<HostRecord>(this.store, KEYS.hostPrefix);
    const h = hosts.find((x) => at && x.block_nbd_address === at && x.block_server_address);
    if (!h)
      throw new ControlError(
        "precondition",
        `VM ${vm.vm_id}'s disk export ${url} is on no registered host's block-server: register it to delete the VM`,
      );
    return h;
  }

  /**
   * After a restart: a "create" hold is kept if the VM runs on its host, else undone; a
   * "delete" hold is finished. A page-server or block-server that does not answer is asked
   * again later (the VM stays held meanwhile).
   */
  repair(vm: VmRecord): void {
    const attempt = () => {
      if (this.closed) return;
      (vm.migration_id === HOLD_CREATE ? this.settleCreate(vm) : this.deleteHeld(vm)).catch((err) => {
        if (this.closed) return;
        this.log.warn("cannot settle a VM left held by a stopped control-plane; retrying", {
          vm: vm.vm_id,
          hold: vm.migration_id,
          err,
        });
        const t = setTimeout(() => {
          this.timers.delete(t);
          attempt();
        }, this.retryMs);
        this.timers.add(t);
      });
    };
    attempt();
  }

  private async settleCreate(vm: VmRecord): Promise<void> {
    const raw = JSON.stringify(vm);
    const host = await readJson<HostRecord>(this.store, KEYS.host(vm.host_id));
    const ps = host ? this.pages.get(host.value.page_server_address) : undefined;
    const at = ps
      ? await ps.inspect(vm.vm_id).catch((err) => (isNotFound(err) ? undefined : Promise.reject(err)))
      : undefined;
    if (at?.state === VmState.VM_STATE_RUNNING) {
      // Placing again is harmless (same generation, same site): the crash may have come first.
      await this.place(vm, host!.value, async () => {}).catch((err) =>
        this.log.warn("placing a VM whose creation was interrupted", { vm: vm.vm_id, err }),
      );
      await this.store.compareAndSet(KEYS.vm(vm.vm_id), raw, JSON.stringify({ ...vm, migration_id: "" }));
      return;
    }
    // The create never finished (its caller saw an error or nothing and may retry): undone.
    if (at) await ps!.undefine(vm.vm_id).catch(ignoreNotFound);
    if (vm.disk_export && host?.value.block_server_address)
      await this.blocks
        .get(host.value.block_server_address)
        .remove(vm.disk_export, vm.fencing_token)
        .catch(ignoreNotFound);
    await this.store.compareAndDelete(KEYS.vm(vm.vm_id), raw);
  }
}

/** A peer's failure as the control-plane's: UNAVAILABLE when it did not answer, else the peer's own status. */
function fromPeer(what: string, err: PeerError): ControlError {
  return isNoAnswer(err)
    ? unavailable(what, err)
    : new ControlError(kindOfStatus(err.code), `${what}: ${err.message}`);
}

function unavailable(what: string, err: unknown): ControlError {
  return new ControlError("unavailable", `${what}: ${(err as Error).message}`);
}
