// `vmhop placement simulate|policies`: offline scoring of placement policies on traces.
import { parseArgs } from "node:util";
import { CliError } from "../cli/errors.js";
import { ConfigError, type OptionSpecs, parseConfig } from "../common/config.js";
import type { DayMetrics } from "./metrics/summary.js";
import { DEFAULT_POLICY, listPolicies } from "./policies/registry.js";
import { replayDay } from "./service/replay.js";
import { serve, serveSpecs } from "./service/serve.js";
import { type RunResult, runDays } from "./sim/run-days.js";
import { loadDay } from "./traces/load.js";
import { TraceError } from "./traces/trace.js";

const USAGE = `usage: vmhop placement <command>

commands:
  simulate --traces DIR [--days A,B] [--policy NAME] [--cost-model cloudsim|postcopy]
           [--seed N] [--hosts N] [--json]
           replay a day of traces per day (DIR/<day>.tsv or DIR/<day>/ one file per VM)
           and print energy, SLATAH, PDM, SLAV, ESV and migrations per day and their mean
  policies [--json]   list policy names (default policy: ${DEFAULT_POLICY})
  serve [--grpc 127.0.0.1:7404] [--store redis://HOST:PORT] [--policy NAME]
        [--cost-model cloudsim|postcopy] [--plan-interval-s N [--auto-apply]]
           the gRPC PlacementService (vmhop placement serve --help for every option)
  replay --server HOST:PORT --traces DIR --day D [--rounds N] [--hosts N] [--policy NAME]
           play a trace day into a running service as host agents would (moves carried
           out at once), print ComputePlan p50/p99 as JSON`;

/** `simulate --json`: {days: [{day, …metrics}], mean: {…metrics}}, fractions not percent. */
export type JsonMetric = "energy_kwh" | "slatah" | "pdm" | "slav" | "esv" | "migrations" | "plan_ms_p99";
export type JsonDay = { day: string } & Record<JsonMetric, number>;

const JSON_METRICS: readonly JsonMetric[] = [
  "energy_kwh",
  "slatah",
  "pdm",
  "slav",
  "esv",
  "migrations",
  "plan_ms_p99",
];

export function toJson(r: RunResult): { days: JsonDay[]; mean: Record<JsonMetric, number> } {
  const pick = (m: Omit<DayMetrics, "day">) =>
    Object.fromEntries(JSON_METRICS.map((k) => [k, m[k]])) as Record<JsonMetric, number>;
  return { days: r.days.map((d) => ({ day: d.day, ...pick(d) })), mean: pick(r.mean) };
}

function formatTable(r: RunResult): string {
  const head = [
    "day",
    "energy_kWh",
    "migrations",
    "SLATAH_%",
    "PDM_%",
    "SLAV",
    "ESV",
    "shutdowns",
    "plan_p99_ms",
  ];
  const row = (day: string, m: Omit<DayMetrics, "day">) => [
    day,
    m.energy_kwh.toFixed(2),
    m.migrations.toFixed(0),
    (m.slatah * 100).toFixed(2),
    (m.pdm * 100).toFixed(3),
    m.slav.toExponential(3),
    m.esv.toExponential(3),
    m.host_shutdowns.toFixed(0),
    m.plan_ms_p99.toFixed(1),
  ];
  const rows = [head, ...r.days.map((d) => row(d.day, d)), row("mean", r.mean)];
  const w = head.map((_, i) => Math.max(...rows.map((x) => x[i].length)));
  const lines = rows.map((x) =>
    x
      .map((v, i) => v.padEnd(w[i]))
      .join("  ")
      .trimEnd(),
  );
  return [`policy ${r.policy}, cost model ${r.costModel}`, ...lines].join("\n");
}

function intOption(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^[0-9]+$/.test(v))
    throw new CliError(`--${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
  return Number(v);
}

async function simulate(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        traces: { type: "string" },
        days: { type: "string" },
        policy: { type: "string", default: DEFAULT_POLICY },
        "cost-model": { type: "string", default: "cloudsim" },
        seed: { type: "string" },
        hosts: { type: "string" },
        json: { type: "boolean", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new CliError(`${(e as Error).message}\n${USAGE}`);
  }
  if (typeof values.traces !== "string") throw new CliError(`simulate needs --traces DIR\n${USAGE}`);
  const cost = values["cost-model"] as string;
  if (cost !== "cloudsim" && cost !== "postcopy")
    throw new CliError(`--cost-model must be cloudsim or postcopy, got ${JSON.stringify(cost)}`);
  const days =
    typeof values.days === "string"
      ? values.days
          .split(",")
          .map((d) => d.trim())
          .filter(Boolean)
      : undefined;
  let result: RunResult;
  try {
    result = runDays({
      traces: values.traces,
      days,
      policy: values.policy as string,
      costModel: cost,
      seed: intOption(values.seed as string | undefined, "seed"),
      hosts: intOption(values.hosts as string | undefined, "hosts"),
    });
  } catch (e) {
    if (e instanceof CliError) throw e;
    if (e instanceof TraceError || e instanceof Error) throw new CliError(e.message);
    throw e;
  }
  console.log(values.json ? JSON.stringify(toJson(result)) : formatTable(result));
  return 0;
}

function policies(argv: string[]): number {
  const list = listPolicies();
  if (argv.includes("--json")) console.log(JSON.stringify(list));
  else console.log(list.map((p) => `${p.name.padEnd(14)} ${p.describe}`).join("\n"));
  return 0;
}

const replaySpecs = {
  server: { type: "string", default: "127.0.0.1:7404", describe: "PlacementService address" },
  traces: { type: "string", describe: "trace directory" },
  day: { type: "string", describe: "day to play" },
  rounds: { type: "number", describe: "rounds (default: every sample of the day)" },
  hosts: { type: "number", default: 800, describe: "hosts" },
  policy: { type: "string", default: "", describe: "policy (default: the service's)" },
} satisfies OptionSpecs;

async function replay(argv: string[]): Promise<number> {
  const o = parseConfig(replaySpecs, argv);
  if (!o.traces || !o.day) throw new CliError(`replay needs --traces DIR and --day D\n${USAGE}`);
  const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
  const pick = (xs: number[], q: number) => sorted(xs)[Math.max(0, Math.ceil(q * xs.length) - 1)] ?? 0;
  let r: Awaited<ReturnType<typeof replayDay>>;
  try {
    r = await replayDay(o.server!, loadDay(o.traces, o.day), {
      rounds: o.rounds,
      hosts: o.hosts,
      policy: o.policy,
    });
  } catch (e) {
    throw new CliError((e as Error).message);
  }
  console.log(
    JSON.stringify({
      rounds: r.rounds,
      moves: r.moves,
      plan_ms_p50: pick(r.rpcMs, 0.5),
      plan_ms_p99: pick(r.rpcMs, 0.99),
      compute_ms_p99: pick(r.computeMs, 0.99),
    }),
  );
  return 0;
}

export async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(USAGE);
    return 0;
  }
  if (cmd === "simulate") return simulate(rest);
  if (cmd === "policies") return policies(rest);
  if (cmd === "serve" || cmd === "replay") {
    try {
      if (cmd === "replay") return await replay(rest);
      return await serve(parseConfig(serveSpecs, rest));
    } catch (err) {
      if (err instanceof ConfigError) throw new CliError(`${err.message}\n${USAGE}`);
      throw err;
    }
  }
  throw new CliError(`unknown placement command ${JSON.stringify(cmd)}\n${USAGE}`);
}
