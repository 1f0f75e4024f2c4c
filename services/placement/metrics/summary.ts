// The README's metrics (CloudSim's Helper definitions): SLATAH and PDM as one ratio each over
// the whole data centre, SLAV = SLATAH × PDM, ESV = energy × SLAV. Fractions, not percent.
import type { HostLog, VmLog } from "./history.js";

export interface DayMetrics {
  day: string;
  energy_kwh: number;
  slatah: number;
  pdm: number;
  slav: number;
  esv: number;
  migrations: number;
  host_shutdowns: number;
  plan_ms_p99: number;
}

export type MetricName = Exclude<keyof DayMetrics, "day">;
export const METRIC_NAMES: readonly MetricName[] = [
  "energy_kwh",
  "slatah",
  "pdm",
  "slav",
  "esv",
  "migrations",
  "host_shutdowns",
  "plan_ms_p99",
];

const ratio = (a: number, b: number) => (b > 0 ? a / b : 0);

export function slatah(hosts: readonly HostLog[]): number {
  let sla = 0;
  let active = 0;
  for (const h of hosts) {
    sla += h.slaTime;
    active += h.activeTime;
  }
  return ratio(sla, active);
}

export function pdm(vms: readonly VmLog[]): number {
  let short = 0;
  let req = 0;
  for (const v of vms) {
    short += v.migrationShortfallMipsS;
    req += v.requestedMipsS;
  }
  return ratio(short, req);
}

export function summarise(
  day: string,
  energyJ: number,
  hosts: readonly HostLog[],
  vms: readonly VmLog[],
  migrations: number,
  planMsP99: number,
): DayMetrics {
  const s = slatah(hosts);
  const p = pdm(vms);
  const energy = energyJ / 3_600_000;
  return {
    day,
    energy_kwh: energy,
    slatah: s,
    pdm: p,
    slav: s * p,
    esv: energy * s * p,
    migrations,
    host_shutdowns: hosts.reduce((n, h) => n + h.shutdowns, 0),
    plan_ms_p99: planMsP99,
  };
}

/** Mean of each metric over days. */
export function meanMetrics(days: readonly DayMetrics[]): Omit<DayMetrics, "day"> {
  const out = {} as Record<MetricName, number>;
  for (const k of METRIC_NAMES) out[k] = days.length ? days.reduce((s, d) => s + d[k], 0) / days.length : 0;
  return out;
}

export function p99(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(0.99 * s.length) - 1)];
}
