// Plain-data view of a cluster (what a live service gets from host agents or Redis) and a
// plan computed from it with the same policy code the simulator uses.
import type { Move } from "../policies/policy.js";
import { makePolicy } from "../policies/registry.js";
import { Cluster, HISTORY_LENGTH, type Host, type Vm } from "./cluster.js";
import { costModelByName } from "./cost-model.js";
import { HOST_TYPES, INTERVAL_S, newHost } from "./setup.js";

export interface HostSnapshot {
  id: number;
  /** Index into HOST_TYPES (0 = HP ProLiant G4, 1 = G5). */
  type: number;
  /** Reported state; absent: a host is on exactly when it runs VMs (the simulator's view). */
  asleep?: boolean;
}

export interface VmSnapshot {
  id: number;
  name?: string;
  /** MIPS the VM is sized for. */
  mips: number;
  ramMb: number;
  /** Host running it. */
  host: number;
  /** Host it is migrating to, if any. */
  dest?: number;
  /** Demand now, MIPS. */
  reqMips: number;
  /** Utilisation samples (fractions), newest first. */
  history?: number[];
}

export interface ClusterSnapshot {
  hosts: HostSnapshot[];
  vms: VmSnapshot[];
}

export interface PlanResult {
  /** migrationS: seconds the VM is degraded while it moves, under the cost model. */
  moves: { vm: number; from: number; to: number; migrationS: number }[];
  /** Hosts on now (running VMs, or reported awake) with no VMs once the moves complete. */
  sleep: number[];
  /** Hosts off now that receive VMs. */
  wake: number[];
}

export function clusterFromSnapshot(s: ClusterSnapshot): Cluster {
  const byId = new Map<number, Host>();
  const hosts = s.hosts.map((h, i) => {
    const t = HOST_TYPES[h.type];
    if (!t) throw new Error(`host ${h.id}: unknown type ${h.type}`);
    if (h.id !== i) throw new Error(`host ids must be 0..n-1 in order (got ${h.id} at ${i})`);
    const host = newHost(h.id, t);
    byId.set(h.id, host);
    return host;
  });
  const vms: Vm[] = s.vms.map((v, i) => ({
    id: i,
    name: v.name ?? String(v.id),
    mips: v.mips,
    ramMb: v.ramMb,
    bwKbps: 100_000,
    host: -1,
    dest: -1,
    req: v.reqMips,
    history: (v.history ?? []).slice(0, HISTORY_LENGTH),
    alive: true,
    started: true,
  }));
  const c = new Cluster(hosts, vms);
  s.vms.forEach((v, i) => {
    const h = byId.get(v.host);
    if (!h) throw new Error(`VM ${v.id}: unknown host ${v.host}`);
    const vm = vms[i];
    c.place(h, vm);
    vm.host = h.id;
    if (v.dest !== undefined) {
      const d = byId.get(v.dest);
      if (!d) throw new Error(`VM ${v.id}: unknown destination ${v.dest}`);
      c.place(d, vm);
      d.inbound.add(vm);
      vm.dest = d.id;
    }
  });
  for (const h of hosts) {
    let u = 0;
    for (const vm of h.vms) u += c.allocated(h, vm);
    h.utilMips = u;
  }
  return c;
}

export function planFromSnapshot(
  s: ClusterSnapshot,
  policyName: string,
  opts: { costModel?: string; seed?: number; now?: number } = {},
): PlanResult {
  const cost = costModelByName(opts.costModel ?? "cloudsim");
  const policy = makePolicy(policyName, { cost, seed: opts.seed });
  const c = clusterFromSnapshot(s);
  const moves: Move[] = policy.plan ? policy.plan(c, { now: opts.now ?? 0, cost, interval: INTERVAL_S }) : [];
  const remaining = new Map<number, number>(c.hosts.map((h) => [h.id, 0]));
  const finalHost = new Map<Vm, number>();
  for (const vm of c.vms) finalHost.set(vm, vm.dest >= 0 ? vm.dest : vm.host);
  for (const m of moves) finalHost.set(m.vm, m.to.id);
  for (const [, h] of finalHost) remaining.set(h, (remaining.get(h) ?? 0) + 1);
  const onNow = (h: Host) => h.vms.length > 0 || s.hosts[h.id].asleep === false;
  return {
    moves: moves.map((m) => ({
      vm: s.vms[m.vm.id].id,
      from: s.vms[m.vm.id].host,
      to: m.to.id,
      migrationS: cost.durationS(m.vm, m.to),
    })),
    sleep: c.hosts.filter((h) => onNow(h) && remaining.get(h.id) === 0).map((h) => h.id),
    wake: c.hosts.filter((h) => !onNow(h) && (remaining.get(h.id) ?? 0) > 0).map((h) => h.id),
  };
}
