// PlacementService.ApplyPlan through a real control-plane (gRPC, no QEMU): moves the
// control-plane refuses (unknown VM, stale plan) and a host it does not know end the plan
// FAILED with each reason recorded; the per-move outcome shows in GetPlan. A host to wake whose
// power driver fails is marked failed and the move goes to a spare host woken instead. The successful
// path with a real VM is test/control-plane/e2e.test.ts.
import { join } from "node:path";
import * as assert from "uvu/assert";
import {
  type ApplyPlanResponse,
  type PlacementServiceClient,
  type Plan,
  PlanState,
} from "../../gen/vmhop/v1/placement.js";
import { call } from "../../services/common/grpc/call.js";
import { MemoryStore } from "../../services/common/store/index.js";
import { KEYS } from "../../services/control-plane/records.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { host, plantHost, startControlPlane, startPageServer } from "../control-plane/fixtures.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { LOAD_HOSTS, reportScenarioLoad, startPlacement } from "./fixtures.js";

const dir = tempDir("vmhop-apply-");
const closers: (() => Promise<void>)[] = [];
test.after(async () => {
  for (const c of closers.reverse()) await c();
  dir.cleanup();
});

async function setUp() {
  const cpStore = new MemoryStore();
  const page = await startPageServer(dir.path, "apply-page");
  const cp = await startControlPlane(cpStore);
  const placement = await startPlacement(new MemoryStore(), cp.address);
  closers.push(async () => {
    await placement.close();
    await cp.close();
    await page.close();
  });
  // The scenario's awake hosts only: h1 and h3.
  await reportScenarioLoad(
    placement.client,
    LOAD_HOSTS.filter((h) => !h.asleep),
  );
  return { pc: placement.client, cp, cpStore, page };
}

