// Genetic-algorithm packing (after Nakada, Hirofuchi et al., "Toward virtual machine packing
// optimization based on genetic algorithm", 2009): each round searches VM → host assignments
// that minimise estimated power plus a price per migration plus a penalty for hosts above the
// packing target, starting from the current placement. Seeded, so runs repeat.
import { type Cluster, type Host, inMigration, type Vm } from "../sim/cluster.js";
import type { CostModel } from "../sim/cost-model.js";
import { BeloglazovPolicy } from "./beloglazov.js";
import { thr } from "./detectors.js";
import { forecastMips } from "./forecast.js";
import type { Move, PlanContext, Policy } from "./policy.js";
import { DEFAULT_SEED, type Rng, seededRng } from "./random.js";
import { MMT } from "./selection.js";

export interface GaOptions {
  cost: CostModel;
  interval: number;
  seed?: number;
  population?: number;
  generations?: number;
  /** Packing target (forecast demand / capacity). */
  fill?: number;
  /** Watts a migration is worth avoiding (the search's exchange rate between SLA and power). */
  migrationW?: number;
  /** Watts per unit of demand above the packing target, per host (capacity fraction). */
  overloadW?: number;
}

export const GA_DEFAULTS = { population: 16, generations: 30, fill: 0.8, migrationW: 20, overloadW: 2000 };

/** One candidate placement: host index per movable VM. */
type Genome = Int32Array;

export class GaPolicy implements Policy {
  readonly name = "ga";
  private readonly o: typeof GA_DEFAULTS;
  private readonly rng: Rng;
  private readonly initial: BeloglazovPolicy;

  constructor(opts: GaOptions) {
    this.o = { ...GA_DEFAULTS, ...opts };
    this.rng = seededRng(opts.seed ?? DEFAULT_SEED);
    this.initial = new BeloglazovPolicy(
      { name: "ga", detector: thr(1), selector: MMT, seed: opts.seed },
      opts,
    );
  }

  initialHost(c: Cluster, vm: Vm): Host | undefined {
    return this.initial.initialHost(c, vm);
  }

  plan(c: Cluster, _ctx: PlanContext): Move[] {
    const movable = c.vms.filter((vm) => vm.host >= 0 && !inMigration(vm));
    const demand = Float64Array.from(movable, (vm) => forecastMips(vm, { window: 12, quantile: 0.8 }));
    // Demand that stays put this round: VMs migrating (on source and destination).
    const fixed = new Float64Array(c.hosts.length);
    for (const h of c.hosts) for (const vm of h.vms) if (inMigration(vm)) fixed[h.id] += vm.req;
    const current = Int32Array.from(movable, (vm) => vm.host);
    const ev = new Evaluator(c.hosts, demand, fixed, current, this.o);

    let pop: { g: Genome; f: number }[] = [{ g: current, f: ev.fitness(current) }];
    const repaired = ev.repair(Int32Array.from(current), this.rng);
    pop.push({ g: repaired, f: ev.fitness(repaired) });
    while (pop.length < this.o.population) {
      const g = ev.repair(ev.evacuate(Int32Array.from(repaired), this.rng), this.rng);
      pop.push({ g, f: ev.fitness(g) });
    }
    for (let gen = 0; gen < this.o.generations; gen++) {
      pop.sort((a, b) => a.f - b.f);
      const next = pop.slice(0, 2); // elitism
      while (next.length < this.o.population) {
        const a = this.tournament(pop);
        const b = this.tournament(pop);
        let child = ev.crossover(a, b, this.rng);
        if (this.rng() < 0.7) child = ev.evacuate(child, this.rng);
        child = ev.repair(child, this.rng);
        next.push({ g: child, f: ev.fitness(child) });
      }
      pop = next;
    }
    pop.sort((a, b) => a.f - b.f);
    const best = pop[0].g;
    const moves: Move[] = [];
    movable.forEach((vm, i) => {
      if (best[i] !== current[i]) moves.push({ vm, to: c.hosts[best[i]] });
    });
    return moves;
  }

  private tournament(pop: { g: Genome; f: number }[]): Genome {
    const a = pop[Math.floor(this.rng() * pop.length)];
    const b = pop[Math.floor(this.rng() * pop.length)];
    return (a.f <= b.f ? a : b).g;
  }
}

