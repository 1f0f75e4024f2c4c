// Errors of the block-server's control surface, by kind; the gRPC layer maps kinds to
// status codes and the CLI prints the message.
export type BlockErrorKind = "not-found" | "exists" | "invalid" | "precondition" | "unavailable";

export class BlockServerError extends Error {
  constructor(
    readonly kind: BlockErrorKind,
    message: string,
  ) {
    super(message);
    this.name = "BlockServerError";
  }
}
