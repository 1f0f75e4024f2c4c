// `vmhop netreach …`
//   demo       build a namespace test bed, move a VM site to site under a continuous ping, print
//              the gap and losses of each move (needs root)
//   bindings   list the anchor's bindings from its store (Redis URL, or nothing for memory)
//   anchor serve / site serve   the anchor and site agent services (serve.ts)
import { parseArgs } from "node:util";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../../deploy/testbed/netns.js";
import { CliError } from "../cli/errors.js";
import { BindingCache } from "./binding/cache.js";
import { openBindingKv } from "./binding/kv.js";
import { chooseDataplane, DataplaneError, isDataplaneChoice, probeKernel } from "./dataplane/probe.js";
import type { DataplaneKind } from "./dataplane/tunnel.js";
import { HANDOVER_MODES, type HandoverMode } from "./migration-hooks.js";
import { type PingRecord, summarisePings } from "./probe/analysis.js";
import { serveAnchor, serveSite } from "./serve.js";
import { NetreachBed, VM } from "./testbed/bed.js";
import { startProbe } from "./testbed/probe-process.js";

const USAGE = `usage: vmhop netreach <command> [options]

commands:
  anchor serve  the anchor (home agent): gRPC NetReachService   (vmhop netreach anchor serve --help)
  site serve    a site agent: gRPC NetReachSiteService          (vmhop netreach site serve --help)
  demo      [--sites N=3] [--delay MS=0] [--mode bbm|mbb|mbb-fp|mbb-bicast=mbb-bicast] [--moves N=2]
            [--dataplane auto|srv6|vxlan=auto]
            move a VM between sites of a namespace test bed under a 10 ms ping (root)
  bindings  [--store redis://HOST:PORT]   list the anchor's bindings as JSON lines`;

function int(v: string | undefined, name: string, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new CliError(`--${name} must be an integer ${min}..${max}, got '${v}'`);
  return n;
}

async function demo(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      sites: { type: "string" },
      delay: { type: "string" },
      mode: { type: "string" },
      moves: { type: "string" },
      dataplane: { type: "string" },
    },
  });
  const sites = int(values.sites, "sites", 3, 2, 9);
  const delay = int(values.delay, "delay", 0, 0, 200);
  const moves = int(values.moves, "moves", 2, 1, 20);
  const mode = (values.mode ?? "mbb-bicast") as HandoverMode;
  if (!HANDOVER_MODES.includes(mode))
    throw new CliError(`--mode must be one of ${HANDOVER_MODES.join(", ")}, got '${mode}'`);
  const want = values.dataplane ?? "auto";
  if (!isDataplaneChoice(want)) throw new CliError(`--dataplane must be auto, srv6 or vxlan, got '${want}'`);
  if (process.getuid?.() !== 0) throw new CliError("demo needs root (it creates network namespaces)");
  let dataplane: DataplaneKind;
  try {
    dataplane = chooseDataplane(want, await probeKernel());
  } catch (err) {
    if (err instanceof DataplaneError) throw new CliError(err.message);
    throw err;
  }
  await destroyStaleNetns("nr-demo-");
  const prefix = uniqueNetnsPrefix("nr-demo-");
  const bed = await NetreachBed.create({
    prefix,
    sites,
    wanDelayMs: delay > 0 ? delay : undefined,
    dataplane,
  });
  try {
    await bed.place(0);
    console.log(
      `VM ${VM.vmId} (${VM.homeIpv6[0]}, ${VM.homeIpv4[0]}) at s1; ${mode}, one-way ${delay} ms, data plane ${dataplane}`,
    );
    for (let i = 0; i < moves; i++) {
      const to = (bed.at + 1) % sites;
      const probes = [VM.homeIpv6[0], VM.homeIpv4[0]].map((a) =>
        startProbe<PingRecord[]>(bed.ns.cn, ["ping", "--to", a, "--count", "150", "--interval-ms", "10"]),
      );
      await Promise.all(probes.map((p) => p.ready));
      await new Promise((r) => setTimeout(r, 500));
      const from = bed.at;
      const { outcome } = await bed.move(to, mode);
      const [v6, v4] = await Promise.all(probes.map(async (p) => summarisePings(await p.result)));
      await bed.settle();
      const fmt = (s: ReturnType<typeof summarisePings>) =>
        `gap ${s.gapMs.toFixed(1)} ms, lost ${s.lost}/${s.sent}`;
      console.log(
        `s${from + 1} -> s${to + 1} (generation ${bed.generation}, ${outcome.accepted ? "accepted" : "refused"}): ` +
          `IPv6 ${fmt(v6)}; IPv4 ${fmt(v4)}`,
      );
    }
  } finally {
    await bed.destroy();
  }
  return 0;
}

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
    if (cmd === "demo") return await demo(rest);
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
