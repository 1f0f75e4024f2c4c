// Where power drivers' passwords come from: a credentials file (`--power-credentials FILE`,
// JSON `{"<host_id>" | "*": {"password": "…"}}`) or the environment (VMHOP_IPMI_PASSWORD,
// VMHOP_REDFISH_PASSWORD, VMHOP_COMMAND_PASSWORD). Never from a host record, never logged:
// errors name where a password was looked for, not what it is.
import { readFileSync } from "node:fs";
import { PowerError } from "./driver.js";

type Entries = Record<string, { password?: unknown }>;

export class Credentials {
  private constructor(
    private readonly entries: Entries,
    private readonly env: NodeJS.ProcessEnv,
    private readonly file: string,
  ) {}

  /** Reads the file now (absent: environment only); a bad file is an `invalid` PowerError. */
  static load(file: string | undefined, env: NodeJS.ProcessEnv = process.env): Credentials {
    if (!file) return new Credentials({}, env, "");
    let entries: unknown;
    try {
      entries = JSON.parse(readFileSync(file, "utf8"));
    } catch (err) {
      // The parser's message may quote the file's text: only its kind is kept.
      const why = err instanceof SyntaxError ? "not valid JSON" : (err as Error).message;
      throw new PowerError("invalid", `power credentials ${file}: ${why}`);
    }
    if (typeof entries !== "object" || entries === null || Array.isArray(entries))
      throw new PowerError(
        "invalid",
        `power credentials ${file}: expected an object keyed by host id or "*"`,
      );
    for (const [k, v] of Object.entries(entries as Entries))
      if (typeof v?.password !== "string")
        throw new PowerError(
          "invalid",
          `power credentials ${file}: entry ${JSON.stringify(k)} needs a string "password"`,
        );
    return new Credentials(entries as Entries, env, file);
  }

  /** The host's password for the driver, or undefined. */
  optionalPassword(hostId: string, driver: string): string | undefined {
    const e = this.entries[hostId] ?? this.entries["*"];
    if (e) return e.password as string;
    return this.env[`VMHOP_${driver.toUpperCase()}_PASSWORD`] || undefined;
  }

  /** The host's password for the driver; none is a `precondition` PowerError saying where to put one. */
  password(hostId: string, driver: string): string {
    const p = this.optionalPassword(hostId, driver);
    if (p === undefined)
      throw new PowerError(
        "precondition",
        `no password for host ${hostId}'s ${driver} power driver: set VMHOP_${driver.toUpperCase()}_PASSWORD` +
          (this.file ? ` or add "${hostId}" to ${this.file}` : " or give --power-credentials FILE"),
      );
    return p;
  }
}
