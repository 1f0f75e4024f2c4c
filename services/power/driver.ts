// The one interface of every host power driver (on, off, status) and a host's power config (the
// driver's name and its parameters, never a secret). Each driver lives in its own module
// (config.ts picks one); errors are PowerErrors (common/errors.ts) whose messages never carry
// the host's password (redact()).
import { ServiceError } from "../common/errors.js";

/** What a driver reports: `unknown` when it cannot tell (wol without a status command, a transition). */
export type PowerState = "on" | "off" | "unknown";

export interface PowerDriver {
  /** Asks the host to power on; resolves once the request is accepted (booting takes longer). */
  on(): Promise<void>;
  /** Asks the host to shut down gracefully; resolves once the request is accepted. */
  off(): Promise<void>;
  status(): Promise<PowerState>;
  /** false: status() always answers `unknown` (waiting for `on`/`off` is pointless). */
  readonly reportsStatus: boolean;
}

/** A host's power config, as recorded on the host (no secrets: those come from Credentials). */
export interface PowerConfig {
  driver: string;
  params: Record<string, string>;
}

export class PowerError extends ServiceError {
  override name = "PowerError";
}

/** Replaces every occurrence of the secret in a text (error messages, command output). */
export function redact(text: string, secret: string | undefined): string {
  return secret ? text.split(secret).join("***") : text;
}

/** The state a status line says: its last word `on`/`off` (ipmitool: "Chassis Power is on"). */
export function parseState(text: string): PowerState {
  const last = text.trim().toLowerCase().split(/\s+/).pop();
  return last === "on" || last === "off" ? last : "unknown";
}
