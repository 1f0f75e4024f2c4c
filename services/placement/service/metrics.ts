// The placement service's Prometheus metrics: how long plans take to compute, and the energy
// and SLA figures the last plan predicts (power before and after, overloaded hosts).
import { Counter, Gauge, Histogram } from "prom-client";
import { registry } from "../../common/metrics/registry.js";
import type { PlanRecord } from "./plans.js";

const planSeconds = new Histogram({
  name: "vmhop_placement_plan_duration_seconds",
  help: "Time to compute a plan (the policy and its predicted effect), by policy",
  labelNames: ["policy"],
  buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  registers: [registry],
});

const plans = new Counter({
  name: "vmhop_placement_plans_total",
  help: "Plans computed, by policy",
  labelNames: ["policy"],
  registers: [registry],
});

const power = new Gauge({
  name: "vmhop_placement_last_plan_power_watts",
  help: "The last plan's predicted cluster power draw, before and after its moves",
  labelNames: ["when"],
  registers: [registry],
});

const overloaded = new Gauge({
  name: "vmhop_placement_last_plan_overloaded_hosts",
  help: "The last plan's overloaded hosts (SLA at risk), before and after its moves",
  labelNames: ["when"],
  registers: [registry],
});

const moves = new Gauge({
  name: "vmhop_placement_last_plan_moves",
  help: "Migrations the last plan asks for",
  registers: [registry],
});

const hosts = new Gauge({
  name: "vmhop_placement_last_plan_hosts",
  help: "Hosts the last plan puts to sleep or wakes",
  labelNames: ["action"],
  registers: [registry],
});

/** Records a computed plan. */
export function countPlan(p: PlanRecord): void {
  planSeconds.observe({ policy: p.policy }, p.compute_ms / 1000);
  plans.inc({ policy: p.policy });
  power.set({ when: "before" }, p.power_watts_before);
  power.set({ when: "after" }, p.power_watts_after);
  overloaded.set({ when: "before" }, p.overloaded_hosts_before);
  overloaded.set({ when: "after" }, p.overloaded_hosts_after);
  moves.set(p.moves.length);
  hosts.set({ action: "sleep" }, p.hosts_to_sleep.length);
  hosts.set({ action: "wake" }, p.hosts_to_wake.length);
}
