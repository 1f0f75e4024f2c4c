// Errors of the block-server's control surface: ServiceErrors (common/errors.ts) named for the
// block-server; the gRPC layer answers their kind's status and the CLI prints the message.
import { ServiceError } from "../common/errors.js";

export class BlockServerError extends ServiceError {
  override name = "BlockServerError";
}
