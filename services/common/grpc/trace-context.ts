// W3C trace context (`traceparent`, `tracestate`) over gRPC metadata, so a server's span is a
// child of the caller's: inject on every outgoing call, extract on every incoming one. The
// codec is OpenTelemetry's global propagator (W3C TraceContext, registered by initTracing); in a
// process without tracing both ends do nothing.
import * as grpc from "@grpc/grpc-js";
import {
  type Context,
  context,
  propagation,
  ROOT_CONTEXT,
  type TextMapGetter,
  type TextMapSetter,
} from "@opentelemetry/api";

const setter: TextMapSetter<grpc.Metadata> = {
  set: (meta, key, value) => meta.set(key, value),
};

const getter: TextMapGetter<grpc.Metadata> = {
  keys: (meta) => Object.keys(meta.getMap()),
  get: (meta, key) => {
    // Binary (-bin) values are Buffers; trace context keys are text.
    const v = meta.get(key).filter((x): x is string => typeof x === "string");
    return v.length === 0 ? undefined : v.length === 1 ? v[0] : v;
  },
};

/** Writes the span of `ctx` (default: the active one) into `meta`; returns `meta`. */
export function injectTraceContext(meta: grpc.Metadata, ctx: Context = context.active()): grpc.Metadata {
  propagation.inject(ctx, meta, setter);
  return meta;
}

/**
 * The caller's span context from `meta`, as a Context to start a server span in. Missing or
 * malformed headers give `base` unchanged (the server span is then a root).
 */
export function extractTraceContext(meta: grpc.Metadata, base: Context = ROOT_CONTEXT): Context {
  return propagation.extract(base, meta, getter);
}

/**
 * A client interceptor that injects the trace context active when the call is made (read at
 * once: the call's metadata is sent later, from another async context). Add it to a client's
 * options (`interceptors: [traceContextInterceptor]`) to cover every method, streams included.
 */
export const traceContextInterceptor: grpc.Interceptor = (options, nextCall) => {
  const ctx = context.active();
  return new grpc.InterceptingCall(nextCall(options), {
    start: (meta, listener, next) => next(injectTraceContext(meta, ctx), listener),
  });
};
