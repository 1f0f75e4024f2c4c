// `vmhop report MIGRATION_ID --html FILE`: a migration's record, read from the control-plane over
// gRPC, written as one self-contained HTML page (render.ts). `--vm VM_ID` picks that VM's newest.
import type { Migration } from "../../../gen/vmhop/v1/control.js";
import { CliError } from "../../cli/errors.js";
import { writeFileAtomic } from "../../common/atomic-file.js";
import { ConfigError, helpText, type OptionSpecs, parseConfig } from "../../common/config.js";
import { ControlClient, DEFAULT_CONTROL_GRPC, isNotFound } from "../client.js";
import { renderReport } from "./render.js";

const USAGE = `usage: vmhop report MIGRATION_ID --html FILE [--server HOST:PORT]
       vmhop report --vm VM_ID --html FILE           (the VM's newest migration)

Writes one HTML page (no script, nothing fetched: it opens offline) with the migration's phases
on a time axis, memory and disk still remote over time, and its summary figures.`;

const options = {
  html: { type: "string", default: "", describe: "the page to write" },
  vm: { type: "string", default: "", describe: "report the newest migration of this VM" },
  server: {
    type: "string",
    default: DEFAULT_CONTROL_GRPC,
    describe: "control-plane gRPC address",
    env: "VMHOP_CONTROL",
  },
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

export async function run(argv: string[]): Promise<number> {
  let o: ReturnType<typeof parseConfig<typeof options>>;
  try {
    o = parseConfig(options, argv);
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(`${err.message}\n\n${USAGE}`);
    throw err;
  }
  if (o.help) {
    console.log(helpText(USAGE, options));
    return 0;
  }
  const [id, ...extra] = o._;
  if (!o.html || extra.length || (id ? o.vm : !o.vm))
    throw new CliError(`give one MIGRATION_ID (or --vm VM_ID) and --html FILE\n\n${USAGE}`);
  const c = new ControlClient(o.server!);
  try {
    let m: Migration | undefined;
    try {
      m = id ? await c.getMigration(id) : (await c.listMigrations(o.vm))[0];
    } catch (err) {
      if (isNotFound(err)) throw new CliError(`control-plane ${o.server}: no migration ${id}`, 1);
      const e = err as { details?: string; message: string };
      throw new CliError(`control-plane ${o.server}: ${e.details || e.message}`, 1);
    }
    if (!m) throw new CliError(`control-plane ${o.server}: no migration of VM ${o.vm}`, 1);
    try {
      writeFileAtomic(o.html, renderReport(m));
    } catch (err) {
      throw new CliError(`cannot write ${o.html}: ${(err as Error).message}`, 1);
    }
    console.log(`wrote ${o.html}: ${m.migrationId} (${m.state})`);
    return 0;
  } finally {
    c.close();
  }
}
