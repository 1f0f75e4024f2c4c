// `vmhop demo`: the whole system doing its job on this machine. Two sites as network namespaces
// across the emulated WAN, every vmhop service running, the test guest at site 1 with a disk and
// home addresses under a workload; one MigrateVm moves it to site 2 while a correspondent pings
// it and keeps a TCP stream open. Prints a timeline and a summary (--json: one JSON object;
// --report FILE: also the report page, services/control-plane/report).
// `--consolidate`: the second scenario instead, consolidation live (consolidate.ts): three
// hosts with power drivers, guests whose load falls and rises, the placement service moving
// them and switching hosts off and on.
// Everything it started is removed at the end, also on Ctrl-C or failure. A test-bed tool (root):
// registered in cli/tools.ts, never part of a service.
import { existsSync } from "node:fs";
import { dirname } from "node:path";
import { buildGuest } from "../../deploy/guest/build/build.js";
import { guestArtefacts } from "../../deploy/guest/build/paths.js";
import type { Migration } from "../../gen/vmhop/v1/control.js";
import { CliError } from "../../services/cli/errors.js";
import { writeFileAtomic } from "../../services/common/atomic-file.js";
import { helpText, type OptionSpecs, parseConfig } from "../../services/common/config.js";
import { formatProgress } from "../../services/control-plane/progress.js";
import { renderReport } from "../../services/control-plane/report/render.js";
import { DataplaneError, resolveDataplane } from "../../services/netreach/dataplane/probe.js";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../netns.js";
import type { TestbedPower } from "../power.js";
import { tempDir } from "../temp-dir.js";
import { SitesBed } from "./bed.js";
import { type ConsolidateResult, runConsolidation, servePower } from "./consolidate.js";
import { consolidationSummary } from "./consolidate-report.js";
import { checkRows, demoMeasurements } from "./demo-report.js";
import { runWholeVm, type WholeVmResult } from "./whole-vm-run.js";

