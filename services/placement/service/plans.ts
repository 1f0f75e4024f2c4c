// Plans: computed from the load in the Store with the simulator's policy code, stored, and
// published. A plan moves through an explicit state table; apply.ts carries accepted plans
// out through the control-plane when one is configured.
import { ServiceError } from "../../common/errors.js";
import type { Store } from "../../common/store/index.js";
import { DEFAULT_POLICY } from "../policies/registry.js";
import { predictEffect } from "../sim/effect.js";
import { planFromSnapshot } from "../sim/snapshot.js";
import { KEYS } from "./keys.js";
import { readSnapshot } from "./load.js";
import { countPlan } from "./metrics.js";

export type PlanState = "proposed" | "accepted" | "applying" | "applied" | "failed";

/**
 * Allowed transitions. Accepting a plan that is already past proposed is a no-op (ApplyPlan
 * is idempotent); applying records each move's progress as applying → applying.
 */
export const TRANSITIONS: Record<PlanState, readonly PlanState[]> = {
  proposed: ["accepted"],
  accepted: ["applying"],
  applying: ["applying", "applied", "failed"],
  applied: [],
  failed: [],
};

/** A move's progress while applied through the control-plane (its migration's state). */
export interface MoveProgress {
  migration_id?: string;
  /** The control-plane's migration state, or "failed" when MigrateVm itself was refused. */
  state?: string;
  error?: string;
}

/** `placement:plan:<plan_id>` and each message on the decisions channel. */
export interface PlanRecord {
  plan_id: string;
  /** Order of computation (plan ids are p-<seq>). */
  seq: number;
  state: PlanState;
  policy: string;
  cost_model: string;
  created_unix_ms: number;
  compute_ms: number;
  moves: ({
    vm_id: string;
    from_host_id: string;
    to_host_id: string;
    reason: string;
    migration_s: number;
  } & MoveProgress)[];
  hosts_to_sleep: string[];
  hosts_to_wake: string[];
  power_watts_before: number;
  power_watts_after: number;
  overloaded_hosts_before: number;
  overloaded_hosts_after: number;
  warnings: string[];
}

/** A plan request the service cannot honour (invalid, not-found or precondition). */
export class PlanError extends ServiceError {
  override name = "PlanError";
}

export interface PlanOptions {
  policy?: string;
  costModel?: string;
  seed?: number;
  /** Stored plans expire after this long (a stale plan must not be applied). */
  ttlMs: number;
}

export async function computePlan(store: Store, opts: PlanOptions): Promise<PlanRecord> {
  const policy = opts.policy || DEFAULT_POLICY;
  const costModel = opts.costModel || "cloudsim";
  if (costModel !== "cloudsim" && costModel !== "postcopy")
    throw new PlanError(
      "invalid",
      `cost_model must be cloudsim or postcopy, got ${JSON.stringify(costModel)}`,
    );
  const load = await readSnapshot(store);
  const t0 = performance.now();
  let result: ReturnType<typeof planFromSnapshot>;
  try {
    result = planFromSnapshot(load.snapshot, policy, { costModel, seed: opts.seed });
  } catch (err) {
    if (/unknown policy/.test((err as Error).message))
      throw new PlanError("invalid", `policy: ${(err as Error).message}`);
    throw err;
  }
  const effect = predictEffect(load.snapshot, result);
  const compute_ms = performance.now() - t0;
  const seq = await store.incr(KEYS.planSeq);
  const host = (i: number) => load.hostIds[i];
  const vmIndex = new Map(load.snapshot.vms.map((v, i) => [v.id, i]));
  const overloaded = new Set(effect.overloadedHostsBefore);
  const plan: PlanRecord = {
    plan_id: `p-${seq}`,
    seq,
    state: "proposed",
    policy,
    cost_model: costModel,
    created_unix_ms: Date.now(),
    compute_ms,
    moves: result.moves.map((m) => ({
      vm_id: load.vmIds[vmIndex.get(m.vm)!],
      from_host_id: host(m.from),
      to_host_id: host(m.to),
      reason: overloaded.has(m.from) ? "relieve overload" : "consolidate",
      migration_s: m.migrationS,
    })),
    hosts_to_sleep: result.sleep.map(host),
    hosts_to_wake: result.wake.map(host),
    power_watts_before: effect.powerBeforeW,
    power_watts_after: effect.powerAfterW,
    overloaded_hosts_before: effect.overloadedBefore,
    overloaded_hosts_after: effect.overloadedAfter,
    warnings: load.warnings,
  };
  await store.set(KEYS.plan(plan.plan_id), JSON.stringify(plan), { ttlMs: opts.ttlMs });
  countPlan(plan);
  await store.publish(KEYS.decisions, JSON.stringify(plan));
  return plan;
}

export async function getPlan(store: Store, planId: string): Promise<PlanRecord> {
  if (!planId) throw new PlanError("invalid", "plan_id is required");
  const raw = await store.get(KEYS.plan(planId));
  if (!raw)
    throw new PlanError("not-found", `plan ${planId} not found (unknown or expired: compute a new one)`);
  return JSON.parse(raw) as PlanRecord;
}

/**
 * Accepts a plan for the control-plane: records it and publishes it. A plan older than the
 * newest accepted one is refused (it was computed from load that plan has since changed).
 */
export async function acceptPlan(store: Store, planId: string): Promise<PlanRecord> {
  for (;;) {
    const plan = await getPlan(store, planId);
    if (plan.state !== "proposed") return plan;
    const latest = await store.get(KEYS.accepted);
    const latestSeq = latest ? Number(latest.replace(/^p-/, "")) : 0;
    if (latestSeq > plan.seq)
      throw new PlanError(
        "precondition",
        `plan ${planId} is older than the accepted plan ${latest}: compute a new plan`,
      );
    // Claim "newest accepted" first, atomically, so two racing ApplyPlans cannot both win.
    if (!(await store.compareAndSet(KEYS.accepted, latest, planId))) continue;
    const accepted: PlanRecord = { ...plan, state: "accepted" };
    // No expiry once accepted: it is the record of what was decided.
    await store.set(KEYS.plan(planId), JSON.stringify(accepted));
    await store.publish(KEYS.decisions, JSON.stringify(accepted));
    return accepted;
  }
}
