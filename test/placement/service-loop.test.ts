// `vmhop placement serve --plan-interval-s … --auto-apply` (embedded store) driven by
// `vmhop placement replay`: the loop plans on its own and publishes accepted plans.
import * as assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import {
  PlacementServiceClient,
  type Plan,
  PlanState,
  type WatchDecisionsResponse,
} from "../../gen/vmhop/v1/placement.js";
import { call } from "../../services/common/grpc/call.js";
import { startService } from "../../testbed/service-process.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";

test("the planning loop accepts plans on its own; replay drives a running service", async () => {
  const tmp = tempDir("vmhop-placement-loop-");
  // Four light VMs (types 2500, 2000, 1000, 500 MIPS at 10 %): first fit spreads them on two
  // hosts, so consolidation has something to do.
  const line = (n: string) => [n, ...Array(288).fill("10")].join("\t");
  writeFileSync(join(tmp.path, "d1.tsv"), `${["a", "b", "c", "d"].map(line).join("\n")}\n`);
  const serve = await startService({
    name: "placement serve",
    args: ["placement", "serve", "--grpc", "127.0.0.1:0", "--plan-interval-s=0.2", "--auto-apply"],
  });
  try {
    assert.equal(serve.ready.store, "memory");
    const client = new PlacementServiceClient(serve.grpc, grpc.credentials.createInsecure());
    const stream = client.watchDecisions({});
    const accepted = new Promise<Plan>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no accepted plan within 10 s")), 10_000);
      stream.on("data", (r: WatchDecisionsResponse) => {
        if (r.plan?.state !== PlanState.PLAN_STATE_ACCEPTED) return;
        clearTimeout(timer);
        resolve(r.plan);
      });
      stream.on("error", () => {});
    });
    await new Promise((resolve) => stream.once("metadata", resolve));
    // Two G5 hosts with a light VM each: the loop (nobody asks) plans one move and a sleep.
    const hosts = ["h1", "h3"].map((hostId) => ({
      hostId,
      model: "G5",
      cpuCapacityMips: 0,
      memoryMib: 4096,
      cpuUtilization: 0.1,
      asleep: false,
    }));
    const vms = [
      { vmId: "big", hostId: "h1", cpuRequestedMips: 2500, memoryMib: 870 },
      { vmId: "small", hostId: "h3", cpuRequestedMips: 500, memoryMib: 613 },
    ].map((v) => ({ ...v, cpuUtilization: 0.3, dirtyRateMibPerS: 0, migratingToHostId: "" }));
    await call(client, "reportLoad", { hosts, vms, timeUnixMs: 0 });
    const p = await accepted;
    stream.cancel();
    assert.deepEqual(
      p.moves.map((m) => [m.vmId, m.fromHostId, m.toHostId]),
      [["small", "h3", "h1"]],
    );
    assert.deepEqual(p.hostsToSleep, ["h3"]);
    client.close();

    // replay: the day's first round finds the first-fit placement and consolidates it.
    const { stdout } = await promisify(execFile)(process.execPath, [
      "bin/vmhop.js",
      "placement",
      "replay",
      "--server",
      serve.grpc,
      "--traces",
      tmp.path,
      "--day",
      "d1",
      "--rounds",
      "3",
      "--hosts",
      "4",
    ]);
    const r = JSON.parse(stdout);
    assert.equal(r.rounds, 3);
    assert.ok(r.moves >= 1, `replay moved ${r.moves} VMs`);
    assert.ok(r.plan_ms_p99 >= r.plan_ms_p50);
  } finally {
    assert.equal(await serve.stop(), 0);
    tmp.cleanup();
  }
});

test.run();
