// `npm run bench -- nbd [--quick] [--size-mib 256] [--runs 5] [--qemu-img] [--fresh-process]
// [--cases target,proxy-cold,...]`:
// sequential read throughput of a whole image with `nbdcopy URI null:` (optionally
// `qemu-img convert` to a null target too) for vmhop's block-server in target, proxy (cold,
// warm) and two-hop cascade mode, against nbdkit and qemu-nbd serving the same file in the
// same run.
//
// Runs are interleaved: round r runs every case and subject once, in an order of its own, so
// the machine's drift over the minutes of a benchmark falls on all of them alike. Servers
// run as they are deployed:
// - target: every subject's server is started once, read once untimed, then timed in each
//   round (a fresh process, C or JavaScript, is several percent slower on its first read);
// - proxies: vmhop's are exports created for each run over gRPC on a long-running
//   block-server (one per cascade hop), as the control-plane creates them; nbdkit's cow filter
//   takes its upstream on the command line, so it starts a process per run.
// `--fresh-process` starts every server as a new process per run instead.
import { readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../testbed/temp-dir.js";
import { makeImage } from "./lib/image.js";
import { type Client, readAll } from "./lib/nbd-clients.js";
import {
  type NbdServer,
  nbdkitCow,
  nbdkitFile,
  qemuNbd,
  type VmhopDaemon,
  vmhopDaemon,
  vmhopProxy,
  vmhopTarget,
} from "./lib/nbd-servers.js";
import {
  type BenchCase,
  flagValue,
  hasFlag,
  type Metrics,
  median,
  printTable,
  summarise,
  writeResults,
} from "./lib/report.js";

/**
 * One way to serve the image: `start` brings up the servers (closed after the run) and gives
 * the URI the client reads; `warm` when the servers should be read once, untimed, first.
 */
interface Setup {
  case: string;
  subject: string;
  /** Warm cases read once before timing, through the same servers. */
  warm?: boolean;
  start(tmp: string): Promise<{ uri: string; servers: NbdServer[]; warm?: boolean }>;
}

/**
 * 0..n-1 in an order of its own for each round (seeded: the same every time), so no subject
 * always runs first in a round, just after the previous round's servers and caches went.
 */
function shuffled(n: number, round: number): number[] {
  const order = [...Array(n).keys()];
  let seed = 0x9e3779b9 ^ round;
  for (let i = n - 1; i > 0; i--) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    // The high bits: an LCG's low bits repeat with short periods (the last subject kept its place).
    const j = Math.floor((seed / 2 ** 32) * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** Servers that live for the whole benchmark (closed at its end). */
const kept: NbdServer[] = [];

/** A server started on first use and kept: read once untimed then, like any long-running server. */
function keep(
  start: () => Promise<NbdServer>,
): () => Promise<{ uri: string; servers: NbdServer[]; warm: boolean }> {
  let s: NbdServer | undefined;
  return async () => {
    const first = s === undefined;
    s ??= await start();
    if (first) kept.push(s);
    return { uri: s.uri, servers: [], warm: first };
  };
}

/** Where vmhop's exports live: a running block-server per hop, or (null) a new process per run. */
type Hosts = VmhopDaemon[] | null;

function setups(image: string, origin: () => string, hosts: Hosts): Setup[] {
  const unique = () => Math.random().toString(36).slice(2);
  const proxyChain = (hops: number) => async (tmp: string) => {
    const servers: NbdServer[] = [];
    let up = origin();
    for (let i = 0; i < hops; i++) {
      const cache = join(tmp, `cache-${i}-${unique()}`);
      const s = hosts ? await hosts[i].proxy(up, cache, `p${i}-${unique()}`) : await vmhopProxy(up, cache);
      servers.push(s);
      up = s.uri;
    }
    return { uri: up, servers };
  };
  const cowChain = (hops: number) => async () => {
    const servers: NbdServer[] = [];
    let up = origin();
    for (let i = 0; i < hops; i++) {
      const s = await nbdkitCow(up);
      servers.push(s);
      up = s.uri;
    }
    return { uri: up, servers };
  };
  // Target servers are long-running for every subject alike, unless --fresh-process.
  const one = (start: () => Promise<NbdServer>) =>
    hosts
      ? keep(start)
      : async () => {
          const s = await start();
          return { uri: s.uri, servers: [s] };
        };
  return [
    { case: "target", subject: "vmhop", start: one(() => vmhopTarget(image)) },
    { case: "target", subject: "nbdkit", start: one(() => nbdkitFile(image)) },
    { case: "target", subject: "qemu-nbd", start: one(() => qemuNbd(image)) },
    { case: "proxy-cold", subject: "vmhop", start: proxyChain(1) },
    { case: "proxy-cold", subject: "nbdkit", start: cowChain(1) },
    { case: "proxy-warm", subject: "vmhop", warm: true, start: proxyChain(1) },
    { case: "proxy-warm", subject: "nbdkit", warm: true, start: cowChain(1) },
    { case: "cascade-cold", subject: "vmhop", start: proxyChain(2) },
    { case: "cascade-cold", subject: "nbdkit", start: cowChain(2) },
  ];
}

export async function main(args: string[]): Promise<void> {
  const quick = hasFlag(args, "--quick");
  const sizeMib = Number(flagValue(args, "--size-mib") ?? (quick ? 64 : 256));
  const runs = Number(flagValue(args, "--runs") ?? (quick ? 3 : 5));
  if (!(sizeMib >= 1) || !(runs >= 1)) throw new Error("--size-mib and --runs must be positive numbers");
  const clients: Client[] = hasFlag(args, "--qemu-img") ? ["nbdcopy", "qemu-img"] : ["nbdcopy"];
  const freshProcess = hasFlag(args, "--fresh-process");
  const only = flagValue(args, "--cases")?.split(",");
  // Checked before anything starts; the names are the setups' own (building them starts nothing).
  const known = [...new Set(setups("", () => "", null).map((s) => s.case))];
  const unknown = only?.filter((c) => !known.includes(c)) ?? [];
  if (unknown.length > 0)
    throw new Error(`--cases: unknown ${unknown.join(", ")} (cases: ${known.join(", ")})`);
  const size = sizeMib << 20;
  const tmp = tempDir("vmhop-bench-nbd-");
  const image = join(tmp.path, "disk.raw");
  makeImage(image, size);
  // Proxies read from an nbdkit file server (the same upstream for vmhop and the reference).
  const origin = await nbdkitFile(image);
  const hosts: Hosts = freshProcess ? null : [await vmhopDaemon(), await vmhopDaemon()];
  const cases: BenchCase[] = [];
  try {
    for (const client of clients) {
      const all = setups(image, () => origin.uri, hosts).filter((s) => !only || only.includes(s.case));
      const perRun: Metrics[][] = all.map(() => []);
      for (let i = 0; i < runs; i++) {
        for (const k of shuffled(all.length, i)) {
          const s = all[k];
          const { uri, servers, warm } = await s.start(tmp.path);
          try {
            if (s.warm || warm) await readAll(client, uri, size);
            perRun[k].push({ mib_per_s: await readAll(client, uri, size) });
          } finally {
            for (const srv of servers.reverse()) await srv.close();
            // Drop the proxies' caches now: their dirty pages would be written back during later runs.
            for (const f of readdirSync(tmp.path)) if (f.startsWith("cache-")) rmSync(join(tmp.path, f));
          }
        }
        console.error(`round ${i + 1}/${runs} (${client}) done`);
      }
      for (const [k, s] of all.entries()) {
        const c = summarise(s.case, s.subject, perRun[k]);
        if (client !== "nbdcopy") c.case = `${s.case}/${client}`;
        cases.push(c);
      }
    }
  } finally {
    for (const k of kept.splice(0)) await k.close();
    for (const h of hosts ?? []) await h.close();
    await origin.close();
    rmSync(tmp.path, { recursive: true, force: true });
  }
  const get = (cs: string, subject: string) =>
    cases.find((c) => c.case === cs && c.subject === subject)?.metrics.mib_per_s as number | undefined;
  const rows = cases.map((c) => {
    const ref = get(c.case, "nbdkit");
    return {
      case: c.case,
      subject: c.subject,
      "MiB/s": c.metrics.mib_per_s as number,
      min: c.min?.mib_per_s as number,
      max: c.max?.mib_per_s as number,
      "vs nbdkit":
        c.subject === "vmhop" && ref ? `${((c.metrics.mib_per_s as number) / ref).toFixed(2)}x` : "",
    };
  });
  const vmhopAs = freshProcess ? "a new process per run" : "a running block-server, an export per run";
  console.log(`vmhop served from ${vmhopAs}`);
  printTable(rows);
  const nbdkitTarget = get("target", "nbdkit") ?? Number.NaN;
  // Also each round's own ratio (its runs minutes apart from other rounds'), then the median:
  // the machine's slower and faster spells then cancel within a round.
  const runsOf = (cs: string, subject: string) =>
    cases.find((c) => c.case === cs && c.subject === subject)?.runs.map((r) => r.mib_per_s as number) ?? [];
  const paired = (a: number[], b: number[]) =>
    a.length > 0 && a.length === b.length ? median(a.map((x, i) => x / b[i])) : Number.NaN;
  const goals = {
    target_vs_nbdkit: (get("target", "vmhop") ?? Number.NaN) / nbdkitTarget,
    proxy_cold_vs_nbdkit_target: (get("proxy-cold", "vmhop") ?? Number.NaN) / nbdkitTarget,
    target_vs_nbdkit_per_round: paired(runsOf("target", "vmhop"), runsOf("target", "nbdkit")),
    proxy_cold_vs_nbdkit_target_per_round: paired(runsOf("proxy-cold", "vmhop"), runsOf("target", "nbdkit")),
  };
  const x = (v: number) => (Number.isNaN(v) ? "n/a (case not run)" : `${v.toFixed(2)}x`);
  console.log(
    `goals: target ${x(goals.target_vs_nbdkit)} nbdkit (want >= 1; per round ${x(goals.target_vs_nbdkit_per_round)}), ` +
      `proxy cold ${x(goals.proxy_cold_vs_nbdkit_target)} nbdkit target (want >= 0.5; per round ${x(goals.proxy_cold_vs_nbdkit_target_per_round)})`,
  );
  const file = writeResults("nbd", cases, { size_mib: sizeMib, runs, clients, vmhop_as: vmhopAs, goals });
  console.log(`wrote ${file}`);
}
