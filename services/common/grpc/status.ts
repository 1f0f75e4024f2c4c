// Errors across the gRPC boundary: the one table from a ServiceError's kind to a gRPC status
// (what every handler answers), and back (what a client makes of a peer's status).
import { type ServiceError as GrpcServiceError, type StatusObject, status } from "@grpc/grpc-js";
import { type ErrorKind, kindOf, ServiceError } from "../errors.js";

export const STATUS_OF_KIND: Readonly<Record<ErrorKind, status>> = {
  invalid: status.INVALID_ARGUMENT,
  "not-found": status.NOT_FOUND,
  exists: status.ALREADY_EXISTS,
  precondition: status.FAILED_PRECONDITION,
  aborted: status.ABORTED,
  unavailable: status.UNAVAILABLE,
  deadline: status.DEADLINE_EXCEEDED,
  cancelled: status.CANCELLED,
  exhausted: status.RESOURCE_EXHAUSTED,
  "out-of-range": status.OUT_OF_RANGE,
  permission: status.PERMISSION_DENIED,
  unauthenticated: status.UNAUTHENTICATED,
  unimplemented: status.UNIMPLEMENTED,
  "data-loss": status.DATA_LOSS,
  unknown: status.UNKNOWN,
  internal: status.INTERNAL,
};

const KIND_OF_STATUS = new Map(
  Object.entries(STATUS_OF_KIND).map(([kind, code]) => [code, kind as ErrorKind]),
);

/** The kind of a peer's status (a code no kind has: unknown). */
export function kindOfStatus(code: status): ErrorKind {
  return KIND_OF_STATUS.get(code) ?? "unknown";
}

/** What a handler answers for an error it threw: the kind's status (else INTERNAL) and the message. */
export function grpcStatusOf(err: unknown): Pick<StatusObject, "code" | "details"> {
  const message = (err as { message?: unknown } | undefined)?.message;
  return {
    code: STATUS_OF_KIND[kindOf(err)],
    details: typeof message === "string" ? message : String(err),
  };
}

/**
 * A failed call's error as a ServiceError of the peer's kind and with its words (details, without
 * grpc-js's "14 UNAVAILABLE: " prefix), so a handler that passes it on answers the peer's status.
 */
export function fromGrpcError(err: GrpcServiceError): ServiceError {
  return new ServiceError(kindOfStatus(err.code), err.details ?? err.message, {
    cause: err,
  });
}
