// Beloglazov & Buyya's consolidation (CloudSim PowerVmAllocationPolicyMigrationAbstract):
// 1. overloaded hosts shed VMs chosen by the selector until no longer overloaded;
// 2. those VMs go, largest demand first, to the host whose power rises least (PABFD);
// 3. then, least-utilised host first, a host is emptied if every VM on it fits elsewhere.
// Host utilisation for ranking and "switched off" is the last update's, as in CloudSim,
// while fit checks see tentative placements made in this round.
import { type Cluster, type Host, inMigration, migratingIn, type Vm } from "../sim/cluster.js";
import type { Detector } from "./detectors.js";
import type { Move, PlanContext, Policy } from "./policy.js";
import { DEFAULT_SEED, type Rng, seededRng } from "./random.js";
import type { VmSelector } from "./selection.js";

export interface BeloglazovOptions {
  name: string;
  detector: Detector;
  selector: VmSelector;
  seed?: number;
}

type Ctx = Pick<PlanContext, "interval" | "cost">;

export class BeloglazovPolicy implements Policy {
  readonly name: string;
  private readonly rng: Rng;
  /** Used for initial placement, before any plan context exists. */
  private ctx: Ctx;

  constructor(
    private readonly opts: BeloglazovOptions,
    ctx: Ctx,
  ) {
    this.name = opts.name;
    this.rng = seededRng(opts.seed ?? DEFAULT_SEED);
    this.ctx = ctx;
  }

  protected overloaded(c: Cluster, h: Host): boolean {
    return this.opts.detector.overloaded(c, h, {
      interval: this.ctx.interval,
      migrationS: (vm, dst) => this.ctx.cost.durationS(vm, dst),
    });
  }

  private overloadedWith(c: Cluster, h: Host, vm: Vm): boolean {
    if (!c.place(h, vm)) return true;
    const over = this.overloaded(c, h);
    c.remove(h, vm);
    return over;
  }

  /** Power-aware best fit: least power increase among suitable hosts that stay below overload. */
  findHost(c: Cluster, vm: Vm, excluded: ReadonlySet<Host>, checkOverload = true): Host | undefined {
    let best: Host | undefined;
    let min = Number.MAX_VALUE;
    for (const h of c.hosts) {
      if (excluded.has(h) || !c.isSuitable(h, vm)) continue;
      const potential = c.potentialMips(h);
      const after = (potential + vm.req) / h.totalMips;
      if (after > 1) continue; // CloudSim's power model refuses utilisation above 100 %
      const diff = h.power.power(after) - h.power.power(Math.min(1, c.utilization(h)));
      // Same result as checking overload first, but skips the costly check for hosts that cannot win.
      if (!(diff < min)) continue;
      if (checkOverload && potential !== 0 && this.overloadedWith(c, h, vm)) continue;
      min = diff;
      best = h;
    }
    return best;
  }

  /**
   * At start CloudSim's overload check sees only the new VM (the others have no workload
   * yet) and one VM alone is never overloaded, so only capacity, RAM and bandwidth count.
   */
  initialHost(c: Cluster, vm: Vm): Host | undefined {
    return this.findHost(c, vm, new Set(), false);
  }

  plan(c: Cluster, ctx: PlanContext): Move[] {
    this.ctx = ctx;
    const overloaded = c.hosts.filter((h) => this.overloaded(c, h));
    const restore = c.snapshot();
    const toMigrate = this.shed(c, overloaded);
    const moves = this.placeAll(c, toMigrate, new Set(overloaded), false);
    moves.push(...this.consolidate(c, overloaded));
    restore();
    return moves;
  }

  private shed(c: Cluster, overloaded: Host[]): Vm[] {
    const out: Vm[] = [];
    for (const h of overloaded) {
      for (;;) {
        const vm = this.opts.selector.pick(c, h, this.rng);
        if (!vm) break;
        out.push(vm);
        c.remove(h, vm);
        if (!this.overloaded(c, h)) break;
      }
    }
    return out;
  }

  /** Places VMs by decreasing demand; with allOrNothing, undoes everything if one does not fit. */
  private placeAll(c: Cluster, vms: Vm[], excluded: ReadonlySet<Host>, allOrNothing: boolean): Move[] {
    const moves: Move[] = [];
    const sorted = [...vms].sort((a, b) => b.req - a.req);
    for (const vm of sorted) {
      const h = this.findHost(c, vm, excluded);
      if (h) {
        c.place(h, vm);
        moves.push({ vm, to: h });
      } else if (allOrNothing) {
        for (const m of moves) c.remove(m.to, m.vm);
        return [];
      }
    }
    return moves;
  }

  private consolidate(c: Cluster, overloaded: Host[]): Move[] {
    const moves: Move[] = [];
    const switchedOff = c.hosts.filter((h) => c.utilization(h) === 0);
    const skip = new Set<Host>([...overloaded, ...switchedOff]);
    const excludedTargets = new Set<Host>([...overloaded, ...switchedOff]);
    while (skip.size < c.hosts.length) {
      const h = this.leastUtilised(c, skip);
      if (!h) break;
      skip.add(h);
      excludedTargets.add(h);
      const vms = h.vms.filter((vm) => !inMigration(vm));
      if (vms.length === 0) continue;
      const placed = this.placeAll(c, vms, excludedTargets, true);
      for (const m of placed) skip.add(m.to);
      moves.push(...placed);
    }
    return moves;
  }

  private leastUtilised(c: Cluster, skip: ReadonlySet<Host>): Host | undefined {
    let best: Host | undefined;
    let min = 1;
    for (const h of c.hosts) {
      if (skip.has(h)) continue;
      const u = c.utilization(h);
      if (u > 0 && u < min && !allMigratingOutOrAnyIn(h)) {
        min = u;
        best = h;
      }
    }
    return best;
  }
}

/** CloudSim's areAllVmsMigratingOutOrAnyVmMigratingIn, including its list-order shortcut. */
function allMigratingOutOrAnyIn(h: Host): boolean {
  for (const vm of h.vms) {
    if (!inMigration(vm)) return false;
    if (migratingIn(h, vm)) return true;
  }
  return true;
}
