// An OTLP/gRPC trace receiver that keeps what it is sent: the collector end of the services'
// OTLP exporters (OTEL_EXPORTER_OTLP_ENDPOINT), for tests that check a trace's tree without a
// collector. Listens on a unix socket by default, which processes inside network namespaces
// reach as well.
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/** One span as received. Ids are lower-case hex; `parentSpanId` is "" for a root. */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  /** SpanKind as OTLP numbers it: 1 internal, 2 server, 3 client. */
  kind: number;
  /** The resource's service.name: which process made it. */
  service: string;
  attributes: Record<string, string | number | boolean>;
  /** 0 unset, 1 ok, 2 error. */
  status: { code: number; message: string };
  links: { traceId: string; spanId: string }[];
  /** Epoch nanoseconds, as decimal strings (beyond a double's precision). */
  startNs: string;
  endNs: string;
}

const protoPath = fileURLToPath(new URL("trace-service.proto", import.meta.url));

interface PbValue {
  string_value?: string;
  bool_value?: boolean;
  int_value?: string;
  double_value?: number;
}
interface PbKeyValue {
  key: string;
  value?: PbValue;
}
interface PbSpan {
  trace_id: Buffer;
  span_id: Buffer;
  parent_span_id: Buffer;
  name: string;
  kind: number;
  start_time_unix_nano: string;
  end_time_unix_nano: string;
  attributes: PbKeyValue[];
  links: { trace_id: Buffer; span_id: Buffer }[];
  status?: { code: number; message: string };
}
interface PbRequest {
  resource_spans: { resource?: { attributes: PbKeyValue[] }; scope_spans: { spans: PbSpan[] }[] }[];
}

function attributes(kvs: PbKeyValue[]): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const { key, value: v } of kvs) {
    if (v?.string_value !== undefined) out[key] = v.string_value;
    else if (v?.bool_value !== undefined) out[key] = v.bool_value;
    else if (v?.int_value !== undefined) out[key] = Number(v.int_value);
    else if (v?.double_value !== undefined) out[key] = v.double_value;
  }
  return out;
}

/** The spans of one Export request, flattened. */
export function decodeExport(req: PbRequest): ReceivedSpan[] {
  const hex = (b: Buffer | undefined) => (b ? b.toString("hex") : "");
  return req.resource_spans.flatMap((rs) => {
    const service = String(attributes(rs.resource?.attributes ?? [])["service.name"] ?? "");
    return rs.scope_spans.flatMap((ss) =>
      ss.spans.map((s) => ({
        traceId: hex(s.trace_id),
        spanId: hex(s.span_id),
        parentSpanId: hex(s.parent_span_id),
        name: s.name,
        kind: s.kind,
        service,
        attributes: attributes(s.attributes),
        status: { code: s.status?.code ?? 0, message: s.status?.message ?? "" },
        links: s.links.map((l) => ({ traceId: hex(l.trace_id), spanId: hex(l.span_id) })),
        startNs: s.start_time_unix_nano,
        endNs: s.end_time_unix_nano,
      })),
    );
  });
}

export class OtlpReceiver {
  private constructor(
    private readonly server: grpc.Server,
    /** Where exporters send to, e.g. `unix:///tmp/x/otlp.sock` (an OTEL_EXPORTER_OTLP_ENDPOINT). */
    readonly endpoint: string,
    /** Every span received so far, in arrival order. */
    readonly spans: ReceivedSpan[],
  ) {}

  /** Listens on `unix:PATH` or `HOST:PORT`. */
  static async start(listen: string): Promise<OtlpReceiver> {
    const def = protoLoader.loadSync(protoPath, {
      keepCase: true,
      longs: String,
      defaults: true,
      arrays: true,
    });
    const pkg = grpc.loadPackageDefinition(def) as unknown as {
      opentelemetry: {
        proto: { collector: { trace: { v1: { TraceService: grpc.ServiceClientConstructor } } } };
      };
    };
    const service = pkg.opentelemetry.proto.collector.trace.v1.TraceService.service;
    const server = new grpc.Server({ "grpc.max_receive_message_length": 64 << 20 });
    const spans: ReceivedSpan[] = [];
    server.addService(service, {
      Export: (call: grpc.ServerUnaryCall<PbRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        spans.push(...decodeExport(call.request));
        cb(null, {});
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    const endpoint = listen.startsWith("unix:")
      ? `unix://${listen.replace(/^unix:(\/\/)?/, "")}`
      : `http://${listen.replace(/:\d+$/, `:${port}`)}`;
    return new OtlpReceiver(server, endpoint, spans);
  }

  /** Every span of the trace `traceId`. */
  trace(traceId: string): ReceivedSpan[] {
    return this.spans.filter((s) => s.traceId === traceId);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.tryShutdown(() => resolve()));
  }
}

/** A trace as an indented tree, one span a line (`service: name`): for failure messages. */
export function formatTree(spans: ReceivedSpan[]): string {
  const ids = new Set(spans.map((s) => s.spanId));
  const kids = new Map<string, ReceivedSpan[]>();
  for (const s of spans) {
    const p = ids.has(s.parentSpanId) ? s.parentSpanId : "";
    kids.set(p, [...(kids.get(p) ?? []), s]);
  }
  const lines: string[] = [];
  const walk = (parent: string, depth: number) => {
    const list = (kids.get(parent) ?? []).sort((a, b) => (BigInt(a.startNs) < BigInt(b.startNs) ? -1 : 1));
    for (const s of list) {
      lines.push(`${"  ".repeat(depth)}${s.service}: ${s.name}${s.status.code === 2 ? " [ERROR]" : ""}`);
      walk(s.spanId, depth + 1);
    }
  };
  walk("", 0);
  return lines.join("\n");
}
