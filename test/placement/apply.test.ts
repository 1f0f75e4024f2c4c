// PlacementService.ApplyPlan through a real control-plane (gRPC, no QEMU): moves the
// control-plane refuses (unknown VM, stale plan) and a host it does not know end the plan
// FAILED with each reason recorded; the per-move outcome shows in GetPlan. The successful
// path with a real VM is test/control-plane/e2e.test.ts.
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

test.run();
