// Predicted effect of a plan on a snapshot: data-centre power with today's demand (SPECpower
// models) and overloaded hosts, before and after the moves. Each VM's demand counts on the
// host it ends on (a migrating VM on its destination): the steady state the plan aims at.
import { HOST_TYPES } from "./setup.js";
import type { ClusterSnapshot, PlanResult } from "./snapshot.js";

export interface PlanEffect {
  powerBeforeW: number;
  powerAfterW: number;
  overloadedBefore: number;
  overloadedAfter: number;
  /** Snapshot indices of the hosts overloaded before the plan. */
  overloadedHostsBefore: number[];
}

function state(s: ClusterSnapshot, hostOf: (vmIndex: number) => number) {
  const demand = new Array<number>(s.hosts.length).fill(0);
  const count = new Array<number>(s.hosts.length).fill(0);
  s.vms.forEach((v, i) => {
    const h = hostOf(i);
    demand[h] += v.reqMips;
    count[h]++;
  });
  let power = 0;
  const overloaded: number[] = [];
  s.hosts.forEach((h, i) => {
    const t = HOST_TYPES[h.type];
    const capacity = t.cores * t.mipsPerCore;
    if (demand[i] > capacity) overloaded.push(i);
    // An empty host sleeps (draws 0) unless reported awake, as the plan's sleep list assumes.
    if (count[i] > 0 || h.asleep === false) power += t.power.power(Math.min(1, demand[i] / capacity));
  });
  return { power, overloaded };
}

export function predictEffect(s: ClusterSnapshot, plan: PlanResult): PlanEffect {
  const now = (i: number) => s.vms[i].dest ?? s.vms[i].host;
  const before = state(s, now);
  const moved = new Map(plan.moves.map((m) => [m.vm, m.to]));
  const after = state(s, (i) => moved.get(s.vms[i].id) ?? now(i));
  // Hosts put to sleep draw nothing after, even if reported awake.
  const sleeping = new Set(plan.sleep);
  let powerAfterW = after.power;
  for (const id of sleeping) {
    const h = s.hosts[id];
    if (h.asleep === false && !s.vms.some((_, i) => (moved.get(s.vms[i].id) ?? now(i)) === id))
      powerAfterW -= HOST_TYPES[h.type].power.power(0);
  }
  return {
    powerBeforeW: before.power,
    powerAfterW,
    overloadedBefore: before.overloaded.length,
    overloadedAfter: after.overloaded.length,
    overloadedHostsBefore: before.overloaded,
  };
}
