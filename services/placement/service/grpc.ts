// PlacementService: the gRPC face of load records and plans. Validation lives in load.ts
// and plans.ts (their errors answer their kind's status: common/grpc/status.ts); this layer
// converts messages and streams decisions.
import * as grpc from "@grpc/grpc-js";
import {
  type PlacementServiceServer,
  PlacementServiceService,
  type Plan,
  PlanState,
  type WatchDecisionsRequest,
  type WatchDecisionsResponse,
} from "../../../gen/vmhop/v1/placement.js";
import { failStream, type ServiceRegistration, unary } from "../../common/grpc/server.js";
import type { Logger } from "../../common/log.js";
import type { Store } from "../../common/store/index.js";
import type { ControlClient } from "../../control-plane/client.js";
import { DEFAULT_POLICY, listPolicies } from "../policies/registry.js";
import { applyPlan } from "./apply.js";
import { KEYS } from "./keys.js";
import { recordLoad } from "./load.js";
import { computePlan, getPlan, type PlanRecord } from "./plans.js";

export interface PlacementConfig {
  /** ControlPlaneService address; absent, ApplyPlan only accepts and publishes plans. */
  controlPlane?: string;
  policy: string;
  costModel: string;
  seed?: number;
  loadTtlMs: number;
  planTtlMs: number;
}

const PLAN_STATES: Record<PlanRecord["state"], PlanState> = {
  proposed: PlanState.PLAN_STATE_PROPOSED,
  accepted: PlanState.PLAN_STATE_ACCEPTED,
  applying: PlanState.PLAN_STATE_APPLYING,
  applied: PlanState.PLAN_STATE_APPLIED,
  failed: PlanState.PLAN_STATE_FAILED,
};

export function planToPb(p: PlanRecord): Plan {
  return {
    planId: p.plan_id,
    policy: p.policy,
    moves: p.moves.map((m) => ({
      vmId: m.vm_id,
      fromHostId: m.from_host_id,
      toHostId: m.to_host_id,
      reason: m.reason,
      predictedMigrationS: m.migration_s,
      migrationId: m.migration_id ?? "",
      state: m.state ?? "",
      error: m.error ?? "",
    })),
    hostsToSleep: p.hosts_to_sleep,
    hostsToWake: p.hosts_to_wake,
    predictedPowerWattsBefore: p.power_watts_before,
    predictedPowerWattsAfter: p.power_watts_after,
    computeMs: p.compute_ms,
    state: PLAN_STATES[p.state],
    costModel: p.cost_model,
    createdUnixMs: p.created_unix_ms,
    overloadedHostsBefore: p.overloaded_hosts_before,
    overloadedHostsAfter: p.overloaded_hosts_after,
    warnings: p.warnings,
  };
}

export function placementService(
  store: Store,
  cfg: PlacementConfig,
  log: Logger,
  controlPlane?: ControlClient,
): ServiceRegistration {
  const plan = (policy: string, costModel: string) =>
    computePlan(store, {
      policy: policy || cfg.policy,
      costModel: costModel || cfg.costModel,
      seed: cfg.seed,
      ttlMs: cfg.planTtlMs,
    });
  const impl: PlacementServiceServer = {
    listPolicies: unary(async () => ({
      policies: listPolicies().map((p) => ({ name: p.name, description: p.describe })),
      defaultPolicy: cfg.policy || DEFAULT_POLICY,
    })),
    reportLoad: unary(async (req) => {
      await recordLoad(store, req, { ttlMs: cfg.loadTtlMs });
      return { hostsRecorded: req.hosts.length, vmsRecorded: req.vms.length };
    }),
    computePlan: unary(async (req) => {
      const p = await plan(req.policy, req.costModel);
      log.info("plan computed", { plan: p.plan_id, moves: p.moves.length, ms: p.compute_ms });
      return { plan: planToPb(p) };
    }),
    applyPlan: unary(async (req) => {
      const a = await applyPlan(store, req.planId, controlPlane, log);
      log.info("plan accepted", { plan: a.plan.plan_id, state: a.plan.state, migrations: a.migrationIds });
      return { plan: planToPb(a.plan), migrationIds: a.migrationIds, message: a.message };
    }),
    getPlan: unary(async (req) => ({ plan: planToPb(await getPlan(store, req.planId)) })),
    watchDecisions: (call: grpc.ServerWritableStream<WatchDecisionsRequest, WatchDecisionsResponse>) => {
      let unsubscribe: (() => Promise<void>) | undefined;
      let done = false;
      const end = () => {
        done = true;
        unsubscribe?.().catch(() => {});
      };
      call.on("cancelled", end);
      call.on("close", end);
      store
        .subscribe(KEYS.decisions, (msg) => {
          try {
            call.write({ plan: planToPb(JSON.parse(msg) as PlanRecord) });
          } catch (err) {
            log.warn("bad decision message", { err });
          }
        })
        .then(
          (u) => {
            unsubscribe = u;
            if (done) end();
            // Metadata tells the client the subscription is in place before any decision.
            else call.sendMetadata(new grpc.Metadata());
          },
          (err) => failStream(call, err), // the store's subscribe: UNAVAILABLE
        );
    },
  };
  return {
    name: "vmhop.v1.PlacementService",
    definition: PlacementServiceService,
    implementation: impl as unknown as grpc.UntypedServiceImplementation,
  };
}
