// A migration's report as one self-contained HTML page (pure): the record's phases and address
// steps on a time axis, memory and disk still remote over time, what a client measured beside it
// (the guest's heartbeat gaps, the correspondent's silences) and the summary figures. Inline CSS
// and SVG only: no script, nothing fetched (the page's Content-Security-Policy forbids both).
import { type Migration, storageModeToJSON } from "../../../gen/vmhop/v1/control.js";
import { handoverModeToJSON } from "../../../gen/vmhop/v1/netreach.js";
import { migrationModeToJSON } from "../../../gen/vmhop/v1/page.js";
import { linear, niceStep, type Scale, ticks } from "./axis.js";
import { esc, fmtBytes, fmtMs, num } from "./html.js";

export interface Interval {
  /** Epoch ms it began, and how long it lasted. */
  startUnixMs: number;
  ms: number;
}

/** What a client measured around the migration (the demo does); every part optional. */
export interface ReportMeasurements {
  /** When the client requested the migration (epoch ms): the time axis's zero. Default: the record's creation. */
  requestedUnixMs?: number;
  /** The guest's heartbeat gaps longer than usual, and its usual heartbeat spacing. */
  heartbeatGaps?: Interval[];
  heartbeatEveryMs?: number;
  /** The correspondent's silences (no reply), by what it probed ("IPv6 ping", …). */
  silences?: (Interval & { probe: string })[];
  /** A line under the title (e.g. the WAN the migration crossed). */
  subtitle?: string;
  /** Further summary figures (label, value), e.g. what the client verified. */
  summary?: [string, string][];
}

/** The migration's states and the address part's, in the order their tables run (ties in time keep it). */
export const MIGRATION_STATES = [
  "pending",
  "preparing",
  "migrating",
  "switched",
  "completing",
  "relocating",
  "done",
  "failed",
  "cancelled",
];
const NETWORK_STATES = [
  "pending",
  "skipped",
  "preparing",
  "prepared",
  "switching",
  "switched",
  "settled",
  "rolled_back",
  "failed",
];
const FINAL = new Set(["done", "failed", "cancelled", "settled", "skipped", "rolled_back"]);

const COLOUR: Record<string, string> = {
  pending: "#c9c9c9",
  preparing: "#f1c232",
  migrating: "#6fa8dc",
  switched: "#e06666",
  completing: "#93c47d",
  relocating: "#8e7cc3",
  prepared: "#76a5af",
  switching: "#e69138",
  done: "#38761d",
  settled: "#38761d",
  failed: "#cc0000",
  cancelled: "#999999",
  rolled_back: "#999999",
  skipped: "#999999",
};

/** One state's stretch on the axis: from when it was entered until the next was (final: `end` undefined). */
export interface Segment {
  state: string;
  start: number;
  end?: number;
}

/**
 * The states of `entered` (state → epoch ms) in time order as segments; the last non-final one
 * lasts until `nowMs` (the record's last update), final ones are moments.
 */
export function segments(entered: Record<string, number>, order: string[], nowMs: number): Segment[] {
  const rank = (s: string) => (order.includes(s) ? order.indexOf(s) : order.length);
  const list = Object.entries(entered)
    .filter(([, t]) => Number.isFinite(t) && t > 0)
    .sort(([a, ta], [b, tb]) => ta - tb || rank(a) - rank(b));
  return list.map(([state, start], i) =>
    FINAL.has(state) ? { state, start } : { state, start, end: list[i + 1]?.[1] ?? Math.max(nowMs, start) },
  );
}

const W = 980;
const LEFT = 190;
const RIGHT = 30;
const LANE = 26;

