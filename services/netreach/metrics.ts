// netreach's Prometheus metrics. The anchor counts the binding updates it receives (accepted or
// refused) and times each handover: from the VM running at its new site (as the site reported)
// to the anchor's route pointing there, and the route's installation alone. A site agent counts
// the updates it sent. No per-VM labels: cardinality stays fixed.
import { Counter, Histogram } from "prom-client";
import { registry } from "../common/metrics/registry.js";
import { sampledGauge } from "../common/metrics/series.js";
import type { Binding } from "./binding/types.js";

const GAP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

const updates = new Counter({
  name: "vmhop_netreach_binding_updates_total",
  help: "Binding updates the anchor received, by result (accepted, refused)",
  labelNames: ["result"],
  registers: [registry],
});

const gapSeconds = new Histogram({
  name: "vmhop_netreach_handover_gap_seconds",
  help: "From the VM running at its new site (the site's report) to the anchor's route pointing there",
  buckets: GAP_BUCKETS,
  registers: [registry],
});

const installSeconds = new Histogram({
  name: "vmhop_netreach_route_install_seconds",
  help: "From the anchor receiving a binding update to its kernel route",
  buckets: GAP_BUCKETS,
  registers: [registry],
});

const siteUpdates = new Counter({
  name: "vmhop_netreach_site_binding_updates_total",
  help: "Binding updates this site agent sent the anchor (a VM attached here), by the anchor's answer",
  labelNames: ["result"],
  registers: [registry],
});

let bindings: (() => Promise<Binding[]>) | undefined;

sampledGauge(
  { name: "vmhop_netreach_bindings", help: "Bindings the anchor holds, by state", labelNames: ["state"] },
  async () => {
    const by = new Map<string, number>();
    for (const b of bindings ? await bindings() : []) by.set(b.state, (by.get(b.state) ?? 0) + 1);
    return [...by].map(([state, n]) => [{ state }, n] as const);
  },
);

/** The anchor got a binding update; `gapMs` (-1: unknown) and `installMs` when it was accepted. */
export function countAnchorUpdate(accepted: boolean, times?: { gapMs: number; installMs: number }): void {
  updates.inc({ result: accepted ? "accepted" : "refused" });
  if (!times) return;
  if (times.gapMs >= 0) gapSeconds.observe(times.gapMs / 1000);
  installSeconds.observe(times.installMs / 1000);
}

/** A site agent's binding update and the anchor's answer. */
export function countSiteUpdate(accepted: boolean): void {
  siteUpdates.inc({ result: accepted ? "accepted" : "refused" });
}

/** The anchor's bindings, listed at each scrape. */
export function bindAnchorMetrics(list: () => Promise<Binding[]>): () => void {
  bindings = list;
  return () => {
    if (bindings === list) bindings = undefined;
  };
}
