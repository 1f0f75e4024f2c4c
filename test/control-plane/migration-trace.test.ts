// A migration's trace (services/control-plane/migration-trace.ts) as the executor drives it:
// the migration span a root with the migration's attributes, a span per phase under it with
// calls made `within` a phase running in that phase's span, network steps as spans of their
// own, an error marking the phase and a failed migration ERROR; and a resumed migration (a
// restarted control-plane) continuing the recorded trace, or a new one when the record's
// traceparent is missing or unreadable.
import { context, SpanStatusCode, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import * as assert from "uvu/assert";
import { StorageMode } from "../../gen/vmhop/v1/control.js";
import { HandoverMode } from "../../gen/vmhop/v1/netreach.js";
import { MigrationMode } from "../../gen/vmhop/v1/page.js";
import { initTracing, vmhopTracer } from "../../services/common/tracing.js";
import { ATTR, MigrationTrace } from "../../services/control-plane/migration-trace.js";
import type { MigrationRecord } from "../../services/control-plane/records.js";
import { test } from "../helpers/uvu.js";

const exporter = new InMemorySpanExporter();
initTracing("migration-trace-test", { processors: [new SimpleSpanProcessor(exporter)] });

test.before.each(() => exporter.reset());

function record(over: Partial<MigrationRecord> = {}): MigrationRecord {
  return {
    migration_id: "m-7",
    request_id: "",
    vm_id: "vm1",
    source_host_id: "h1",
    destination_host_id: "h2",
    mode: MigrationMode.MIGRATION_MODE_POSTCOPY,
    state: "pending",
    fencing_token: 3,
    error: "",
    bytes_sent: 0,
    downtime_ms: 0,
    created_unix_ms: 0,
    updated_unix_ms: 0,
    storage: StorageMode.STORAGE_MODE_LAZY,
    network: {
      state: "pending",
      from_site: "s1",
      to_site: "s2",
      port: "tap0",
      mode: HandoverMode.HANDOVER_MODE_MBB_BICAST,
      generation: 3,
      entered_unix_ms: {},
    } as unknown as MigrationRecord["network"],
    ...over,
  };
}

const finished = (name: string) => exporter.getFinishedSpans().filter((s) => s.name === name);
const one = (name: string): ReadableSpan => {
  const all = finished(name);
  assert.is(all.length, 1, `${name}: ${exporter.getFinishedSpans().map((s) => s.name)}`);
  return all[0];
};

test("a driven migration: the root span, a span per phase under it, the calls in their phase", async () => {
  const request = vmhopTracer().startSpan("MigrateVm");
  const t = context.with(trace.setSpan(context.active(), request), () => MigrationTrace.start(record()));
  request.end();
  const active: Record<string, string | undefined> = {};
  for (const state of [
    "pending",
    "preparing",
    "migrating",
    "switched",
    "completing",
    "relocating",
  ] as const) {
    t.enter(state);
    t.enter(state); // entering it again (a resumed step) opens no second span
    active[state] = t.within(() => trace.getActiveSpan()?.spanContext().spanId);
    if (state === "switched") await t.step("network switch-over", async () => {});
  }
  t.end("done");

  const root = one("migration");
  assert.is(root.parentSpanContext, undefined, "the migration span is a root");
  assert.is(t.traceId, root.spanContext().traceId, "the trace id the control-plane logs");
  assert.not.equal(root.spanContext().traceId, request.spanContext().traceId, "a trace of its own");
  assert.equal(
    root.links.map((l) => l.context.spanId),
    [request.spanContext().spanId],
    "linked to the request",
  );
  assert.equal(
    [ATTR.vm, ATTR.migration, ATTR.from, ATTR.to, ATTR.mode, ATTR.storage, ATTR.handover, ATTR.state].map(
      (k) => root.attributes[k],
    ),
    ["vm1", "m-7", "h1", "h2", "postcopy", "lazy", "mbb_bicast", "done"],
  );
  for (const [state, activeId] of Object.entries(active)) {
    const p = one(state);
    assert.is(p.parentSpanContext?.spanId, root.spanContext().spanId, state);
    assert.is(p.spanContext().traceId, root.spanContext().traceId, state);
    assert.is(activeId, p.spanContext().spanId, `${state}: within() runs in the phase's span`);
    assert.is(p.attributes[ATTR.phase], state);
  }
  assert.is(one("network switch-over").parentSpanContext?.spanId, root.spanContext().spanId);
  assert.is(root.status.code, SpanStatusCode.UNSET);
  assert.is(trace.getSpanContext(context.active()), undefined, "nothing leaks into the caller's context");
});

test("a failure marks its phase and step ERROR, and the migration span failed", async () => {
  const t = MigrationTrace.start(record({ storage: undefined, network: undefined }));
  t.enter("preparing");
  await t
    .step("network prepare", async () => {
      throw new Error("the anchor said no");
    })
    .catch((err) => t.error(err));
  t.end("failed", "the anchor said no");
  const root = one("migration");
  assert.equal([root.attributes[ATTR.storage], root.attributes[ATTR.handover]], ["shared", "none"]);
  assert.equal([root.status.code, root.status.message], [SpanStatusCode.ERROR, "the anchor said no"]);
  assert.is(root.attributes[ATTR.state], "failed");
  assert.is(one("preparing").status.code, SpanStatusCode.ERROR);
  const step = one("network prepare");
  assert.equal([step.status.code, step.events[0]?.name], [SpanStatusCode.ERROR, "exception"]);
});

test("a resumed migration continues the recorded trace; without a readable one it starts its own", () => {
  const first = MigrationTrace.start(record());
  const traceparent = first.traceparent;
  assert.match(traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  first.end("migrating"); // the control-plane stopped mid-way

  const resumed = MigrationTrace.resume(record({ state: "migrating", trace_parent: traceparent }));
  resumed.enter("migrating");
  resumed.end("done");
  const [a, b] = finished("migration");
  assert.is(b.spanContext().traceId, a.spanContext().traceId, "the same trace");
  assert.is(b.parentSpanContext?.spanId, a.spanContext().spanId, "a child of the first migration span");
  assert.is(b.attributes[ATTR.resumed], true);
  assert.is(one("migrating").parentSpanContext?.spanId, b.spanContext().spanId);

  for (const bad of [undefined, "", "00-garbage-01"]) {
    exporter.reset();
    MigrationTrace.resume(record({ trace_parent: bad })).end("done");
    const s = one("migration");
    assert.is(s.parentSpanContext, undefined, `${JSON.stringify(bad)}: a root`);
    assert.not.equal(s.spanContext().traceId, a.spanContext().traceId);
  }
});

test.run();
