// gRPC ControlPlaneService over a ControlPlane: records to messages; errors answer their kind's
// status (common/grpc/status.ts).
import * as grpc from "@grpc/grpc-js";
import {
  type ClusterVm,
  type ControlPlaneServiceServer,
  ControlPlaneServiceService,
  type Host,
  HostLiveness,
  type Migration,
  StorageMode,
  type VmDisk,
  type WatchMigrationsRequest,
  type WatchMigrationsResponse,
} from "../../gen/vmhop/v1/control.js";
import { failStream, type ServiceRegistration, unary } from "../common/grpc/server.js";
import type { Logger } from "../common/log.js";
import { type ClusterVmView, ControlError, type ControlPlane, type NewDisk } from "./control-plane.js";
import { faultLatencyToProto } from "./fault-latency.js";
import type { HostRecord, MigrationRecord } from "./records.js";
import { isFinal } from "./states.js";

const LIVENESS = {
  up: HostLiveness.HOST_LIVENESS_UP,
  suspect: HostLiveness.HOST_LIVENESS_SUSPECT,
  down: HostLiveness.HOST_LIVENESS_DOWN,
} as const;

export function hostToPb(h: HostRecord): Host {
  return {
    hostId: h.host_id,
    site: h.site,
    pageServerAddress: h.page_server_address,
    blockServerAddress: h.block_server_address,
    blockNbdAddress: h.block_nbd_address,
    cpus: h.cpus,
    memoryMib: h.memory_mib,
    asleep: h.asleep,
    power: h.power ? { driver: h.power.driver, params: { ...h.power.params } } : undefined,
    powerState: h.power_state ?? "",
    powerError: h.power_error ?? "",
    powerActions: (h.power_actions ?? []).map((a) => ({
      timeUnixMs: a.time_unix_ms,
      action: a.action,
      result: a.result,
      error: a.error,
    })),
  };
}

/** The request's host; its power state and history are the control-plane's and not taken from it. */
export function hostFromPb(h: Host | undefined): HostRecord {
  if (!h) throw new ControlError("invalid", "host is required");
  return {
    host_id: h.hostId,
    site: h.site,
    page_server_address: h.pageServerAddress,
    block_server_address: h.blockServerAddress,
    block_nbd_address: h.blockNbdAddress,
    cpus: h.cpus,
    memory_mib: h.memoryMib,
    asleep: h.asleep,
    ...(h.power?.driver ? { power: { driver: h.power.driver, params: { ...h.power.params } } } : {}),
  };
}

function diskFromPb(d: VmDisk | undefined): NewDisk | undefined {
  const src = d?.source;
  if (!src) return undefined;
  return src.$case === "imagePath"
    ? { imagePath: src.value, sizeBytes: 0 }
    : { imagePath: "", sizeBytes: src.value };
}

function vmToPb(v: ClusterVmView): ClusterVm {
  return {
    vm: v.vm,
    hostId: v.record.host_id,
    // "create" is the registry's own hold while a VM starts, not a migration.
    migrationId: v.record.migration_id === "create" ? "" : v.record.migration_id,
    fencingToken: v.record.fencing_token,
    network: v.record.network
      ? { homeIpv6: v.record.network.home_ipv6, homeIpv4: v.record.network.home_ipv4 }
      : undefined,
  };
}

export function migrationToPb(m: MigrationRecord): Migration {
  return {
    migrationId: m.migration_id,
    vmId: m.vm_id,
    sourceHostId: m.source_host_id,
    destinationHostId: m.destination_host_id,
    mode: m.mode,
    state: m.state,
    fencingToken: m.fencing_token,
    error: m.error,
    createdUnixMs: m.created_unix_ms,
    updatedUnixMs: m.updated_unix_ms,
    requestId: m.request_id,
    bytesSent: m.bytes_sent,
    downtimeMs: m.downtime_ms,
    storage: m.storage ?? StorageMode.STORAGE_MODE_SHARED,
    lost: m.lost ?? "",
    driverGeneration: m.driver_generation ?? 0,
    memory: m.memory
      ? {
          bytesRemaining: m.memory.bytes_remaining,
          pagesRequestedOnFault: m.memory.pages_requested_on_fault,
          pagesSentAhead: m.memory.pages_sent_ahead ?? 0,
          bytesBeforeResume: m.memory.bytes_before_resume,
          resumedUnixMs: m.memory.resumed_unix_ms,
          faultLatency: faultLatencyToProto(m.memory.fault_latency),
          destinationWarmQemu: m.memory.destination_warm_qemu,
          recoveries: m.memory.recoveries ?? 0,
        }
      : undefined,
    disk: m.disk
      ? {
          destinationExport: m.disk.destination_export,
          sourceUrl: m.disk.source_url,
          blocksTotal: m.disk.blocks_total,
          blocksLocal: m.disk.blocks_local,
          bytesFetchedOnDemand: m.disk.bytes_fetched_on_demand,
          bytesFetchedBackground: m.disk.bytes_fetched_background,
          promoted: m.disk.promoted,
        }
      : undefined,
    enteredUnixMs: Object.fromEntries(Object.entries(m.entered_unix_ms ?? {})) as Record<string, number>,
    network: m.network
      ? {
          state: m.network.state,
          reason: m.network.reason,
          generation: m.network.generation,
          handoverMode: m.network.mode,
          fromSite: m.network.from_site,
          toSite: m.network.to_site,
          port: m.network.port,
          enteredUnixMs: Object.fromEntries(Object.entries(m.network.entered_unix_ms)) as Record<
            string,
            number
          >,
        }
      : undefined,
    progress: (m.progress ?? []).map((p) => ({
      atUnixMs: p.at_unix_ms,
      bytesSent: p.bytes_sent,
      bytesRemaining: p.bytes_remaining,
      blocksLocal: p.blocks_local,
      blocksTotal: p.blocks_total,
    })),
  };
}

