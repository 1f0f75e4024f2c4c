// vmhop's own policy (placeholder until tuned): LR detection with MMT selection.
import type { Cluster, Host, Vm } from "../sim/cluster.js";
import type { CostModel } from "../sim/cost-model.js";
import { BeloglazovPolicy } from "./beloglazov.js";
import { lrDetector } from "./detectors.js";
import type { Move, PlanContext, Policy } from "./policy.js";
import { MMT } from "./selection.js";

export interface VmhopOptions {
  cost: CostModel;
  interval: number;
  seed?: number;
}

export class VmhopPolicy implements Policy {
  readonly name = "vmhop";
  private readonly inner: BeloglazovPolicy;
  constructor(opts: VmhopOptions) {
    this.inner = new BeloglazovPolicy(
      { name: "vmhop", detector: lrDetector(1.2), selector: MMT, seed: opts.seed },
      opts,
    );
  }
  initialHost(c: Cluster, vm: Vm): Host | undefined {
    return this.inner.initialHost(c, vm);
  }
  plan(c: Cluster, ctx: PlanContext): Move[] {
    return this.inner.plan(c, ctx);
  }
}
