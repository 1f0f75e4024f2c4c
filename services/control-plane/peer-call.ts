// One unary call to a peer service (page-server, block-server) as a promise with a deadline;
// a failure becomes a PeerError naming the peer, the call and the peer's own words.
import type * as grpc from "@grpc/grpc-js";
import { status as grpcStatus } from "@grpc/grpc-js";
import { traceContextInterceptor } from "../common/grpc/trace-context.js";

export type Callback<Res> = (err: grpc.ServiceError | null, res: Res) => void;

// Reconnect soon after a peer restarts (grpc-js backs off up to 120 s by default). Every call
// carries the active trace context: the peer's span is a child of the migration phase's.
export const CHANNEL: grpc.ClientOptions = {
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 2000,
  interceptors: [traceContextInterceptor],
};

export class PeerError extends Error {
  constructor(
    readonly address: string,
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
    this.name = "PeerError";
  }
}

/** The peer answered NOT_FOUND (the migration, VM or export it was asked about is not there). */
export function isNotFound(err: unknown): boolean {
  return err instanceof PeerError && err.code === grpcStatus.NOT_FOUND;
}

export function isAlreadyExists(err: unknown): boolean {
  return err instanceof PeerError && err.code === grpcStatus.ALREADY_EXISTS;
}

/** The peer refused the call in its present state (FAILED_PRECONDITION: e.g. a stale fence). */
export function isRefusedNow(err: unknown): boolean {
  return err instanceof PeerError && err.code === grpcStatus.FAILED_PRECONDITION;
}

/** The peer did not answer (down, unreachable or too slow): worth asking again. */
export function isNoAnswer(err: unknown): boolean {
  return (
    err instanceof PeerError &&
    (err.code === grpcStatus.UNAVAILABLE || err.code === grpcStatus.DEADLINE_EXCEEDED)
  );
}

/** `peer` names it in messages ("page-server 10.0.0.1:7402"); `what` is the call's name. */
export function callPeer<Res>(
  peer: string,
  address: string,
  what: string,
  timeoutMs: number,
  fn: (o: grpc.CallOptions, cb: Callback<Res>) => unknown,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) =>
    fn({ deadline: Date.now() + timeoutMs }, (err, res) =>
      err
        ? reject(new PeerError(address, err.code, `${peer}: ${what}: ${err.details || err.message}`))
        : resolve(res),
    ),
  );
}

/** One client per peer address, reused until close(). */
export class ClientPool<C extends { close(): void }> {
  private readonly clients = new Map<string, C>();

  constructor(private readonly make: (address: string) => C) {}

  get(address: string): C {
    let c = this.clients.get(address);
    if (!c) {
      c = this.make(address);
      this.clients.set(address, c);
    }
    return c;
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}
