// Clairvoyant lower bound on a day's energy: at each scheduling instant, the least power
// that serves the whole requested CPU with the data centre's host models, no migrations and
// no SLA loss, integrated over the day as the simulator integrates host power.
//
// Per host model the cost of serving x MIPS is 0 when off and P(x / capacity) when on; its
// lower convex envelope from the origin is the cheapest any mix of such hosts can do (a host
// switched on pays its idle power, so the first segment runs from "off" to the point of best
// average watts per MIPS; later segments are the curve's steeper marginal stretches). The
// bound fills every model's envelope segments in order of marginal watts per MIPS, each
// segment holding (hosts of the model × its MIPS span): the most efficient hosts first, the
// last host fractional. It is the exact minimum of that relaxation (the curves need not be
// convex), so no placement that serves the demand with real VMs on whole hosts draws less.
import type { PowerModel } from "../power/spec-power.js";
import type { DayTraces } from "../traces/trace.js";
import { DAY_S, DEFAULT_HOSTS, hostTypeOf, INTERVAL_S, vmTypeOf } from "./setup.js";
import { START_S } from "./simulate.js";
import { utilizationAt } from "./trace-demand.js";

/** Identical hosts: how many, their capacity, their power curve. */
export interface HostPool {
  count: number;
  mips: number;
  power: PowerModel;
}

/** One straight stretch of a model's envelope: `mips` more served at `wattsPerMips` each. */
export interface EnvelopeSegment {
  wattsPerMips: number;
  mips: number;
}

export interface PowerBound {
  watts: number;
  /** Demand beyond the hosts' total capacity (then every host runs at full power). */
  unservedMips: number;
}

/**
 * Sampling step of the power curve (utilisation). SPECpower curves are linear between 10 %
 * points; sampling finer adds points on the same lines, which leaves the envelope unchanged.
 */
const STEP = 0.01;

/** Lower convex envelope of one host's cost (0 at 0 MIPS: off), as segments of rising slope. */
export function envelope(mips: number, power: PowerModel): EnvelopeSegment[] {
  if (!(mips > 0)) throw new RangeError(`host capacity must be positive, got ${mips}`);
  const n = Math.round(1 / STEP);
  const pts: [number, number][] = [[0, 0]];
  for (let i = 1; i <= n; i++) pts.push([(i / n) * mips, power.power(i / n)]);
  // Andrew's monotone chain, lower hull only (points already sorted by x).
  const hull: [number, number][] = [];
  for (const p of pts) {
    while (hull.length >= 2) {
      const [a, b] = [hull[hull.length - 2], hull[hull.length - 1]];
      const cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]);
      if (cross > 0) break; // strictly convex turn: b stays
      hull.pop();
    }
    hull.push(p);
  }
  const out: EnvelopeSegment[] = [];
  for (let i = 1; i < hull.length; i++) {
    const dx = hull[i][0] - hull[i - 1][0];
    const slope = (hull[i][1] - hull[i - 1][1]) / dx;
    const last = out.at(-1);
    // Points on one straight stretch of the curve can survive the hull test by rounding.
    if (last && Math.abs(slope - last.wattsPerMips) <= 1e-9 * Math.abs(slope)) last.mips += dx;
    else out.push({ wattsPerMips: slope, mips: dx });
  }
  return out;
}

/** The pools' envelope segments, pooled (× host count) and sorted cheapest first. */
export function fillOrder(pools: readonly HostPool[]): EnvelopeSegment[] {
  const segs: EnvelopeSegment[] = [];
  for (const p of pools) {
    if (!(Number.isInteger(p.count) && p.count >= 0))
      throw new RangeError(`host count must be a whole number ≥ 0, got ${p.count}`);
    if (p.count === 0) continue;
    for (const s of envelope(p.mips, p.power))
      segs.push({ wattsPerMips: s.wattsPerMips, mips: s.mips * p.count });
  }
  return segs.sort((a, b) => a.wattsPerMips - b.wattsPerMips);
}

