// The reference for the whole-VM benchmark: what users do today, QEMU migrating a VM with its
// local disk the way libvirt's `virsh migrate --live --copy-storage-all --postcopy` drives it,
// on a SitesBed's WAN (the bed's vmhop services stay idle):
//
//   destination (site 2): QEMU `-incoming defer` on an empty raw image of the disk's size, which
//     it exports writable over NBD on its WAN address (nbd-server-start, nbd-server-add);
//   source (site 1): QEMU on a local raw image mirrors it there (blockdev-add nbd, then
//     blockdev-mirror sync=full) until BLOCK_JOB_READY; only then the memory migration starts,
//     in post-copy at once (pre-copy rounds corrupt guests on QEMU 7.2 under TCG: FIELD-NOTES),
//     with pause-before-switchover as libvirt sets it: with the source's vCPUs stopped, the
//     mirror is completed (block-job-cancel on a ready mirror: the target is a point-in-time
//     copy) before the destination may run; then the destination stops its NBD server.
//
// Observed like runWholeVm: the guest's heartbeats across both serial logs, the disk invariant
// on the images (testbed/sites/disk-check.ts), WAN bytes at the sites' WAN links.

import { closeSync, ftruncateSync, openSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { guestArtefacts } from "../../deploy/guest/build/paths.js";
import { PRESWITCH_BANDWIDTH, UNLIMITED } from "../../services/page-server/migration/driver.js";
import { parseMigrationInfo } from "../../services/page-server/migration/status.js";
import type { QmpEvent } from "../../services/page-server/qmp/codec.js";
import { type SitesBed, serviceAddressOf } from "../../testbed/sites/bed.js";
import { compareImages, type DiskComparison } from "../../testbed/sites/disk-check.js";
import { SerialFollower } from "../../testbed/sites/serial-follower.js";
import type { WanMeter } from "../../testbed/sites/wan-bytes.js";
import type { TimelineEntry } from "../../testbed/sites/whole-vm-run.js";
import { workloadCmdline, writeImage } from "../../testbed/sites/whole-vm-run.js";
import { DISK_NODE, type SiteQemu, startSiteQemu } from "./site-qemu.js";

export interface GuestSetup {
  diskMib: number;
  memoryMib: number;
  workloadMemMib: number;
  dirtyRateMib: number;
  workloadDiskMib: number;
}

export interface DirectResult {
  /** request → the VM runs at the destination (its RESUME event). */
  switchover_ms: number | null;
  /** request → the mirror reported ready (the whole disk copied once, writes mirrored). */
  mirror_ready_ms: number | null;
  /** request → the mirror completed (the disk at the destination is the source's). */
  disk_complete_ms: number | null;
  /** request → QEMU reports the memory migration completed. */
  memory_complete_ms: number | null;
  /** request → memory and disk complete and the NBD export stopped. */
  total_ms: number | null;
  wan_bytes: number;
  wan_bytes_at_switchover: number | null;
  max_guest_gap_ms: number;
  memory_bytes_sent: number;
  memory_verified: boolean;
  disk_verified: boolean;
  disk: DiskComparison;
  error: string;
  timeline: TimelineEntry[];
}

// Ports on the destination's service address: its NBD export and the incoming migration.
const NBD_PORT = 10849;
const MIGRATION_PORT = 10850;
const TARGET_NODE = "mirror-target";
const JOB = "mirror";

const now = () => performance.timeOrigin + performance.now();
/** The guest and workload runWholeVm boots, without the NIC (no address mobility here). */
function spec(name: string, g: GuestSetup) {
  const a = guestArtefacts();
  return {
    name,
    vcpus: 1,
    memoryMib: g.memoryMib,
    kernel: a.kernel,
    initrd: a.initrd,
    cmdline: workloadCmdline(g),
  };
}

/**
 * The mirror job's next event among `names` (BLOCK_JOB_READY, BLOCK_JOB_COMPLETED, …); a job
 * that ends in error or cancelled, or QEMU going away, is an error.
 */
function jobEvent(q: SiteQemu, names: string[], timeoutMs: number): Promise<QmpEvent> {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      q.qmp.off("event", onEvent);
      q.qmp.off("close", onClose);
    };
    const onEvent = (e: QmpEvent) => {
      if (e.data?.device !== JOB) return;
      const ended = e.event === "BLOCK_JOB_COMPLETED" || e.event === "BLOCK_JOB_CANCELLED";
      if (ended && (e.data.error || e.event === "BLOCK_JOB_CANCELLED")) {
        done();
        reject(new Error(`mirror job ended: ${e.event} ${String(e.data.error ?? "")}`));
      } else if (names.includes(e.event)) {
        done();
        resolve(e);
      } else if (ended) {
        done();
        reject(new Error(`mirror job ended before ${names.join("/")}`));
      }
    };
    const onClose = (reason: string) => {
      done();
      reject(new Error(`QEMU went away while the mirror ran: ${reason}`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no ${names.join("/")} from the mirror within ${timeoutMs} ms`));
    }, timeoutMs);
    q.qmp.on("event", onEvent);
    q.qmp.on("close", onClose);
  });
}

export async function runQemuDirect(
  bed: SitesBed,
  g: GuestSetup,
  opts: { say?: (l: string) => void; wan: WanMeter },
): Promise<DirectResult> {
  const say = opts.say ?? (() => {});
  const [a, b] = bed.sites;
  const dstHost = serviceAddressOf(b.k);
  const srcImage = join(bed.opts.dir, a.site, "direct.raw");
  const dstImage = join(bed.opts.dir, b.site, "direct.raw");
  writeImage(srcImage, g.diskMib);
  // The destination's disk: empty (sparse) and of the same size, as libvirt pre-creates it.
  const fd = openSync(dstImage, "w");
  ftruncateSync(fd, g.diskMib * 2 ** 20);
  closeSync(fd);
  const serial = new SerialFollower();
  let src: SiteQemu | undefined;
  let dst: SiteQemu | undefined;
  try {
    src = await startSiteQemu({
      ns: a.ns,
      runDir: join(bed.opts.dir, a.site, "direct"),
      spec: spec("direct-src", g),
      image: srcImage,
    });
    serial.follow(src.serialLog, true);
    say(`QEMU at ${a.site} on a local ${g.diskMib} MiB raw image`);
    await serial.waitFor("the guest writing and verifying its disk", (h) => h.diskOk > 0, 180_000);
    // Starting the destination QEMU is part of the migration (libvirt's Prepare), as it is of
    // vmhop's (the page-server at B starts the incoming QEMU): done after the request.
    const startDestination = async () => {
      dst = await startSiteQemu({
        ns: b.ns,
        runDir: join(bed.opts.dir, b.site, "direct"),
        spec: spec("direct-dst", g),
        image: dstImage,
        incoming: true,
      });
      serial.follow(dst.serialLog, true);
      return dst;
    };
    return await migrate(src, startDestination, {
      dstHost,
      srcImage,
      dstImage,
      serial,
      say,
      wan: opts.wan,
      g,
    });
  } finally {
    serial.stop();
    await src?.qmp.close().catch(() => undefined);
    await dst?.qmp.close().catch(() => undefined);
    await src?.kill();
    await dst?.kill();
  }
}

async function migrate(
  src: SiteQemu,
  startDestination: () => Promise<SiteQemu>,
  c: {
    dstHost: string;
    srcImage: string;
    dstImage: string;
    serial: SerialFollower;
    say: (l: string) => void;
    wan: WanMeter;
    g: GuestSetup;
  },
): Promise<DirectResult> {
  const { serial, say } = c;
  const at: Record<string, number> = {};
  const mark = (k: string) => {
    at[k] ??= now();
  };
  let wanAtSwitch: number | null = null;
  let dstLog: string | undefined;
  // Generous: the whole disk crosses the WAN before the memory migration may start.
  const mirrorTimeoutMs = Math.max(120_000, c.g.diskMib * 500);
  const wan0 = c.wan.read();
  const t0 = now();
  let error = "";
  let memoryBytes = 0;
  try {
    // libvirt's Prepare on the destination: QEMU started, post-copy allowed, the disk exported,
    // listening.
    const dst = await startDestination();
    dstLog = dst.serialLog;
    dst.qmp.on("event", (e) => {
      if (e.event !== "RESUME" || at.resumed) return;
      mark("resumed");
      wanAtSwitch = c.wan.read();
    });
    await dst.qmp.execute("migrate-set-capabilities", {
      capabilities: [
        { capability: "postcopy-ram", state: true },
        { capability: "postcopy-blocktime", state: true },
      ],
    });
    await dst.qmp.execute("nbd-server-start", {
      addr: { type: "inet", data: { host: c.dstHost, port: String(NBD_PORT) } },
    });
    await dst.qmp.execute("nbd-server-add", { device: DISK_NODE, writable: true });
    await dst.qmp.execute("migrate-incoming", { uri: `tcp:[${c.dstHost}]:${MIGRATION_PORT}` });
    mark("prepared");

    // The storage copy: mirror the whole disk into the export until source and target are in sync.
    await src.qmp.execute("blockdev-add", {
      driver: "nbd",
      "node-name": TARGET_NODE,
      server: { type: "inet", host: c.dstHost, port: String(NBD_PORT) },
      export: DISK_NODE,
    });
    const ready = jobEvent(src, ["BLOCK_JOB_READY"], mirrorTimeoutMs);
    ready.catch(() => undefined);
    await src.qmp.execute("blockdev-mirror", {
      "job-id": JOB,
      device: DISK_NODE,
      target: TARGET_NODE,
      sync: "full",
    });
    say(`mirroring the ${c.g.diskMib} MiB disk to the destination's NBD export`);
    await ready;
    mark("mirrorReady");
    say("mirror ready; memory migration in post-copy");

    // The memory: post-copy at once, paused before the switch-over to finish the mirror.
    await src.qmp.execute("migrate-set-capabilities", {
      capabilities: [
        { capability: "postcopy-ram", state: true },
        { capability: "pause-before-switchover", state: true },
      ],
    });
    await src.qmp.execute("migrate-set-parameters", {
      // As the page-server's driver, so both tools move memory alike.
      "max-bandwidth": PRESWITCH_BANDWIDTH,
      "max-postcopy-bandwidth": UNLIMITED,
    });
    await src.qmp.execute("migrate", { uri: `tcp:[${c.dstHost}]:${MIGRATION_PORT}` });
    mark("migrate");
    await src.qmp.execute("migrate-start-postcopy");
    await waitStatus(src, (s) => s === "pre-switchover", 60_000);
    mark("paused");
    const done = jobEvent(src, ["BLOCK_JOB_COMPLETED"], mirrorTimeoutMs);
    done.catch(() => undefined);
    await src.qmp.execute("block-job-cancel", { device: JOB });
    await done;
    mark("mirrorDone");
    await src.qmp.execute("blockdev-del", { "node-name": TARGET_NODE });
    await src.qmp.execute("migrate-continue", { state: "pre-switchover" });
    const final = await waitStatus(src, (s) => s === "completed", 300_000);
    mark("memoryDone");
    memoryBytes = final.bytesTransferred;
    await dst.qmp.execute("nbd-server-stop");
    mark("nbdStopped");
  } catch (err) {
    error = (err as Error).message;
    say(`QEMU direct failed: ${error}`);
  }
  const wanEnd = c.wan.read();

  // Verification, as runWholeVm's: the guest carries on at the destination with one counter.
  let firstAtB: number | undefined;
  if (!error) {
    const last = serial.beats.filter((h) => h.path !== dstLog).at(-1);
    const need = (last?.diskOk ?? 0) + 20;
    await serial
      .waitFor("the guest verifying its disk at B", (h) => h.path === dstLog && h.diskOk > need, 120_000)
      .catch(() => say("the guest did not carry on at B"));
    firstAtB = serial.beats.find((h) => h.path === dstLog)?.atMs;
  }
  const lastAtA = serial.beats.filter((h) => h.path !== dstLog).at(-1)?.atMs;
  const carriedOn = firstAtB !== undefined;
  const all = serial.beats;
  const memErrors = all.reduce((s, h) => s + h.memErrors, 0);
  const diskErrors = all.reduce((s, h) => s + h.diskErrors, 0);
  // The source stopped at the pause and never ran again: its image is the disk at the switch.
  const disk = compareImages(c.srcImage, c.dstImage);
  const rel = (k: string) => (at[k] === undefined ? null : Math.round(at[k] - t0));
  const timeline: TimelineEntry[] = [{ atMs: 0, event: "migration requested" }];
  const text: Record<string, string> = {
    prepared: "destination QEMU started and listening, its empty disk exported over NBD",
    mirrorReady: "mirror ready: the whole disk copied, writes mirrored",
    migrate: "memory migration started, post-copy requested",
    paused: "source paused before the switch-over",
    mirrorDone: "mirror completed (disk at the destination final)",
    resumed: "VM runs at B (switch-over)",
    memoryDone: "memory complete",
    nbdStopped: "destination's NBD server stopped",
  };
  for (const [k, t] of Object.entries(text))
    if (at[k] !== undefined) timeline.push({ atMs: rel(k)!, event: t });
  if (lastAtA) timeline.push({ atMs: Math.round(lastAtA - t0), event: "last guest heartbeat at A" });
  if (firstAtB) timeline.push({ atMs: Math.round(firstAtB - t0), event: "first guest heartbeat at B" });
  timeline.sort((x, y) => x.atMs - y.atMs);
  const ends = [rel("memoryDone"), rel("mirrorDone"), rel("nbdStopped")];
  return {
    switchover_ms: rel("resumed"),
    mirror_ready_ms: rel("mirrorReady"),
    disk_complete_ms: rel("mirrorDone"),
    memory_complete_ms: rel("memoryDone"),
    total_ms: ends.every((x) => x !== null) ? Math.max(...(ends as number[])) : null,
    wan_bytes: wanEnd - wan0,
    wan_bytes_at_switchover: wanAtSwitch === null ? null : wanAtSwitch - wan0,
    max_guest_gap_ms: Math.round(serial.maxGapSince(t0 - 2000)),
    memory_bytes_sent: memoryBytes,
    memory_verified: carriedOn && memErrors === 0 && serial.tracker.stats.counterBreaks === 0,
    disk_verified: carriedOn && diskErrors === 0 && disk.ok,
    disk,
    error,
    timeline,
  };
}

/** Polls the source's query-migrate until `ok(status)`; a failed migration is an error. */
async function waitStatus(q: SiteQemu, ok: (s: string) => boolean, timeoutMs: number) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const p = parseMigrationInfo(await q.qmp.execute("query-migrate"));
    if (ok(p.status)) return p;
    if (p.status === "failed" || p.status === "cancelled")
      throw new Error(`migration ${p.status}${p.errorDesc ? `: ${p.errorDesc}` : ""}`);
    if (Date.now() > end) throw new Error(`migration still ${p.status} after ${timeoutMs} ms`);
    await sleep(20);
  }
}