export function controlPlaneService(cp: ControlPlane, log: Logger): ServiceRegistration {
  const impl: ControlPlaneServiceServer = {
    registerHost: unary(async (req) => {
      const h = await cp.registerHost(hostFromPb(req.host));
      log.info("host registered", { host: h.host_id, page: h.page_server_address });
      return { host: hostToPb(h) };
    }),
    deregisterHost: unary(async (req) => {
      await cp.deregisterHost(req.hostId);
      log.info("host deregistered", { host: req.hostId });
      return {};
    }),
    listHosts: unary(async () => {
      const st = await cp.hostsStatus();
      return {
        hosts: st.hosts.map(hostToPb),
        leaderReplica: st.leader?.holder ?? "",
        leaderGeneration: st.leader?.generation ?? 0,
        liveness: st.liveness.map((l) => ({
          hostId: l.host_id,
          state: LIVENESS[l.state],
          detail: l.detail,
          checkedUnixMs: l.checked_unix_ms,
          missed: l.missed,
        })),
      };
    }),
    setHostAsleep: unary(async (req) => ({ host: hostToPb(await cp.setHostAsleep(req.hostId, req.asleep)) })),
    powerHost: unary(async (req) => {
      const r = await cp.powerHost(req.hostId, req.action);
      return { host: hostToPb(r.host), state: r.state };
    }),
    createVm: unary(async (req) => {
      const v = await cp.createVm(
        req.spec,
        req.hostId,
        req.network && { home_ipv6: req.network.homeIpv6, home_ipv4: req.network.homeIpv4 },
        diskFromPb(req.disk),
      );
      log.info("VM created", { vm: v.record.vm_id, host: v.record.host_id });
      return { vm: v.vm, hostId: v.record.host_id };
    }),
    deleteVm: unary(async (req) => {
      await cp.deleteVm(req.vmId);
      log.info("VM deleted", { vm: req.vmId });
      return {};
    }),
    getVm: unary(async (req) => ({ vm: vmToPb(await cp.getVm(req.vmId)) })),
    listVms: unary(async (req) => ({ vms: (await cp.listVms(req.hostId)).map(vmToPb) })),
    migrateVm: unary(async (req) => {
      const m = await cp.migrateVm({
        vmId: req.vmId,
        destinationHostId: req.destinationHostId,
        mode: req.mode,
        requestId: req.requestId,
        storage: req.storage,
        handoverMode: req.handoverMode,
      });
      return { migration: migrationToPb(m) };
    }),
    getMigration: unary(async (req) => ({
      migration: migrationToPb(await cp.getMigration(req.migrationId)),
    })),
    listMigrations: unary(async (req) => ({
      migrations: (await cp.listMigrations(req.vmId)).map(migrationToPb),
    })),
    cancelMigration: unary(async (req) => ({
      migration: migrationToPb(await cp.cancelMigration(req.migrationId)),
    })),
    watchMigrations: (call: grpc.ServerWritableStream<WatchMigrationsRequest, WatchMigrationsResponse>) => {
      const id = call.request.migrationId;
      let unsubscribe: (() => Promise<void>) | undefined;
      let done = false;
      const end = () => {
        if (done) return;
        done = true;
        unsubscribe?.().catch(() => {});
      };
      const send = (m: MigrationRecord) => {
        if (done) return;
        call.write({ migration: migrationToPb(m) });
        if (id && isFinal(m.state)) {
          end();
          call.end();
        }
      };
      call.on("cancelled", end);
      call.on("close", end);
      cp.watch(id, send).then(
        async (u) => {
          unsubscribe = u;
          if (done) return end();
          // Subscribed first, then the current record: no transition falls in between unseen.
          if (id) {
            try {
              send(await cp.getMigration(id));
            } catch (err) {
              end();
              failStream(call, err); // NOT_FOUND for an unknown migration
            }
          } else call.sendMetadata(new grpc.Metadata());
        },
        (err) => failStream(call, err), // the store's subscribe: UNAVAILABLE
      );
    },
  };
  return {
    name: "vmhop.v1.ControlPlaneService",
    definition: ControlPlaneServiceService,
    implementation: impl as unknown as grpc.UntypedServiceImplementation,
  };
}
