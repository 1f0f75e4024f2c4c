// The placement scenario the service, apply and control-plane end-to-end tests share, and
// PlacementService run in this process, applying its plans through a control-plane.
import * as grpc from "@grpc/grpc-js";
import { PlacementServiceClient } from "../../gen/vmhop/v1/placement.js";
import { call } from "../../services/common/grpc/call.js";
import { startGrpcServer } from "../../services/common/grpc/server.js";
import { silentLogger } from "../../services/common/log.js";
import type { Store } from "../../services/common/store/index.js";
import { ControlClient } from "../../services/control-plane/client.js";
import { type PlacementConfig, placementService } from "../../services/placement/service/grpc.js";

// Known best answer: h1 (G5, 5320 MIPS) runs a VM at 2000 MIPS, h3 (G5) one at 200 MIPS.
// Moving the small VM onto h1 lets h3 sleep and overloads nothing; h0 and h2 (G4) stay asleep.
export const LOAD_HOSTS = [
  { hostId: "h0", model: "G4", asleep: true },
  { hostId: "h1", model: "G5", asleep: false },
  { hostId: "h2", model: "G4", asleep: true },
  { hostId: "h3", model: "G5", asleep: false },
].map((h) => ({ ...h, cpuCapacityMips: 0, memoryMib: 4096, cpuUtilization: 0 }));
export const LOAD_VMS = [
  { vmId: "big", hostId: "h1", cpuRequestedMips: 2500, memoryMib: 870, cpuUtilization: 0.8 },
  { vmId: "small", hostId: "h3", cpuRequestedMips: 500, memoryMib: 613, cpuUtilization: 0.4 },
].map((v) => ({ ...v, dirtyRateMibPerS: 1, migratingToHostId: "" }));

const CONFIG: PlacementConfig = {
  policy: "vmhop",
  costModel: "cloudsim",
  seed: 42,
  loadTtlMs: 900_000,
  planTtlMs: 600_000,
};

export interface PlacementHandle {
  client: PlacementServiceClient;
  close(): Promise<void>;
}

/** PlacementService on `store`, applying plans through the control-plane at `controlAddress`. */
export async function startPlacement(store: Store, controlAddress: string): Promise<PlacementHandle> {
  const control = new ControlClient(controlAddress);
  const server = await startGrpcServer({
    serviceName: "placement",
    listen: "127.0.0.1:0",
    services: [placementService(store, CONFIG, silentLogger, control)],
    log: silentLogger,
  });
  const client = new PlacementServiceClient(server.address, grpc.credentials.createInsecure());
  return {
    client,
    close: async () => {
      client.close();
      control.close();
      await server.shutdown(1000);
    },
  };
}

/** Reports the scenario's load 12 times: the overload detectors' minimum history (MIN_HISTORY). */
export async function reportScenarioLoad(client: PlacementServiceClient, hosts = LOAD_HOSTS): Promise<void> {
  for (let i = 0; i < 12; i++) await call(client, "reportLoad", { hosts, vms: LOAD_VMS, timeUnixMs: 0 });
}
