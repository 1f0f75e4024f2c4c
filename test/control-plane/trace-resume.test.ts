// A migration's trace when it fails and when a restarted control-plane resumes it, over real
// gRPC with real page-servers in this process (no QEMU: the VMs are planted in the registry,
// their kernel missing, so the destination cannot prepare). The failure is on the spans: the
// phase it happened in, the page-server's answer and the migration span are ERROR, and the
// clean-up's calls are under a step of their own. A migration recorded as `migrating` with a
// traceparent is resumed in that trace: the new migration span is the recorded span's child
// and the page-server's WatchMigration span is under its `migrating` phase.
import { SpanStatusCode } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import * as assert from "uvu/assert";
import { MemoryStore } from "../../services/common/store/index.js";
import { initTracing } from "../../services/common/tracing.js";
import { ATTR } from "../../services/control-plane/migration-trace.js";
import { KEYS, type MigrationRecord, type VmRecord } from "../../services/control-plane/records.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import {
  type ControlPlaneHandle,
  host,
  migrationEnd,
  type PageServerHandle,
  plantedMigration,
  startControlPlane,
  startPageServer,
} from "./fixtures.js";

const exporter = new InMemorySpanExporter();
initTracing("trace-resume-test", { processors: [new SimpleSpanProcessor(exporter)] });

const dir = tempDir("vmhop-trace-resume-");
const store = new MemoryStore();
let a: PageServerHandle;
let b: PageServerHandle;
let cp: ControlPlaneHandle;

const plantedVm = (vmId: string, migrationId = ""): VmRecord => ({
  vm_id: vmId,
  spec: { vmId, vcpus: 1, memoryMib: 64, kernelPath: "/nonexistent/vmlinux" },
  host_id: "a",
  migration_id: migrationId,
  fencing_token: migrationId ? 1 : 0,
});

test.before(async () => {
  a = await startPageServer(dir.path, "page-a");
  b = await startPageServer(dir.path, "page-b");
  cp = await startControlPlane(store);
  await cp.client.registerHost(host("a", a.address));
  await cp.client.registerHost(host("b", b.address));
});

test.after(async () => {
  await cp?.close();
  await a?.close();
  await b?.close();
  dir.cleanup();
});

const spans = () => exporter.getFinishedSpans();
const migrationSpan = (id: string) =>
  until(
    `the migration span of ${id}`,
    () => spans().find((s) => s.name === "migration" && s.attributes[ATTR.migration] === id),
    30_000,
    20,
  );
const childrenOf = (s: ReadableSpan) =>
  spans().filter((x) => x.parentSpanContext?.spanId === s.spanContext().spanId);
const named = (list: ReadableSpan[], name: string) => {
  const s = list.find((x) => x.name === name);
  assert.ok(s, `${name} among ${list.map((x) => x.name)}`);
  return s!;
};

test("a migration failing in preparing: the phase, the page-server's span and the migration are ERROR", async () => {
  await store.set(KEYS.vm("v1"), JSON.stringify(plantedVm("v1")));
  const m = await cp.client.migrateVm({ vmId: "v1", destinationHostId: "b" });
  const end = await migrationEnd(cp.client, m.migrationId, 60_000);
  assert.is(end.state, "failed");
  const root = await migrationSpan(m.migrationId);
  assert.is(root.parentSpanContext, undefined);
  assert.equal([root.status.code, root.status.message], [SpanStatusCode.ERROR, end.error]);
  assert.is(root.attributes[ATTR.state], "failed");
  const phases = childrenOf(root);
  const preparing = named(phases, "preparing");
  assert.is(preparing.status.code, SpanStatusCode.ERROR);
  const prepare = named(childrenOf(preparing), "vmhop.v1.PageService/PrepareIncoming");
  assert.is(prepare.status.code, SpanStatusCode.ERROR, "the page-server's refusal");
  assert.is(prepare.spanContext().traceId, root.spanContext().traceId);
  const cleanUp = named(phases, "clean-up");
  assert.ok(
    childrenOf(cleanUp).some((s) => s.name === "vmhop.v1.PageService/InspectVm"),
    "the clean-up asks the destination",
  );
});

test("a restarted control-plane resumes a migration in its recorded trace", async () => {
  const traceId = "0af7651916cd43dd8448eb211c80319c";
  const recorded = "b7ad6b7169203331";
  const rec: MigrationRecord = {
    ...plantedMigration("m-900", "v2", "migrating"),
    trace_parent: `00-${traceId}-${recorded}-01`,
  };
  await store.set(KEYS.migration("m-900"), JSON.stringify(rec));
  await store.set(KEYS.vm("v2"), JSON.stringify(plantedVm("v2", "m-900")));
  await cp.close();
  cp = await startControlPlane(store);
  const end = await migrationEnd(cp.client, "m-900", 60_000);
  assert.is(end.state, "failed", "the source does not know it and the VM is not at the destination");
  const root = await migrationSpan("m-900");
  assert.equal(
    [root.spanContext().traceId, root.parentSpanContext?.spanId],
    [traceId, recorded],
    "the recorded trace, under the recorded span",
  );
  assert.is(root.attributes[ATTR.resumed], true);
  const migrating = named(childrenOf(root), "migrating");
  const watch = named(childrenOf(migrating), "vmhop.v1.PageService/WatchMigration");
  assert.is(watch.spanContext().traceId, traceId);
  assert.is(watch.status.code, SpanStatusCode.ERROR, "NOT_FOUND at the source");
});

test.run();