/** Fitness and genetic operators over one round's snapshot. */
class Evaluator {
  constructor(
    private readonly hosts: Host[],
    private readonly demand: Float64Array,
    private readonly fixed: Float64Array,
    private readonly current: Int32Array,
    private readonly o: typeof GA_DEFAULTS,
  ) {}

  loads(g: Genome): Float64Array {
    const l = Float64Array.from(this.fixed);
    for (let i = 0; i < g.length; i++) l[g[i]] += this.demand[i];
    return l;
  }

  fitness(g: Genome): number {
    const l = this.loads(g);
    let f = 0;
    for (let h = 0; h < l.length; h++) {
      if (l[h] <= 0) continue;
      const host = this.hosts[h];
      const u = l[h] / host.totalMips;
      f += host.power.power(Math.min(1, u));
      const over = u - this.o.fill;
      if (over > 0) f += this.o.overloadW * over;
    }
    for (let i = 0; i < g.length; i++) if (g[i] !== this.current[i]) f += this.o.migrationW;
    return f;
  }

  private fits(h: Host, i: number, load: number): boolean {
    return this.demand[i] <= h.peMips && load + this.demand[i] <= this.o.fill * h.totalMips;
  }

  /** Moves every VM off one lightly loaded host onto other running hosts with room, if all fit. */
  evacuate(g: Genome, rng: Rng): Genome {
    const l = this.loads(g);
    const running = [...l.keys()].filter((h) => l[h] > 0);
    if (running.length < 2) return g;
    // pick the lighter of two random running hosts
    const a = running[Math.floor(rng() * running.length)];
    const b = running[Math.floor(rng() * running.length)];
    const src = l[a] / this.hosts[a].totalMips <= l[b] / this.hosts[b].totalMips ? a : b;
    if (this.fixed[src] > 0) return g;
    const out = Int32Array.from(g);
    const load = Float64Array.from(l);
    for (let i = 0; i < out.length; i++) {
      if (out[i] !== src) continue;
      const start = Math.floor(rng() * running.length);
      let placed = false;
      for (let k = 0; k < running.length; k++) {
        const h = running[(start + k) % running.length];
        if (h === src || !this.fits(this.hosts[h], i, load[h])) continue;
        load[h] += this.demand[i];
        out[i] = h;
        placed = true;
        break;
      }
      if (!placed) return g;
    }
    return out;
  }

  /** Per host, the assignment of one parent or the other; VMs keep their current host where parents disagree badly. */
  crossover(a: Genome, b: Genome, rng: Rng): Genome {
    const pick = new Uint8Array(this.hosts.length);
    for (let h = 0; h < pick.length; h++) pick[h] = rng() < 0.5 ? 1 : 0;
    const out = new Int32Array(a.length);
    for (let i = 0; i < a.length; i++) out[i] = pick[this.current[i]] ? a[i] : b[i];
    return out;
  }

  /** Brings every host under the packing target: moves its smallest VMs to the fullest host with room, waking a G5-first idle host if none. */
  repair(g: Genome, _rng: Rng): Genome {
    const l = this.loads(g);
    const order = [...g.keys()].sort((x, y) => this.demand[x] - this.demand[y]);
    for (const i of order) {
      const h = this.hosts[g[i]];
      if (l[h.id] <= this.o.fill * h.totalMips && this.demand[i] <= h.peMips) continue;
      let best = -1;
      let bestRoom = Number.POSITIVE_INFINITY;
      for (const t of this.hosts) {
        if (t.id === h.id || l[t.id] <= 0 || !this.fits(t, i, l[t.id])) continue;
        const room = this.o.fill * t.totalMips - l[t.id];
        if (room < bestRoom) {
          bestRoom = room;
          best = t.id;
        }
      }
      if (best < 0) {
        let eff = Number.POSITIVE_INFINITY;
        for (const t of this.hosts) {
          if (l[t.id] > 0 || !this.fits(t, i, 0)) continue;
          const w = t.power.maxPower / t.totalMips;
          if (w < eff) {
            eff = w;
            best = t.id;
          }
        }
      }
      if (best < 0) continue;
      l[h.id] -= this.demand[i];
      l[best] += this.demand[i];
      g[i] = best;
    }
    return g;
  }
}
