// A host's power config checked (driver known, its parameters present and known) and turned
// into its driver, with the host's password from the credentials.
import { CommandDriver } from "./command.js";
import type { Credentials } from "./credentials.js";
import { type PowerConfig, type PowerDriver, PowerError } from "./driver.js";
import { IpmiDriver } from "./ipmi.js";
import { RedfishDriver } from "./redfish.js";
import { TestbedDriver } from "./testbed.js";
import { WolDriver } from "./wol.js";

/** A driver's parameters: checks they are known and present; the driver's module reads them. */
export interface ParamSpec {
  required: readonly string[];
  optional: readonly string[];
}

export const DRIVER_PARAMS: Record<string, ParamSpec> = {
  ipmi: { required: ["address"], optional: ["username", "interface", "port"] },
  redfish: { required: ["url"], optional: ["system", "username"] },
  wol: { required: ["mac"], optional: ["broadcast", "port", "off_command", "status_command"] },
  command: { required: ["on", "off"], optional: ["status"] },
  testbed: { required: ["socket"], optional: [] },
};

/** A config's problems as an `invalid` PowerError (RegisterHost answers INVALID_ARGUMENT). */
export function checkPowerConfig(c: PowerConfig): void {
  const spec = DRIVER_PARAMS[c.driver];
  if (!spec)
    throw new PowerError(
      "invalid",
      `unknown power driver ${JSON.stringify(c.driver)}: one of ${Object.keys(DRIVER_PARAMS).join(", ")}`,
    );
  for (const p of spec.required)
    if (!c.params[p]) throw new PowerError("invalid", `power driver ${c.driver} needs the parameter ${p}`);
  const known = new Set([...spec.required, ...spec.optional]);
  for (const p of Object.keys(c.params))
    if (!known.has(p))
      throw new PowerError(
        "invalid",
        `power driver ${c.driver} has no parameter ${p} (it takes ${[...known].join(", ")})`,
      );
  // What can be checked without a password: the WoL MAC and port, the Redfish URL.
  if (c.driver === "wol") new WolDriver(c.params);
  if (c.driver === "redfish") new RedfishDriver(c.params, "");
}

/** Builds the host's driver; `hostId` picks its password from the credentials. */
export function makeDriver(hostId: string, c: PowerConfig, creds: Credentials): PowerDriver {
  checkPowerConfig(c);
  switch (c.driver) {
    case "ipmi":
      return new IpmiDriver(c.params, creds.password(hostId, "ipmi"));
    case "redfish":
      return new RedfishDriver(c.params, creds.password(hostId, "redfish"));
    case "wol":
      return new WolDriver(c.params);
    case "command":
      return new CommandDriver(c.params, creds.optionalPassword(hostId, "command"));
    default:
      return new TestbedDriver(c.params);
  }
}

/**
 * A driver's parameters as typed on a command line: a JSON object of strings, or
 * `key=value,key=value` (a value with commas, like a shell command, needs the JSON form).
 */
export function parsePowerParams(text: string): Record<string, string> {
  const t = text.trim();
  if (!t) return {};
  if (t.startsWith("{")) {
    let o: unknown;
    try {
      o = JSON.parse(t);
    } catch {
      throw new PowerError("invalid", "power parameters: not valid JSON");
    }
    if (typeof o !== "object" || o === null || Array.isArray(o))
      throw new PowerError("invalid", "power parameters: expected a JSON object");
    for (const [k, v] of Object.entries(o))
      if (typeof v !== "string") throw new PowerError("invalid", `power parameter ${k} must be a string`);
    return o as Record<string, string>;
  }
  const out: Record<string, string> = {};
  for (const pair of t.split(",")) {
    const eq = pair.indexOf("=");
    if (eq <= 0)
      throw new PowerError("invalid", `power parameters: expected key=value, got ${JSON.stringify(pair)}`);
    out[pair.slice(0, eq).trim()] = pair.slice(eq + 1);
  }
  return out;
}
