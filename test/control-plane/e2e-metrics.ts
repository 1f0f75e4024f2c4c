// /metrics checks for the end-to-end test (e2e.test.ts), whose control-plane, placement service
// and both page-servers run in the test's process and so share its registry: served here on a
// free port and scraped after the plan's migration, each figure checked against what the
// services report over gRPC.
import * as assert from "uvu/assert";
import type { Migration } from "../../gen/vmhop/v1/control.js";
import type { Plan } from "../../gen/vmhop/v1/placement.js";
import { startMetricsServer } from "../../services/common/metrics/server.js";
import type { PageHost } from "../../services/page-server/host.js";
import { bindPageMetrics } from "../../services/page-server/metrics.js";
import { scrape } from "../helpers/metrics.js";

/** Serves this process's /metrics with both page-servers' migrations; returns its address and closer. */
export async function serveTestMetrics(
  hosts: PageHost[],
): Promise<{ address: string; close: () => Promise<void> }> {
  const s = await startMetricsServer("127.0.0.1:0");
  const unbind = bindPageMetrics(() => hosts.flatMap((h) => h.migrations()));
  return {
    address: s.address,
    close: async () => {
      unbind();
      await s.close();
    },
  };
}

const ORDER = ["pending", "preparing", "migrating", "switched", "completing", "relocating", "done"];

/**
 * After the plan's migration `m` (done) and one cancelled migration: outcomes, the phases only
 * `m` went through, the plan's figures, and the source page-server's memory figures.
 */
export async function assertMetricsAfterPlan(address: string, m: Migration, plan: Plan): Promise<void> {
  const s = await scrape(address);
  assert.is(s.value("vmhop_migrations_total", { outcome: "done" }), 1);
  assert.is(s.value("vmhop_migrations_total", { outcome: "cancelled" }), 1);
  const at = m.enteredUnixMs;
  const states = ORDER.filter((st) => at[st] !== undefined);
  // From migrating on, only `m` made these transitions (the cancelled one ended before).
  for (let i = states.indexOf("migrating"); i + 1 < states.length; i++) {
    const l = { phase: states[i], to: states[i + 1] };
    assert.is(s.value("vmhop_migration_phase_duration_seconds_count", l), 1, JSON.stringify(l));
    assert.is(
      s.value("vmhop_migration_phase_duration_seconds_sum", l),
      (at[states[i + 1]] - at[states[i]]) / 1000,
      JSON.stringify(l),
    );
  }

  assert.is(s.value("vmhop_placement_plans_total", { policy: plan.policy }), 1);
  assert.is(s.value("vmhop_placement_plan_duration_seconds_count", { policy: plan.policy }), 1);
  assert.is(
    s.value("vmhop_placement_plan_duration_seconds_sum", { policy: plan.policy }),
    plan.computeMs / 1000,
  );
  assert.is(
    s.value("vmhop_placement_last_plan_power_watts", { when: "before" }),
    plan.predictedPowerWattsBefore,
  );
  assert.is(
    s.value("vmhop_placement_last_plan_power_watts", { when: "after" }),
    plan.predictedPowerWattsAfter,
  );
  assert.is(
    s.value("vmhop_placement_last_plan_overloaded_hosts", { when: "after" }),
    plan.overloadedHostsAfter,
  );
  assert.is(s.value("vmhop_placement_last_plan_moves"), 1);

  // The source page-server's view of `m` (its migration id is the control-plane's).
  const src = { migration: m.migrationId, role: "source" };
  const sent = s.value("vmhop_page_memory_sent_bytes_total", src) ?? 0;
  assert.ok(sent > 0, "RAM bytes sent");
  const wire = s.value("vmhop_page_channel_bytes_total", { ...src, direction: "forward", layer: "wire" });
  assert.is(m.bytesSent, wire || sent, "the control-plane's bytes_sent is the channel's, else QEMU's");
  assert.is(s.value("vmhop_page_postcopy_faults_total", src), m.memory?.pagesRequestedOnFault ?? 0);
  assert.ok(s.all("vmhop_page_postcopy_blocktime_seconds", { migration: m.migrationId }).length <= 1);
  assert.is(s.value("vmhop_page_migrations", { role: "source", phase: "completed" }), 1);
}
