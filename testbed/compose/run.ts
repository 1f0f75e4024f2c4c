// The compose test bed, end to end (`vmhop testbed compose`, `npm run testbed:compose`): builds
// the images (cached), brings docker-compose.yml up (docker-compose on podman's API socket), registers hosts a and b,
// creates the test guest on a with a disk from a's block-server, migrates it with its disk to
// b, checks it (the migration record done; the guest's heartbeat going on at b, memory and disk
// still verifying, its counter carried over; the control-plane seeing it run on b) and tears
// everything down, also on failure and on Ctrl-C.
import { appendFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "../ports.js";
import { SerialFollower } from "../sites/serial-follower.js";
import { workloadCmdline } from "../sites/whole-vm-run.js";
import { makeCpuGroup } from "./cpu-group.js";
import { startEngine } from "./engine.js";
import { defaultCacheDir, ensureImages } from "./images.js";
import { podman, repoRoot, run, stopRunning } from "./podman.js";

export interface ComposeBedOptions {
  cacheDir?: string;
  say?: (line: string) => void;
}

export interface ComposeBedResult {
  migrationId: string;
  state: string;
  /** The migration's own record, as `vmhop control migrate --json` printed it. */
  record: Record<string, unknown>;
  heartbeats: { atA: number; atB: number; counterBreaks: number; errors: string[] };
  /** Wall-clock time of each stage, ms. */
  timings: { images: number; up: number; guest: number; migrate: number; down: number; total: number };
  log: string;
}

const VM = "vm1";
const GUEST_DIR = "/opt/vmhop/deploy/guest/out";
const HOSTS = [
  { id: "a", page: "page-a:7402", block: "block-a:10810", nbd: "block-a:10809", site: "a" },
  { id: "b", page: "page-b:7402", block: "block-b:10810", nbd: "block-b:10809", site: "b" },
];

/** The vmhop CLI on this machine, against the compose control-plane's published port. */
function control(server: string, args: string[], log: string, allowFail = false) {
  return run(
    process.execPath,
    [join(repoRoot, "bin/vmhop.js"), "control", ...args, "--server", server, "--json"],
    {
      log,
      allowFail,
      env: process.env,
    },
  );
}

/** Retries `fn` until it succeeds or `ms` passed (services come up in any order). */
async function retry<T>(what: string, ms: number, fn: () => Promise<T>): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > end) throw new Error(`${what}: not within ${ms / 1000} s: ${(err as Error).message}`);
      await sleep(1000);
    }
  }
}

