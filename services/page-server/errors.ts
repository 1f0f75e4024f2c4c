// The page-server's domain error: a kind the gRPC layer maps to a status (grpc/convert.ts).
export class HostError extends Error {
  constructor(
    readonly kind: "not-found" | "exists" | "precondition" | "unavailable" | "invalid",
    message: string,
  ) {
    super(message);
    this.name = "HostError";
  }
}
