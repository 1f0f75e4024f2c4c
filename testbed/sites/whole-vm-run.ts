// One whole-VM migration on a SitesBed, observed from every side: the test guest boots at the
// first site on a disk served there, with home addresses, a memory-dirtying workload and a disk
// pattern it re-verifies; a correspondent pings it and keeps a TCP stream to it; one MigrateVm
// moves it to the second site; then memory, disk, address and the source image are verified.
// Used by `vmhop demo`, its test, and the whole-VM benchmark.
import { createHash, randomBytes } from "node:crypto";
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { guestArtefacts, guestCmdline } from "../../deploy/guest/build/paths.js";
import { BlockServiceClient, type Export } from "../../gen/vmhop/v1/block.js";
import { type Migration, StorageMode } from "../../gen/vmhop/v1/control.js";
import { call } from "../../services/common/grpc/call.js";
import { PageServer } from "../../services/control-plane/page-client.js";
import { type PingSummary, summarisePings } from "../../services/netreach/probe/analysis.js";
import type { TcpProbeResult } from "../../services/netreach/probe/tcp-probe.js";
import { VM } from "../netreach/bed.js";
import { startPing, startProbe } from "../netreach/probe-process.js";
import type { SitesBed } from "./bed.js";
import { compareImages, type DiskComparison } from "./disk-check.js";
import { SerialFollower } from "./serial-follower.js";

export interface WholeVmOptions {
  /** Disk size (MiB, default 256) and the part the guest keeps rewriting (default 16). */
  diskMib?: number;
  workloadDiskMib?: number;
  /** Guest RAM (MiB, default 256), the workload's region (default 96) and dirty rate (MiB/s, default 16). */
  memoryMib?: number;
  workloadMemMib?: number;
  dirtyRateMib?: number;
  /** netreach handover mode (default: the anchor's). */
  handoverMode?: number;
  /** Progress lines. */
  say?: (line: string) => void;
  /** Every migration record seen while it runs (a progress display). */
  onProgress?: (m: Migration) => void;
}

export interface TimelineEntry {
  /** ms since the MigrateVm request. */
  atMs: number;
  event: string;
}

export interface WholeVmResult {
  migration_id: string;
  /** When MigrateVm was requested (epoch ms): the zero of every `_ms` figure and of the timeline. */
  requested_unix_ms: number;
  /** The guest's heartbeats (every 100 ms) further apart than 250 ms: when each gap began (epoch ms), how long. */
  heartbeat_gaps: { start_unix_ms: number; ms: number }[];
  /** request → VM running at the destination. */
  switchover_ms: number | null;
  bytes_before_resume: number | null;
  max_guest_gap_ms: number;
  /** request → memory complete. */
  total_ms: number | null;
  /** request → every block local and promoted. */
  disk_local_ms: number | null;
  address_gap_ms: number | null;
  tcp_survived: boolean | null;
  memory_verified: boolean;
  disk_verified: boolean;
  address_verified: boolean | null;
  source_disk_unchanged: boolean;
  /** Why the address part was skipped, when it was. */
  address_skipped?: string;
  /** B's QEMU was a warm one, started before the request (page-server WarmIncoming). */
  destination_warm_qemu: boolean;
  state: string;
  error: string;
  memory_bytes_sent: number;
  /** Post-copy: pages the destination fetched on a fault. */
  memory_pages_on_fault: number;
  /** Pages the source sent ahead of the destination's first faults (the virtio rings). */
  memory_pages_sent_ahead: number;
  disk_bytes_on_demand: number;
  disk_bytes_background: number;
  disk: DiskComparison;
  pings?: { ipv6: PingSummary; ipv4: PingSummary };
  tcp?: TcpProbeResult;
  guest: { heartbeats: number; counter_breaks: number; errors: string[] };
  timeline: TimelineEntry[];
}

const VM_ID = "vm1";
const TAP = "vh-vm1";
const ECHO_PORT = 7;