export async function runComposeBed(o: ComposeBedOptions = {}): Promise<ComposeBedResult> {
  const say = o.say ?? (() => {});
  const cacheDir = o.cacheDir ?? defaultCacheDir;
  const t0 = Date.now();
  const lap = (() => {
    let last = t0;
    return () => {
      const now = Date.now();
      const d = now - last;
      last = now;
      return d;
    };
  })();
  mkdirSync(join(cacheDir, "logs"), { recursive: true });
  const log = join(cacheDir, "logs", `compose-${new Date().toISOString().replace(/[:.]/g, "-")}.log`);
  say(`log: ${log}`);
  await ensureImages({ cacheDir, log, say });
  const images = lap();

  const project = `vmhop-tb-${process.pid}`;
  const port = await freePort();
  const server = `127.0.0.1:${port}`;
  const cpu = makeCpuGroup(project, 11);
  if (cpu.problem) say(`${cpu.problem}; the containers share podman's group`);
  const engine = await startEngine({
    project,
    log,
    env: { VMHOP_CONTROL_PORT: String(port), VMHOP_CGROUP_PARENT: cpu.problem ? "" : cpu.name },
  });

  let downDone: Promise<unknown> | undefined;
  const down = () => {
    // Containers, the project's network and its volumes; then podman's API service.
    downDone ??= engine
      .down()
      .finally(() => engine.close())
      .finally(() => cpu.remove());
    return downDone;
  };
  const onSignal = (sig: NodeJS.Signals) => {
    say(`${sig}: tearing the bed down`);
    stopRunning();
    void down().finally(() => process.exit(sig === "SIGINT" ? 130 : 143));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const serial = new SerialFollower(50);
  const timings = { images, up: 0, guest: 0, migrate: 0, down: 0, total: 0 };
  try {
    say(`docker-compose up on podman (project ${project}, control-plane on ${server})`);
    await engine.compose(["up", "-d", "--no-build"]);
    // Eleven containers start Node at once: on two busy cores that can take minutes.
    await retry("the control-plane answering", 360_000, () => control(server, ["hosts"], log));
    for (const h of HOSTS)
      await control(
        server,
        ["register-host", h.id, h.page, "--site", h.site, "--block-server", h.block, "--block-nbd", h.nbd],
        log,
      );
    timings.up = lap();
    say("hosts a and b registered");

    const cmdline = workloadCmdline({ workloadMemMib: 64, dirtyRateMib: 8, workloadDiskMib: 16 });
    await retry("create-vm on a (its page-server and block-server up)", 120_000, () =>
      control(
        server,
        [
          "create-vm",
          VM,
          "a",
          "--kernel",
          `${GUEST_DIR}/vmlinux`,
          "--initrd",
          `${GUEST_DIR}/initramfs.cpio`,
          "--cmdline",
          cmdline,
          "--memory-mib",
          "256",
          "--disk-size",
          "64M",
        ],
        log,
      ),
    );
    const runDir = async (host: string) =>
      (
        await podman(["volume", "inspect", "--format", "{{.Mountpoint}}", `${project}_run-${host}`], { log })
      ).out.trim();
    const [logA, logB] = [
      join(await runDir("a"), VM, "serial.log"),
      join(await runDir("b"), VM, "serial.log"),
    ];
    serial.follow(logA, true);
    await serial.waitFor("the guest at a verifying its disk", (h) => h.diskOk > 0, 240_000);
    timings.guest = lap();
    say(`${VM} runs on a: memory and disk verifying (serial ${logA})`);

    serial.follow(logB, true);
    const m = await control(server, ["migrate", VM, "b", "--storage", "lazy"], log, true);
    const record = JSON.parse(m.out.trim() || "{}") as Record<string, unknown>;
    const migrationId = String(record.migrationId ?? "");
    const state = String(record.state ?? "");
    if (m.code !== 0 || state !== "done")
      throw new Error(
        `migration ${migrationId || "?"} ended ${state || `with exit ${m.code}`}: ${m.err.trim()}`,
      );
    say(`migration ${migrationId}: done`);
    const lastAtA = serial.beats.filter((h) => h.path === logA).at(-1)?.counter ?? 0;
    await serial.waitFor(
      "the guest going on at b",
      (h) => h.path === logB && h.counter >= lastAtA + 3 && h.verifyOk > 0 && h.diskOk > 0,
      120_000,
    );
    const vms = JSON.parse((await control(server, ["vms"], log)).out) as {
      hostId: string;
      vm?: { spec?: { vmId: string }; state?: number | string };
    }[];
    const at = vms.find((v) => v.vm?.spec?.vmId === VM);
    if (at?.hostId !== "b")
      throw new Error(`the control-plane has ${VM} on ${at?.hostId ?? "no host"}, not b`);
    timings.migrate = lap();
    serial.stop();
    const beatsB = serial.beats.filter((h) => h.path === logB);
    const bad = beatsB.find((h) => h.memErrors > 0 || h.diskErrors > 0);
    if (bad || serial.errors.length > 0)
      throw new Error(`the guest reports errors at b: ${serial.errors.join("; ") || JSON.stringify(bad)}`);
    say(
      `${VM} runs on b: ${beatsB.length} heartbeats there, counter from ${beatsB[0]?.counter} (last at a ${lastAtA})`,
    );
    return {
      migrationId,
      state,
      record,
      heartbeats: {
        atA: serial.beats.length - beatsB.length,
        atB: beatsB.length,
        counterBreaks: serial.tracker.stats.counterBreaks,
        errors: serial.errors,
      },
      timings,
      log,
    };
  } catch (err) {
    // Which containers ran and how each ended, and the last log lines of those that stopped.
    const ps = await engine.compose(["ps"], { allowFail: true });
    const logs = await engine.compose(["logs", "--no-color", "--tail", "20"], { allowFail: true });
    appendFileSync(log, logs.out);
    throw new Error(`${(err as Error).message}\ncontainers:\n${ps.out.trim()}\n(log: ${log})`);
  } finally {
    serial.stop();
    lap();
    say("docker-compose down");
    await down();
    timings.down = lap();
    timings.total = Date.now() - t0;
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
