// Carries an accepted plan out through the control-plane: first wakes the hosts to wake (a move
// to one that does not wake goes to another awake host with room, or is dropped), then
// MigrateVm for each move (request_id <plan>/<vm>, so a retried or resumed apply never starts a
// second migration), each move's outcome recorded on the plan, then the hosts to sleep switched
// off once their VMs have left. The plan ends applied, or failed with the reasons on its moves
// and warnings.
import type { Migration } from "../../../gen/vmhop/v1/control.js";
import { MigrationMode } from "../../../gen/vmhop/v1/page.js";
import type { Logger } from "../../common/log.js";
import type { Store } from "../../common/store/index.js";
import { type ControlClient, isNotFound } from "../../control-plane/client.js";
import { update } from "../../control-plane/records.js";
import { isFinal, type MigrationState } from "../../control-plane/states.js";
import { fallbacks, spareHosts } from "./fallback.js";
import { KEYS } from "./keys.js";
import { readSnapshot } from "./load.js";
import {
  acceptPlan,
  getPlan,
  type MoveProgress,
  PlanError,
  type PlanRecord,
  type PlanState,
  TRANSITIONS,
} from "./plans.js";

const errorText = (err: unknown) => (err as { details?: string }).details || (err as Error).message;

/** One persisted change of a plan under the state table; published on the decisions channel. */
async function changePlan(
  store: Store,
  planId: string,
  to: PlanState,
  fn: (p: PlanRecord) => Partial<PlanRecord> = () => ({}),
  from?: PlanState,
): Promise<PlanRecord> {
  const p = await update<PlanRecord>(store, KEYS.plan(planId), (cur) => {
    if (!cur) throw new PlanError("not-found", `plan ${planId} vanished`);
    if ((from && cur.state !== from) || !TRANSITIONS[cur.state].includes(to))
      throw new PlanError("precondition", `plan ${planId} is ${cur.state}, not ${to}`);
    return { ...cur, ...fn(cur), state: to };
  });
  await store.publish(KEYS.decisions, JSON.stringify(p));
  return p;
}

function setMove(vmId: string, progress: MoveProgress) {
  return (p: PlanRecord) => ({
    moves: p.moves.map((m) => (m.vm_id === vmId ? { ...m, ...progress } : m)),
  });
}

/**
 * Wakes the plan's hosts_to_wake through the control-plane (their power drivers), all at once.
 * The moves to a host that did not wake go to another awake host with room (fallback.ts), else
 * to a spare sleeping host woken for them (most efficient first), else are dropped (failed: the
 * VM stays). Returns the plan as changed.
 */
async function wakeHosts(
  store: Store,
  plan: PlanRecord,
  cp: ControlClient,
  log: Logger,
): Promise<PlanRecord> {
  const failed = new Map<string, string>();
  const woken: string[] = [];
  const wake = async (h: string) => {
    try {
      await cp.powerHost(h, "on");
      woken.push(h);
      log.info("plan woke host", { plan: plan.plan_id, host: h });
    } catch (err) {
      failed.set(h, errorText(err));
      log.warn("plan host did not wake", { plan: plan.plan_id, host: h, err: errorText(err) });
    }
  };
  await Promise.all(plan.hosts_to_wake.map(wake));
  if (failed.size === 0) return plan;
  const load = await readSnapshot(store);
  const awake = new Set(load.hostIds.filter((_, i) => !load.snapshot.hosts[i].asleep));
  const tried = new Set(plan.hosts_to_wake);
  let to: Map<string, string | undefined>;
  for (;;) {
    for (const h of woken) awake.add(h);
    to = new Map(fallbacks(plan, load, awake, new Set(failed.keys())).map((f) => [f.vm_id, f.to_host_id]));
    if (![...to.values()].includes(undefined)) break;
    const spare = spareHosts(plan, load, tried)[0];
    if (!spare) break;
    tried.add(spare);
    await wake(spare);
  }
  // The control-plane's reasons name the host ("host h2 did not wake: …").
  const warnings = [...failed.values()];
  const moves = plan.moves.map((m) => {
    if (!to.has(m.vm_id)) return m;
    const dest = to.get(m.vm_id);
    if (dest) {
      warnings.push(`move of ${m.vm_id}: ${m.to_host_id} did not wake, to ${dest} instead`);
      return { ...m, to_host_id: dest };
    }
    return {
      ...m,
      state: "failed",
      error: `${failed.get(m.to_host_id)}; no other host has room: ${m.vm_id} stays on ${m.from_host_id}`,
    };
  });
  return changePlan(store, plan.plan_id, "applying", (p) => ({
    moves,
    hosts_to_wake: woken,
    warnings: [...p.warnings, ...warnings],
  }));
}

/**
 * accepted → applying: wakes the hosts to wake, then starts each move's migration and returns
 * the plan with their ids. follow() then waits for them (it runs in the background of ApplyPlan).
 */
