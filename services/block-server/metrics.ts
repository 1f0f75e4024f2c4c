// The block-server's Prometheus metrics. NBD traffic and the proxy's progress are read from
// the exports' own counters at scrape time (the request path only bumps plain numbers); the
// on-demand fetch latency is observed per fetch. Every series carries its export's name and
// is gone once the export is.
import { Histogram } from "prom-client";
import { registry } from "../common/metrics/registry.js";
import { KeyedSeries, type Labels, sampledCounter, sampledGauge } from "../common/metrics/series.js";
import type { BlockServer, ExportStatus } from "./block-server.js";
import type { Export } from "./export/export.js";
import { COMMANDS } from "./nbd/server/commands.js";

let bound: BlockServer | undefined;

/** One export as a scrape sees it. */
interface Seen {
  labels: Labels;
  exp: Export | undefined;
  /** The export's status (computed on demand: the NBD counters do without it). */
  status: () => ExportStatus;
}

/** Each export's rows for one metric (none while no block-server is bound). */
function perExport(fn: (e: Seen) => [Labels, number][]): () => [Labels, number][] {
  return () => {
    const bs = bound;
    if (!bs) return [];
    return bs
      .names()
      .flatMap((name) =>
        fn({ labels: { export: name }, exp: bs.nbd.exports.get(name), status: () => bs.status(name) }),
      );
  };
}

/** Rows of proxy exports only. */
const perProxy = (fn: (e: Seen) => [Labels, number][]) =>
  perExport((e) => (e.status().info.mode === "proxy" ? fn(e) : []));

const byExport = ["export"];

sampledCounter(
  {
    name: "vmhop_nbd_read_bytes_total",
    help: "Bytes NBD clients read from the export",
    labelNames: byExport,
  },
  perExport((e) => [[e.labels, e.exp?.stats.bytesRead ?? 0]]),
);

sampledCounter(
  {
    name: "vmhop_nbd_written_bytes_total",
    help: "Bytes NBD clients wrote to the export (WRITE payloads)",
    labelNames: byExport,
  },
  perExport((e) => [[e.labels, e.exp?.stats.bytesWritten ?? 0]]),
);

sampledCounter(
  {
    name: "vmhop_nbd_requests_total",
    help: "NBD requests served, by export and command",
    labelNames: ["export", "command"],
  },
  perExport((e) => {
    const out: [Labels, number][] = [];
    e.exp?.requestsByCommand.forEach((n, type) => {
      const rule = COMMANDS[type];
      if (rule && n > 0) out.push([{ ...e.labels, command: rule.name.toLowerCase() }, n]);
    });
    return out;
  }),
);

sampledCounter(
  {
    name: "vmhop_nbd_request_errors_total",
    help: "NBD requests answered with an error",
    labelNames: byExport,
  },
  perExport((e) => [[e.labels, e.exp?.stats.errors ?? 0]]),
);

sampledGauge(
  { name: "vmhop_nbd_connections", help: "NBD clients connected to the export", labelNames: byExport },
  perExport((e) => [[e.labels, e.exp?.connections ?? 0]]),
);

sampledGauge(
  {
    name: "vmhop_export_blocks_local",
    help: "Blocks of the export held on this host (a target export holds all)",
    labelNames: byExport,
  },
  perExport((e) => [[e.labels, e.status().blocksLocal]]),
);

sampledGauge(
  { name: "vmhop_export_blocks_total", help: "Blocks of the export", labelNames: byExport },
  perExport((e) => [[e.labels, e.status().blocksTotal]]),
);

sampledCounter(
  {
    name: "vmhop_proxy_fetched_bytes_total",
    help: "Bytes a proxy export fetched from its upstream: on demand (a client waited) or by the background copy",
    labelNames: ["export", "source"],
  },
  perProxy((e) => [
    [{ ...e.labels, source: "demand" }, e.status().bytesFetchedOnDemand],
    [{ ...e.labels, source: "background" }, e.status().bytesFetchedBackground],
  ]),
);

sampledGauge(
  {
    name: "vmhop_proxy_copy_rate_limit_bytes_per_second",
    help: "The proxy export's background copy rate limit (0: none); the copy's actual rate is rate(vmhop_proxy_fetched_bytes_total{source=\"background\"})",
    labelNames: byExport,
  },
  perProxy((e) => [[e.labels, e.status().copy.rateBytesPerSec]]),
);

sampledGauge(
  {
    name: "vmhop_proxy_copy_running",
    help: "1 while the proxy export's background copy runs",
    labelNames: byExport,
  },
  perProxy((e) => [[e.labels, e.status().copy.running ? 1 : 0]]),
);

const fetchSeconds: Histogram = new Histogram({
  name: "vmhop_proxy_fetch_duration_seconds",
  help: "On-demand fetches of missing blocks from the upstream (a client's read waited for each)",
  labelNames: byExport,
  buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  registers: [registry],
  collect() {
    const live = new Set(bound?.names() ?? []);
    fetchKeys.prune((name) => live.has(name));
  },
});
const fetchKeys = new KeyedSeries("export", fetchSeconds);

/** The on-demand fetch observer for a proxy export named `name` (ProxyOptions.onDemandFetch). */
export function fetchObserver(name: string): (ms: number) => void {
  const labels = { export: name };
  return (ms) => {
    fetchKeys.seen(labels);
    fetchSeconds.observe(labels, ms / 1000);
  };
}

/** Serves this block-server's exports on /metrics; returns the unbinding. */
export function bindBlockServerMetrics(bs: BlockServer): () => void {
  bound = bs;
  return () => {
    if (bound === bs) bound = undefined;
  };
}
