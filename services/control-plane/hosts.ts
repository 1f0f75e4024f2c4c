// Registering and deregistering hosts: a host is recorded only once its page-server answers
// (DescribeHost within a deadline) and only under one id per page-server; it is forgotten only
// once nothing is on it or moving to or from it.
import { ServiceError } from "../common/errors.js";
import type { Store } from "../common/store/index.js";
import { checkPowerConfig } from "../power/config.js";
import { ControlError } from "./control-error.js";
import type { HostQemu } from "./mode-safety.js";
import type { PageServers } from "./page-client.js";
import { type HostRecord, KEYS, type MigrationRecord, readJson, scanJson, type VmRecord } from "./records.js";
import { isFinal } from "./states.js";

const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function checkHostId(id: string): void {
  if (!HOST_ID.test(id))
    throw new ControlError(
      "invalid",
      `host_id must be 1-63 letters, digits, '.', '_' or '-', got ${JSON.stringify(id)}`,
    );
}

export class HostRegistry {
  constructor(
    private readonly store: Store,
    private readonly pages: PageServers,
    private readonly reachMs: number,
  ) {}

  /** Adds or updates (same host_id) a host whose page-server answers. */
  async register(h: HostRecord): Promise<HostRecord> {
    checkHostId(h.host_id);
    if (!h.page_server_address) throw new ControlError("invalid", "page_server_address is required");
    if (h.power) {
      try {
        checkPowerConfig(h.power);
      } catch (err) {
        if (err instanceof ServiceError)
          throw new ControlError(err.kind, `host ${h.host_id}: ${err.message}`);
        throw err;
      }
    }
    // Two ids for one page-server would let two records claim its VMs.
    const other = (await scanJson<HostRecord>(this.store, KEYS.hostPrefix)).find(
      (x) => x.page_server_address === h.page_server_address && x.host_id !== h.host_id,
    );
    if (other)
      throw new ControlError(
        "exists",
        `page-server ${h.page_server_address} is already registered as host ${other.host_id}`,
      );
    try {
      await this.pages.get(h.page_server_address).describe(this.reachMs);
    } catch (err) {
      throw new ControlError(
        "unavailable",
        `host ${h.host_id}: page-server ${h.page_server_address} does not answer: ${(err as Error).message}`,
      );
    }
    // The power state and its history are the control-plane's own: kept across a new
    // registration, and so is `asleep` once the host has been switched (only PowerHost changes it).
    const prior = (await readJson<HostRecord>(this.store, KEYS.host(h.host_id)))?.value;
    const { power_state, power_error, power_changed_unix_ms, power_actions } = prior ?? {};
    const rec: HostRecord = { ...h, power_state, power_error, power_changed_unix_ms, power_actions };
    if (prior && power_state) rec.asleep = prior.asleep;
    if (!h.power) delete rec.power;
    for (const k of ["power_state", "power_error", "power_changed_unix_ms", "power_actions"] as const)
      if (rec[k] === undefined) delete rec[k];
    await this.store.set(KEYS.host(h.host_id), JSON.stringify(rec));
    return rec;
  }

  /** What the host's page-server runs VMs with (mode-safety.ts); unknown when it does not say. */
  async qemu(h: HostRecord): Promise<HostQemu> {
    try {
      const d = await this.pages.get(h.page_server_address).describe(this.reachMs);
      return {
        hostId: h.host_id,
        qemuVersion: d.qemuVersion,
        accelerator: d.accelerator,
        unknownBecause: d.qemuError,
      };
    } catch (err) {
      return { hostId: h.host_id, qemuVersion: "", accelerator: "", unknownBecause: (err as Error).message };
    }
  }

  /**
   * Forgets a host. Refused while a VM is recorded on it or held by a migration that ended
   * there after its switch-over (it may run there), or a migration to or from it is not final.
   */
  async deregister(hostId: string): Promise<void> {
    if (!hostId) throw new ControlError("invalid", "host_id is required");
    const cur = await readJson<HostRecord>(this.store, KEYS.host(hostId));
    if (!cur) throw new ControlError("not-found", `unknown host ${hostId}`);
    const migrations = await scanJson<MigrationRecord>(this.store, KEYS.migrationPrefix);
    const holder = new Map(migrations.map((m) => [m.migration_id, m]));
    const vms = (await scanJson<VmRecord>(this.store, KEYS.vmPrefix))
      .filter((v) => v.host_id === hostId || holder.get(v.migration_id)?.destination_host_id === hostId)
      .map((v) => v.vm_id);
    const moving = migrations
      .filter((m) => !isFinal(m.state) && (m.source_host_id === hostId || m.destination_host_id === hostId))
      .map((m) => `${m.migration_id} of ${m.vm_id}`);
    if (vms.length + moving.length > 0)
      throw new ControlError(
        "precondition",
        `host ${hostId} cannot be deregistered: ${[
          ...(vms.length ? [`VMs on it (${vms.join(", ")})`] : []),
          ...(moving.length ? [`migrations to or from it (${moving.join(", ")})`] : []),
        ].join("; ")}`,
      );
    // Only the record read above: a host registered again meanwhile stays.
    if (!(await this.store.compareAndDelete(KEYS.host(hostId), cur.raw)))
      throw new ControlError("unavailable", `host ${hostId} changed meanwhile: retry`);
  }
}
