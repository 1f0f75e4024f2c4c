// Consolidation live (`vmhop demo --consolidate`): three test-bed hosts with power drivers
// (testbed/power.ts: off stops a host's services, on boots them after a delay), one small test
// guest on each under a CPU load, and the placement service planning from the load it measures
// itself (--collect-load-s: the control-plane's VMs and their QEMU's CPU time) and applying its
// plans through the control-plane. The load falls (`busy 0` on each guest's console): the
// service moves the VMs with their disks and switches the emptied hosts off. Then it rises
// (`busy 100`): an overloaded host sheds VMs to a host it wakes. Power is read all along from
// the same measurements and the hosts' power model; every guest's heartbeats and checks are
// followed across its moves.
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { guestArtefacts, guestCmdline } from "../../deploy/guest/build/paths.js";
import { PageServiceClient } from "../../gen/vmhop/v1/page.js";
import { PlacementServiceClient, type Plan, PlanState } from "../../gen/vmhop/v1/placement.js";
import { call } from "../../services/common/grpc/call.js";
import { type Readings, readLoad, WARMUP_ROUNDS } from "../../services/placement/service/collect.js";
import { HOST_TYPES } from "../../services/placement/sim/setup.js";
import { serveTestbedPower, type TestbedPower } from "../power.js";
import { type ServiceProcess, startService } from "../service-process.js";
import type { SitesBed } from "./bed.js";
import { SerialFollower } from "./serial-follower.js";
import { serialLogAt } from "./whole-vm-run.js";

export const HOST_MODEL = "G4";
const MODEL = HOST_TYPES.find((t) => t.name === HOST_MODEL)!;
const CAPACITY = MODEL.cores * MODEL.mipsPerCore;
/**
 * A guest at full load, in a core's worth of CPU. A 1-vCPU VM's demand must fit one core (the
 * policy places it nowhere else); three of them overload one host (3 × 0.83 > 2 cores); two do
 * not fit under the packing target of one (2 × 0.83 > 0.8 × 2), so at full load one per host.
 */
const BUSY_CORES = 0.83;
const COLLECT_S = 2;
const PLAN_S = 4;
/** Plans quiet this long: the consolidation (or the spreading) is over. */
const QUIET_MS = 3 * PLAN_S * 1000;
const BOOT_DELAY_MS = 3000;

export interface ConsolidateOptions {
  /** Guests (one per host to start with, round robin); default 3. */
  guests?: number;
  memoryMib?: number;
  diskMib?: number;
  say?: (line: string) => void;
  /** How long each phase may take to reach its outcome (default 8 min). */
  phaseMs?: number;
}

export interface PhasePower {
  phase: string;
  seconds: number;
  /** By the hosts' power model from the measured load, hosts switched off drawing 0 W. */
  mean_watts: number;
  wh: number;
  /** The same load had every VM stayed where it started, every host on. */
  mean_watts_unconsolidated: number;
  wh_unconsolidated: number;
  /** At the phase's end. */
  hosts_on: string[];
}

export interface GuestOutcome {
  vm_id: string;
  hosts: string[];
  max_stall_ms: number;
  heartbeats: number;
  counter_breaks: number;
  errors: string[];
  verified: boolean;
}

export interface ConsolidateResult {
  vcpu_mips: number;
  /** Each guest's measured utilisation at full load (CPU time per second of one vCPU). */
  busy_utilization: Record<string, number>;
  phases: PhasePower[];
  plans: {
    plan_id: string;
    state: string;
    moves: { vm_id: string; from: string; to: string; state: string; migration_id: string; error: string }[];
    hosts_to_sleep: string[];
    hosts_to_wake: string[];
    predicted_watts_before: number;
    predicted_watts_after: number;
  }[];
  migrations: number;
  hosts_switched_off: string[];
  hosts_woken: string[];
  guests: GuestOutcome[];
  ok: boolean;
  failures: string[];
}