async function planAndApply(
  pc: PlacementServiceClient,
): Promise<{ applied: ApplyPlanResponse; final: Plan }> {
  const plan = (await call(pc, "computePlan", { policy: "", costModel: "" })).plan!;
  assert.equal(
    plan.moves.map((m) => [m.vmId, m.fromHostId, m.toHostId]),
    [["small", "h3", "h1"]],
  );
  const applied = await call(pc, "applyPlan", { planId: plan.planId });
  for (;;) {
    const p = (await call(pc, "getPlan", { planId: plan.planId })).plan!;
    if (p.state !== PlanState.PLAN_STATE_APPLYING) return { applied, final: p };
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("refused moves and an unknown host to sleep: the plan ends FAILED with each reason", async () => {
  const { pc, cp, cpStore, page } = await setUp();
  // The control-plane knows h1 only, and no VM "small".
  await cp.client.registerHost(host("h1", page.address));
  const { applied, final } = await planAndApply(pc);
  assert.equal(applied.migrationIds, []);
  assert.match(applied.message, /started 0 of 1 migrations through the control-plane/);
  assert.is(final.state, PlanState.PLAN_STATE_FAILED);
  assert.equal(
    final.moves.map((m) => [m.vmId, m.state, m.migrationId]),
    [["small", "failed", ""]],
  );
  assert.match(final.moves[0].error, /unknown VM small/);
  assert.equal(final.warnings, ["host h3 not switched off: unknown host h3"]);

  // A plan whose VM has since moved elsewhere is stale: its move fails, nothing migrates.
  // Hosts sharing h1's page-server (RegisterHost refuses that): recorded straight in the store.
  await plantHost(cpStore, "h3", page.address);
  await plantHost(cpStore, "h7", page.address);
  await cpStore.set(
    KEYS.vm("small"),
    JSON.stringify({
      vm_id: "small",
      spec: { vmId: "small" },
      host_id: "h7",
      migration_id: "",
      fencing_token: 0,
    }),
  );
  const stale = await planAndApply(pc);
  assert.is(stale.final.state, PlanState.PLAN_STATE_FAILED);
  assert.match(stale.final.moves[0].error, /VM small is on h7, not h3: the plan is stale/);
  assert.equal(await cp.client.listMigrations(), []);
  // h3 has no VM in the control-plane: recorded asleep even though the move failed.
  assert.equal(stale.final.warnings, []);
  assert.equal(
    (await cp.client.listHosts()).filter((h) => h.asleep).map((h) => h.hostId),
    ["h3"],
  );
});

test("a host that does not wake: marked failed, its move goes to a spare host woken instead", async () => {
  const cpStore = new MemoryStore();
  const page = await startPageServer(dir.path, "wake-page");
  const cp = await startControlPlane(cpStore, undefined, { power: { wakeTimeoutMs: 1500, pollMs: 100 } });
  const placement = await startPlacement(new MemoryStore(), cp.address);
  closers.push(async () => {
    await placement.close();
    await cp.close();
    await page.close();
  });
  // h2's BMC never answers; h4 wakes (its state in a file).
  const state = join(dir.path, "h4.state");
  await cp.client.registerHost(host("h1", page.address));
  // h2 and h4 share h1's page-server: recorded straight in the store (one id per page-server).
  await plantHost(cpStore, "h2", page.address, {
    power: { driver: "command", params: { on: "echo 'BMC unreachable' >&2; exit 1", off: "true" } },
  });
  await plantHost(cpStore, "h4", page.address, {
    power: {
      driver: "command",
      params: { on: `echo on > ${state}`, off: `echo off > ${state}`, status: `cat ${state}` },
    },
  });
  await cp.client.powerHost("h2", "off");
  await cp.client.powerHost("h4", "off");
  // h1 (G5) is overloaded; h2 (G5) and h4 (G4) sleep: the policy wakes the more efficient h2.
  const hosts = [
    { hostId: "h1", model: "G5", asleep: false },
    { hostId: "h2", model: "G5", asleep: true },
    { hostId: "h4", model: "G4", asleep: true },
  ].map((h) => ({ ...h, cpuCapacityMips: 0, memoryMib: 4096, cpuUtilization: 0 }));
  const vms = [
    { vmId: "v1", cpuRequestedMips: 2500, cpuUtilization: 1 },
    { vmId: "v2", cpuRequestedMips: 2500, cpuUtilization: 1 },
    { vmId: "v3", cpuRequestedMips: 1000, cpuUtilization: 0.6 },
  ].map((v) => ({ ...v, hostId: "h1", memoryMib: 870, dirtyRateMibPerS: 1, migratingToHostId: "" }));
  for (let i = 0; i < 12; i++) await call(placement.client, "reportLoad", { hosts, vms, timeUnixMs: 0 });
  const plan = (await call(placement.client, "computePlan", { policy: "", costModel: "" })).plan!;
  assert.equal(plan.hostsToWake, ["h2"]);
  assert.equal(
    plan.moves.map((m) => [m.fromHostId, m.toHostId]),
    [["h1", "h2"]],
  );
  const vm = plan.moves[0].vmId;
  await call(placement.client, "applyPlan", { planId: plan.planId });
  const final = await until(
    "the plan to end",
    async () => {
      const p = (await call(placement.client, "getPlan", { planId: plan.planId })).plan!;
      return p.state === PlanState.PLAN_STATE_APPLYING ? undefined : p;
    },
    60_000,
    100,
  );
  // h2 marked failed with the BMC's reason; h4 woken and the move sent there (the control-plane
  // then refuses it: no VM of that name runs, which fails the plan).
  const h2 = (await cp.client.listHosts()).find((h) => h.hostId === "h2")!;
  assert.equal([h2.asleep, h2.powerState], [true, "failed"]);
  assert.match(h2.powerError, /waking: .*exited 1: BMC unreachable/);
  const h4 = (await cp.client.listHosts()).find((h) => h.hostId === "h4")!;
  assert.equal([h4.asleep, h4.powerState], [false, "on"]);
  assert.equal(
    final.moves.map((m) => [m.vmId, m.toHostId]),
    [[vm, "h4"]],
  );
  assert.match(final.moves[0].error, new RegExp(`unknown VM ${vm}`));
  assert.equal(final.hostsToWake, ["h4"]);
  assert.match(final.warnings[0], /^host h2 did not wake: .*BMC unreachable/);
  assert.is(final.warnings[1], `move of ${vm}: h2 did not wake, to h4 instead`);
  assert.is(final.state, PlanState.PLAN_STATE_FAILED);
});

test.run();
