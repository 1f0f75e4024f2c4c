// `vmhop netreach …`
//   demo       a test-bed tool (testbed/netreach/demo.ts, registered in cli/tools.ts)
//   bindings   list the anchor's bindings from its store (Redis URL, or nothing for memory)
//   anchor serve / site serve   the anchor and site agent services (serve.ts)
import { parseArgs } from "node:util";
import { CliError } from "../cli/errors.js";
import { BindingCache } from "./binding/cache.js";
import { openBindingKv } from "./binding/kv.js";
import { serveAnchor, serveSite } from "./serve.js";

const USAGE = `usage: vmhop netreach <command> [options]

commands:
  anchor serve  the anchor (home agent): gRPC NetReachService   (vmhop netreach anchor serve --help)
  site serve    a site agent: gRPC NetReachSiteService          (vmhop netreach site serve --help)
  demo          a namespace test bed: a VM moved site to site under a ping (vmhop netreach demo --help)
  bindings  [--store redis://HOST:PORT]   list the anchor's bindings as JSON lines`;

async function bindings(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { store: { type: "string" } } });
  let kv: Awaited<ReturnType<typeof openBindingKv>>;
  try {
    kv = await openBindingKv(values.store);
  } catch (err) {
    throw new CliError((err as Error).message);
  }
  try {
    for (const b of await new BindingCache(kv).list()) console.log(JSON.stringify(b));
  } finally {
    await kv.close();
  }
  return 0;
}

export async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    if (cmd === "bindings") return await bindings(rest);
    if ((cmd === "anchor" || cmd === "site") && rest[0] === "serve")
      return await (cmd === "anchor" ? serveAnchor(rest.slice(1)) : serveSite(rest.slice(1)));
    if (cmd === "anchor" || cmd === "site")
      throw new CliError(`unknown netreach ${cmd} command '${rest[0] ?? ""}' (want: serve)\n\n${USAGE}`);
  } catch (err) {
    if (err instanceof TypeError && (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS"))
      throw new CliError(`${err.message}\n\n${USAGE}`);
    throw err;
  }
  if (!cmd || cmd === "--help" || cmd === "-h") {
    console.log(USAGE);
    return cmd ? 0 : 2;
  }
  throw new CliError(`unknown netreach command '${cmd}'\n\n${USAGE}`);
}
