// OpenTelemetry tracing. Spans are always created (cheap with no exporter); they are
// exported over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT (or --otlp-endpoint) is set.
import { type Span, SpanKind, SpanStatusCode, type Tracer, trace } from "@opentelemetry/api";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-grpc";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, type SpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { ATTR_SERVICE_NAME } from "@opentelemetry/semantic-conventions";

export interface TracingHandle {
  tracer: Tracer;
  shutdown(): Promise<void>;
}

let provider: NodeTracerProvider | undefined;

/** Sets up the global tracer provider once per process. Extra processors are for tests. */
export function initTracing(
  serviceName: string,
  opts: { otlpEndpoint?: string; processors?: SpanProcessor[] } = {},
): TracingHandle {
  if (!provider) {
    const endpoint = opts.otlpEndpoint ?? process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
    const processors: SpanProcessor[] = [...(opts.processors ?? [])];
    if (endpoint) processors.push(new BatchSpanProcessor(new OTLPTraceExporter({ url: endpoint })));
    provider = new NodeTracerProvider({
      resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: serviceName }),
      spanProcessors: processors,
    });
    provider.register();
  }
  const p = provider;
  return {
    tracer: trace.getTracer("vmhop"),
    shutdown: async () => {
      await p.shutdown();
      if (provider === p) provider = undefined;
    },
  };
}

/** Starts a server span for an RPC named like `/vmhop.v1.BlockService/CreateExport`. */
export function startRpcSpan(tracer: Tracer, path: string): Span {
  const [, service = "", method = ""] = path.split("/");
  return tracer.startSpan(`${service}/${method}`, {
    kind: SpanKind.SERVER,
    attributes: { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method },
  });
}

export function endRpcSpan(span: Span, code: number, details?: string): void {
  span.setAttribute("rpc.grpc.status_code", code);
  if (code !== 0) span.setStatus({ code: SpanStatusCode.ERROR, message: details });
  span.end();
}
