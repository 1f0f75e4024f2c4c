// Server interceptors applied to every RPC: one trace span and one debug log line each. The
// span is a child of the caller's (W3C trace context in the request metadata), and the handler
// runs in its context, so the calls it makes in turn are children of it.
import { ServerInterceptingCall, type ServerInterceptor, status } from "@grpc/grpc-js";
import { type Context, context, ROOT_CONTEXT, type Span, type Tracer, trace } from "@opentelemetry/api";
import type { Logger } from "../log.js";
import { endRpcSpan, startRpcSpan } from "../tracing.js";
import { extractTraceContext } from "./trace-context.js";

export function tracingInterceptor(tracer: Tracer, log: Logger): ServerInterceptor {
  return (method, call) => {
    let span: Span | undefined;
    let ctx: Context = ROOT_CONTEXT;
    const begin = (parent: Context) => {
      span ??= startRpcSpan(tracer, method.path, parent);
      ctx = trace.setSpan(parent, span);
    };
    const t0 = performance.now();
    let ended = false;
    const finish = (code: number, details?: string) => {
      if (ended) return;
      ended = true;
      if (!span) begin(ROOT_CONTEXT); // ended before its metadata came
      endRpcSpan(span!, code, details);
      const ms = Math.round((performance.now() - t0) * 10) / 10;
      const fields = {
        rpc: method.path,
        code: status[code] ?? code,
        ms,
        details: code ? details : undefined,
      };
      if (code === status.INTERNAL || code === status.UNKNOWN) log.warn("rpc failed", fields);
      else log.debug("rpc", fields);
    };
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (meta, nextMeta) => {
            begin(extractTraceContext(meta));
            // Streaming-request handlers start here; unary and server-streaming ones at half-close.
            context.with(ctx, () => nextMeta(meta));
          },
          onReceiveMessage: (msg, nextMsg) => context.with(ctx, () => nextMsg(msg)),
          onReceiveHalfClose: (nextHalfClose) => context.with(ctx, nextHalfClose),
          onCancel: () => finish(status.CANCELLED, "cancelled by client"),
        }),
      sendStatus: (st, next) => {
        finish(st.code ?? status.OK, st.details);
        next(st);
      },
    });
  };
}
