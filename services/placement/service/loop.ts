// The periodic planning loop: compute a plan every interval (and apply it with autoApply),
// one round at a time; a failed round is logged and the next one runs as scheduled. A round
// still running when the next is due (waiting for its migrations) makes the loop skip that
// tick: rounds queued meanwhile would all run at once on the load of one moment.
import type { Logger } from "../../common/log.js";
import type { Store } from "../../common/store/index.js";
import type { ControlClient } from "../../control-plane/client.js";
import { applyPlan } from "./apply.js";
import { computePlan, type PlanOptions } from "./plans.js";

export function startPlanningLoop(
  store: Store,
  opts: PlanOptions & { intervalMs: number; autoApply: boolean },
  log: Logger,
  controlPlane?: ControlClient,
): { stop(): Promise<void> } {
  let running: Promise<void> = Promise.resolve();
  let busy = false;
  const round = async () => {
    try {
      const p = await computePlan(store, opts);
      // An empty plan is not worth accepting: it would only supersede a useful one.
      const apply = opts.autoApply && (p.moves.length > 0 || p.hosts_to_sleep.length > 0);
      // With a control-plane the round waits for the plan's migrations: plans never overlap.
      if (apply) await (await applyPlan(store, p.plan_id, controlPlane, log)).done;
      log.info("planning round", { plan: p.plan_id, moves: p.moves.length, accepted: apply });
    } catch (err) {
      log.warn("planning round failed", { err });
    }
  };
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    running = running.then(round).finally(() => {
      busy = false;
    });
  }, opts.intervalMs);
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
