// `npm run bench -- whole-vm [--quick] [--runs N] [--sizes 256,2048] [--no-netreach]
//   [--disk-copy-rate-mib N]`: a whole VM
// (memory and disk) moved across the emulated WAN (25 ms one way, 450 Mbit/s) by vmhop and by
// what users do today, on the same bed, guest and workload:
//   vmhop        runWholeVm on a SitesBed: one MigrateVm, lazy disk relocation, post-copy memory;
//   qemu-direct  QEMU alone, as libvirt's --copy-storage-all drives it: the disk mirrored to an
//                NBD export at the destination until ready, then post-copy memory
//                (bench/lib/copy-storage-all.ts).
// Every run gets a fresh bed; the two tools alternate, and which goes first alternates too, so
// drift on this shared machine falls on both. Per run: request → switch-over, total time, WAN
// bytes (counted at the sites' WAN links), the guest's largest heartbeat gap, the correspondent's
// largest silence where measured (vmhop only: QEMU direct leaves the addresses behind).
// --disk-copy-rate-mib N: vmhop's disk copy cap while memory moves (a diagnostic).
// Results: bench/results/whole-vm.json, and a table; docs/benchmarks/whole-vm.md says what they mean.
import { buildGuest } from "../deploy/guest/build/build.js";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../testbed/netns.js";
import { SitesBed } from "../testbed/sites/bed.js";
import { wanMeterOf } from "../testbed/sites/wan-bytes.js";
import { runWholeVm, type TimelineEntry } from "../testbed/sites/whole-vm-run.js";
import { tempDir } from "../testbed/temp-dir.js";
import { type GuestSetup, runQemuDirect } from "./lib/copy-storage-all.js";
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

type Subject = "vmhop" | "qemu-direct";

const WAN = { delayMs: 25, rateBitsPerSecond: 450e6 };
/** runWholeVm's guest and workload, given explicitly to both tools. */
const GUEST: Omit<GuestSetup, "diskMib"> = {
  memoryMib: 256,
  workloadMemMib: 96,
  dirtyRateMib: 16,
  workloadDiskMib: 16,
};
const SWITCHED = ["switched", "completing", "relocating", "done"];
const NS_BASE = "nr-bwv-";

interface Run {
  metrics: Metrics;
  timeline: TimelineEntry[];
}

const stamp = () => new Date().toISOString().slice(11, 19);

interface BedChoice {
  netreach: boolean;
  /** Extra `vmhop control serve` arguments (the vmhop runs' disk copy cap). */
  controlArgs: string[];
  /** Extra `vmhop page serve` arguments (`--warm-max`). */
  pageArgs?: string[];
}

async function withBed<T>(choice: BedChoice, fn: (bed: SitesBed) => Promise<T>): Promise<T> {
  const dir = tempDir("vmhop-bench-wv-");
  let bed: SitesBed | undefined;
  try {
    bed = await SitesBed.start({
      prefix: uniqueNetnsPrefix(NS_BASE),
      dir: dir.path,
      wanDelayMs: WAN.delayMs,
      wanRateBitsPerSecond: WAN.rateBitsPerSecond,
      ...choice,
    });
    return await fn(bed);
  } finally {
    await bed?.stop();
    dir.cleanup();
  }
}

async function runVmhop(diskMib: number, choice: BedChoice): Promise<Run> {
  return withBed(choice, async (bed) => {
    const wan = wanMeterOf(bed);
    const wan0 = wan.read();
    let atSwitch: number | null = null;
    const r = await runWholeVm(bed, {
      diskMib,
      ...GUEST,
      // Sampled when the control-plane's record is first seen switched (polled every 50 ms).
      onProgress: (m) => {
        if (atSwitch === null && SWITCHED.includes(m.state)) atSwitch = wan.read();
      },
    });
    const wanEnd = wan.read();
    const verified =
      r.state === "done" &&
      r.memory_verified &&
      r.disk_verified &&
      r.source_disk_unchanged &&
      r.address_verified !== false &&
      r.tcp_survived !== false;
    return {
      metrics: {
        switchover_ms: r.switchover_ms,
        total_ms: r.total_ms,
        disk_complete_ms: r.disk_local_ms,
        memory_complete_ms: r.total_ms,
        mirror_ready_ms: null,
        wan_bytes: wanEnd - wan0,
        wan_bytes_at_switchover: atSwitch === null ? null : atSwitch - wan0,
        max_guest_gap_ms: r.max_guest_gap_ms,
        correspondent_silence_ms: r.address_gap_ms,
        memory_bytes_sent: r.memory_bytes_sent,
        disk_bytes_on_demand: r.disk_bytes_on_demand,
        disk_bytes_background: r.disk_bytes_background,
        // B took a warm incoming QEMU (started before the request) rather than starting one.
        warm_qemu: r.destination_warm_qemu,
        verified,
        error: r.error || (r.address_skipped ? `address part skipped: ${r.address_skipped}` : ""),
      },
      timeline: r.timeline,
    };
  });
}

