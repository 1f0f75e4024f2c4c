// Runs one policy over several days of traces: what the CLI and the benchmark share.
import { type DayMetrics, meanMetrics } from "../metrics/summary.js";
import { makePolicy } from "../policies/registry.js";
import { listDays, loadDay } from "../traces/load.js";
import { costModelByName } from "./cost-model.js";
import { simulateDay } from "./simulate.js";

export interface RunSpec {
  traces: string;
  /** All days under `traces` when absent. */
  days?: string[];
  policy: string;
  costModel?: string;
  seed?: number;
  hosts?: number;
}

export interface RunResult {
  policy: string;
  costModel: string;
  days: DayMetrics[];
  mean: Omit<DayMetrics, "day">;
}

export function runDays(spec: RunSpec): RunResult {
  const cost = costModelByName(spec.costModel ?? "cloudsim");
  const days = spec.days?.length ? spec.days : listDays(spec.traces);
  if (days.length === 0) throw new Error(`no trace days in ${spec.traces}`);
  // Fail on an unknown policy before reading any traces.
  makePolicy(spec.policy, { cost, seed: spec.seed });
  const out: DayMetrics[] = [];
  for (const d of days) {
    // A fresh policy per day: policies may keep state (RNG, history) across rounds.
    const policy = makePolicy(spec.policy, { cost, seed: spec.seed });
    out.push(simulateDay(loadDay(spec.traces, d), policy, { cost, hosts: spec.hosts }));
  }
  return { policy: spec.policy, costModel: cost.name, days: out, mean: meanMetrics(out) };
}
