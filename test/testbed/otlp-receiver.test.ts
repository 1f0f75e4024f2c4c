// testbed/otlp: a real `vmhop control serve` process exports its spans over OTLP/gRPC to the
// receiver on a unix socket (OTEL_EXPORTER_OTLP_ENDPOINT=unix://…). A call carrying a W3C
// traceparent arrives as a server span of that trace, the caller's span its parent, with the
// process's service name and the RPC's attributes.
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { ControlPlaneServiceClient } from "../../gen/vmhop/v1/control.js";
import { formatTree, OtlpReceiver } from "../../testbed/otlp/receiver.js";
import { type ServiceProcess, startService } from "../../testbed/service-process.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";

const dir = tempDir("vmhop-otlp-");
let receiver: OtlpReceiver;
let cp: ServiceProcess;
let client: ControlPlaneServiceClient;

test.before(async () => {
  receiver = await OtlpReceiver.start(`unix:${join(dir.path, "otlp.sock")}`);
  cp = await startService({
    name: "control-plane",
    args: ["control", "serve", "--grpc", "127.0.0.1:0"],
    env: { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY: "100" },
  });
  client = new ControlPlaneServiceClient(cp.grpc, grpc.credentials.createInsecure());
});

test.after(async () => {
  client?.close();
  await cp?.stop();
  await receiver?.close();
  dir.cleanup();
});

test("a service's server span arrives in the caller's trace, under the caller's span", async () => {
  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const parent = "00f067aa0ba902b7";
  const meta = new grpc.Metadata();
  meta.set("traceparent", `00-${traceId}-${parent}-01`);
  await new Promise((resolve, reject) =>
    client.listHosts({}, meta, (err, res) => (err ? reject(err) : resolve(res))),
  );
  const span = await until(
    "the ListHosts span at the receiver",
    () => receiver.trace(traceId).find((s) => s.name === "vmhop.v1.ControlPlaneService/ListHosts"),
    30_000,
    50,
  );
  assert.is(span.parentSpanId, parent, formatTree(receiver.spans));
  assert.is(span.service, "control-plane");
  assert.is(span.kind, 2, "a server span");
  assert.equal(
    [span.attributes["rpc.system"], span.attributes["rpc.method"], span.attributes["rpc.grpc.status_code"]],
    ["grpc", "ListHosts", 0],
  );
  assert.ok(BigInt(span.endNs) >= BigInt(span.startNs) && BigInt(span.startNs) > 0n);
});

test("a failed call's span is an error with the status's words", async () => {
  await new Promise((resolve) => client.getMigration({ migrationId: "m-404" }, (err) => resolve(err?.code)));
  const span = await until(
    "the GetMigration span at the receiver",
    () => receiver.spans.find((s) => s.name === "vmhop.v1.ControlPlaneService/GetMigration"),
    30_000,
    50,
  );
  assert.is(span.parentSpanId, "", "no trace context sent: a root");
  assert.is(span.status.code, 2);
  assert.match(span.status.message, /m-404/);
  assert.is(span.attributes["rpc.grpc.status_code"], grpc.status.NOT_FOUND);
});

test.run();