async function runDirect(diskMib: number, choice: BedChoice): Promise<Run> {
  return withBed(choice, async (bed) => {
    const r = await runQemuDirect(bed, { diskMib, ...GUEST }, { wan: wanMeterOf(bed) });
    return {
      metrics: {
        switchover_ms: r.switchover_ms,
        total_ms: r.total_ms,
        disk_complete_ms: r.disk_complete_ms,
        memory_complete_ms: r.memory_complete_ms,
        mirror_ready_ms: r.mirror_ready_ms,
        wan_bytes: r.wan_bytes,
        wan_bytes_at_switchover: r.wan_bytes_at_switchover,
        max_guest_gap_ms: r.max_guest_gap_ms,
        // The VM's addresses stay behind at site 1: no correspondent can follow it.
        correspondent_silence_ms: null,
        memory_bytes_sent: r.memory_bytes_sent,
        disk_bytes_on_demand: null,
        disk_bytes_background: null,
        warm_qemu: null,
        verified: !r.error && r.memory_verified && r.disk_verified,
        error: r.error,
      },
      timeline: r.timeline,
    };
  });
}

const MB = (v: unknown) => (typeof v === "number" ? (v / 1e6).toFixed(1) : "-");
const ms = (v: unknown) => (typeof v === "number" ? Math.round(v) : "-");

function row(size: number, subject: string, m: Metrics, run?: number): Record<string, string | number> {
  return {
    ...(run === undefined ? {} : { run }),
    disk: `${size} MiB`,
    subject,
    switchover_ms: ms(m.switchover_ms),
    total_ms: ms(m.total_ms),
    disk_done_ms: ms(m.disk_complete_ms),
    wan_MB: MB(m.wan_bytes),
    wan_MB_at_switch: MB(m.wan_bytes_at_switchover),
    max_gap_ms: ms(m.max_guest_gap_ms),
    cn_silence_ms: ms(m.correspondent_silence_ms),
    warm: m.warm_qemu === undefined || m.warm_qemu === null ? "-" : String(m.warm_qemu),
    verified: String(m.verified),
  };
}

/** How each tool's switch-over grows from the smallest disk to the largest (medians). */
function growth(cases: BenchCase[], sizes: number[]): Record<string, string | number>[] {
  if (sizes.length < 2) return [];
  const [lo, hi] = [Math.min(...sizes), Math.max(...sizes)];
  const sw = (subject: string, size: number) =>
    Number(cases.find((c) => c.subject === subject && c.case === `${size} MiB`)?.metrics.switchover_ms);
  return (["vmhop", "qemu-direct"] as const).map((s) => ({
    subject: s,
    [`switchover_${lo}MiB_ms`]: ms(sw(s, lo)),
    [`switchover_${hi}MiB_ms`]: ms(sw(s, hi)),
    ratio: (sw(s, hi) / sw(s, lo)).toFixed(2),
  }));
}

