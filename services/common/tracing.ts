// OpenTelemetry tracing. Spans are always created (cheap with no exporter); they are
// exported over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT (or initTracing's otlpEndpoint) is set. Calls
// between the services carry W3C trace context (grpc/trace-context.ts), so one operation (a
// migration: control-plane/migration-trace.ts) is one trace across them. docs/TRACING.md.
import {
  type Attributes,
  type Context,
  context,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  trace,
} from "@opentelemetry/api";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, type SpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { ATTR_SERVICE_NAME } from "@opentelemetry/semantic-conventions";
import { otlpExporter } from "./grpc/otlp-exporter.js";

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
    if (endpoint) processors.push(new BatchSpanProcessor(otlpExporter(endpoint)));
    provider = new NodeTracerProvider({
      resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: serviceName }),
      spanProcessors: processors,
    });
    // Also the global propagator: W3C trace context (and baggage), what grpc/trace-context.ts uses.
    provider.register();
  }
  const p = provider;
  return {
    tracer: vmhopTracer(),
    shutdown: async () => {
      await p.shutdown();
      if (provider === p) provider = undefined;
    },
  };
}

/**
 * Starts a server span for an RPC named like `/vmhop.v1.BlockService/CreateExport`, a child of
 * the caller's span when `parent` carries one (trace-context.ts).
 */
export function startRpcSpan(tracer: Tracer, path: string, parent?: Context): Span {
  const [, service = "", method = ""] = path.split("/");
  return tracer.startSpan(
    `${service}/${method}`,
    {
      kind: SpanKind.SERVER,
      attributes: { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method },
    },
    parent,
  );
}

export function endRpcSpan(span: Span, code: number, details?: string): void {
  span.setAttribute("rpc.grpc.status_code", code);
  if (code !== 0) span.setStatus({ code: SpanStatusCode.ERROR, message: details });
  span.end();
}

/** The tracer vmhop's own spans come from (a no-op one until initTracing ran). */
export function vmhopTracer(): Tracer {
  return trace.getTracer("vmhop");
}

/** Marks the span failed: status ERROR with the error's message, and the exception as an event. */
export function recordError(span: Span, err: unknown): void {
  const e = err instanceof Error ? err : new Error(String(err));
  span.recordException(e);
  span.setStatus({ code: SpanStatusCode.ERROR, message: e.message });
}

/**
 * Runs `fn` in a new span (a child of `parent`'s span, default the active one), so the calls it
 * makes are the span's children; what it throws marks the span failed and is rethrown.
 */
export async function inSpan<T>(
  name: string,
  attributes: Attributes,
  fn: (span: Span) => Promise<T>,
  parent: Context = context.active(),
): Promise<T> {
  const span = vmhopTracer().startSpan(name, { attributes }, parent);
  try {
    return await context.with(trace.setSpan(parent, span), () => fn(span));
  } catch (err) {
    recordError(span, err);
    throw err;
  } finally {
    span.end();
  }
}
