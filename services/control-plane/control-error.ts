// The control-plane's refusals, by kind; grpc.ts maps each kind to its status.
export class ControlError extends Error {
  constructor(
    readonly kind: "invalid" | "not-found" | "exists" | "precondition" | "unavailable",
    message: string,
  ) {
    super(message);
    this.name = "ControlError";
  }
}
