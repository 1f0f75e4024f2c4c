// Shared benchmark bookkeeping (conventions in ../shared/design/BENCH.md): repeated runs,
// median with min/max, a readable table, and bench/results/NAME.json.
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";

export type Metrics = Record<string, number | boolean | string | null>;

export interface BenchCase {
  case: string;
  subject: string;
  metrics: Metrics;
  /** Per-run metrics, kept so min/max survive in the JSON. */
  runs: Metrics[];
  min?: Metrics;
  max?: Metrics;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** Folds per-run metrics into one case: numeric metrics by median (min/max kept), others from the last run. */
export function summarise(caseName: string, subject: string, runs: Metrics[]): BenchCase {
  const metrics: Metrics = {};
  const min: Metrics = {};
  const max: Metrics = {};
  const keys = new Set(runs.flatMap((r) => Object.keys(r)));
  for (const k of keys) {
    const nums = runs
      .map((r) => r[k])
      .filter((v): v is number => typeof v === "number" && Number.isFinite(v));
    if (nums.length === runs.length && nums.length > 0) {
      metrics[k] = median(nums);
      min[k] = Math.min(...nums);
      max[k] = Math.max(...nums);
    } else {
      metrics[k] = runs.at(-1)?.[k] ?? null;
    }
  }
  return { case: caseName, subject, metrics, runs, min, max };
}

function qemuVersion(): string | undefined {
  try {
    return execFileSync("qemu-img", ["--version"], { encoding: "utf8" }).split("\n")[0];
  } catch {
    return undefined;
  }
}

/** The system's default TCP congestion control: loopback figures depend on it (BBR paces). */
function tcpCongestionControl(): string | undefined {
  try {
    return readFileSync("/proc/sys/net/ipv4/tcp_congestion_control", "utf8").trim();
  } catch {
    return undefined;
  }
}

export function writeResults(name: string, cases: BenchCase[], extra: Record<string, unknown> = {}): string {
  const dir = join(new URL("..", import.meta.url).pathname, "results");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}.json`);
  const doc = {
    name,
    when: new Date().toISOString(),
    host: {
      cores: cpus().length,
      node: process.version,
      qemu: qemuVersion(),
      tcp_congestion_control: tcpCongestionControl(),
    },
    cases,
    ...extra,
  };
  writeFileSync(file, JSON.stringify(doc, null, 2) + "\n");
  return file;
}

/** Prints rows as an aligned text table. */
export function printTable(rows: Record<string, string | number>[]): void {
  if (rows.length === 0) return;
  const cols = Object.keys(rows[0]);
  const fmt = (v: string | number) =>
    typeof v === "number" ? (Math.abs(v) >= 100 || Number.isInteger(v) ? v.toFixed(0) : v.toPrecision(3)) : v;
  const cells = rows.map((r) => cols.map((c) => String(fmt(r[c] ?? ""))));
  const widths = cols.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i].length)));
  console.log(cols.map((c, i) => c.padEnd(widths[i])).join("  "));
  for (const r of cells) console.log(r.map((v, i) => v.padEnd(widths[i])).join("  "));
}

export function hasFlag(args: string[], flag: string): boolean {
  return args.includes(flag);
}

export function flagValue(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}
