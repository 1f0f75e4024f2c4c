// One unary call on a generated gRPC client, as a promise: the single callback-to-promise
// wrapper that services, testbed, bench and tests share. Request and response types come
// from the client's own method, so callers need no casts. The call carries the active trace
// context (trace-context.ts).
import * as grpc from "@grpc/grpc-js";
import { injectTraceContext } from "./trace-context.js";

/** A ts-proto unary method in its fullest overload (the last one, which `infer` reads). */
type Unary<Req, Res> = (
  req: Req,
  meta: grpc.Metadata,
  opts: Partial<grpc.CallOptions>,
  cb: (err: grpc.ServiceError | null, res: Res) => void,
) => grpc.ClientUnaryCall;

/** The names of C's unary methods (stream methods and Client's own are left out). */
export type UnaryMethod<C> = {
  [K in keyof C]: C[K] extends Unary<never, unknown> ? K : never;
}[keyof C];
export type RequestOf<F> = F extends Unary<infer Req, unknown> ? Req : never;
export type ResponseOf<F> = F extends Unary<never, infer Res> ? Res : never;

/**
 * `call(client, "listExports", {})`: the response, or the call's grpc.ServiceError thrown.
 * `opts` are grpc-js call options, e.g. `{ deadline: Date.now() + 1000 }`.
 */
export function call<C extends grpc.Client, M extends UnaryMethod<C>>(
  client: C,
  method: M,
  req: RequestOf<C[M]>,
  opts: Partial<grpc.CallOptions> = {},
): Promise<ResponseOf<C[M]>> {
  const fn = client[method] as Unary<RequestOf<C[M]>, ResponseOf<C[M]>>;
  return new Promise((resolve, reject) =>
    fn.call(client, req, injectTraceContext(new grpc.Metadata()), opts, (err, res) =>
      err ? reject(err) : resolve(res),
    ),
  );
}
