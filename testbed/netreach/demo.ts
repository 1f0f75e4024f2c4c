// `vmhop netreach demo`: builds a namespace test bed (anchor, sites, a VM and a correspondent),
// moves the VM site to site under a continuous ping and prints each move's gap and losses.
// A test-bed tool (root): registered in cli/tools.ts, never part of the netreach service.
import { parseArgs } from "node:util";
import { CliError } from "../../services/cli/errors.js";
import { DataplaneError, resolveDataplane } from "../../services/netreach/dataplane/probe.js";
import type { DataplaneKind } from "../../services/netreach/dataplane/tunnel.js";
import { HANDOVER_MODES, type HandoverMode } from "../../services/netreach/migration-hooks.js";
import type { PingSummary } from "../../services/netreach/probe/analysis.js";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../netns.js";
import { NetreachBed, VM } from "./bed.js";
import { underPing } from "./pings.js";

const USAGE = `usage: vmhop netreach demo [--sites N=3] [--delay MS=0] [--mode bbm|mbb|mbb-fp|mbb-bicast=mbb-bicast]
                           [--moves N=2] [--dataplane auto|srv6|vxlan=auto]

Moves a VM between sites of a namespace test bed under a 10 ms ping, IPv6 and IPv4, and
prints each move's largest gap and losses (needs root).`;

function int(v: string | undefined, name: string, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new CliError(`--${name} must be an integer ${min}..${max}, got '${v}'`);
  return n;
}

export async function run(argv: string[]): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(USAGE);
    return 0;
  }
  let values: Record<string, string | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        sites: { type: "string" },
        delay: { type: "string" },
        mode: { type: "string" },
        moves: { type: "string" },
        dataplane: { type: "string" },
      },
    }));
  } catch (err) {
    throw new CliError(`${(err as Error).message}\n\n${USAGE}`);
  }
  const sites = int(values.sites, "sites", 3, 2, 9);
  const delay = int(values.delay, "delay", 0, 0, 200);
  const moves = int(values.moves, "moves", 2, 1, 20);
  const mode = (values.mode ?? "mbb-bicast") as HandoverMode;
  if (!HANDOVER_MODES.includes(mode))
    throw new CliError(`--mode must be one of ${HANDOVER_MODES.join(", ")}, got '${mode}'`);
  if (process.getuid?.() !== 0) throw new CliError("demo needs root (it creates network namespaces)");
  let dataplane: DataplaneKind;
  try {
    dataplane = await resolveDataplane(values.dataplane ?? "auto");
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
      const from = bed.at;
      const {
        result: { outcome },
        v6,
        v4,
      } = await underPing(bed, () => bed.move(to, mode), { count: 150, leadMs: 500 });
      const fmt = (s: PingSummary) => `gap ${s.gapMs.toFixed(1)} ms, lost ${s.lost}/${s.sent}`;
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