export async function startPlan(
  store: Store,
  plan: PlanRecord,
  cp: ControlClient,
  log: Logger,
): Promise<PlanRecord> {
  // Only from accepted: of two racing ApplyPlans, one starts the moves.
  let p = await changePlan(store, plan.plan_id, "applying", undefined, "accepted");
  // Waking precedes every migration: the control-plane refuses one to a sleeping host.
  p = await wakeHosts(store, p, cp, log);
  for (const move of p.moves) {
    if (move.state === "failed") continue; // dropped: its host did not wake
    let progress: MoveProgress;
    try {
      // A plan made from stale load must not move a VM from somewhere it no longer is.
      const vm = await cp.getVm(move.vm_id);
      if (vm.hostId !== move.from_host_id)
        throw new Error(`VM ${move.vm_id} is on ${vm.hostId}, not ${move.from_host_id}: the plan is stale`);
      const m = await cp.migrateVm({
        vmId: move.vm_id,
        destinationHostId: move.to_host_id,
        mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
        requestId: `${plan.plan_id}/${move.vm_id}`,
      });
      progress = { migration_id: m.migrationId, state: m.state, error: m.error };
    } catch (err) {
      progress = { state: "failed", error: errorText(err) };
    }
    p = await changePlan(store, plan.plan_id, "applying", setMove(move.vm_id, progress));
  }
  return p;
}

/**
 * A migration's final record. A control-plane restart breaks the watch but not the migration
 * (the next control-plane resumes it): watch again for up to a minute before giving up.
 */
async function waitFinal(cp: ControlClient, migrationId: string): Promise<Migration> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      return await cp.waitForMigration(migrationId);
    } catch (err) {
      if (Date.now() > deadline || isNotFound(err)) throw err;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

/** Waits for the plan's migrations, records each outcome, then sleeps hosts; the plan's final state. */
export async function followPlan(
  store: Store,
  planId: string,
  cp: ControlClient,
  log: Logger,
): Promise<PlanRecord> {
  const plan = await getPlan(store, planId);
  await Promise.all(
    plan.moves
      .filter((m) => m.migration_id && !isFinal(m.state as MigrationState))
      .map(async (move) => {
        let progress: MoveProgress;
        try {
          const end = await waitFinal(cp, move.migration_id!);
          progress = { state: end.state, error: end.error };
        } catch (err) {
          progress = { state: "failed", error: `lost track of ${move.migration_id}: ${errorText(err)}` };
        }
        log.info("plan move ended", { plan: planId, vm: move.vm_id, state: progress.state });
        await changePlan(store, planId, "applying", setMove(move.vm_id, progress));
      }),
  );
  const moved = await getPlan(store, planId);
  const allDone = moved.moves.every((m) => m.state === "done");
  const warnings: string[] = [];
  for (const host of moved.hosts_to_sleep) {
    // The control-plane refuses a host that still has VMs: a host sleeps only once they left.
    // It switches the host off through its power driver (bookkeeping without one).
    try {
      await cp.powerHost(host, "off");
    } catch (err) {
      warnings.push(`host ${host} not switched off: ${errorText(err)}`);
    }
  }
  const ok = allDone && warnings.length === 0;
  const end = await changePlan(store, planId, ok ? "applied" : "failed", (p) => ({
    warnings: [...p.warnings, ...warnings],
  }));
  log.info("plan applied", { plan: planId, state: end.state });
  return end;
}

export interface Applied {
  plan: PlanRecord;
  migrationIds: string[];
  /** What happened, for the ApplyPlan response. */
  message: string;
  /** Settles when the plan is applied or failed (immediately without a control-plane). */
  done: Promise<PlanRecord>;
}

/**
 * ApplyPlan (and the planning loop's auto-apply): accepts the plan, then with a control-plane
 * starts its moves and follows them in the background; without one, accepting is all.
 */
export async function applyPlan(
  store: Store,
  planId: string,
  cp: ControlClient | undefined,
  log: Logger,
): Promise<Applied> {
  const accepted = await acceptPlan(store, planId);
  const ids = (p: PlanRecord) => p.moves.flatMap((m) => (m.migration_id ? [m.migration_id] : []));
  if (!cp)
    return {
      plan: accepted,
      migrationIds: [],
      message:
        "no control-plane configured (placement serve --control-plane): the plan is accepted and published, nothing was migrated",
      done: Promise.resolve(accepted),
    };
  if (accepted.state !== "accepted")
    return {
      plan: accepted,
      migrationIds: ids(accepted),
      message: `plan ${planId} is already ${accepted.state}`,
      done: Promise.resolve(accepted),
    };
  const started = await startPlan(store, accepted, cp, log);
  const done = followPlan(store, planId, cp, log);
  done.catch((err) => log.warn("following plan failed", { plan: planId, err }));
  const failed = started.moves.filter((m) => m.state === "failed").length;
  return {
    plan: started,
    migrationIds: ids(started),
    message: `started ${started.moves.length - failed} of ${started.moves.length} migrations through the control-plane at ${cp.address}`,
    done,
  };
}

/** After a placement restart: follows the plans a previous run left applying. */
export async function resumePlans(store: Store, cp: ControlClient, log: Logger): Promise<string[]> {
  const applying = (await store.scan(KEYS.planPrefix))
    .map(([, v]) => JSON.parse(v) as PlanRecord)
    .filter((p) => p.state === "applying");
  for (const p of applying)
    followPlan(store, p.plan_id, cp, log).catch((err) =>
      log.warn("following plan failed", { plan: p.plan_id, err }),
    );
  return applying.map((p) => p.plan_id);
}