export async function main(args: string[]): Promise<void> {
  const quick = hasFlag(args, "--quick");
  const runs = Number(flagValue(args, "--runs") ?? (quick ? 1 : 3));
  const sizes = (flagValue(args, "--sizes") ?? (quick ? "256" : "256,2048")).split(",").map(Number);
  // The bed's address mobility (anchor, site agents; vmhop's correspondent probes): on unless
  // --no-netreach; QEMU direct runs on the same bed, its addresses simply stay behind.
  const netreach = !hasFlag(args, "--no-netreach");
  const copyRate = flagValue(args, "--disk-copy-rate-mib");
  if (copyRate !== undefined && !(Number(copyRate) >= 0))
    throw new Error("--disk-copy-rate-mib takes MiB/s (0: uncapped)");
  // vmhop's disk copy cap while memory still moves (default: the control-plane's own).
  const controlArgs = copyRate === undefined ? [] : ["--disk-copy-rate-mib", copyRate];
  // The page-servers' warm incoming QEMUs (default: theirs; 0 measures the cold start).
  const warmMax = flagValue(args, "--warm-max");
  const pageArgs = warmMax === undefined ? [] : ["--warm-max", warmMax];
  if (!Number.isInteger(runs) || runs < 1) throw new Error("--runs must be a positive integer");
  if (sizes.some((s) => !Number.isInteger(s) || s < 32 || s > 65536))
    throw new Error("--sizes takes disk sizes in MiB, 32..65536, comma-separated");
  if (process.getuid?.() !== 0) throw new Error("the whole-VM benchmark needs root (namespaces, taps)");
  await buildGuest({ progress: () => {} });
  await destroyStaleNetns(NS_BASE);

  const runners: Record<Subject, (size: number) => Promise<Run>> = {
    vmhop: (size) => runVmhop(size, { netreach, controlArgs, pageArgs }),
    "qemu-direct": (size) => runDirect(size, { netreach, controlArgs: [] }),
  };
  const perRun: Record<string, Metrics[]> = {};
  const timelines: { case: string; subject: string; run: number; timeline: TimelineEntry[] }[] = [];
  const rows: Record<string, string | number>[] = [];
  for (let i = 0; i < runs; i++)
    for (const size of sizes) {
      const order: Subject[] = i % 2 === 0 ? ["vmhop", "qemu-direct"] : ["qemu-direct", "vmhop"];
      for (const subject of order) {
        console.log(`[${stamp()}] run ${i + 1}/${runs}, ${size} MiB disk: ${subject}`);
        let r: Run;
        try {
          r = await runners[subject](size);
        } catch (err) {
          // A run that could not even start its bed or guest: recorded, the others go on.
          r = { metrics: { verified: false, error: (err as Error).message }, timeline: [] };
        }
        const key = `${size}/${subject}`;
        perRun[key] = [...(perRun[key] ?? []), r.metrics];
        timelines.push({ case: `${size} MiB`, subject, run: i + 1, timeline: r.timeline });
        rows.push(row(size, subject, r.metrics, i + 1));
        printTable([rows.at(-1)!]);
        if (r.metrics.error) console.log(`  note: ${r.metrics.error}`);
      }
    }

  const cases: BenchCase[] = [];
  for (const size of sizes)
    for (const subject of ["vmhop", "qemu-direct"] as Subject[])
      cases.push(summarise(`${size} MiB`, subject, perRun[`${size}/${subject}`]));
  console.log("\nper run:");
  printTable(rows);
  console.log(`\nmedians of ${runs} run(s):`);
  printTable(cases.map((c) => row(Number.parseInt(c.case, 10), c.subject, c.metrics)));
  const g = growth(cases, sizes);
  if (g.length) {
    console.log("\nswitch-over vs disk size (medians):");
    printTable(g);
  }
  const sub1s = cases
    .filter((c) => c.subject === "vmhop")
    .map((c) => `${c.case}: ${median(c.runs.map((r) => Number(r.switchover_ms)))} ms`);
  console.log(`vmhop switch-over (goal < 1000 ms after the request): ${sub1s.join(", ")}`);
  const file = writeResults("whole-vm", cases, {
    setup: {
      wan: WAN,
      guest: GUEST,
      sizes,
      runs,
      netreach,
      vmhop_control_args: controlArgs,
      vmhop_page_args: pageArgs,
    },
    growth: g,
    timelines,
    note:
      "switchover_ms: request -> VM running at the destination; total_ms: memory complete (qemu-direct: " +
      "memory and disk complete, NBD export stopped); disk_complete_ms: vmhop every block local, qemu-direct " +
      "mirror completed; wan_bytes: bytes the sites sent into the WAN during the run",
  });
  console.log(`results: ${file}`);
}