const planStateName = (s: PlanState) => (PlanState[s] ?? String(s)).replace("PLAN_STATE_", "").toLowerCase();

interface PowerSample {
  atMs: number;
  watts: number;
  unconsolidated: number;
  on: string[];
}

/** Mean power and energy per phase, from samples (each holds until the next). */
class PowerMeter {
  private samples: PowerSample[] = [];
  private from = 0;
  readonly phases: PhasePower[] = [];
  private current = "";

  add(x: PowerSample): void {
    this.samples.push(x);
  }

  /** Closes the phase running and opens `name` (or none). */
  phase(name: string): void {
    const s = this.samples.slice(this.from);
    if (this.current && s.length > 1) {
      const wh = (k: "watts" | "unconsolidated") => {
        let e = 0;
        for (let i = 1; i < s.length; i++) e += (s[i - 1][k] * (s[i].atMs - s[i - 1].atMs)) / 3.6e6;
        return e;
      };
      const seconds = (s.at(-1)!.atMs - s[0].atMs) / 1000;
      const [a, u] = [wh("watts"), wh("unconsolidated")];
      this.phases.push({
        phase: this.current,
        seconds: Math.round(seconds),
        mean_watts: Math.round((a * 3600) / seconds),
        wh: Number(a.toFixed(3)),
        mean_watts_unconsolidated: Math.round((u * 3600) / seconds),
        wh_unconsolidated: Number(u.toFixed(3)),
        hosts_on: s.at(-1)!.on,
      });
    }
    this.current = name;
    this.from = Math.max(0, this.samples.length - 1);
  }
}

