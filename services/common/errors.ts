// The one error model of every vmhop service: a ServiceError says what kind of failure it is and
// why, in words for people. Domain code throws these and never speaks gRPC; the gRPC layer turns
// the kind into a status with one table (grpc/status.ts), and the CLIs print the message.
// The kinds are gRPC's canonical codes by name, so a peer's status passes on unchanged.

export const ERROR_KINDS = [
  "invalid", // the request is malformed or names something impossible
  "not-found", // what the request names is not there
  "exists", // what the request would create is already there
  "precondition", // the request is fine but the state refuses it (wrong state, stale fencing token)
  "aborted", // an operation under way was given up (a migration that failed)
  "unavailable", // a dependency (the store, a peer) is down or unreachable: retry later
  "deadline", // the time allowed ran out
  "cancelled", // the caller gave up
  "exhausted", // a quota or a size limit
  "out-of-range",
  "permission",
  "unauthenticated",
  "unimplemented",
  "data-loss",
  "unknown",
  "internal", // a bug or an unexpected failure; what anything else becomes
] as const;

export type ErrorKind = (typeof ERROR_KINDS)[number];

export class ServiceError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "ServiceError";
  }
}

/** The kind of any thrown value: a ServiceError's own, anything else is internal. */
export function kindOf(err: unknown): ErrorKind {
  return err instanceof ServiceError ? err.kind : "internal";
}
