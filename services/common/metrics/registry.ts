// The process's one Prometheus registry. Each service's metrics module (services/*/metrics.ts)
// defines its metrics on it at import; the /metrics server adds the default process metrics
// (CPU, memory, event loop, handles) when it starts.
import { collectDefaultMetrics, Registry } from "prom-client";

export const registry = new Registry();

let processMetrics = false;

/** prom-client's default process metrics, added once per process. */
export function collectProcessMetrics(): void {
  if (processMetrics) return;
  processMetrics = true;
  collectDefaultMetrics({ register: registry });
}

/** Every metric name a scrape of this registry can show, with a histogram's _bucket/_sum/_count. */
export function metricNames(r: Registry = registry): string[] {
  const out: string[] = [];
  for (const m of r.getMetricsAsArray()) {
    const { name, type } = m as unknown as { name: string; type: string };
    if (type === "histogram") out.push(`${name}_bucket`, `${name}_sum`, `${name}_count`);
    else if (type === "summary") out.push(name, `${name}_sum`, `${name}_count`);
    else out.push(name);
  }
  return out.sort();
}
