// The migration report page (services/control-plane/report), rendered from a record captured
// from a real `vmhop demo` run (test/fixtures/migration-record.json, the control-plane's store
// form): every phase and address step on the page, the progress curves, the summary, nothing
// that could fetch or run anything; ids and messages rendered as text.
import { readFileSync } from "node:fs";
import * as assert from "uvu/assert";
import type { Migration } from "../../gen/vmhop/v1/control.js";
import { migrationToPb } from "../../services/control-plane/grpc.js";
import type { MigrationRecord } from "../../services/control-plane/records.js";
import { linear, niceStep, ticks } from "../../services/control-plane/report/axis.js";
import { esc } from "../../services/control-plane/report/html.js";
import { MIGRATION_STATES, renderReport, segments } from "../../services/control-plane/report/render.js";
import { test } from "../helpers/uvu.js";

const fixture = new URL("../fixtures/migration-record.json", import.meta.url);
const recorded = (): MigrationRecord => JSON.parse(readFileSync(fixture, "utf8")) as MigrationRecord;

/** Every `points="…"` list of the page's curves, as [x, y] pairs. */
function curves(html: string): [number, number][][] {
  return [...html.matchAll(/<polyline points="([^"]*)"/g)].map((m) =>
    m[1].split(" ").map((p) => p.split(",").map(Number) as [number, number]),
  );
}

test("the recorded run: every phase and address step, memory and disk curves, the summary", () => {
  const rec = recorded();
  assert.is(rec.state, "done", "the fixture is a finished migration");
  const html = renderReport(migrationToPb(rec));
  for (const state of Object.keys(rec.entered_unix_ms ?? {}))
    assert.ok(html.includes(`</span>${state}</td>`), `phase ${state} in the phase table`);
  for (const state of Object.keys(rec.network?.entered_unix_ms ?? {}))
    assert.ok(html.includes(`>${state}<`), `address step ${state}`);
  assert.ok(html.includes(esc(rec.migration_id)) && html.includes(rec.vm_id));
  // Three curves: memory still at the source, memory sent, disk blocks remote.
  const lines = curves(html);
  assert.is(lines.length, 3, "memory (2) and disk (1)");
  const memorySamples = rec.progress!.filter((p) => p.bytes_sent > 0 || p.bytes_remaining > 0).length;
  assert.is(lines[0].length, memorySamples);
  // The disk ends with every block local: its curve ends on the chart's zero line, below its start.
  const disk = lines[2];
  assert.ok(disk.at(-1)![1] > disk[0][1], JSON.stringify([disk[0], disk.at(-1)]));
  // Points run left to right in time order.
  for (const l of lines) assert.ok(l.every((p, i) => i === 0 || p[0] >= l[i - 1][0]));
  assert.match(html, /<td>memory complete<\/td><td>[\d.]+ s after the request<\/td>/);
  assert.match(html, /<td>disk<\/td><td>(\d+) of \1 blocks local;/);
});

test("the memory's send-ahead and fault latency, when the record has them", () => {
  const rec = recorded();
  rec.memory = {
    ...rec.memory!,
    pages_sent_ahead: 7,
    fault_latency: {
      timed: 34,
      p50_ms: 52.5,
      p99_ms: 310,
      max_ms: 402.25,
      requested: 77,
      in_flight: 43,
      stopped: "",
    },
  };
  const html = renderReport(migrationToPb(rec));
  assert.match(html, "<td>sent ahead</td><td>7 pages");
  assert.match(
    html,
    "p50 52.5 ms, p99 310.0 ms, max 402.3 ms over 34 timed faults (43 more already on their way)",
  );
  assert.not.match(renderReport(migrationToPb(recorded())), "sent ahead", "absent from an older record");
});

test("self-contained: no script, nothing fetched, a policy that forbids both", () => {
  const html = renderReport(migrationToPb(recorded()), {
    requestedUnixMs: recorded().created_unix_ms,
    heartbeatGaps: [],
    silences: [],
  });
  assert.ok(html.startsWith("<!DOCTYPE html>"));
  assert.match(html, `content="default-src 'none'; style-src 'unsafe-inline'; img-src data:"`);
  for (const bad of ["<script", " src=", "href=", "url(", "@import", "http:", "https:", "<link", "<iframe"])
    assert.not.ok(html.includes(bad), `the page contains ${bad}`);
  assert.is(html.match(/<svg /g)!.length, html.match(/<\/svg>/g)!.length);
});

