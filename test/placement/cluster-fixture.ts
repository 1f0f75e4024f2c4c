// Small hand-made clusters for policy tests: hosts of the README types (even ids G4, odd G5).
import { Cluster, type Host, type Vm } from "../../services/placement/sim/cluster.js";
import { hostTypeOf, newHost } from "../../services/placement/sim/setup.js";

export const host = (id: number): Host => newHost(id, hostTypeOf(id));

/** A started VM (no RAM or bandwidth reservation, as after CloudSim's start). */
export function vm(id: number, mips: number, req: number, ramMb = 870, history: number[] = []): Vm {
  return {
    id,
    name: `vm${id}`,
    mips,
    ramMb,
    bwKbps: 100_000,
    host: -1,
    dest: -1,
    req,
    history,
    alive: true,
    started: true,
  };
}

/** Puts VMs on hosts and sets each host's last-update utilisation as the simulator would. */
export function cluster(nHosts: number, layout: [Vm, number][]): Cluster {
  const hs = [...Array(nHosts).keys()].map(host);
  const c = new Cluster(
    hs,
    layout.map(([v]) => v),
  );
  for (const [v, h] of layout) {
    c.place(hs[h], v);
    v.host = h;
  }
  for (const h of hs) h.utilMips = h.vms.reduce((s, v) => s + c.allocated(h, v), 0);
  return c;
}
