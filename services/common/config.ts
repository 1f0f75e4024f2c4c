// Service configuration from flags and environment: a flag wins over VMHOP_<NAME> in the
// environment, which wins over the default. Unknown flags are an error, so a typo never
// silently falls back to a default.
import { parseArgs } from "node:util";

export interface OptionSpec {
  /** Kind of value; "list" collects repeated flags (and comma-separated env values). */
  type: "string" | "number" | "boolean" | "list";
  default?: string | number | boolean | string[];
  describe: string;
  short?: string;
  /** Environment variable; default VMHOP_<FLAG_IN_UPPER_SNAKE>. */
  env?: string;
}

export type OptionSpecs = Record<string, OptionSpec>;

type ValueOf<S extends OptionSpec> = S["type"] extends "number"
  ? number
  : S["type"] extends "boolean"
    ? boolean
    : S["type"] extends "list"
      ? string[]
      : string;

export type Config<S extends OptionSpecs> = { [K in keyof S]: ValueOf<S[K]> | undefined } & {
  _: string[];
};

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

export function envName(flag: string): string {
  return `VMHOP_${flag.replace(/-/g, "_").toUpperCase()}`;
}

export function parseConfig<S extends OptionSpecs>(
  specs: S,
  argv: string[],
  env: NodeJS.ProcessEnv = process.env,
): Config<S> {
  const options: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> = {};
  for (const [name, spec] of Object.entries(specs)) {
    options[name] = { type: spec.type === "boolean" ? "boolean" : "string" };
    if (spec.type === "list") options[name].multiple = true;
    if (spec.short) options[name].short = spec.short;
  }
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  const out: Record<string, unknown> = { _: parsed.positionals };
  for (const [name, spec] of Object.entries(specs)) {
    const fromFlag = parsed.values[name];
    const fromEnv = env[spec.env ?? envName(name)];
    let value: unknown = fromFlag ?? fromEnv ?? spec.default;
    if (value === undefined) {
      out[name] = undefined;
      continue;
    }
    const source =
      fromFlag !== undefined ? `--${name}` : fromEnv !== undefined ? (spec.env ?? envName(name)) : "default";
    if (spec.type === "number") {
      const n = typeof value === "number" ? value : Number(value);
      if (!Number.isFinite(n)) throw new ConfigError(`${source}: expected a number, got '${value}'`);
      value = n;
    } else if (spec.type === "boolean" && typeof value === "string") {
      if (!/^(1|0|true|false|yes|no)$/i.test(value))
        throw new ConfigError(`${source}: expected true or false, got '${value}'`);
      value = /^(1|true|yes)$/i.test(value);
    } else if (spec.type === "list" && typeof value === "string") {
      value = value.split(",").filter(Boolean);
    }
    out[name] = value;
  }
  return out as Config<S>;
}

export function helpText(usage: string, specs: OptionSpecs): string {
  const rows = Object.entries(specs).map(([name, s]) => {
    const flag = `${s.short ? `-${s.short}, ` : "    "}--${name}${s.type === "boolean" ? "" : " VALUE"}`;
    const dflt = s.default !== undefined ? ` (default ${JSON.stringify(s.default)})` : "";
    return `  ${flag.padEnd(32)} ${s.describe}${dflt} [env ${s.env ?? envName(name)}]`;
  });
  return `${usage}\n\noptions:\n${rows.join("\n")}`;
}