export async function runConsolidation(
  bed: SitesBed,
  o: ConsolidateOptions = {},
): Promise<ConsolidateResult> {
  const say = o.say ?? (() => {});
  const phaseMs = o.phaseMs ?? 480_000;
  const n = o.guests ?? 3;
  const guest = guestArtefacts();
  const cp = bed.client;
  const vmIds = Array.from({ length: n }, (_, i) => `vm${i + 1}`);
  const followers = new Map(vmIds.map((id) => [id, new SerialFollower()]));
  const failures: string[] = [];
  let placement: ServiceProcess | undefined;
  let stream: grpc.ClientReadableStream<unknown> | undefined;
  let pc: PlacementServiceClient | undefined;
  let meterTimer: NodeJS.Timeout | undefined;
  const plans = new Map<string, Plan>();
  try {
    for (const [i, id] of vmIds.entries()) {
      const site = bed.sites[i % bed.sites.length];
      await cp.createVm(
        {
          vmId: id,
          vcpus: 1,
          memoryMib: o.memoryMib ?? 96,
          diskNbdUrl: "",
          kernelPath: guest.kernel,
          initrdPath: guest.initrd,
          kernelCmdline: guestCmdline({
            memMib: 8,
            rateMib: 1,
            verifyMib: 4,
            disk: "/dev/vda",
            diskMib: 4,
            busy: 100,
          }),
          nicTap: "",
          nicMac: "",
        },
        site.hostId,
        undefined,
        { source: { $case: "sizeBytes", value: (o.diskMib ?? 32) * 2 ** 20 } },
      );
      // Its log at every site: wherever the plans send it, its heartbeats stay one stream.
      for (const k of bed.sites.map((s) => s.k)) followers.get(id)!.follow(serialLogAt(bed, k, id), true);
      say(`${id} runs at ${site.hostId} (${o.memoryMib ?? 96} MiB, disk ${o.diskMib ?? 32} MiB), load 100 %`);
    }
    await Promise.all(
      vmIds.map((id) =>
        followers.get(id)!.waitFor(`${id} writing and verifying its disk`, (h) => h.diskOk > 0, 300_000),
      ),
    );
    const t0 = Date.now();

    // The guests at full load, measured as the placement service will measure them: a vCPU's
    // worth in MIPS is set so that a guest at full load needs BUSY_CORES of a host's core (this
    // machine's two cores, shared with everything else, give each TCG vCPU what they give).
    const readings: Readings = new Map();
    await readLoad(cp, { vcpuMips: 1, hostModel: HOST_MODEL }, readings);
    await sleep(8000);
    const busy = await readLoad(cp, { vcpuMips: 1, hostModel: HOST_MODEL }, readings);
    const busyU = Object.fromEntries(busy.vms.map((v) => [v.vmId, Number(v.cpuUtilization.toFixed(3))]));
    const sum = busy.vms.reduce((s, v) => s + v.cpuUtilization, 0);
    if (busy.vms.length !== n || sum <= 0)
      throw new Error(`could not measure the guests' CPU use: ${JSON.stringify(busyU)}`);
    const vcpuMips = Math.round((BUSY_CORES * MODEL.mipsPerCore * busy.vms.length) / sum);
    say(
      `guests at full load use ${Object.entries(busyU)
        .map(([k, v]) => `${k} ${(v * 100).toFixed(0)} %`)
        .join(", ")} of a vCPU: a vCPU counts ${vcpuMips} MIPS (hosts ${HOST_MODEL}, ${CAPACITY} MIPS)`,
    );

    // Power all along, from the same measurements: a host that is off draws nothing.
    const meter = new PowerMeter();
    const meterLast: Readings = new Map();
    const startedOn = new Map(vmIds.map((id, i) => [id, bed.sites[i % bed.sites.length].hostId]));
    const sample = async () => {
      const r = await readLoad(cp, { vcpuMips, hostModel: HOST_MODEL }, meterLast).catch(() => undefined);
      if (!r || r.vms.length === 0) return;
      const watts = (demand: Map<string, number>, on: string[]) =>
        on.reduce((w, h) => w + MODEL.power.power(Math.min(1, (demand.get(h) ?? 0) / CAPACITY)), 0);
      const vms = r.vms;
      const sum = (host: (v: (typeof vms)[number]) => string) => {
        const m = new Map<string, number>();
        for (const v of vms) m.set(host(v), (m.get(host(v)) ?? 0) + v.cpuRequestedMips * v.cpuUtilization);
        return m;
      };
      const on = r.hosts.filter((h) => !h.asleep).map((h) => h.hostId);
      meter.add({
        atMs: Date.now(),
        watts: watts(
          sum((v) => v.hostId),
          on,
        ),
        unconsolidated: watts(
          sum((v) => startedOn.get(v.vmId) ?? v.hostId),
          r.hosts.map((h) => h.hostId),
        ),
        on,
      });
    };
    await sample();
    meterTimer = setInterval(() => void sample(), 2000);
    meter.phase("load high");

    placement = await startService({
      name: "placement",
      args: [
        "placement",
        "serve",
        "--grpc",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--control-plane",
        bed.controlAddress,
        "--collect-load-s",
        String(COLLECT_S),
        "--vcpu-mips",
        String(vcpuMips),
        "--host-model",
        HOST_MODEL,
        "--plan-interval-s",
        String(PLAN_S),
        "--auto-apply",
      ],
      readyMs: 120_000,
    });
    say(
      `placement service ready (${placement.grpc}): load every ${COLLECT_S} s, a plan every ${PLAN_S} s, applied`,
    );
    pc = new PlacementServiceClient(placement.grpc, grpc.credentials.createInsecure());
    const s = pc.watchDecisions({});
    stream = s;
    let lastMoveAt = Date.now();
    s.on("data", (d: { plan?: Plan }) => {
      const p = d.plan;
      if (!p) return;
      const before = plans.get(p.planId);
      plans.set(p.planId, p);
      if (p.moves.length || p.hostsToWake.length) lastMoveAt = Date.now();
      if (before?.state === p.state || !(p.moves.length || p.hostsToSleep.length || p.hostsToWake.length))
        return;
      const what = [
        ...p.moves.map((m) => `${m.vmId} ${m.fromHostId} → ${m.toHostId}${m.state ? ` (${m.state})` : ""}`),
        ...(p.hostsToSleep.length ? [`off: ${p.hostsToSleep.join(", ")}`] : []),
        ...(p.hostsToWake.length ? [`wake: ${p.hostsToWake.join(", ")}`] : []),
      ];
      say(`plan ${p.planId} ${planStateName(p.state)}: ${what.join("; ")}`);
    });
    s.on("error", () => {});

    /** Plans settled and none moving anything for QUIET_MS. */
    const quiet = () => settled(plans) && Date.now() - lastMoveAt > QUIET_MS;
    const asleepNow = async () => (await cp.listHosts()).filter((h) => h.asleep).map((h) => h.hostId);

    // Let the service see the full load for a while (each host well used: nothing to do).
    await sleep((WARMUP_ROUNDS * COLLECT_S + 2 * PLAN_S) * 1000);
    await until("the plans to settle at full load", async () => (settled(plans) ? true : undefined), phaseMs);

    // The load falls.
    // (At full load the service may already have packed VMs that fit together.)
    meter.phase("load falling, consolidating");
    await setLoad(bed, vmIds, 0, say);
    const off = await until(
      "a host switched off",
      async () => {
        const asleep = await asleepNow();
        return asleep.length > 0 && settled(plans) ? asleep : undefined;
      },
      phaseMs,
    ).catch((err: Error) => {
      failures.push(err.message);
      return [] as string[];
    });
    // The rest of the consolidation, if any (measurements are noisy: bounded).
    if (off.length > 0)
      await until("the plans to be quiet", async () => (quiet() ? true : undefined), 60_000).catch(() => {});
    off.splice(0, off.length, ...(await asleepNow()));
    let woken: string[] = [];
    if (off.length > 0) {
      say(`consolidated: ${off.join(", ")} switched off`);
      meter.phase("load low, consolidated");
      await sleep(10_000);

      // The load rises.
      meter.phase("load rising, waking and spreading");
      await setLoad(bed, vmIds, 100, say);
      woken = await until(
        "a host woken",
        async () => {
          const asleep = await asleepNow();
          const back = off.filter((id) => !asleep.includes(id));
          const wakePlans = [...plans.values()].filter((p) => p.hostsToWake.length > 0);
          return back.length > 0 && wakePlans.length > 0 && settled(plans) ? back : undefined;
        },
        phaseMs,
      ).catch((err: Error) => {
        failures.push(err.message);
        return [] as string[];
      });
      if (woken.length > 0) {
        say(`woken: ${woken.join(", ")}; the load spread again`);
        meter.phase("load high, spread again");
        await sleep(6000);
      }
    }
    meter.phase("");
    clearInterval(meterTimer);
    meterTimer = undefined;
    // No more plans; the migrations under way end (the control-plane drives them).
    stream.cancel();
    await placement.stop();
    await until(
      "the last migrations to end",
      async () => ((await cp.listVms()).every((v) => !v.migrationId) ? true : undefined),
      180_000,
    ).catch((err: Error) => failures.push(err.message));

    // Every guest carries on where it ended, its checks clean since the start.
    const guests: GuestOutcome[] = [];
    for (const id of vmIds) {
      const f = followers.get(id)!;
      const where = (await cp.getVm(id)).hostId;
      const k = bed.sites.find((x) => x.hostId === where)!.k;
      const path = serialLogAt(bed, k, id);
      const need = Math.max(0, ...f.beats.map((h) => h.diskOk)) + 10;
      const carriedOn = await f
        .waitFor(`${id} verifying its disk at ${where}`, (h) => h.path === path && h.diskOk > need, 120_000)
        .then(() => true)
        .catch(() => false);
      const hosts: string[] = [];
      for (const b of f.beats) {
        const h = bed.sites.find((x) => serialLogAt(bed, x.k, id) === b.path)!.hostId;
        if (hosts.at(-1) !== h) hosts.push(h);
      }
      const memErrors = f.beats.reduce((x, h) => x + h.memErrors, 0);
      const diskErrors = f.beats.reduce((x, h) => x + h.diskErrors, 0);
      const breaks = f.tracker.stats.counterBreaks;
      const verified =
        carriedOn && breaks === 0 && memErrors === 0 && diskErrors === 0 && f.errors.length === 0;
      if (!verified)
        failures.push(
          `${id} not verified: ${carriedOn ? "" : "did not carry on; "}${breaks} counter breaks, ${f.errors.length} ERR lines`,
        );
      guests.push({
        vm_id: id,
        hosts,
        max_stall_ms: Math.round(f.maxGapSince(t0)),
        heartbeats: f.beats.length,
        counter_breaks: breaks,
        errors: f.errors.slice(0, 5),
        verified,
      });
    }
    const planList = [...plans.values()]
      .filter((p) => p.moves.length || p.hostsToSleep.length || p.hostsToWake.length)
      .map((p) => ({
        plan_id: p.planId,
        state: planStateName(p.state),
        moves: p.moves.map((m) => ({
          vm_id: m.vmId,
          from: m.fromHostId,
          to: m.toHostId,
          state: m.state,
          migration_id: m.migrationId,
          error: m.error,
        })),
        hosts_to_sleep: p.hostsToSleep,
        hosts_to_wake: p.hostsToWake,
        predicted_watts_before: Math.round(p.predictedPowerWattsBefore),
        predicted_watts_after: Math.round(p.predictedPowerWattsAfter),
      }));
    const migrations = planList.reduce((x, p) => x + p.moves.filter((m) => m.state === "done").length, 0);
    if (migrations === 0) failures.push("no migration done");
    return {
      vcpu_mips: vcpuMips,
      busy_utilization: busyU,
      phases: meter.phases,
      plans: planList,
      migrations,
      hosts_switched_off: off,
      hosts_woken: woken,
      guests,
      ok: failures.length === 0,
      failures,
    };
  } finally {
    if (meterTimer) clearInterval(meterTimer);
    stream?.cancel();
    pc?.close();
    await placement?.stop();
    for (const f of followers.values()) f.stop();
  }
}

