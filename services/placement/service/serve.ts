// `vmhop placement serve`: the PlacementService over gRPC, load and plans in the Store.
import { CliError } from "../../cli/errors.js";
import { serveUntilSignal } from "../../cli/serve-until-signal.js";
import { type Config, helpText, type OptionSpecs } from "../../common/config.js";
import { startGrpcServer } from "../../common/grpc/server.js";
import type { Closer } from "../../common/lifecycle.js";
import { createLogger } from "../../common/log.js";
import { DEFAULT_METRICS, metricsOption, serveMetrics } from "../../common/metrics/flag.js";
import { openStore } from "../../common/store/index.js";
import { ControlClient } from "../../control-plane/client.js";
import { DEFAULT_POLICY, makePolicy } from "../policies/registry.js";
import { costModelByName } from "../sim/cost-model.js";
import { HOST_TYPES } from "../sim/setup.js";
import { resumePlans } from "./apply.js";
import { startLoadCollector } from "./collect.js";
import { placementService } from "./grpc.js";
import { startPlanningLoop } from "./loop.js";

export const DEFAULT_PLACEMENT_GRPC = "127.0.0.1:7404";

export const serveSpecs = {
  grpc: {
    type: "string",
    default: DEFAULT_PLACEMENT_GRPC,
    describe: "gRPC listen address HOST:PORT",
    // Not VMHOP_GRPC: other services on the same host read that one.
    env: "VMHOP_PLACEMENT_GRPC",
  },
  store: { type: "string", describe: "redis://HOST:PORT for shared durable state (default: embedded)" },
  "control-plane": {
    type: "string",
    describe:
      "ControlPlaneService HOST:PORT: ApplyPlan migrates through it (default: none, plans are only accepted)",
    env: "VMHOP_CONTROL",
  },
  policy: { type: "string", default: DEFAULT_POLICY, describe: "policy when a request names none" },
  "cost-model": {
    type: "string",
    default: "cloudsim",
    describe: "migration cost model: cloudsim | postcopy",
  },
  seed: { type: "number", default: 42, describe: "seed for randomised policies" },
  "load-ttl-s": { type: "number", default: 900, describe: "load records expire after this many seconds" },
  "plan-ttl-s": { type: "number", default: 600, describe: "unaccepted plans expire after this many seconds" },
  "plan-interval-s": {
    type: "number",
    default: 0,
    describe: "compute a plan every N seconds (0 = only on request)",
  },
  "auto-apply": {
    type: "boolean",
    default: false,
    describe: "accept each periodic plan that changes anything",
  },
  "collect-load-s": {
    type: "number",
    default: 0,
    describe:
      "every N s, record load from the control-plane: its hosts, its VMs and their QEMU's CPU time (0 = none; needs --control-plane)",
  },
  "vcpu-mips": {
    type: "number",
    default: 2500,
    describe: "with --collect-load-s: MIPS a fully busy vCPU is worth",
  },
  "host-model": {
    type: "string",
    default: "G4",
    describe: "with --collect-load-s: every host's power and capacity model (G4 or G5)",
  },
  metrics: metricsOption(DEFAULT_METRICS.placement),
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

function positive(v: number | undefined, flag: string, allowZero = false): number {
  if (v === undefined || !(allowZero ? v >= 0 : v > 0))
    throw new CliError(`--${flag} must be ${allowZero ? ">= 0" : "> 0"}, got ${v}`);
  return v;
}

export async function serve(o: Config<typeof serveSpecs>): Promise<number> {
  if (o.help) {
    console.log(helpText("usage: vmhop placement serve [options]", serveSpecs));
    return 0;
  }
  // Refuse a bad policy or cost model at start, not at the first plan.
  try {
    makePolicy(o.policy!, { cost: costModelByName(o["cost-model"]!) });
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  const cfg = {
    policy: o.policy!,
    costModel: o["cost-model"]!,
    seed: o.seed,
    loadTtlMs: positive(o["load-ttl-s"], "load-ttl-s") * 1000,
    planTtlMs: positive(o["plan-ttl-s"], "plan-ttl-s") * 1000,
  };
  const interval = positive(o["plan-interval-s"], "plan-interval-s", true);
  const collectS = positive(o["collect-load-s"], "collect-load-s", true);
  if (collectS > 0 && !o["control-plane"])
    throw new CliError("--collect-load-s reads the load from the control-plane: give --control-plane too");
  const vcpuMips = positive(o["vcpu-mips"], "vcpu-mips");
  if (!HOST_TYPES.some((t) => t.name === o["host-model"]))
    throw new CliError(
      `--host-model must be one of ${HOST_TYPES.map((t) => t.name).join(", ")}, got ${o["host-model"]}`,
    );
  const log = createLogger({ svc: "placement" });
  const closers: Closer[] = [];
  return serveUntilSignal(log, closers, async () => {
    const metrics = await serveMetrics(o.metrics, DEFAULT_METRICS.placement, log, closers);
    const store = await openStore(o.store);
    closers.push({ name: "store", close: () => store.close() });
    const cp = o["control-plane"] ? new ControlClient(o["control-plane"]) : undefined;
    if (cp) closers.push({ name: "control-plane client", close: async () => cp.close() });
    const g = await startGrpcServer({
      serviceName: "placement",
      listen: o.grpc!,
      services: [placementService(store, cfg, log, cp)],
      log,
    });
    closers.push({ name: "grpc", close: () => g.shutdown() });
    let warm = Promise.resolve();
    if (cp && collectS > 0) {
      const c = startLoadCollector(
        store,
        cp,
        { intervalMs: collectS * 1000, vcpuMips, hostModel: o["host-model"]!, ttlMs: cfg.loadTtlMs },
        log,
      );
      closers.push({ name: "load collector", close: () => c.stop() });
      warm = c.warm;
    }
    if (interval > 0) {
      // With its own load collection, planning starts once that has some history.
      let loop: { stop(): Promise<void> } | undefined;
      let stopped = false;
      void warm.then(() => {
        if (stopped) return;
        loop = startPlanningLoop(
          store,
          { ...cfg, ttlMs: cfg.planTtlMs, intervalMs: interval * 1000, autoApply: o["auto-apply"]! },
          log,
          cp,
        );
      });
      closers.push({
        name: "planning loop",
        close: async () => {
          stopped = true;
          await loop?.stop();
        },
      });
    }
    const resumed = cp ? await resumePlans(store, cp, log) : [];
    // One machine-readable ready line on stdout: scripts wait for it.
    console.log(
      JSON.stringify({
        ready: true,
        grpc: g.address,
        store: store.kind,
        policy: cfg.policy,
        cost_model: cfg.costModel,
        control_plane: cp?.address ?? null,
        resumed,
        metrics,
      }),
    );
  });
}
