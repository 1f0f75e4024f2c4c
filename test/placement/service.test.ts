// PlacementService over real gRPC, run as `vmhop placement serve` against a real Redis:
// health/reflection, load → plan on a scenario with a known best answer, bad input, the
// accept/publish path, and plans and load durable across a service and a Redis restart.
import * as assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import {
  type ApplyPlanResponse,
  type ListPoliciesResponse,
  PlacementServiceClient,
  type Plan,
  PlanState,
  type ReportLoadRequest,
  type WatchDecisionsResponse,
} from "../../gen/vmhop/v1/placement.js";
import { call } from "../../services/common/grpc/call.js";
import { type ServiceProcess, startService as startServiceProcess } from "../../testbed/service-process.js";
import { rejects, rejectsWithStatus } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { healthCheck, reflectionListServices } from "../helpers/grpc.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { suite } from "../helpers/uvu.js";
import { LOAD_HOSTS, LOAD_VMS } from "./fixtures.js";

const test = gate(suite("placement service"), ["redis-server"], "placement service on real Redis");

interface Served {
  proc: ServiceProcess;
  client: PlacementServiceClient;
}

let redis: RedisHandle;
let svc: Served;

async function startService(extra: string[] = []): Promise<Served> {
  const proc = await startServiceProcess({
    name: "placement serve",
    args: ["placement", "serve", "--grpc", "127.0.0.1:0", "--store", redis.url, ...extra],
  });
  assert.equal(proc.ready.store, "redis");
  return { proc, client: new PlacementServiceClient(proc.grpc, grpc.credentials.createInsecure()) };
}

async function stopService(s: Served): Promise<number | null> {
  s.client.close();
  return s.proc.stop();
}

const c = () => svc.client;
const report = (req: Partial<ReportLoadRequest>) =>
  call(c(), "reportLoad", { hosts: [], vms: [], timeUnixMs: 0, ...req });
const computePlan = async (policy = "", costModel = ""): Promise<Plan> =>
  (await call(c(), "computePlan", { policy, costModel })).plan!;
const applyPlan = (planId: string): Promise<ApplyPlanResponse> => call(c(), "applyPlan", { planId });
const listPolicies = (): Promise<ListPoliciesResponse> => call(c(), "listPolicies", {});

test.before(async () => {
  redis = await startRedis();
  svc = await startService();
});

test.after(async () => {
  if (svc) await stopService(svc);
  await redis?.stop();
});

test("serves health and reflection; lists the policies", async () => {
  assert.equal(await healthCheck(svc.proc.grpc), "SERVING");
  assert.equal(await healthCheck(svc.proc.grpc, "vmhop.v1.PlacementService"), "SERVING");
  assert.deepEqual(await reflectionListServices(svc.proc.grpc), [
    "grpc.health.v1.Health",
    "vmhop.v1.PlacementService",
  ]);
  const r = await listPolicies();
  assert.equal(r.defaultPolicy, "vmhop");
  const names = r.policies.map((p) => p.name);
  for (const n of ["vmhop", "dvfs", "ga", "IQR-MMT-1.5", "LR-MMT-1.2"]) assert.ok(names.includes(n), n);
});

test("bad input is refused with INVALID_ARGUMENT naming the field, and nothing is recorded", async () => {
  const bad = (vms: object[], hosts: object[] = LOAD_HOSTS) =>
    report({ hosts: hosts as never, vms: vms as never });
  await rejectsWithStatus(
    bad([{ ...LOAD_VMS[0], cpuUtilization: 1.5 }]),
    grpc.status.INVALID_ARGUMENT,
    /^vms\[0\]\.cpu_utilization/,
  );
  await rejectsWithStatus(
    bad([LOAD_VMS[0], { ...LOAD_VMS[1], vmId: "" }]),
    grpc.status.INVALID_ARGUMENT,
    /^vms\[1\]\.vm_id/,
  );
  await rejectsWithStatus(
    bad([LOAD_VMS[0], { ...LOAD_VMS[0] }]),
    grpc.status.INVALID_ARGUMENT,
    /vms\[1\]\.vm_id "big" is reported twice/,
  );
  await rejectsWithStatus(
    bad([], [{ ...LOAD_HOSTS[0], model: "G9" }]),
    grpc.status.INVALID_ARGUMENT,
    /^hosts\[0\]\.model must be one of G4, G5/,
  );
  await rejectsWithStatus(
    bad([], [{ ...LOAD_HOSTS[1], cpuCapacityMips: 9999 }]),
    grpc.status.INVALID_ARGUMENT,
    /^hosts\[0\]\.cpu_capacity_mips must be 0 or 5320/,
  );
  await rejectsWithStatus(report({}), grpc.status.INVALID_ARGUMENT, /nothing to report/);
  await rejectsWithStatus(
    computePlan("no-such-policy"),
    grpc.status.INVALID_ARGUMENT,
    /^policy: unknown policy/,
  );
  await rejectsWithStatus(computePlan("", "precopy"), grpc.status.INVALID_ARGUMENT, /^cost_model must be/);
  await rejectsWithStatus(applyPlan(""), grpc.status.INVALID_ARGUMENT, /plan_id is required/);
  await rejectsWithStatus(applyPlan("p-999"), grpc.status.NOT_FOUND, /plan p-999 not found/);
  // The refused reports left no load behind: an empty plan.
  const p = await computePlan();
  assert.equal(p.moves.length, 0);
  assert.equal(p.predictedPowerWattsBefore, 0);
});