async function withBlock<T>(address: string, fn: (c: BlockServiceClient) => Promise<T>): Promise<T> {
  const c = new BlockServiceClient(address, grpc.credentials.createInsecure());
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/** Whether the page-server at `address` has a warm incoming QEMU within `ms`. */
export async function warmAt(address: string, ms: number): Promise<boolean> {
  const page = new PageServer(address, 5000);
  const deadline = Date.now() + ms;
  try {
    for (;;) {
      const d = await page.describe().catch(() => undefined);
      if (d && d.warmReady > 0) return true;
      if (d?.warmMax === 0 || Date.now() > deadline) return false;
      await sleep(200);
    }
  } finally {
    page.close();
  }
}

/** Writes a disk image of random bytes (so a block copied wrong cannot pass for a right one). */
export function writeImage(path: string, mib: number): void {
  const fd = openSync(path, "w");
  try {
    for (let i = 0; i < mib; i++) writeSync(fd, randomBytes(1 << 20));
  } finally {
    closeSync(fd);
  }
}

function sha256(path: string): string {
  const h = createHash("sha256");
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(1 << 20);
    for (let n = readSync(fd, buf); n > 0; n = readSync(fd, buf)) h.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest("hex");
}

const now = () => performance.timeOrigin + performance.now();

/** The guest's command line: its workload (memory dirtied and verified, its disk's pattern), plus `extra`. */
export function workloadCmdline(
  o: Pick<WholeVmOptions, "workloadMemMib" | "dirtyRateMib" | "workloadDiskMib">,
  extra = "",
): string {
  return guestCmdline(
    {
      memMib: o.workloadMemMib ?? 96,
      rateMib: o.dirtyRateMib ?? 16,
      verifyMib: 32,
      disk: "/dev/vda",
      diskMib: o.workloadDiskMib ?? 16,
    },
    extra,
  );
}

/** The test guest running at a site, followed on its serial logs. */
export interface TestVm {
  vmId: string;
  /** Its disk image at the first site (the source of the first migration). */
  image: string;
  serial: SerialFollower;
}

export async function runWholeVm(bed: SitesBed, o: WholeVmOptions = {}): Promise<WholeVmResult> {
  const vm = await startTestVm(bed, o);
  try {
    return await migrateTestVm(bed, vm, o);
  } finally {
    vm.serial.stop();
  }
}

/** Moves the test guest (booted by startTestVm, at the first site) to the second, observed as runWholeVm does. */
export function migrateTestVm(bed: SitesBed, vm: TestVm, o: WholeVmOptions = {}): Promise<WholeVmResult> {
  return migrate(bed, o, { image: vm.image, serial: vm.serial, say: o.say ?? (() => {}) });
}

/**
 * Boots the test guest at the bed's first site: a disk of random bytes there (served by its
 * block-server), home addresses placed by the control-plane, the workload writing and checking
 * memory and disk, a TCP echo server; resolves once the guest verifies its disk.
 */
export async function startTestVm(bed: SitesBed, o: WholeVmOptions = {}): Promise<TestVm> {
  const say = o.say ?? (() => {});
  const [a] = bed.sites;
  const guest = guestArtefacts();
  const diskMib = o.diskMib ?? 256;

  // The VM's disk: an image at A, served by A's block-server.
  const image = join(bed.opts.dir, a.site, `${VM_ID}.raw`);
  writeImage(image, diskMib);
  await withBlock(a.blockAddress, (c) =>
    call(c, "createExport", {
      name: VM_ID,
      source: { $case: "target", value: { imagePath: image, sizeBytes: 0 } },
      readOnly: false,
      description: `disk of ${VM_ID}`,
      fencingToken: 0,
    }),
  );
  const net = `vmhop.ip6=${VM.homeIpv6[0]} vmhop.ip4=${VM.homeIpv4[0]}/24 vmhop.gw4=10.77.0.1 vmhop.echo=${ECHO_PORT}`;
  const vm = await bed.client.createVm(
    {
      vmId: VM_ID,
      vcpus: 1,
      memoryMib: o.memoryMib ?? 256,
      diskNbdUrl: `nbd://${a.nbdAddress}/${VM_ID}`,
      kernelPath: guest.kernel,
      initrdPath: guest.initrd,
      kernelCmdline: workloadCmdline(o, net),
      nicTap: TAP,
      nicMac: VM.mac,
    },
    a.hostId,
    // Placed at A's site by the control-plane (with --netreach); MigrateVm moves them along.
    { homeIpv6: VM.homeIpv6, homeIpv4: VM.homeIpv4 },
  );
  say(
    `${VM_ID} runs at ${a.site} (${VM.homeIpv6[0]}, ${VM.homeIpv4[0]}), disk ${diskMib} MiB on ${a.site}'s block-server`,
  );
  const serial = new SerialFollower();
  serial.follow(vm.serialLogPath, true);
  try {
    await serial.waitFor("the guest writing and verifying its disk", (h) => h.diskOk > 0, 180_000);
  } catch (err) {
    serial.stop();
    throw err;
  }
  say("guest workload running: memory dirtied and verified, disk pattern written and re-read");
  return { vmId: VM_ID, image, serial };
}

/** Where site k's page-server keeps the VM's serial log. */
export function serialLogAt(bed: SitesBed, k: number, vmId = VM_ID): string {
  return join(bed.opts.dir, bed.sites[k - 1].site, "page", vmId, "serial.log");
}

async function migrate(
  bed: SitesBed,
  o: WholeVmOptions,
  ctx: { image: string; serial: SerialFollower; say: (l: string) => void },
): Promise<WholeVmResult> {
  const { image, serial, say } = ctx;
  const [a, b] = bed.sites;
  const addressing = bed.anchor !== undefined;
  let probes: { v6: ReturnType<typeof startPing>; v4: ReturnType<typeof startPing> } | undefined;
  let tcp: ReturnType<typeof startProbe<TcpProbeResult>> | undefined;
  if (addressing) {
    probes = {
      v6: startPing(bed.cn, VM.homeIpv6[0], 1500, { intervalMs: 20 }),
      v4: startPing(bed.cn, VM.homeIpv4[0], 1500, { intervalMs: 20 }),
    };
    tcp = startProbe<TcpProbeResult>(bed.cn, [
      "tcp-client",
      "--to",
      VM.homeIpv6[0],
      "--port",
      String(ECHO_PORT),
      "--count",
      "1500",
      "--interval-ms",
      "20",
    ]);
    await Promise.all([probes.v6.ready, probes.v4.ready, tcp.ready]);
    await sleep(1000);
  }

  // As on a host that has run a while: B keeps a warm incoming QEMU of the VM's shape (the
  // control-plane names the shapes every few seconds). Waited for, within bounds: without it
  // the migration starts B's QEMU itself, as the record then says.
  const warm = await warmAt(b.pageAddress, 60_000);
  say(warm ? `${b.site} has a warm incoming QEMU` : `${b.site} has no warm incoming QEMU: it starts one`);

  const t0 = now();
  let m = await bed.client.migrateVm({
    vmId: VM_ID,
    destinationHostId: b.hostId,
    storage: StorageMode.STORAGE_MODE_LAZY,
  });
  say(`MigrateVm ${VM_ID} ${a.hostId} → ${b.hostId}: ${m.migrationId}`);
  let atSwitch: string | undefined;
  let bLog: string | undefined;
  let unanswered = 0;
  for (;;) {
    try {
      m = await bed.client.getMigration(m.migrationId);
      unanswered = 0;
    } catch (err) {
      // A control-plane that does not answer for a while (killed and restarted, or its replica
      // replaced: `bed.client` may be swapped meanwhile) is asked again, for up to a minute.
      const code = (err as { code?: number }).code;
      const noAnswer = code === grpc.status.UNAVAILABLE || code === grpc.status.DEADLINE_EXCEEDED;
      if (!noAnswer || ++unanswered > 600) throw err;
      await sleep(100);
      continue;
    }
    o.onProgress?.(m);
    if (!atSwitch && ["switched", "completing", "relocating", "done"].includes(m.state)) {
      // The source QEMU has stopped and flushed: from now on A's image must not change.
      atSwitch = sha256(image);
    }
    if (!bLog && m.state !== "pending" && m.state !== "preparing") {
      bLog = serialLogAt(bed, b.k);
      serial.follow(bLog, true);
    }
    if (["done", "failed", "cancelled"].includes(m.state)) break;
    await sleep(50);
  }
  const tEnd = now();
  const rel = (ms: number | undefined) => (ms ? Math.round(ms - t0) : null);
  say(`migration ${m.state}${m.error ? `: ${m.error}` : ""}`);

  // Verification: the guest keeps running at B, writing and verifying, with one unbroken counter.
  let bBeat: number | undefined;
  let carriedOn = false;
  if (m.state === "done" && bLog) {
    const last = serial.beats.filter((h) => h.path !== bLog).at(-1);
    const need = (last?.diskOk ?? 0) + 20;
    const hb = await serial
      .waitFor("the guest verifying its disk at B", (h) => h.path === bLog && h.diskOk > need, 120_000)
      .catch(() => undefined);
    bBeat = serial.beats.find((h) => h.path === bLog)?.atMs;
    carriedOn = hb !== undefined;
    if (!carriedOn) say("the guest did not carry on at B");
  }
  let pings: WholeVmResult["pings"];
  let tcpResult: TcpProbeResult | undefined;
  if (probes && tcp) {
    const [v6, v4] = await Promise.all([probes.v6.result, probes.v4.result]);
    pings = { ipv6: summarisePings(v6), ipv4: summarisePings(v4) };
    tcpResult = await tcp.result.catch((err) => ({
      sent: 0,
      echoed: 0,
      inOrder: false,
      broken: true,
      error: (err as Error).message,
      maxGapMs: 0,
    }));
  }
  let addressVerified: boolean | null = null;
  if (addressing) {
    const after = await Promise.all(
      [VM.homeIpv6[0], VM.homeIpv4[0]].map(async (to) =>
        summarisePings(await startPing(bed.cn, to, 20).result),
      ),
    );
    addressVerified = m.state === "done" && after.every((s) => s.lost === 0);
  }

  const destExport = await withBlock(b.blockAddress, async (c) =>
    (await call(c, "listExports", {})).exports.find((e: Export) => e.name === VM_ID),
  ).catch(() => undefined);
  const disk: DiskComparison =
    destExport && m.disk?.promoted
      ? compareImages(image, destExport.path)
      : {
          blocks: 0,
          same: 0,
          rewritten: 0,
          bad: [{ block: -1, why: "no promoted export at B" }],
          badCount: 1,
          ok: false,
        };
  const gap = serial.maxGapSince(t0 - 2000);
  const all = serial.beats;
  const memErrors = all.reduce((s, h) => s + h.memErrors, 0);
  const diskErrors = all.reduce((s, h) => s + h.diskErrors, 0);
  const e = m.enteredUnixMs;
  const timeline: TimelineEntry[] = [
    { atMs: 0, event: "MigrateVm requested" },
    ...["preparing", "migrating", "switched", "completing", "relocating", "done", "failed"]
      .filter((s) => e[s])
      .map((s) => ({ atMs: Math.round(e[s] - t0), event: PHASE_TEXT[s] ?? s })),
  ];
  const lastA = serial.beats.filter((h) => h.path !== bLog).at(-1);
  if (lastA) timeline.push({ atMs: Math.round(lastA.atMs - t0), event: "last guest heartbeat at A" });
  if (bBeat) timeline.push({ atMs: Math.round(bBeat - t0), event: "first guest heartbeat at B" });
  const resumed = m.memory?.resumedUnixMs;
  if (resumed)
    timeline.push({ atMs: Math.round(resumed - t0), event: "VM resumed at B (QEMU's RESUME there)" });
  const n = m.network?.enteredUnixMs ?? {};
  for (const [state, text] of Object.entries(NETWORK_TEXT))
    if (n[state]) timeline.push({ atMs: Math.round(n[state] - t0), event: text });
  if (pings?.ipv6.gapStartMs)
    timeline.push({
      atMs: Math.round(pings.ipv6.gapStartMs - t0),
      event: `correspondent's longest IPv6 silence begins (${pings.ipv6.silenceMs.toFixed(0)} ms)`,
    });
  timeline.push({ atMs: Math.round(tEnd - t0), event: "record final" });
  timeline.sort((x, y) => x.atMs - y.atMs);

  return {
    migration_id: m.migrationId,
    requested_unix_ms: Math.round(t0),
    heartbeat_gaps: serial
      .gapsSince(t0 - 2000, 250)
      .map((g) => ({ start_unix_ms: Math.round(g.startMs), ms: Math.round(g.ms) })),
    // When B's QEMU resumed the VM; the record's `switched` (the source in post-copy) if unknown.
    switchover_ms: rel(m.memory?.resumedUnixMs ?? e.switched),
    bytes_before_resume: m.memory?.bytesBeforeResume ?? null,
    max_guest_gap_ms: Math.round(gap),
    total_ms: rel(e.completing),
    disk_local_ms: m.state === "done" ? rel(e.done) : null,
    address_gap_ms: pings ? Math.round(Math.max(pings.ipv6.gapMs, pings.ipv4.gapMs)) : null,
    tcp_survived: tcpResult
      ? !tcpResult.broken && tcpResult.inOrder && tcpResult.echoed === tcpResult.sent
      : null,
    memory_verified: carriedOn && memErrors === 0 && serial.tracker.stats.counterBreaks === 0,
    disk_verified: carriedOn && diskErrors === 0 && disk.ok,
    address_verified: addressVerified,
    source_disk_unchanged: atSwitch !== undefined && sha256(image) === atSwitch,
    ...(m.network?.state === "skipped" || !addressing
      ? { address_skipped: m.network?.reason || "no netreach anchor in this bed" }
      : {}),
    destination_warm_qemu: m.memory?.destinationWarmQemu ?? false,
    state: m.state,
    error: m.error,
    memory_bytes_sent: m.bytesSent,
    memory_pages_on_fault: m.memory?.pagesRequestedOnFault ?? 0,
    memory_pages_sent_ahead: m.memory?.pagesSentAhead ?? 0,
    disk_bytes_on_demand: m.disk?.bytesFetchedOnDemand ?? 0,
    disk_bytes_background: m.disk?.bytesFetchedBackground ?? 0,
    disk,
    pings,
    tcp: tcpResult,
    guest: {
      heartbeats: all.length,
      counter_breaks: serial.tracker.stats.counterBreaks,
      errors: serial.errors.slice(0, 10),
    },
    timeline,
  };
}

const NETWORK_TEXT: Record<string, string> = {
  prepared: "address prepared at B",
  switched: "binding at B: the home addresses route to B",
  settled: "address settled: A's state for the VM removed",
  rolled_back: "address preparation undone",
};

const PHASE_TEXT: Record<string, string> = {
  preparing: "preparing B: proxy export of the disk, incoming QEMU",
  migrating: "memory stream started (post-copy)",
  switched: "source in post-copy (switch-over); the disk copy starts",
  completing: "memory complete",
  relocating: "VM record at B; disk still arriving",
  done: "every block local, B's export promoted, A's released",
  failed: "failed",
};
