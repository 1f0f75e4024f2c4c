// The block-server's Prometheus metrics. NBD traffic and the proxy's progress are read from
// the exports' own counters at scrape time (the request path only bumps plain numbers); the
// on-demand fetch latency is observed per fetch. Every series carries its export's name and
// is gone once the export is.
import { Counter, Gauge, Histogram } from "prom-client";
import { registry } from "../common/metrics/registry.js";
import { KeyedSeries, type Labels, setSeries } from "../common/metrics/series.js";
import type { BlockServer } from "./block-server.js";
import { COMMANDS } from "./nbd/server/commands.js";

let bound: BlockServer | undefined;

/** Per export, its rows for one metric (empty while no block-server is bound). */
function rows(fn: (bs: BlockServer, name: string) => [Labels, number][]): [Labels, number][] {
  const bs = bound;
  if (!bs) return [];
  return bs.names().flatMap((name) => fn(bs, name));
}

const exp = (bs: BlockServer, name: string) => bs.nbd.exports.get(name);
const proxy = (bs: BlockServer, name: string) => {
  const s = bs.status(name);
  return s.info.mode === "proxy" ? s : undefined;
};

new Counter({
  name: "vmhop_nbd_read_bytes_total",
  help: "Bytes NBD clients read from the export",
  labelNames: ["export"],
  registers: [registry],
  collect() {
    setSeries(
      this,
      rows((bs, name) => [[{ export: name }, exp(bs, name)?.stats.bytesRead ?? 0]]),
    );
  },
});

new Counter({
  name: "vmhop_nbd_written_bytes_total",
  help: "Bytes NBD clients wrote to the export (WRITE payloads)",
  labelNames: ["export"],
  registers: [registry],
  collect() {
    setSeries(
      this,
      rows((bs, name) => [[{ export: name }, exp(bs, name)?.stats.bytesWritten ?? 0]]),
    );
  },
});

new Counter({
  name: "vmhop_nbd_requests_total",
  help: "NBD requests served, by export and command",
  labelNames: ["export", "command"],
  registers: [registry],
  collect() {
    setSeries(
      this,
      rows((bs, name) => {
        const e = exp(bs, name);
        if (!e) return [];
        const out: [Labels, number][] = [];
        e.requestsByCommand.forEach((n, type) => {
          const rule = COMMANDS[type];
          if (rule && n > 0) out.push([{ export: name, command: rule.name.toLowerCase() }, n]);
        });
        return out;
      }),
    );
  },
});

new Counter({
  name: "vmhop_nbd_request_errors_total",
  help: "NBD requests answered with an error",
  labelNames: ["export"],
  registers: [registry],
  collect() {
    setSeries(
      this,
      rows((bs, name) => [[{ export: name }, exp(bs, name)?.stats.errors ?? 0]]),
    );
  },
});

new Gauge({
  name: "vmhop_nbd_connections",
  help: "NBD clients connected to the export",
  labelNames: ["export"],
  registers: [registry],
  collect() {
    setSeries(
      this,
      rows((bs, name) => [[{ export: name }, exp(bs, name)?.connections ?? 0]]),
    );
  },
});

new Gauge({
  name: "vmhop_export_blocks_local",
  help: "Blocks of the export held on this host (a target export holds all)",
  labelNames: ["export"],
  registers: [registry],
  collect() {
    setSeries(
      this,
      rows((bs, name) => [[{ export: name }, bs.status(name).blocksLocal]]),
    );
  },
});

new Gauge({
  name: "vmhop_export_blocks_total",
  help: "Blocks of the export",
  labelNames: ["export"],
  registers: [registry],
  collect() {
    setSeries(
      this,
      rows((bs, name) => [[{ export: name }, bs.status(name).blocksTotal]]),
    );
  },
});

new Counter({
  name: "vmhop_proxy_fetched_bytes_total",
  help: "Bytes a proxy export fetched from its upstream: on demand (a client waited) or by the background copy",
  labelNames: ["export", "source"],
  registers: [registry],
  collect() {
    setSeries(
      this,
      rows((bs, name) => {
        const s = proxy(bs, name);
        if (!s) return [];
        return [
          [{ export: name, source: "demand" }, s.bytesFetchedOnDemand],
          [{ export: name, source: "background" }, s.bytesFetchedBackground],
        ];
      }),
    );
  },
});

new Gauge({
  name: "vmhop_proxy_copy_rate_limit_bytes_per_second",
  help: "The proxy export's background copy rate limit (0: none); the copy's actual rate is rate(vmhop_proxy_fetched_bytes_total{source=\"background\"})",
  labelNames: ["export"],
  registers: [registry],
  collect() {
    setSeries(
      this,
      rows((bs, name) => {
        const s = proxy(bs, name);
        return s ? [[{ export: name }, s.copy.rateBytesPerSec]] : [];
      }),
    );
  },
});

new Gauge({
  name: "vmhop_proxy_copy_running",
  help: "1 while the proxy export's background copy runs",
  labelNames: ["export"],
  registers: [registry],
  collect() {
    setSeries(
      this,
      rows((bs, name) => {
        const s = proxy(bs, name);
        return s ? [[{ export: name }, s.copy.running ? 1 : 0]] : [];
      }),
    );
  },
});

const fetchSeconds: Histogram = new Histogram({
  name: "vmhop_proxy_fetch_duration_seconds",
  help: "On-demand fetches of missing blocks from the upstream (a client's read waited for each)",
  labelNames: ["export"],
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