const options = {
  json: { type: "boolean", default: false, describe: "end with one JSON object (progress goes to stderr)" },
  store: { type: "string", describe: "the control-plane's store: redis://HOST:PORT (default: embedded)" },
  delay: { type: "number", default: 25, describe: "WAN one-way delay in ms" },
  "rate-mbit": { type: "number", default: 450, describe: "WAN rate per direction in Mbit/s" },
  "disk-mib": { type: "number", default: 256, describe: "the VM's disk size in MiB" },
  "memory-mib": { type: "number", default: 256, describe: "the VM's memory in MiB" },
  dataplane: { type: "string", default: "auto", describe: "netreach data plane: auto, srv6 or vxlan" },
  consolidate: {
    type: "boolean",
    default: false,
    describe:
      "consolidation live instead: 3 hosts, 3 guests whose load falls then rises; the placement service moves them, switches a host off, wakes one (a few minutes; --memory-mib, --disk-mib and --report do not apply)",
  },
  report: {
    type: "string",
    default: "",
    describe: "also write the migration's report page here (HTML, as `vmhop report` writes)",
  },
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

const USAGE = "usage: vmhop demo [options]   (root; about two minutes)";

function need(ok: boolean, what: string): void {
  if (!ok) throw new CliError(what);
}

export async function run(argv: string[]): Promise<number> {
  let o: ReturnType<typeof parseConfig<typeof options>>;
  try {
    o = parseConfig(options, argv);
  } catch (err) {
    throw new CliError(`${(err as Error).message}\n\n${helpText(USAGE, options)}`);
  }
  if (o.help) {
    console.log(helpText(USAGE, options));
    return 0;
  }
  need(process.getuid?.() === 0, "vmhop demo needs root (it creates network namespaces and taps)");
  const delay = o.delay!;
  const rate = o["rate-mbit"]!;
  need(Number.isFinite(delay) && delay >= 0 && delay <= 500, `--delay must be 0..500 ms, got ${delay}`);
  need(Number.isFinite(rate) && rate > 0 && rate <= 10_000, `--rate-mbit must be 1..10000, got ${rate}`);
  const diskMib = o["disk-mib"]!;
  const memoryMib = o["memory-mib"]!;
  need(Number.isInteger(diskMib) && diskMib >= 32 && diskMib <= 65536, `--disk-mib must be 32..65536`);
  need(
    Number.isInteger(memoryMib) && memoryMib >= 128 && memoryMib <= 8192,
    `--memory-mib must be 128..8192`,
  );
  const reportFile = o.report!;
  need(!(o.consolidate && reportFile), "--report draws one migration: it does not go with --consolidate");
  need(
    !reportFile || existsSync(dirname(reportFile)),
    `--report ${reportFile}: the folder ${dirname(reportFile)} does not exist`,
  );
  let dataplane: Awaited<ReturnType<typeof resolveDataplane>>;
  try {
    dataplane = await resolveDataplane(o.dataplane!);
  } catch (err) {
    if (err instanceof DataplaneError) throw new CliError(err.message);
    throw err;
  }

  // Progress and the live line go to stderr with --json, so stdout holds the object only.
  const out = o.json ? process.stderr : process.stdout;
  const t0 = Date.now();
  const say = (line: string) => {
    clearLive();
    out.write(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)} s] ${line}\n`);
  };
  let live = "";
  const clearLive = () => {
    if (live && out.isTTY) out.write("\r\x1b[K");
    live = "";
  };
  let lastState = "";
  let lastAt = 0;
  const progress = (m: Migration) => {
    const line = formatProgress(m);
    if (out.isTTY) {
      out.write(`\r\x1b[K${line.slice(0, (out.columns ?? 120) - 1)}`);
      live = line;
    } else if (m.state !== lastState || Date.now() - lastAt >= 2000) {
      // Not a terminal: one line per phase, and one every 2 s while a phase lasts.
      out.write(`${line}\n`);
      lastState = m.state;
      lastAt = Date.now();
    }
  };

  if (o.consolidate) {
    // The load is set through the workload's console (`busy P`): a guest built before that
    // came would ignore it. Each step is redone only when its inputs changed.
    await buildGuest({ progress: (l) => say(`guest: ${l}`) });
  } else {
    try {
      guestArtefacts();
    } catch {
      say("building the test guest (first run only)");
      await buildGuest({ progress: (l) => say(`guest: ${l}`) });
    }
  }

  await destroyStaleNetns("nr-demo-");
  const dir = tempDir("vmhop-demo-");
  let bed: SitesBed | undefined;
  // Ctrl-C: stop and remove everything; the run below then fails as its services vanish, and
  // returns 130 once the clean-up is over.
  let interrupted: Promise<void> | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) return;
    say(`${sig}: stopping everything the demo started`);
    interrupted = (bed?.stop() ?? Promise.resolve()).finally(() => dir.cleanup());
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  let result: WholeVmResult | undefined;
  let consolidated: ConsolidateResult | undefined;
  let record: Migration | undefined;
  let powers: TestbedPower[] = [];
  try {
    if (o.consolidate) {
      say(`starting three hosts (sites, WAN ${delay} ms one way, ${rate} Mbit/s), each with a power switch`);
      powers = await servePower(() => bed!, dir.path, 3);
      bed = await SitesBed.start({
        prefix: uniqueNetnsPrefix("nr-demo-"),
        dir: dir.path,
        sites: 3,
        netreach: false,
        wanDelayMs: delay,
        wanRateBitsPerSecond: rate * 1e6,
        store: o.store,
        hostPower: (k) => ({ driver: "testbed", params: { socket: powers[k - 1].socket } }),
        say,
      });
      if (!interrupted) consolidated = await runConsolidation(bed, { say });
    } else {
      say(`starting two sites (WAN ${delay} ms one way, ${rate} Mbit/s) with every vmhop service`);
      bed = await SitesBed.start({
        prefix: uniqueNetnsPrefix("nr-demo-"),
        dir: dir.path,
        wanDelayMs: delay,
        wanRateBitsPerSecond: rate * 1e6,
        dataplane,
        store: o.store,
        say,
      });
      if (!interrupted) result = await runWholeVm(bed, { diskMib, memoryMib, say, onProgress: progress });
      // The record as the control-plane keeps it, while it still runs (the report draws it).
      if (result && reportFile) record = await bed.client.getMigration(result.migration_id);
    }
  } catch (err) {
    if (!interrupted) throw err;
  } finally {
    clearLive();
    if (!interrupted) {
      say("stopping every service and removing the sites");
      for (const p of powers) await p.close();
      await bed?.stop();
      dir.cleanup();
    }
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  if (interrupted) {
    await interrupted;
    for (const p of powers) await p.close();
    // A bed that was still starting when the signal came is stopped now that it exists.
    await bed?.stop();
    dir.cleanup();
    return 130;
  }
  if (consolidated) {
    if (o.json) process.stdout.write(`${JSON.stringify(consolidated)}\n`);
    else console.log(consolidationSummary(consolidated));
    return consolidated.ok ? 0 : 1;
  }
  if (!result) throw new Error("the demo ended without a result");
  if (record) {
    writeFileAtomic(
      reportFile,
      renderReport(record, demoMeasurements(result, { delay, rate, diskMib, memoryMib })),
    );
    say(`report written to ${reportFile}`);
  }
  if (o.json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else printReport(result, { delay, rate, diskMib });
  return verified(result) ? 0 : 1;
}

/** Every check that ran passed (a skipped one is null). */
export function verified(r: WholeVmResult): boolean {
  const checks = [
    r.memory_verified,
    r.disk_verified,
    r.source_disk_unchanged,
    r.address_verified,
    r.tcp_survived,
  ];
  return r.state === "done" && checks.every((c) => c !== false);
}

function printReport(r: WholeVmResult, w: { delay: number; rate: number; diskMib: number }): void {
  const ms = (v: number | null) => (v === null ? "n/a" : `${v} ms`);
  console.log("\ntimeline (ms after the MigrateVm request)");
  for (const e of r.timeline) console.log(`${String(e.atMs).padStart(8)}  ${e.event}`);
  console.log(`\nsummary (${w.diskMib} MiB disk, WAN ${w.delay} ms one way, ${w.rate} Mbit/s)`);
  const rows: [string, string][] = [
    ["migration", `${r.migration_id}: ${r.state}${r.error ? ` (${r.error})` : ""}`],
    ["switch-over", `${ms(r.switchover_ms)} after the request (VM running at the destination)`],
    [
      "before resume",
      r.bytes_before_resume === null ? "n/a" : `${r.bytes_before_resume} bytes on the migration channel`,
    ],
    ["memory complete", ms(r.total_ms)],
    ["disk local", `${ms(r.disk_local_ms)} (every block at the destination, export promoted)`],
    ["guest's longest stall", `${r.max_guest_gap_ms} ms (between two 100 ms heartbeats)`],
    [
      "correspondent's gap",
      r.address_gap_ms === null ? `n/a (${r.address_skipped ?? "no probe"})` : `${r.address_gap_ms} ms`,
    ],
    ...checkRows(r),
    [
      "bytes",
      `memory ${(r.memory_bytes_sent / 2 ** 20).toFixed(1)} MiB (${r.memory_pages_on_fault} pages on fault, ${r.memory_pages_sent_ahead} sent ahead); disk ${(r.disk_bytes_on_demand / 2 ** 20).toFixed(1)} MiB on demand, ` +
        `${(r.disk_bytes_background / 2 ** 20).toFixed(1)} MiB background`,
    ],
  ];
  for (const [k, v] of rows) console.log(`  ${k.padEnd(24)}${v}`);
  if (r.guest.errors.length) console.log(`\nguest errors:\n  ${r.guest.errors.join("\n  ")}`);
  if (r.disk.bad.length) console.log(`\ndisk mismatches: ${JSON.stringify(r.disk.bad)}`);
  console.log(verified(r) ? "\nevery check passed" : "\nSOME CHECKS FAILED");
}
