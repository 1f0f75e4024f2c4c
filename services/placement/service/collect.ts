// Load from the running system, for `placement serve --collect-load-s N`: every N seconds the
// control-plane's hosts (asleep or not) and VMs (host, size, and the CPU time their QEMU has
// used, which each page-server reads from /proc) become one load report, as a host agent's
// ReportLoad would. A VM's utilisation is the CPU time it used since the last reading over the
// time between, per vCPU; its size is vCPUs × `vcpuMips`. A VM whose QEMU changed since (it
// moved, or was restarted) has no interval to measure yet: it repeats its last sample once.
import { VmState } from "../../../gen/vmhop/v1/page.js";
import type { ReportLoadRequest } from "../../../gen/vmhop/v1/placement.js";
import type { Logger } from "../../common/log.js";
import type { Store } from "../../common/store/index.js";
import type { ControlClient } from "../../control-plane/client.js";
import { HOST_TYPES } from "../sim/setup.js";
import { recordLoad } from "./load.js";

export interface CollectOptions {
  intervalMs: number;
  /** MIPS one fully busy vCPU is worth. */
  vcpuMips: number;
  /** The power/capacity model of every host ("G4" or "G5"). */
  hostModel: string;
  ttlMs: number;
}

interface Reading {
  pid: number;
  cpuSeconds: number;
  atMs: number;
  utilization: number;
}

const LIVE = new Set([VmState.VM_STATE_RUNNING, VmState.VM_STATE_MIGRATING]);

/** The readings a collector keeps between rounds (per VM: its QEMU, CPU time, when, last utilisation). */
export type Readings = Map<string, Reading>;

/**
 * Reads the control-plane into a load report (hosts, and each VM measured over the interval
 * since `last`, which it updates); a VM read for the first time is left out (nothing measured yet).
 */
export async function readLoad(
  cp: ControlClient,
  o: Pick<CollectOptions, "vcpuMips" | "hostModel">,
  last: Readings,
  nowMs = Date.now(),
): Promise<ReportLoadRequest> {
  const [hosts, vms] = await Promise.all([cp.listHosts(), cp.listVms()]);
  const model = HOST_TYPES.find((t) => t.name === o.hostModel);
  if (!model) throw new Error(`unknown host model ${o.hostModel}`);
  const capacity = model.cores * model.mipsPerCore;
  const demand = new Map<string, number>();
  const report = [];
  for (const v of vms) {
    const vm = v.vm;
    if (!vm?.spec || !LIVE.has(vm.state) || !vm.qemuPid) continue;
    const id = vm.spec.vmId;
    const prev = last.get(id);
    const vcpus = Math.max(1, vm.spec.vcpus);
    let u: number | undefined;
    if (prev && prev.pid === vm.qemuPid && nowMs > prev.atMs)
      u = (vm.cpuSeconds - prev.cpuSeconds) / (((nowMs - prev.atMs) / 1000) * vcpus);
    else u = prev?.utilization; // a new QEMU: nothing measured over an interval yet
    last.set(id, { pid: vm.qemuPid, cpuSeconds: vm.cpuSeconds, atMs: nowMs, utilization: u ?? 0 });
    if (u === undefined) continue; // the first reading: the next one measures
    u = Math.min(1, Math.max(0, u));
    const mips = vcpus * o.vcpuMips;
    demand.set(v.hostId, (demand.get(v.hostId) ?? 0) + mips * u);
    report.push({
      vmId: id,
      hostId: v.hostId,
      cpuRequestedMips: mips,
      memoryMib: vm.spec.memoryMib,
      cpuUtilization: u,
      dirtyRateMibPerS: 0,
      migratingToHostId: "",
    });
  }
  for (const id of last.keys()) if (!vms.some((v) => v.vm?.spec?.vmId === id)) last.delete(id);
  return {
    hosts: hosts.map((h) => ({
      hostId: h.hostId,
      cpuCapacityMips: capacity,
      memoryMib: h.memoryMib,
      cpuUtilization: Math.min(1, (demand.get(h.hostId) ?? 0) / capacity),
      asleep: h.asleep,
      model: o.hostModel,
    })),
    vms: report,
    timeUnixMs: nowMs,
  };
}

/**
 * Planning on the first reading or two acts on noise (a forecast needs history): a service
 * that collects its load plans once this many rounds were recorded.
 */
export const WARMUP_ROUNDS = 5;

/**
 * Collects every interval, one round at a time; a failed round is logged and the next runs.
 * `warm` resolves once WARMUP_ROUNDS rounds were recorded.
 */
export function startLoadCollector(
  store: Store,
  cp: ControlClient,
  o: CollectOptions,
  log: Logger,
): { stop(): Promise<void>; warm: Promise<void> } {
  const last: Readings = new Map();
  let running: Promise<void> = Promise.resolve();
  let recorded = 0;
  let warmed!: () => void;
  const warm = new Promise<void>((resolve) => {
    warmed = resolve;
  });
  const round = async () => {
    try {
      const r = await readLoad(cp, o, last);
      await recordLoad(store, r, { ttlMs: o.ttlMs });
      if (++recorded === WARMUP_ROUNDS) warmed();
      log.debug("load collected", { vms: Object.fromEntries(r.vms.map((v) => [v.vmId, v.cpuUtilization])) });
    } catch (err) {
      log.warn("load collection failed", { err: (err as Error).message });
    }
  };
  running = running.then(round);
  const timer = setInterval(() => {
    running = running.then(round);
  }, o.intervalMs);
  return {
    warm,
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
