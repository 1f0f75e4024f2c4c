// The OTLP/gRPC span exporter behind OTEL_EXPORTER_OTLP_ENDPOINT (tracing.ts), with plain-text
// credentials on a unix socket.
import { credentials } from "@grpc/grpc-js";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-grpc";

/**
 * `http://host:4317` (plain text), `https://…` (TLS) or `unix:///path` (plain text; the
 * exporter's default would ask for TLS there): a collector on a unix socket is reachable from
 * inside network namespaces, where the test beds run the site services.
 */
export function otlpExporter(url: string): OTLPTraceExporter {
  if (url.startsWith("unix:"))
    return new OTLPTraceExporter({ url, credentials: credentials.createInsecure() });
  return new OTLPTraceExporter({ url });
}
