// The control-plane's refusals: ServiceErrors (common/errors.ts) named for the control-plane.
import { ServiceError } from "../common/errors.js";

export class ControlError extends ServiceError {
  override name = "ControlError";
}