test("ids, messages and measurements are text, never markup", () => {
  const m: Migration = migrationToPb({
    ...recorded(),
    migration_id: "m-<b>1</b>",
    vm_id: "<script>alert(1)</script>",
    source_host_id: `"><svg onload=alert(1)>`,
    error: "</pre><img src=x onerror=alert(1)> & more",
    state: "failed",
  });
  const html = renderReport(m, {
    subtitle: "<i>sub</i>",
    silences: [{ probe: "<u>probe</u>", startUnixMs: m.createdUnixMs + 10, ms: 5 }],
    summary: [["<th>k", "v</td>"]],
  });
  assert.not.ok(/<script|<img|<svg onload|<b>1|<i>sub|<u>probe|<th>k|v<\/td>/.test(html));
  assert.ok(html.includes("&lt;script&gt;alert(1)&lt;/script&gt;"));
  assert.ok(html.includes("&lt;/pre&gt;&lt;img src=x onerror=alert(1)&gt; &amp; more"));
  assert.ok(html.includes("&quot;&gt;&lt;svg onload=alert(1)&gt;"));
  assert.is(esc(`&<>"'`), "&amp;&lt;&gt;&quot;&#39;");
});

test("measurements: a lane for the guest's gaps and one per probe's silences, the longest labelled", () => {
  const m = migrationToPb(recorded());
  const t = m.enteredUnixMs.switched;
  const html = renderReport(m, {
    requestedUnixMs: m.createdUnixMs,
    heartbeatGaps: [
      { startUnixMs: t, ms: 1234 },
      { startUnixMs: t + 3000, ms: 300 },
    ],
    heartbeatEveryMs: 100,
    silences: [
      { probe: "IPv6 ping", startUnixMs: t + 10, ms: 420 },
      { probe: "IPv4 ping", startUnixMs: t + 12, ms: 410 },
    ],
  });
  for (const lane of ["guest heartbeat gaps", "silence: IPv6 ping", "silence: IPv4 ping"])
    assert.ok(html.includes(`>${lane}</text>`), lane);
  assert.ok(html.includes(">1.23 s</text>") && html.includes(">420 ms</text>"));
  assert.match(
    html,
    /guest&#39;s longest stall<\/td><td>1\.23 s between two heartbeats \(sent every 100 ms\)/,
  );
  // None measured is said, not drawn as an empty lane.
  assert.ok(renderReport(m, { heartbeatGaps: [] }).includes("none longer than usual"));
});

test("a record without progress history (an older control-plane) says so instead of drawing", () => {
  const { progress: _, ...old } = recorded();
  const html = renderReport(migrationToPb(old));
  assert.is(curves(html).length, 0);
  assert.ok(html.includes("This record has no progress history"));
  // A migration still running: its current phase lasts until the record's last update.
  const running = renderReport(
    migrationToPb({
      ...old,
      state: "migrating",
      created_unix_ms: 1000,
      entered_unix_ms: { pending: 1000, preparing: 1100, migrating: 1500 },
      updated_unix_ms: 4000,
    }),
  );
  assert.ok(running.includes("<td>final</td><td>not yet (the migration runs)</td>"));
  assert.match(
    running,
    /<td><span class="swatch"[^>]*><\/span>migrating<\/td><td>\+500 ms<\/td><td>2\.50 s<\/td>/,
  );
});

test("segments: time order (ties in the table's order), finals as moments, the last state lasting until now", () => {
  const s = segments(
    { done: 50, relocating: 30, switched: 20, migrating: 20, pending: 10 },
    MIGRATION_STATES,
    99,
  );
  assert.equal(s, [
    { state: "pending", start: 10, end: 20 },
    { state: "migrating", start: 20, end: 20 },
    { state: "switched", start: 20, end: 30 },
    { state: "relocating", start: 30, end: 50 },
    { state: "done", start: 50 },
  ]);
  assert.equal(segments({ pending: 10, preparing: 40 }, MIGRATION_STATES, 70).at(-1), {
    state: "preparing",
    start: 40,
    end: 70,
  });
});

test("axis: round steps and ticks across a domain, a linear scale", () => {
  assert.is(niceStep(10_000), 2000);
  assert.is(niceStep(7_300), 1000);
  assert.is(niceStep(0.9), 0.2);
  assert.equal(ticks(-1500, 4200, 1000), [-1000, 0, 1000, 2000, 3000, 4000]);
  const x = linear(0, 100, 50, 250);
  assert.equal([x(0), x(50), x(100)], [50, 150, 250]);
  assert.is(linear(5, 5, 10, 20)(5), 10);
});

test.run();