let planId = "";

test("load reported over an hour gives the known best plan, with its predicted effect", async () => {
  for (let i = 0; i < 12; i++) {
    const r = await report({ hosts: LOAD_HOSTS, vms: LOAD_VMS });
    assert.deepEqual(r, { hostsRecorded: 4, vmsRecorded: 2 });
  }
  const p = await computePlan();
  assert.equal(p.policy, "vmhop");
  assert.equal(p.state, PlanState.PLAN_STATE_PROPOSED);
  assert.deepEqual(
    p.moves.map((m) => [m.vmId, m.fromHostId, m.toHostId, m.reason]),
    [["small", "h3", "h1", "consolidate"]],
  );
  // CloudSim cost: 613 MB at half of 1 Gbit/s (62.5 MB/s).
  assert.ok(
    Math.abs(p.moves[0].predictedMigrationS - 613 / 62.5) < 1e-9,
    String(p.moves[0].predictedMigrationS),
  );
  assert.deepEqual(p.hostsToSleep, ["h3"]);
  assert.deepEqual(p.hostsToWake, []);
  // G5 at 2000/5320 and at 200/5320 before; at 2200/5320 after (SPECpower, linear).
  const g5 = (u: number) => {
    const t = [93.7, 97, 101, 105, 110, 116, 121, 125, 129, 133, 135];
    const i = Math.floor(u * 10);
    return t[i] + (t[i + 1] - t[i]) * (u * 10 - i);
  };
  assert.ok(Math.abs(p.predictedPowerWattsBefore - (g5(2000 / 5320) + g5(200 / 5320))) < 1e-9);
  assert.ok(Math.abs(p.predictedPowerWattsAfter - g5(2200 / 5320)) < 1e-9);
  assert.equal(p.overloadedHostsAfter, 0);
  assert.deepEqual(p.warnings, []);
  // The post-copy cost model plans the same move with a shorter predicted migration.
  const q = await computePlan("", "postcopy");
  assert.equal(q.costModel, "postcopy");
  assert.deepEqual(
    q.moves.map((m) => m.vmId),
    ["small"],
  );
  assert.ok(q.moves[0].predictedMigrationS < p.moves[0].predictedMigrationS);
  planId = p.planId;
});

test("a VM on a host that never reported is left out with a warning", async () => {
  await report({ vms: [{ ...LOAD_VMS[1], vmId: "orphan", hostId: "h9" }] });
  const p = await computePlan("dvfs");
  assert.deepEqual(p.moves, []);
  assert.deepEqual(p.warnings, ["VM orphan: host h9 has not reported, VM left out"]);
});

test("ApplyPlan accepts and publishes (no control-plane: no migrations); stale plans are refused", async () => {
  const seen: Plan[] = [];
  const stream = c().watchDecisions({});
  stream.on("data", (r: WatchDecisionsResponse) => seen.push(r.plan!));
  stream.on("error", () => {});
  await new Promise((resolve) => stream.once("metadata", resolve));
  const older = planId;
  const newer = await computePlan();
  const r = await applyPlan(newer.planId);
  assert.equal(r.plan?.state, PlanState.PLAN_STATE_ACCEPTED);
  // No --control-plane: accepted and published only, and the response says so.
  assert.deepEqual(r.migrationIds, []);
  assert.match(r.message, /no control-plane configured.*nothing was migrated/);
  assert.deepEqual(r.migrationIds, []);
  // Idempotent: accepting again answers the same.
  assert.equal((await applyPlan(newer.planId)).plan?.state, PlanState.PLAN_STATE_ACCEPTED);
  await rejectsWithStatus(applyPlan(older), grpc.status.FAILED_PRECONDITION, /older than the accepted plan/);
  for (let i = 0; i < 100 && seen.length < 2; i++) await new Promise((res) => setTimeout(res, 20));
  stream.cancel();
  assert.deepEqual(
    seen.slice(0, 2).map((p) => [p.planId, p.state]),
    [
      [newer.planId, PlanState.PLAN_STATE_PROPOSED],
      [newer.planId, PlanState.PLAN_STATE_ACCEPTED],
    ],
  );
  planId = newer.planId;
});

test("plans and load survive a service restart and a Redis restart", async () => {
  assert.equal(await stopService(svc), 0, "graceful shutdown exits 0");
  await redis.restart();
  svc = await startService();
  const r = await applyPlan(planId);
  assert.equal(r.plan?.state, PlanState.PLAN_STATE_ACCEPTED);
  assert.deepEqual(
    r.plan?.moves.map((m) => m.vmId),
    ["small"],
  );
  // Load is still there (no new report) and plan ids keep counting.
  const p = await computePlan();
  assert.deepEqual(
    p.moves.map((m) => m.vmId),
    ["small"],
  );
  assert.ok(Number(p.planId.slice(2)) > Number(planId.slice(2)), `${p.planId} after ${planId}`);
});

test("serve refuses a bad policy and bad options with a clear message", async () => {
  for (const [args, msg] of [
    [["--policy", "nope"], /unknown policy "nope"/],
    [["--cost-model", "x"], /unknown cost model "x"/],
    [["--plan-interval-s=-1"], /--plan-interval-s must be >= 0/],
    [["--bogus"], /Unknown option '--bogus'/],
  ] as const) {
    await rejects(
      startServiceProcess({
        name: "placement serve",
        args: ["placement", "serve", "--grpc", "127.0.0.1:0", ...args],
      }),
      msg,
    );
  }
});

test.run();