/** No plan with moves or hosts to switch is still under way. */
function settled(plans: Map<string, Plan>): boolean {
  return [...plans.values()].every(
    (p) => p.state !== PlanState.PLAN_STATE_APPLYING && p.state !== PlanState.PLAN_STATE_ACCEPTED,
  );
}

async function until<T>(what: string, check: () => Promise<T | undefined>, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`no ${what} within ${ms / 1000} s`);
    await sleep(1000);
  }
}

/** `busy P` on each guest's console, through the page-server where it runs now (retried while it moves). */
async function setLoad(
  bed: SitesBed,
  vmIds: string[],
  busy: number,
  say: (l: string) => void,
): Promise<void> {
  for (const id of vmIds) {
    await until(
      `${id} taking the load ${busy} %`,
      async () => {
        const host = (await bed.client.getVm(id)).hostId;
        const site = bed.sites.find((s) => s.hostId === host)!;
        const c = new PageServiceClient(site.pageAddress, grpc.credentials.createInsecure());
        try {
          await call(c, "writeConsole", { vmId: id, data: Buffer.from(`busy ${busy}\n`) });
          return true;
        } finally {
          c.close();
        }
      },
      60_000,
    );
  }
  say(`load ${busy === 0 ? "falls" : "rises"}: \`busy ${busy}\` on every guest's console`);
}

/** One power socket per host (testbed/power.ts): off stops its services, on boots them after a delay. */
export async function servePower(bed: () => SitesBed, dir: string, hosts: number): Promise<TestbedPower[]> {
  const out: TestbedPower[] = [];
  for (let k = 1; k <= hosts; k++)
    out.push(
      await serveTestbedPower(
        join(dir, `h${k}-power.sock`),
        { off: () => bed().powerOffSite(k), on: () => bed().powerOnSite(k) },
        { bootDelayMs: BOOT_DELAY_MS },
      ),
    );
  return out;
}