export function renderReport(m: Migration, x: ReportMeasurements = {}): string {
  const entered = m.enteredUnixMs ?? {};
  const netEntered = m.network?.enteredUnixMs ?? {};
  const first = Math.min(...Object.values(entered).filter((t) => t > 0));
  const t0 = x.requestedUnixMs ?? (m.createdUnixMs || (Number.isFinite(first) ? first : m.updatedUnixMs));
  const phases = segments(entered, MIGRATION_STATES, m.updatedUnixMs);
  const steps = segments(netEntered, NETWORK_STATES, m.updatedUnixMs);
  const times = [
    t0,
    m.updatedUnixMs,
    ...Object.values(entered),
    ...Object.values(netEntered),
    ...(m.progress ?? []).map((p) => p.atUnixMs),
    ...[...(x.heartbeatGaps ?? []), ...(x.silences ?? [])].flatMap((g) => [
      g.startUnixMs,
      g.startUnixMs + g.ms,
    ]),
  ].filter((t) => Number.isFinite(t) && t > 0);
  const lo = Math.min(...times);
  const hi = Math.max(...times, lo + 1);
  // The axis counts from t0, so every chart shares it: ms relative to the request.
  const xs = linear(lo - t0, hi - t0 + (hi - lo) * 0.02, LEFT, W - RIGHT);
  const title = `Migration ${m.migrationId}: ${m.vmId} ${m.sourceHostId} → ${m.destinationHostId}`;
  const origin = x.requestedUnixMs !== undefined ? "the MigrateVm request" : "the migration's creation";

  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${CSS}</style>
</head>
<body>
<h1>${esc(title)} <span class="state s-${esc(m.state)}">${esc(m.state)}</span></h1>
${x.subtitle ? `<p class="sub">${esc(x.subtitle)}</p>` : ""}
${m.error ? `<p class="error">${esc(m.error)}</p>` : ""}
<h2>Timeline</h2>
<p class="note">Time after ${esc(origin)} (${esc(new Date(t0).toISOString())}).</p>
${timelineSvg(m, x, phases, steps, xs, t0)}
<h2>Still remote</h2>
${progressCharts(m, phases, xs, t0)}
<h2>Summary</h2>
${table(["figure", "value"], summaryRows(m, x, t0))}
<h2>Phases</h2>
${table(["state", "entered", "lasted"], phaseRows(phases, t0))}
${steps.length ? `<h2>Address steps</h2>\n${table(["network state", "entered", "lasted"], phaseRows(steps, t0))}` : ""}
<details><summary>The record as JSON</summary><pre>${esc(JSON.stringify(recordJson(m), null, 1))}</pre></details>
<p class="foot">Written by vmhop report at ${esc(new Date().toISOString())} from the control-plane's record (updated ${esc(new Date(m.updatedUnixMs).toISOString())}).</p>
</body>
</html>
`;
}

function recordJson(m: Migration): unknown {
  // The progress history is drawn above; here its length says enough.
  return { ...m, progress: `${m.progress?.length ?? 0} samples` };
}

const CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;background:#fff;margin:24px auto;max-width:1000px;padding:0 12px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #ddd}
.sub,.note,.foot{color:#666;margin:2px 0}.foot{font-size:12px;margin-top:24px}
.error{color:#900;background:#fdecea;padding:6px 8px;border-radius:4px}
.state{font-size:13px;padding:2px 8px;border-radius:10px;background:#ddd;vertical-align:middle}
.s-done{background:#d9ead3}.s-failed{background:#f4cccc}.s-cancelled{background:#eee}
table{border-collapse:collapse;margin:4px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
svg{display:block;margin:4px 0;max-width:100%;height:auto}svg text{font:12px system-ui,sans-serif;fill:#222}
svg .lbl{font-size:11px}svg .dim{fill:#666}
pre{font-size:11px;background:#f8f8f8;padding:8px;overflow:auto;max-height:400px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}
`;

function table(head: string[], rows: string[][]): string {
  const th = head.map((h) => `<th>${esc(h)}</th>`).join("");
  // Rows arrive as HTML already escaped by their makers (a swatch, a number).
  const tr = rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("\n");
  return `<table><thead><tr>${th}</tr></thead><tbody>\n${tr}\n</tbody></table>`;
}

const rel = (t: number, t0: number) => `${t - t0 >= 0 ? "+" : ""}${fmtMs(t - t0)}`;

function phaseRows(segs: Segment[], t0: number): string[][] {
  return segs.map((s) => [
    `<span class="swatch" style="background:${COLOUR[s.state] ?? "#bbb"}"></span>${esc(s.state)}`,
    esc(rel(s.start, t0)),
    s.end === undefined ? "final" : esc(fmtMs(s.end - s.start)),
  ]);
}

const enumName = (s: string, prefix: string) => s.replace(prefix, "").toLowerCase().replace(/_/g, "-");

function summaryRows(m: Migration, x: ReportMeasurements, t0: number): string[][] {
  const e = m.enteredUnixMs ?? {};
  const after = (t: number | undefined) => (t ? `${fmtMs(t - t0)} after the request` : "n/a");
  const rows: [string, string][] = [
    ["migration", `${m.migrationId}: ${m.state}${m.error ? ` (${m.error})` : ""}`],
    ["VM", `${m.vmId} from ${m.sourceHostId} to ${m.destinationHostId} (fencing token ${m.fencingToken})`],
    [
      "mode, storage",
      `${enumName(migrationModeToJSON(m.mode), "MIGRATION_MODE_")}, ${enumName(storageModeToJSON(m.storage), "STORAGE_MODE_")}`,
    ],
    ["requested", new Date(t0).toISOString()],
    [
      "switch-over",
      m.memory?.resumedUnixMs
        ? `${after(m.memory.resumedUnixMs)} (the VM resumed at the destination)`
        : `${after(e.switched)} (the source switched over)`,
    ],
    ["memory complete", after(e.completing)],
  ];
  if (m.disk) rows.push(["disk local", after(e.done)]);
  const end = MIGRATION_STATES.filter((s) => FINAL.has(s) && e[s]).map((s) => e[s])[0];
  rows.push(["final", end ? `${after(end)}` : "not yet (the migration runs)"]);
  const mem = m.memory;
  rows.push([
    "memory",
    `${fmtBytes(m.bytesSent)} sent${mem ? `, ${fmtBytes(mem.bytesRemaining)} still at the source, ${mem.pagesRequestedOnFault} pages fetched on fault` : ""}`,
  ]);
  if (mem?.pagesSentAhead)
    rows.push(["sent ahead", `${mem.pagesSentAhead} pages (the virtio rings) ahead of the first faults`]);
  const fl = mem?.faultLatency;
  if (fl?.timed)
    rows.push([
      "fault latency",
      `p50 ${fl.p50Ms.toFixed(1)} ms, p99 ${fl.p99Ms.toFixed(1)} ms, max ${fl.maxMs.toFixed(1)} ms over ${fl.timed} timed faults (${fl.inFlight} more already on their way)`,
    ]);
  if (mem?.bytesBeforeResume !== undefined)
    rows.push([
      "before resume",
      `${fmtBytes(mem.bytesBeforeResume)} reached the destination before its VM resumed`,
    ]);
  const d = m.disk;
  if (d)
    rows.push([
      "disk",
      `${d.blocksLocal} of ${d.blocksTotal} blocks local; ${fmtBytes(d.bytesFetchedOnDemand)} on demand, ${fmtBytes(d.bytesFetchedBackground)} in the background; ${d.promoted ? "promoted" : "not promoted"}`,
    ]);
  const n = m.network;
  if (n)
    rows.push([
      "address",
      `${n.state}${n.reason ? ` (${n.reason})` : ""}${n.fromSite || n.toSite ? `, site ${n.fromSite} → ${n.toSite}` : ""}, handover ${n.handoverMode ? enumName(handoverModeToJSON(n.handoverMode), "HANDOVER_MODE_") : "the anchor's default"}`,
    ]);
  const gaps = x.heartbeatGaps;
  if (gaps)
    rows.push([
      "guest's longest stall",
      gaps.length
        ? `${fmtMs(Math.max(...gaps.map((g) => g.ms)))} between two heartbeats${x.heartbeatEveryMs ? ` (sent every ${fmtMs(x.heartbeatEveryMs)})` : ""}`
        : "no gap longer than usual",
    ]);
  for (const s of x.silences ?? [])
    rows.push([`correspondent's silence (${s.probe})`, `${fmtMs(s.ms)} from ${rel(s.startUnixMs, t0)}`]);
  rows.push(...(x.summary ?? []));
  return rows.map(([k, v]) => [esc(k), esc(v)]);
}

function axis(xs: Scale, y: number): string {
  const [d0, d1] = xs.domain;
  const step = niceStep(d1 - d0);
  const out = [`<line x1="${LEFT}" x2="${W - RIGHT}" y1="${y}" y2="${y}" stroke="#888"/>`];
  for (const t of ticks(d0, d1, step)) {
    const px = num(xs(t));
    const digits = step >= 1000 ? 0 : step >= 100 ? 1 : 2;
    out.push(
      `<line x1="${px}" x2="${px}" y1="${y}" y2="${y + 4}" stroke="#888"/>`,
      `<text class="lbl dim" x="${px}" y="${y + 16}" text-anchor="middle">${esc(`${(t / 1000).toFixed(digits)} s`)}</text>`,
    );
  }
  return out.join("\n");
}

function laneLabel(y: number, text: string): string {
  return `<text x="${LEFT - 8}" y="${y + LANE / 2 + 4}" text-anchor="end">${esc(text)}</text>`;
}

/** A lane of segments, each a coloured bar named inside when it fits, and final states as marks. */
function segmentLane(segs: Segment[], xs: Scale, y: number, t0: number): string {
  const out: string[] = [];
  for (const s of segs) {
    const x0 = xs(s.start - t0);
    if (s.end === undefined) {
      const c = COLOUR[s.state] ?? "#444";
      const anchor = x0 > W - RIGHT - 80 ? "end" : "start";
      out.push(
        `<g><title>${esc(`${s.state} at ${rel(s.start, t0)}`)}</title>`,
        `<line x1="${num(x0)}" x2="${num(x0)}" y1="${y - 2}" y2="${y + LANE + 2}" stroke="${c}" stroke-width="3"/>`,
        `<text x="${num(anchor === "end" ? x0 - 5 : x0 + 5)}" y="${y + LANE / 2 + 4}" text-anchor="${anchor}" style="font-weight:600">${esc(s.state)}</text></g>`,
      );
      continue;
    }
    const w = Math.max(1, xs(s.end - t0) - x0);
    out.push(
      `<g><title>${esc(`${s.state}: ${fmtMs(s.end - s.start)} from ${rel(s.start, t0)}`)}</title>`,
      `<rect x="${num(x0)}" y="${y}" width="${num(w)}" height="${LANE}" fill="${COLOUR[s.state] ?? "#bbb"}" stroke="#fff"/>`,
      w > s.state.length * 7 + 8
        ? `<text x="${num(x0 + w / 2)}" y="${y + LANE / 2 + 4}" text-anchor="middle">${esc(s.state)}</text></g>`
        : "</g>",
    );
  }
  return out.join("\n");
}

/** A lane of measured intervals (gaps, silences), the longest named. */
function intervalLane(
  list: Interval[],
  xs: Scale,
  y: number,
  t0: number,
  what: string,
  colour: string,
): string {
  const out: string[] = [];
  const longest = list.reduce((a, b) => (b.ms > a.ms ? b : a), list[0]);
  for (const g of list) {
    const x0 = xs(g.startUnixMs - t0);
    const w = Math.max(2, xs(g.startUnixMs + g.ms - t0) - x0);
    out.push(
      `<g><title>${esc(`${what}: ${fmtMs(g.ms)} from ${rel(g.startUnixMs, t0)}`)}</title>`,
      `<rect x="${num(x0)}" y="${y + 4}" width="${num(w)}" height="${LANE - 8}" fill="${colour}" fill-opacity="0.75"/></g>`,
    );
  }
  if (longest) {
    const x1 = xs(longest.startUnixMs + longest.ms - t0);
    const anchor = x1 > W - RIGHT - 90 ? "end" : "start";
    const tx = anchor === "end" ? xs(longest.startUnixMs - t0) - 4 : x1 + 4;
    out.push(
      `<text class="lbl" x="${num(tx)}" y="${y + LANE / 2 + 4}" text-anchor="${anchor}">${esc(fmtMs(longest.ms))}</text>`,
    );
  }
  if (!list.length)
    out.push(`<text class="lbl dim" x="${LEFT + 4}" y="${y + LANE / 2 + 4}">none longer than usual</text>`);
  return out.join("\n");
}

function timelineSvg(
  m: Migration,
  x: ReportMeasurements,
  phases: Segment[],
  steps: Segment[],
  xs: Scale,
  t0: number,
): string {
  const lanes: { label: string; body: (y: number) => string }[] = [
    { label: "migration", body: (y) => segmentLane(phases, xs, y, t0) },
  ];
  if (steps.length) lanes.push({ label: "address (netreach)", body: (y) => segmentLane(steps, xs, y, t0) });
  if (x.heartbeatGaps)
    lanes.push({
      label: "guest heartbeat gaps",
      body: (y) => intervalLane(x.heartbeatGaps!, xs, y, t0, "no heartbeat", "#cc4125"),
    });
  const silences = x.silences ?? [];
  for (const probe of [...new Set(silences.map((s) => s.probe))])
    lanes.push({
      label: `silence: ${probe}`,
      body: (y) =>
        intervalLane(
          silences.filter((s) => s.probe === probe),
          xs,
          y,
          t0,
          `no reply (${probe})`,
          "#3d85c6",
        ),
    });
  const top = 22;
  const h = top + lanes.length * (LANE + 8) + 28;
  const body = lanes.map((l, i) => {
    const y = top + i * (LANE + 8);
    return `${laneLabel(y, l.label)}\n${l.body(y)}`;
  });
  const marks: string[] = [];
  const resumed = m.memory?.resumedUnixMs;
  if (resumed) {
    const px = num(xs(resumed - t0));
    marks.push(
      `<g><title>${esc(`the VM resumed at the destination at ${rel(resumed, t0)}`)}</title>`,
      `<line x1="${px}" x2="${px}" y1="14" y2="${h - 26}" stroke="#000" stroke-dasharray="4 3"/>`,
      `<text class="lbl" x="${px}" y="11" text-anchor="middle">VM resumed at ${esc(m.destinationHostId)}</text></g>`,
    );
  }
  return `<svg width="${W}" height="${h}" viewBox="0 0 ${W} ${h}" role="img" aria-label="timeline">
${body.join("\n")}
${marks.join("\n")}
${axis(xs, h - 24)}
</svg>`;
}

interface Series {
  name: string;
  colour: string;
  dashed?: boolean;
  points: [number, number][];
}

function lineChart(
  series: Series[],
  xs: Scale,
  t0: number,
  phases: Segment[],
  fmt: (v: number) => string,
  top0 = 0,
): string {
  const h = 170;
  const top = 10;
  const bottom = h - 26;
  const max = Math.max(1, top0, ...series.flatMap((s) => s.points.map(([, v]) => v)));
  const ys = linear(0, max, bottom, top);
  const out: string[] = [];
  // The phases' starts as faint lines, so a curve's bend lines up with its cause.
  for (const p of phases) {
    const px = num(xs(p.start - t0));
    out.push(
      `<line x1="${px}" x2="${px}" y1="${top}" y2="${bottom}" stroke="${COLOUR[p.state] ?? "#ccc"}" stroke-width="1.5"><title>${esc(p.state)}</title></line>`,
    );
  }
  for (const v of [0, max / 2, max])
    out.push(
      `<line x1="${LEFT}" x2="${W - RIGHT}" y1="${num(ys(v))}" y2="${num(ys(v))}" stroke="#eee"/>`,
      `<text class="lbl dim" x="${LEFT - 8}" y="${num(ys(v) + 4)}" text-anchor="end">${esc(fmt(v))}</text>`,
    );
  series.forEach((s, i) => {
    // The legend sits top right: remaining-figures start high at the left.
    const lx = W - RIGHT - 190 * (series.length - i);
    const pts = s.points.map(([t, v]) => `${num(xs(t - t0))},${num(ys(v))}`).join(" ");
    out.push(
      `<polyline points="${pts}" fill="none" stroke="${s.colour}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5 3"' : ""}><title>${esc(s.name)}</title></polyline>`,
      `<line x1="${lx}" x2="${lx + 24}" y1="${top + 6}" y2="${top + 6}" stroke="${s.colour}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5 3"' : ""}/>`,
      `<text class="lbl" x="${lx + 30}" y="${top + 10}">${esc(s.name)}</text>`,
    );
  });
  return `<svg width="${W}" height="${h}" viewBox="0 0 ${W} ${h}" role="img">
${out.join("\n")}
${axis(xs, bottom)}
</svg>`;
}

function progressCharts(m: Migration, phases: Segment[], xs: Scale, t0: number): string {
  const samples = m.progress ?? [];
  if (!samples.length)
    return `<p class="note">This record has no progress history (a control-plane older than the report, or no progress reported yet).</p>`;
  const mem = samples.filter((p) => p.bytesSent > 0 || p.bytesRemaining > 0);
  const disk = samples.filter((p) => p.blocksTotal > 0);
  const out: string[] = [];
  if (mem.length)
    out.push(
      `<h3>Memory</h3>`,
      lineChart(
        [
          {
            name: "still at the source",
            colour: "#cc4125",
            points: mem.map((p) => [p.atUnixMs, p.bytesRemaining]),
          },
          {
            name: "sent",
            colour: "#6fa8dc",
            dashed: true,
            points: mem.map((p) => [p.atUnixMs, p.bytesSent]),
          },
        ],
        xs,
        t0,
        phases,
        fmtBytes,
      ),
    );
  if (disk.length)
    out.push(
      `<h3>Disk</h3>`,
      lineChart(
        [
          {
            name: "blocks remote",
            colour: "#8e7cc3",
            points: disk.map((p) => [p.atUnixMs, p.blocksTotal - p.blocksLocal]),
          },
        ],
        xs,
        t0,
        phases,
        (v) => `${Math.round(v)} blocks`,
        // Up to every block: the curve shows the share still remote, also when first known late.
        Math.max(...disk.map((p) => p.blocksTotal)),
      ),
    );
  return out.join("\n") || `<p class="note">No memory or disk progress in this record.</p>`;
}
