// The shared metrics pieces in this process: the Grafana dashboard names only metrics some
// service's registry holds; series read at scrape time and per-object series go away with their
// object; the page-server shows a migration's series while it runs and for the last few ended.
import { readFileSync } from "node:fs";
import { Histogram, Registry } from "prom-client";
import * as assert from "uvu/assert";
import "../../services/block-server/metrics.js";
import "../../services/control-plane/metrics.js";
import "../../services/netreach/metrics.js";
import "../../services/placement/service/metrics.js";
import { collectProcessMetrics, metricNames } from "../../services/common/metrics/registry.js";
import { KeyedSeries, sampledCounter } from "../../services/common/metrics/series.js";
import { startMetricsServer } from "../../services/common/metrics/server.js";
import { bindPageMetrics, RETAIN_FINISHED } from "../../services/page-server/metrics.js";
import { MigrationTable } from "../../services/page-server/migration/record.js";
import { parseMetrics, scrape } from "../helpers/metrics.js";
import { test } from "../helpers/uvu.js";

const DASHBOARD = new URL("../../deploy/grafana/vmhop.json", import.meta.url);

interface Panel {
  title?: string;
  targets?: { expr: string }[];
  panels?: Panel[];
}

function exprs(panels: Panel[]): { panel: string; expr: string }[] {
  return panels.flatMap((p) => [
    ...(p.targets ?? []).map((t) => ({ panel: p.title ?? "", expr: t.expr })),
    ...exprs(p.panels ?? []),
  ]);
}

const PROMQL_WORDS = new Set([
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "bool",
  "and",
  "or",
  "unless",
  "offset",
]);

/** The metric names a PromQL expression selects: identifiers outside label matchers, ranges, groupings and calls. */
export function metricsOf(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(by|without|on|ignoring)\s*\([^)]*\)/g, " ");
  return [...bare.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)]
    .filter((m) => !m[2]) // a call: a function, not a metric
    .map((m) => m[1])
    .filter((w) => !PROMQL_WORDS.has(w) && !/^(Inf|NaN)$/i.test(w));
}

test("metricsOf picks the selected metrics out of PromQL", () => {
  assert.equal(
    metricsOf(
      'histogram_quantile(0.99, sum by (le, export) (rate(a_bucket{x="y"}[5m]))) / on (export) b_total > 0',
    ),
    ["a_bucket", "b_total"],
  );
});

test("the Grafana dashboard's every expression names metrics the services' registries hold", () => {
  collectProcessMetrics();
  // The page-server's registers at import too: its module is imported above.
  const known = new Set(metricNames());
  const dash = JSON.parse(readFileSync(DASHBOARD, "utf8")) as { panels: Panel[]; title: string };
  const all = exprs(dash.panels);
  assert.ok(all.length >= 20, `${all.length} expressions`);
  const unknown = all.flatMap(({ panel, expr }) =>
    metricsOf(expr)
      .filter((n) => !known.has(n))
      .map((n) => `${panel}: ${n}`),
  );
  assert.equal(unknown, []);
  // Every vmhop metric a service defines is on the dashboard somewhere.
  const used = new Set(
    all.flatMap(({ expr }) => metricsOf(expr)).map((n) => n.replace(/_(bucket|sum|count)$/, "")),
  );
  const unused = [...known]
    .filter((n) => n.startsWith("vmhop_") && !/_(sum|count)$/.test(n))
    .map((n) => n.replace(/_bucket$/, ""))
    .filter((n) => !used.has(n));
  assert.equal(unused, []);
});

test("a sampled counter replaces a metric's series at scrape; KeyedSeries removes an object's", async () => {
  const r = new Registry();
  let live = new Map([
    ["a", 3],
    ["b", 5],
  ]);
  sampledCounter({ name: "t_total", help: "t", labelNames: ["k"], registry: r }, () =>
    [...live].map(([k, v]) => [{ k }, v] as const),
  );
  const h = new Histogram({ name: "t_seconds", help: "t", labelNames: ["k"], buckets: [1], registers: [r] });
  const keys = new KeyedSeries("k", h);
  for (const k of ["a", "b"]) {
    keys.seen({ k });
    h.observe({ k }, 0.5);
  }
  const s = await startMetricsServer("127.0.0.1:0", r);
  try {
    const m1 = await scrape(s.address);
    assert.equal([m1.value("t_total", { k: "a" }), m1.value("t_total", { k: "b" })], [3, 5]);
    assert.is(m1.value("t_seconds_count", { k: "b" }), 1);
    live = new Map([["a", 4]]);
    keys.prune((k) => live.has(k));
    const m2 = await scrape(s.address);
    assert.equal(
      m2.samples.map((x) => [x.name, x.labels.k]).filter(([, k]) => k === "b"),
      [],
    );
    assert.is(m2.value("t_total", { k: "a" }), 4);
    assert.is(m2.value("t_seconds_count", { k: "a" }), 1);
  } finally {
    await s.close();
  }
});

test(`page-server: a migration's series while it runs and among the last ${RETAIN_FINISHED} ended, then gone`, async () => {
  const table = new MigrationTable();
  const unbind = bindPageMetrics(() => table.list());
  const s = await startMetricsServer("127.0.0.1:0");
  const sent = async () =>
    (await scrape(s.address)).all("vmhop_page_memory_sent_bytes_total").map((x) => x.labels.migration);
  try {
    const first = table.add("m-0", "vm-0", "source");
    table.update(first, { status: "active", bytesTransferred: 4096 } as never);
    assert.equal(await sent(), ["m-0"]);
    table.update(first, undefined, "completed");
    assert.equal(await sent(), ["m-0"], "the final figures stay for a scrape");
    for (let i = 1; i <= RETAIN_FINISHED; i++)
      table.update(table.add(`m-${i}`, "vm-0", "source"), undefined, "failed");
    const shown = await sent();
    assert.is(shown.length, RETAIN_FINISHED);
    assert.not.ok(shown.includes("m-0"), "the oldest ended migration's series are gone");
    const running = table.add("m-run", "vm-1", "source");
    assert.ok((await sent()).includes(running.id));
    const text = (await scrape(s.address)).text;
    assert.is(
      parseMetrics(text).value("vmhop_page_migrations", { role: "source", phase: "failed" }),
      RETAIN_FINISHED,
    );
  } finally {
    unbind();
    await s.close();
  }
});

test.run();