/** Least power (W) serving `demandMips` with the pools (`order` = fillOrder(pools), precomputed). */
export function powerBound(order: readonly EnvelopeSegment[], demandMips: number): PowerBound {
  if (!(demandMips >= 0)) throw new RangeError(`demand must be ≥ 0 MIPS, got ${demandMips}`);
  let left = demandMips;
  let watts = 0;
  for (const s of order) {
    if (left <= 0) break;
    const x = Math.min(left, s.mips);
    watts += x * s.wattsPerMips;
    left -= x;
  }
  return { watts, unservedMips: Math.max(0, left) };
}

/** The simulated data centre's hosts (host i has type i mod 2) as pools. */
export function dataCentrePools(hosts = DEFAULT_HOSTS): HostPool[] {
  const pools = new Map<string, HostPool>();
  for (let i = 0; i < hosts; i++) {
    const t = hostTypeOf(i);
    const p = pools.get(t.name) ?? { count: 0, mips: t.cores * t.mipsPerCore, power: t.power };
    p.count++;
    pools.set(t.name, p);
  }
  return [...pools.values()];
}

/** Scheduling instants of a day, as the simulator's loop visits them. */
export function schedulingInstants(): number[] {
  const out: number[] = [];
  for (let t = START_S + INTERVAL_S; t <= DAY_S; t += INTERVAL_S) out.push(t);
  return out;
}

/**
 * Requested MIPS at each scheduling instant, as the simulator requests it: VM i's samples ×
 * its type's MIPS, interpolated, and nothing once its demand has been exactly 0 at an instant
 * (the simulator ends such a VM for good, as CloudSim does).
 */
export function requestedMips(day: DayTraces, instants = schedulingInstants()): Float64Array {
  const out = new Float64Array(instants.length);
  const n = day.vms.length;
  day.vms.forEach((v, i) => {
    const mips = vmTypeOf(i, n).mips;
    for (let k = 0; k < instants.length; k++) {
      const u = utilizationAt(v.samples, instants[k], INTERVAL_S);
      if (u === 0) break;
      out[k] += u * mips;
    }
  });
  return out;
}

export interface EnergyBound {
  energy_kwh: number;
  /** Largest requested MIPS at an instant. */
  peak_mips: number;
  /** MIPS·s the hosts could not serve even all at full power (0 on the shared days). */
  unserved_mips_s: number;
}

/**
 * Trapezoids of the bound's power between consecutive instants, as the simulator integrates
 * host power; the first span costs nothing there (every host's previous utilisation is 0),
 * so it is left out here too. The simulator also splits a span at migration completions;
 * while demand stays within the cheapest segment (the shared days' peak is ~12 % of the G5
 * hosts' capacity) the bound is linear in demand and such a split cannot lower it.
 */
export function energyBound(
  demand: ArrayLike<number>,
  pools: readonly HostPool[],
  spanS = INTERVAL_S,
): EnergyBound {
  const order = fillOrder(pools);
  let joules = 0;
  let unserved = 0;
  let peak = 0;
  let prev: PowerBound | undefined;
  for (let k = 0; k < demand.length; k++) {
    const b = powerBound(order, demand[k]);
    peak = Math.max(peak, demand[k]);
    if (prev) {
      joules += ((prev.watts + b.watts) / 2) * spanS;
      unserved += ((prev.unservedMips + b.unservedMips) / 2) * spanS;
    }
    prev = b;
  }
  return { energy_kwh: joules / 3_600_000, peak_mips: peak, unserved_mips_s: unserved };
}

/** The bound for one trace day in the simulated data centre (`hosts` hosts, as simulateDay). */
export function dayEnergyBound(day: DayTraces, hosts = DEFAULT_HOSTS): EnergyBound {
  return energyBound(requestedMips(day), dataCentrePools(hosts));
}
