// The page-server's refusals: ServiceErrors (common/errors.ts) named for the page-server.
import { ServiceError } from "../common/errors.js";

export class HostError extends ServiceError {
  override name = "HostError";
}
