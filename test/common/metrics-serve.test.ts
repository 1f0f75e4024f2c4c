// Every `vmhop … serve` without a kernel or QEMU to set up (control-plane, placement,
// page-server) serves /metrics as a real process: its ready line names the address, a scrape
// holds the default process metrics and the service's own, and real work moves them (a plan
// computed by placement); `--metrics none` serves nothing. The block-server's and netreach's are
// in test/block-server/metrics.test.ts and test/netreach/grpc.test.ts; migrations on real QEMU
// in test/control-plane/e2e.test.ts.
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { PlacementServiceClient } from "../../gen/vmhop/v1/placement.js";
import { call } from "../../services/common/grpc/call.js";
import { type ServiceProcess, startService } from "../../testbed/service-process.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { scrape } from "../helpers/metrics.js";
import { test } from "../helpers/uvu.js";
import { reportScenarioLoad } from "../placement/fixtures.js";

const dir = tempDir("vmhop-metrics-serve-");
const running: ServiceProcess[] = [];

test.after(async () => {
  for (const s of running) await s.stop().catch(() => undefined);
  dir.cleanup();
});

const SERVICES: Record<string, { args: string[]; own: string }> = {
  "control-plane": { args: ["control", "serve", "--grpc", "127.0.0.1:0"], own: "vmhop_migrations_total" },
  placement: { args: ["placement", "serve", "--grpc", "127.0.0.1:0"], own: "vmhop_placement_plans_total" },
  "page-server": {
    args: ["page", "serve", "--listen", "127.0.0.1:0", "--run-dir", dir.path],
    own: "vmhop_page_memory_sent_bytes_total",
  },
};

async function start(name: string, metrics: string): Promise<ServiceProcess> {
  const s = await startService({
    name,
    args: [...SERVICES[name].args, "--metrics", metrics],
    readyMs: 60_000,
  });
  running.push(s);
  return s;
}

for (const name of Object.keys(SERVICES))
  test(`${name}: /metrics on --metrics HOST:PORT with its own and the process metrics`, async () => {
    const s = await start(name, "127.0.0.1:0");
    const address = s.ready.metrics as string;
    assert.match(address, /^127\.0\.0\.1:\d+$/);
    const m = await scrape(address);
    assert.ok(m.declared.has(SERVICES[name].own), `${name} declares ${SERVICES[name].own}`);
    assert.ok((m.value("process_resident_memory_bytes") ?? 0) > 0, "default process metrics");
    const other = await fetch(`http://${address}/`);
    assert.is(other.status, 404);
    await other.text();
    assert.is(await s.stop(), 0, "stops cleanly with its metrics server");
    running.splice(running.indexOf(s), 1);
  });

test("placement: a computed plan's time, energy and SLA figures", async () => {
  const s = await start("placement", "127.0.0.1:0");
  const client = new PlacementServiceClient(s.grpc, grpc.credentials.createInsecure());
  try {
    await reportScenarioLoad(client);
    const plan = (await call(client, "computePlan", { policy: "", costModel: "" })).plan!;
    const m = await scrape(s.ready.metrics as string);
    const p = { policy: plan.policy };
    assert.is(m.value("vmhop_placement_plans_total", p), 1);
    assert.is(m.value("vmhop_placement_plan_duration_seconds_count", p), 1);
    assert.is(m.value("vmhop_placement_plan_duration_seconds_sum", p), plan.computeMs / 1000);
    assert.is(
      m.value("vmhop_placement_last_plan_power_watts", { when: "before" }),
      plan.predictedPowerWattsBefore,
    );
    assert.is(
      m.value("vmhop_placement_last_plan_power_watts", { when: "after" }),
      plan.predictedPowerWattsAfter,
    );
    assert.is(
      m.value("vmhop_placement_last_plan_overloaded_hosts", { when: "before" }),
      plan.overloadedHostsBefore,
    );
    assert.is(m.value("vmhop_placement_last_plan_moves"), plan.moves.length);
    assert.is(m.value("vmhop_placement_last_plan_hosts", { action: "sleep" }), plan.hostsToSleep.length);
  } finally {
    client.close();
  }
});

test("--metrics none: the ready line says null", async () => {
  for (const name of Object.keys(SERVICES)) {
    const s = await start(name, "none");
    assert.is(s.ready.metrics, null, name);
  }
});

test.run();
