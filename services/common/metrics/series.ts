// Series helpers that keep label cardinality bounded and hot paths free of metric work:
// - setSeries: a counter or gauge whose values are read from the service's own state at
//   scrape time (collect()), so a request path only bumps a plain number and a series is
//   gone once the thing it describes is;
// - KeyedSeries: series observed as events happen under a per-object label (an export, a
//   migration), removed at scrape time once that object is no longer live.
import { Counter, Gauge, type Histogram, type Registry } from "prom-client";
import { registry as processRegistry } from "./registry.js";

export type Labels = Record<string, string>;
export type Rows = Iterable<readonly [Labels, number]>;

interface SampledConfig {
  name: string;
  help: string;
  labelNames?: string[];
  registry?: Registry;
}

/** The configuration of a metric whose series are `rows()` at each scrape. */
function sampled<M extends Counter | Gauge>(cfg: SampledConfig, rows: () => Rows | Promise<Rows>) {
  return {
    name: cfg.name,
    help: cfg.help,
    labelNames: cfg.labelNames ?? [],
    registers: [cfg.registry ?? processRegistry],
    async collect(this: M) {
      setSeries(this, await rows());
    },
  };
}

/** A counter whose series are `rows()` at each scrape (a total the service already keeps). */
export function sampledCounter(cfg: SampledConfig, rows: () => Rows | Promise<Rows>): Counter {
  return new Counter(sampled<Counter>(cfg, rows));
}

/** A gauge whose series are `rows()` at each scrape. */
export function sampledGauge(cfg: SampledConfig, rows: () => Rows | Promise<Rows>): Gauge {
  return new Gauge(sampled<Gauge>(cfg, rows));
}

/** Replaces every series of `metric` with `rows` (call it from the metric's collect()). */
export function setSeries(metric: Counter | Gauge, rows: Rows): void {
  metric.reset();
  for (const [labels, value] of rows) {
    if ("set" in metric) metric.set(labels, value);
    else metric.inc(labels, value);
  }
}

/**
 * Remembers which values of `key` (one of its labels) a metric was observed under, so the series of an
 * object that went away can be removed: call `seen` with each observation's key and `prune`
 * with what is still live (before a scrape reads the metric).
 */
export class KeyedSeries<M extends Counter | Gauge | Histogram = Counter | Gauge | Histogram> {
  private readonly keys = new Map<string, Labels[]>();

  constructor(
    private readonly key: string,
    readonly metric: M,
  ) {}

  /** Records that `labels` (holding the key label) now has a series. */
  seen(labels: Labels): void {
    const k = labels[this.key]!;
    const list = this.keys.get(k);
    if (!list) this.keys.set(k, [labels]);
    else if (!list.some((l) => sameLabels(l, labels))) list.push(labels);
  }

  /** Removes every series whose key is not in `live`. */
  prune(live: (key: string) => boolean): void {
    for (const [k, list] of this.keys) {
      if (live(k)) continue;
      for (const labels of list) this.metric.remove(labels);
      this.keys.delete(k);
    }
  }
}

function sameLabels(a: Labels, b: Labels): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}
