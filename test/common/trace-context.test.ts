// W3C trace context over gRPC metadata (services/common/grpc/trace-context.ts): what is injected
// is extracted as the same span; malformed headers are ignored (the server span is a root and
// the call is answered). Over real gRPC: a control-plane and a page-server in this process, a
// GetVm made in a span of the test's: the control-plane's server span is its child, and the
// InspectVm it makes of the page-server is in turn the child of that server span.
import * as grpc from "@grpc/grpc-js";
import { context, ROOT_CONTEXT, type Span, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import * as assert from "uvu/assert";
import { ControlPlaneServiceClient } from "../../gen/vmhop/v1/control.js";
import { VmSpec } from "../../gen/vmhop/v1/page.js";
import { call } from "../../services/common/grpc/call.js";
import { extractTraceContext, injectTraceContext } from "../../services/common/grpc/trace-context.js";
import { MemoryStore } from "../../services/common/store/index.js";
import { initTracing, vmhopTracer } from "../../services/common/tracing.js";
import { KEYS, type VmRecord } from "../../services/control-plane/records.js";
import { tempDir } from "../../testbed/temp-dir.js";
import {
  type ControlPlaneHandle,
  host,
  type PageServerHandle,
  startControlPlane,
  startPageServer,
} from "../control-plane/fixtures.js";
import { suite } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";

const spans = new InMemorySpanExporter();
initTracing("trace-context-test", { processors: [new SimpleSpanProcessor(spans)] });

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/;

const codec = suite("trace context codec");

/** Runs fn with `span` active. */
function inside<T>(span: Span, fn: () => T): T {
  return context.with(trace.setSpan(ROOT_CONTEXT, span), fn);
}

codec("inject then extract gives the same span context, remote", () => {
  const span = vmhopTracer().startSpan("caller");
  const meta = inside(span, () => injectTraceContext(new grpc.Metadata()));
  const header = meta.get("traceparent")[0] as string;
  const [, traceId, spanId] = TRACEPARENT.exec(header) ?? [];
  assert.is(traceId, span.spanContext().traceId, header);
  assert.is(spanId, span.spanContext().spanId, header);
  const got = trace.getSpanContext(extractTraceContext(meta));
  assert.equal(
    [got?.traceId, got?.spanId, got?.isRemote],
    [span.spanContext().traceId, span.spanContext().spanId, true],
  );
  span.end();
});

codec("tracestate travels with it", () => {
  const meta = new grpc.Metadata();
  meta.set("traceparent", `00-${"ab".repeat(16)}-${"cd".repeat(8)}-01`);
  meta.set("tracestate", "vendor=x1");
  const ctx = extractTraceContext(meta);
  assert.is(trace.getSpanContext(ctx)?.traceState?.get("vendor"), "x1");
  const out = injectTraceContext(new grpc.Metadata(), ctx);
  assert.is(out.get("tracestate")[0], "vendor=x1");
  assert.is(out.get("traceparent")[0], `00-${"ab".repeat(16)}-${"cd".repeat(8)}-01`);
});

codec("no active span: nothing injected", () => {
  const meta = context.with(ROOT_CONTEXT, () => injectTraceContext(new grpc.Metadata()));
  assert.equal(meta.get("traceparent"), []);
});

codec("malformed traceparents are ignored", () => {
  const bad = [
    "",
    "garbage",
    "00-abc-def-01",
    `00-${"0".repeat(32)}-${"cd".repeat(8)}-01`, // all-zero trace id
    `00-${"ab".repeat(16)}-${"0".repeat(16)}-01`, // all-zero span id
    `ff-${"ab".repeat(16)}-${"cd".repeat(8)}-01`, // forbidden version
    `00-${"xy".repeat(16)}-${"cd".repeat(8)}-01`, // not hex
    `00-${"ab".repeat(17)}-${"cd".repeat(8)}-01`, // too long
  ];
  for (const v of bad) {
    const meta = new grpc.Metadata();
    meta.set("traceparent", v);
    assert.is(trace.getSpanContext(extractTraceContext(meta)), undefined, JSON.stringify(v));
  }
  const bin = new grpc.Metadata();
  bin.set("traceparent-bin", Buffer.from("x"));
  assert.is(trace.getSpanContext(extractTraceContext(bin)), undefined, "binary keys are not read");
});

codec.run();

const rpc = suite("trace context over gRPC");
const dir = tempDir("vmhop-trace-context-");
let page: PageServerHandle;
let cp: ControlPlaneHandle;
let client: ControlPlaneServiceClient;

rpc.before(async () => {
  page = await startPageServer(dir.path, "page-a");
  const store = new MemoryStore();
  cp = await startControlPlane(store);
  await cp.client.registerHost(host("a", page.address));
  // A VM the registry knows but the page-server does not: GetVm asks the page-server (InspectVm).
  const vm: VmRecord = {
    vm_id: "vm1",
    spec: VmSpec.toJSON(VmSpec.fromPartial({ vmId: "vm1" })) as VmRecord["spec"],
    host_id: "a",
    migration_id: "",
    fencing_token: 0,
  };
  await store.set(KEYS.vm("vm1"), JSON.stringify(vm));
  client = new ControlPlaneServiceClient(cp.address, grpc.credentials.createInsecure());
});

rpc.after(async () => {
  client?.close();
  await cp?.close();
  await page?.close();
  dir.cleanup();
});

/** The finished span named `name` whose parent is `parentId` (waits: the server ends its span after answering). */
function child(name: string, parentId: string | undefined): Promise<ReadableSpan> {
  return until(
    `a ${name} span under ${parentId}`,
    () => spans.getFinishedSpans().find((s) => s.name === name && s.parentSpanContext?.spanId === parentId),
    10_000,
    20,
  );
}

rpc(
  "the server span is the caller's child, and the calls its handler makes are the server span's",
  async () => {
    const caller = vmhopTracer().startSpan("caller");
    const res = await inside(caller, () => call(client, "getVm", { vmId: "vm1" }));
    caller.end();
    assert.match(res.vm?.vm?.lastError ?? "", /vm1/, "the page-server was asked and does not know it");
    const { traceId, spanId } = caller.spanContext();
    const server = await child("vmhop.v1.ControlPlaneService/GetVm", spanId);
    assert.is(server.spanContext().traceId, traceId);
    const inspect = await child("vmhop.v1.PageService/InspectVm", server.spanContext().spanId);
    assert.is(inspect.spanContext().traceId, traceId);
    assert.is(inspect.attributes["rpc.grpc.status_code"], grpc.status.NOT_FOUND);
  },
);

rpc("a malformed traceparent is ignored: answered, the server span a root of its own trace", async () => {
  const meta = new grpc.Metadata();
  meta.set("traceparent", "00-not-a-trace-context");
  const res = await new Promise<{ hosts: unknown[] }>((resolve, reject) =>
    client.listHosts({}, meta, (err, r) => (err ? reject(err) : resolve(r))),
  );
  assert.is(res.hosts.length, 1);
  const root = await child("vmhop.v1.ControlPlaneService/ListHosts", undefined);
  assert.ok(/^[0-9a-f]{32}$/.test(root.spanContext().traceId) && !/^0+$/.test(root.spanContext().traceId));
});

rpc.run();
