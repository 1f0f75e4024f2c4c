// A ControlPlaneService client as promises: for the CLI verbs and the placement service.
import * as grpc from "@grpc/grpc-js";
import {
  type ClusterVm,
  ControlPlaneServiceClient,
  Host,
  type ListHostsResponse,
  MigrateVmRequest,
  type Migration,
  type VmDisk,
  type VmNetwork,
  type WatchMigrationsResponse,
} from "../../gen/vmhop/v1/control.js";
import type { Vm, VmSpec } from "../../gen/vmhop/v1/page.js";
import { isFinal, type MigrationState } from "./states.js";

type Callback<Res> = (err: grpc.ServiceError | null, res: Res) => void;

export const DEFAULT_CONTROL_GRPC = "127.0.0.1:7405";

/** Power calls wait for the host: longer than the control-plane's default wake and off limits (300 s). */
export const POWER_TIMEOUT_MS = 360_000;

/** The control-plane answered NOT_FOUND (an unknown VM, host or migration). */
export function isNotFound(err: unknown): boolean {
  return (err as { code?: unknown } | undefined)?.code === grpc.status.NOT_FOUND;
}

export class ControlClient {
  private readonly client: ControlPlaneServiceClient;

  constructor(
    readonly address: string,
    private readonly timeoutMs = 30_000,
  ) {
    this.client = new ControlPlaneServiceClient(address, grpc.credentials.createInsecure(), {
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 2000,
    });
  }

  private call<Res>(
    fn: (m: grpc.Metadata, o: grpc.CallOptions, cb: Callback<Res>) => unknown,
    timeoutMs = this.timeoutMs,
  ): Promise<Res> {
    return new Promise((resolve, reject) =>
      fn(new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
        err ? reject(err) : resolve(res),
      ),
    );
  }

  /** Unset fields take their defaults (no power driver, not asleep). */
  async registerHost(h: Partial<Host> & Pick<Host, "hostId" | "pageServerAddress">): Promise<Host> {
    const host = Host.fromPartial(h);
    return (await this.call<{ host?: Host }>((m, o, cb) => this.client.registerHost({ host }, m, o, cb)))
      .host!;
  }

  async deregisterHost(hostId: string): Promise<void> {
    await this.call((m, o, cb) => this.client.deregisterHost({ hostId }, m, o, cb));
  }

  async listHosts(): Promise<Host[]> {
    return (await this.hostsStatus()).hosts;
  }

  /** The hosts with the leading replica and the leader's liveness of each host. */
  hostsStatus(): Promise<ListHostsResponse> {
    return this.call<ListHostsResponse>((m, o, cb) => this.client.listHosts({}, m, o, cb));
  }

  /** Switches the host through its power driver: waking may take minutes (POWER_TIMEOUT_MS). */
  async setHostAsleep(hostId: string, asleep: boolean, timeoutMs = POWER_TIMEOUT_MS): Promise<Host> {
    return (
      await this.call<{ host?: Host }>(
        (m, o, cb) => this.client.setHostAsleep({ hostId, asleep }, m, o, cb),
        timeoutMs,
      )
    ).host!;
  }

  /** on | off | status; on/off wait for the host (the control-plane's own limits, default 5 min). */
  async powerHost(
    hostId: string,
    action: string,
    timeoutMs = POWER_TIMEOUT_MS,
  ): Promise<{ host: Host; state: string }> {
    const r = await this.call<{ host?: Host; state: string }>(
      (m, o, cb) => this.client.powerHost({ hostId, action }, m, o, cb),
      timeoutMs,
    );
    return { host: r.host!, state: r.state };
  }

  /**
   * `network`: the VM's home addresses (netreach keeps them reachable wherever it runs);
   * `disk`: a new export on the host's block-server (spec.diskNbdUrl then empty).
   */
  async createVm(spec: VmSpec, hostId: string, network?: VmNetwork, disk?: VmDisk): Promise<Vm> {
    return (
      await this.call<{ vm?: Vm }>((m, o, cb) =>
        this.client.createVm({ spec, hostId, network, disk }, m, o, cb),
      )
    ).vm!;
  }

  async deleteVm(vmId: string): Promise<void> {
    await this.call((m, o, cb) => this.client.deleteVm({ vmId }, m, o, cb));
  }

  async getVm(vmId: string): Promise<ClusterVm> {
    return (await this.call<{ vm?: ClusterVm }>((m, o, cb) => this.client.getVm({ vmId }, m, o, cb))).vm!;
  }

  async listVms(hostId = ""): Promise<ClusterVm[]> {
    return (await this.call<{ vms: ClusterVm[] }>((m, o, cb) => this.client.listVms({ hostId }, m, o, cb)))
      .vms;
  }

  /** Unset fields take their defaults (mode and storage: the service's choice). */
  async migrateVm(
    req: Partial<MigrateVmRequest> & Pick<MigrateVmRequest, "vmId" | "destinationHostId">,
  ): Promise<Migration> {
    const full = MigrateVmRequest.fromPartial(req);
    return (await this.call<{ migration?: Migration }>((m, o, cb) => this.client.migrateVm(full, m, o, cb)))
      .migration!;
  }

  async getMigration(migrationId: string): Promise<Migration> {
    return (
      await this.call<{ migration?: Migration }>((m, o, cb) =>
        this.client.getMigration({ migrationId }, m, o, cb),
      )
    ).migration!;
  }

  async listMigrations(vmId = ""): Promise<Migration[]> {
    return (
      await this.call<{ migrations: Migration[] }>((m, o, cb) =>
        this.client.listMigrations({ vmId }, m, o, cb),
      )
    ).migrations;
  }

  async cancelMigration(migrationId: string): Promise<Migration> {
    return (
      await this.call<{ migration?: Migration }>((m, o, cb) =>
        this.client.cancelMigration({ migrationId }, m, o, cb),
      )
    ).migration!;
  }

  /** Follows one migration until it is final (done, failed or cancelled); onUpdate sees each record. */
  waitForMigration(migrationId: string, onUpdate: (m: Migration) => void = () => {}): Promise<Migration> {
    return new Promise((resolve, reject) => {
      let last: Migration | undefined;
      const stream = this.client.watchMigrations({ migrationId });
      stream.on("data", (r: WatchMigrationsResponse) => {
        last = r.migration!;
        onUpdate(last);
      });
      stream.on("error", reject);
      stream.on("end", () =>
        last && isFinal(last.state as MigrationState)
          ? resolve(last)
          : reject(new Error(`control-plane ${this.address}: watch of ${migrationId} ended early`)),
      );
    });
  }

  close(): void {
    this.client.close();
  }
}
