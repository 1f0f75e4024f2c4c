// Test fixtures: real page-servers (PageHost behind its gRPC server, as `vmhop page serve`
// runs it) and a control-plane behind real gRPC, on free ports and unique folders.
import { join } from "node:path";
import type { Migration } from "../../gen/vmhop/v1/control.js";
import { MigrationMode } from "../../gen/vmhop/v1/page.js";
import { type RunningGrpcServer, startGrpcServer } from "../../services/common/grpc/server.js";
import { silentLogger } from "../../services/common/log.js";
import type { Store } from "../../services/common/store/index.js";
import { ControlClient } from "../../services/control-plane/client.js";
import { ControlPlane, type ControlPlaneOptions } from "../../services/control-plane/control-plane.js";
import type { ExecutorOptions } from "../../services/control-plane/executor.js";
import { controlPlaneService } from "../../services/control-plane/grpc.js";
import type { MigrationRecord } from "../../services/control-plane/records.js";
import { type HostRecord, KEYS } from "../../services/control-plane/records.js";
import { pageService } from "../../services/page-server/grpc/service.js";
import { PageHost, type PageHostOptions } from "../../services/page-server/host.js";
import { until } from "../helpers/wait.js";

export interface PageServerHandle {
  host: PageHost;
  grpc: RunningGrpcServer;
  address: string;
  close(): Promise<void>;
}

export async function startPageServer(
  dir: string,
  name: string,
  listen = "127.0.0.1:0",
  hostOpts: Partial<PageHostOptions> = {},
): Promise<PageServerHandle> {
  const host = new PageHost({ runRoot: join(dir, name), log: silentLogger, ...hostOpts });
  await host.open();
  const grpc = await startGrpcServer({
    serviceName: name,
    listen,
    services: [pageService(host)],
    log: silentLogger,
  });
  return {
    host,
    grpc,
    address: grpc.address,
    close: async () => {
      await grpc.shutdown(1000);
      await host.close();
    },
  };
}

export interface ControlPlaneHandle {
  cp: ControlPlane;
  client: ControlClient;
  address: string;
  /** Stops serving and driving; recorded migrations stay for the next control-plane. */
  close(): Promise<void>;
}

export async function startControlPlane(
  store: Store,
  executor?: ExecutorOptions,
  /** Further options (allowUnsafePrecopy, power, a logger to read). */
  opts: ControlPlaneOptions = {},
): Promise<ControlPlaneHandle> {
  const cp = new ControlPlane(store, { reachMs: 1500, executor, repairRetryMs: 200, ...opts });
  const grpc = await startGrpcServer({
    serviceName: "control-plane",
    listen: "127.0.0.1:0",
    services: [controlPlaneService(cp, opts.log ?? silentLogger)],
    log: silentLogger,
  });
  await cp.open();
  const client = new ControlClient(grpc.address);
  return {
    cp,
    client,
    address: grpc.address,
    close: async () => {
      client.close();
      cp.close();
      await grpc.shutdown(1000);
    },
  };
}

export function host(hostId: string, pageServerAddress: string) {
  return {
    hostId,
    site: "",
    pageServerAddress,
    blockServerAddress: "",
    blockNbdAddress: "",
    cpus: 2,
    memoryMib: 4096,
    asleep: false,
  };
}

/**
 * A host recorded straight in the store, as RegisterHost leaves it: for hosts whose page-server
 * is down (RegisterHost refuses one that does not answer) or shares another host's address.
 */
export async function plantHost(
  store: Store,
  hostId: string,
  pageServerAddress: string,
  extra: Partial<HostRecord> = {},
): Promise<void> {
  const rec: HostRecord = {
    host_id: hostId,
    site: "",
    page_server_address: pageServerAddress,
    block_server_address: "",
    block_nbd_address: "",
    cpus: 2,
    memory_mib: 4096,
    asleep: false,
    ...extra,
  };
  await store.set(KEYS.host(hostId), JSON.stringify(rec));
}

/** Waits (bounded) until a migration is final (done, failed, cancelled); returns its record. */
export function migrationEnd(client: ControlClient, id: string, ms = 300_000): Promise<Migration> {
  return until(
    `migration ${id} to end`,
    async () => {
      const m = await client.getMigration(id);
      return ["done", "failed", "cancelled"].includes(m.state) ? m : undefined;
    },
    ms,
    200,
  );
}

/**
 * A post-copy migration record as the executor leaves it in `state` (a to `destination`), for a
 * test to plant in a store: when each state it passed was entered.
 */
export function plantedMigration(
  id: string,
  vmId: string,
  state: MigrationRecord["state"],
  destination = "b",
): MigrationRecord {
  const now = Date.now();
  return {
    migration_id: id,
    request_id: "",
    vm_id: vmId,
    source_host_id: "a",
    destination_host_id: destination,
    mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
    state,
    fencing_token: 1,
    error: "",
    bytes_sent: 0,
    downtime_ms: 0,
    created_unix_ms: now,
    updated_unix_ms: now,
    entered_unix_ms: { pending: now, [state]: now },
  };
}
