// Trace-driven simulation of one day, reproducing CloudSim's PowerDatacenter event order:
// scheduling instants at 0.1 + 300·k s (the broker submits the workload at 0.1 s); at each,
// every host is updated (energy of the elapsed span, SLA histories), VMs whose demand has
// dropped to zero end (CloudSim's getCompletedVms), then the policy plans. A migration lists
// the VM on both hosts until it completes; each completion is an update instant too.
import { performance } from "node:perf_hooks";
import { createLogger } from "../../common/log.js";
import { HostLog, VmLog } from "../metrics/history.js";
import { type DayMetrics, p99, summarise } from "../metrics/summary.js";
import type { Policy } from "../policies/policy.js";
import type { DayTraces } from "../traces/trace.js";
import {
  Cluster,
  HISTORY_LENGTH,
  type Host,
  inMigration,
  MIGRATION_SOURCE_SHARE,
  migratingIn,
  type Vm,
} from "./cluster.js";
import { CLOUDSIM_COST, type CostModel } from "./cost-model.js";
import { DAY_S, DEFAULT_HOSTS, hostTypeOf, INTERVAL_S, newHost, vmTypeOf } from "./setup.js";
import { utilizationAt } from "./trace-demand.js";

export interface SimOptions {
  hosts?: number;
  cost?: CostModel;
}

const log = createLogger({ svc: "placement", part: "simulator" });

/** Time the broker's workload reaches the data centre (CloudSim's minimum event gap). */
export const START_S = 0.1;

interface Pending {
  time: number;
  seq: number;
  vm: Vm;
}

export function buildCluster(day: DayTraces, hosts = DEFAULT_HOSTS): Cluster {
  const hs: Host[] = [...Array(hosts).keys()].map((i) => newHost(i, hostTypeOf(i)));
  const n = day.vms.length;
  const vms: Vm[] = day.vms.map((tr, i) => {
    const t = vmTypeOf(i, n);
    return {
      id: i,
      name: tr.name,
      mips: t.mips,
      ramMb: t.ramMb,
      bwKbps: t.bwKbps,
      host: -1,
      dest: -1,
      req: t.mips,
      history: [],
      alive: true,
      started: false,
    };
  });
  return new Cluster(hs, vms);
}

export function simulateDay(day: DayTraces, policy: Policy, opts: SimOptions = {}): DayMetrics {
  const cost = opts.cost ?? CLOUDSIM_COST;
  const c = buildCluster(day, opts.hosts);
  const samples = day.vms.map((v) => v.samples);
  const hostLogs = c.hosts.map(() => new HostLog());
  const vmLogs = c.vms.map(() => new VmLog());
  const histTime = new Float64Array(c.vms.length);
  const refreshed = new Float64Array(c.vms.length).fill(-1);

  // As in CloudSim, a VM no host can start is left out of the day (and said so), not fatal.
  const notStarted: string[] = [];
  for (const vm of c.vms) {
    const h = policy.initialHost(c, vm);
    if (h && c.place(h, vm)) vm.host = h.id;
    else {
      vm.alive = false;
      notStarted.push(vm.name);
    }
  }
  if (notStarted.length)
    log.warn("VMs not started: no host fits them", {
      day: day.day,
      policy: policy.name,
      count: notStarted.length,
      first: notStarted.slice(0, 5),
    });
  c.startAll();

  const refresh = (vm: Vm, t: number) => {
    if (refreshed[vm.id] === t) return;
    refreshed[vm.id] = t;
    const u = utilizationAt(samples[vm.id], t, INTERVAL_S);
    vm.req = u * vm.mips;
    if (t > histTime[vm.id] && (t - START_S) % INTERVAL_S === 0) {
      vm.history.unshift(u);
      if (vm.history.length > HISTORY_LENGTH) vm.history.pop();
      histTime[vm.id] = t;
    }
  };

  const updateHost = (h: Host, t: number) => {
    for (const vm of h.vms) refresh(vm, t);
    let util = 0;
    let req = 0;
    for (const vm of h.vms) {
      let a = c.allocated(h, vm);
      if (!migratingIn(h, vm)) {
        vmLogs[vm.id].add(t, a, vm.req, inMigration(vm));
        if (inMigration(vm)) a /= MIGRATION_SOURCE_SHARE;
      }
      util += a;
      req += vm.req;
    }
    h.utilMips = util;
    hostLogs[h.id].add(t, util, req, util > 0);
  };

  let energyJ = 0;
  let lastProcess = 0;
  const updateAll = (t: number) => {
    const dt = t - lastProcess;
    for (const h of c.hosts) {
      const prev = Math.min(1, c.utilization(h));
      updateHost(h, t);
      if (policy.alwaysOnAtMaxPower) energyJ += h.power.maxPower * dt;
      else if (prev > 0 && dt > 0)
        energyJ += ((h.power.power(prev) + h.power.power(Math.min(1, c.utilization(h)))) / 2) * dt;
    }
    for (const h of c.hosts) {
      for (const vm of [...h.vms]) {
        if (vm.req === 0 && !inMigration(vm) && vm.host === h.id) {
          c.remove(h, vm);
          vm.host = -1;
          vm.alive = false;
        }
      }
    }
    lastProcess = t;
  };

  let pending: Pending[] = [];
  let seq = 0;
  let migrations = 0;
  const planMs: number[] = [];

  const complete = (vm: Vm) => {
    const src = c.hosts[vm.host];
    c.remove(src, vm);
    for (const h of c.hosts.filter((x) => x.inbound.has(vm))) {
      h.inbound.delete(vm);
      c.remove(h, vm);
    }
    const dst = c.hosts[vm.dest];
    c.place(dst, vm);
    vm.host = dst.id;
    vm.dest = -1;
  };

  const runCompletions = (until: number) => {
    pending.sort((a, b) => a.time - b.time || a.seq - b.seq);
    let i = 0;
    while (i < pending.length && pending[i].time <= until) {
      const t = pending[i].time;
      if (t > lastProcess) updateAll(t);
      complete(pending[i].vm);
      i++;
      // CloudSim refreshes every host once the last completion at this instant is applied.
      if (i >= pending.length || pending[i].time !== t) updateAll(t);
    }
    pending = pending.slice(i);
  };

  for (let t = START_S + INTERVAL_S; t <= DAY_S; t += INTERVAL_S) {
    runCompletions(t);
    updateAll(t);
    if (!policy.plan) continue;
    const t0 = performance.now();
    const moves = policy.plan(c, { now: t, cost, interval: INTERVAL_S });
    planMs.push(performance.now() - t0);
    for (const { vm, to } of moves) {
      if (vm.host < 0) throw new Error(`policy ${policy.name} moved VM ${vm.id}, which is not running`);
      migrations++;
      // A VM planned twice in one round (CloudSim's consolidation can re-move a VM it has
      // just placed) is inbound to both hosts; the last destination wins at completion.
      const again = inMigration(vm);
      if (!c.place(to, vm))
        throw new Error(`policy ${policy.name} moved VM ${vm.id} to host ${to.id} without room`);
      to.inbound.add(vm);
      vm.dest = to.id;
      updateHost(to, t);
      updateHost(c.hosts[vm.host], t);
      if (!again) pending.push({ time: t + cost.durationS(vm, to), seq: seq++, vm });
    }
  }
  runCompletions(DAY_S);
  for (const l of hostLogs) l.close();
  return summarise(day.day, energyJ, hostLogs, vmLogs, migrations, p99(planMs));
}
