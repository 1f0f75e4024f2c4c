// Server interceptors applied to every RPC: one trace span and one debug log line each.
import { ServerInterceptingCall, type ServerInterceptor, status } from "@grpc/grpc-js";
import type { Tracer } from "@opentelemetry/api";
import type { Logger } from "../log.js";
import { endRpcSpan, startRpcSpan } from "../tracing.js";

export function tracingInterceptor(tracer: Tracer, log: Logger): ServerInterceptor {
  return (method, call) => {
    const span = startRpcSpan(tracer, method.path);
    const t0 = performance.now();
    let ended = false;
    const finish = (code: number, details?: string) => {
      if (ended) return;
      ended = true;
      endRpcSpan(span, code, details);
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
          onCancel: () => finish(status.CANCELLED, "cancelled by client"),
        }),
      sendStatus: (st, next) => {
        finish(st.code ?? status.OK, st.details);
        next(st);
      },
    });
  };
}
