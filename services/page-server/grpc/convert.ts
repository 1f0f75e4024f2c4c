// Between the PageService messages and the page-server's own types. Pure; a bad value is a
// ServiceError of kind invalid.
import {
  ChannelCompression,
  ChannelPath,
  type FaultLatency,
  MigrationMode,
  MigrationPhase,
  type Vm as PbVm,
  type VmSpec as PbVmSpec,
  VmState as PbVmState,
  type StartMigrationRequest,
  type WatchMigrationResponse,
} from "../../../gen/vmhop/v1/page.js";
import { ServiceError } from "../../common/errors.js";
import type { Compression } from "../channel/compress-policy.js";
import type { ChannelPathChoice } from "../channel/path-policy.js";
import type { MigrationMode as Mode } from "../migration/driver.js";
import type { StartMigrationOptions } from "../migration/outgoing.js";
import type { Phase } from "../migration/phase.js";
import type { MigrationRecord } from "../migration/record.js";
import type { FaultFigures } from "../postcopy/observer.js";
import { cpuSeconds } from "../vm/cpu-time.js";
import type { VmSpec } from "../vm/spec.js";
import type { VmState } from "../vm/states.js";
import type { Vm } from "../vm/vm.js";

export function specFromProto(s: PbVmSpec | undefined): VmSpec {
  if (!s) throw new ServiceError("invalid", "spec is required");
  return {
    name: s.vmId,
    vcpus: s.vcpus,
    memoryMib: s.memoryMib,
    kernel: s.kernelPath,
    initrd: s.initrdPath || undefined,
    cmdline: s.kernelCmdline || undefined,
    disk: s.diskNbdUrl ? { nbd: s.diskNbdUrl } : undefined,
    nic: s.nicTap ? { tap: s.nicTap, mac: s.nicMac || undefined } : undefined,
  };
}

export function specToProto(s: VmSpec): PbVmSpec {
  return {
    vmId: s.name,
    vcpus: s.vcpus,
    memoryMib: s.memoryMib,
    diskNbdUrl: s.disk?.nbd ?? "",
    kernelPath: s.kernel,
    initrdPath: s.initrd ?? "",
    kernelCmdline: s.cmdline ?? "",
    nicTap: s.nic?.tap ?? "",
    nicMac: s.nic?.mac ?? "",
  };
}

const states: Record<VmState, PbVmState> = {
  defined: PbVmState.VM_STATE_DEFINED,
  starting: PbVmState.VM_STATE_DEFINED,
  running: PbVmState.VM_STATE_RUNNING,
  paused: PbVmState.VM_STATE_PAUSED,
  incoming: PbVmState.VM_STATE_INCOMING,
  postmigrate: PbVmState.VM_STATE_MIGRATING,
  stopping: PbVmState.VM_STATE_STOPPED,
  stopped: PbVmState.VM_STATE_STOPPED,
  crashed: PbVmState.VM_STATE_CRASHED,
};

export function vmToProto(vm: Vm, migrating = false): PbVm {
  const live = vm.state === "running" || vm.state === "paused";
  return {
    spec: specToProto(vm.spec),
    state: migrating && live ? PbVmState.VM_STATE_MIGRATING : states[vm.state],
    qemuPid: vm.pid ?? 0,
    serialLogPath: vm.paths.serialLog,
    lastError: vm.state === "crashed" ? (vm.endReason ?? "") : "",
    cpuSeconds: live ? cpuSeconds(vm.pid) : 0,
  };
}

export function modeFromProto(m: MigrationMode): Mode | "auto" {
  switch (m) {
    case MigrationMode.MIGRATION_MODE_AUTO:
      return "auto";
    case MigrationMode.MIGRATION_MODE_PRECOPY:
      return "precopy";
    case MigrationMode.MIGRATION_MODE_POSTCOPY:
      return "postcopy";
    case MigrationMode.MIGRATION_MODE_HYBRID:
      return "hybrid";
    default:
      throw new ServiceError(
        "invalid",
        `migration mode ${MigrationMode[m] ?? m} is not supported (precopy, postcopy, hybrid, auto)`,
      );
  }
}

/** UNSPECIFIED → undefined: the page-server's default. */
export function channelPathFromProto(p: ChannelPath): ChannelPathChoice | undefined {
  switch (p) {
    case ChannelPath.CHANNEL_PATH_UNSPECIFIED:
      return undefined;
    case ChannelPath.CHANNEL_PATH_AUTO:
      return "auto";
    case ChannelPath.CHANNEL_PATH_HANDOFF:
      return "handoff";
    case ChannelPath.CHANNEL_PATH_RELAY:
      return "relay";
    default:
      throw new ServiceError("invalid", `channel_path ${p} is not one of AUTO, HANDOFF, RELAY`);
  }
}

/** The path a channel took ("relay" or "handoff"). */
export function channelPathToProto(path: string): ChannelPath {
  return path === "handoff" ? ChannelPath.CHANNEL_PATH_HANDOFF : ChannelPath.CHANNEL_PATH_RELAY;
}

/** StartMigration's (and OpenMigrationChannel's) request; unset fields leave the host's defaults. */
export function startOptionsFromProto(req: StartMigrationRequest): StartMigrationOptions {
  return {
    vmId: req.vmId,
    migrationId: req.migrationId,
    channelAddress: req.channelAddress,
    mode: modeFromProto(req.mode),
    hybridRounds: req.precopyRounds,
    hybridSeconds: req.precopySeconds,
    maxBandwidth: req.maxBandwidthBytesPerSecond,
    // Unset leaves the host's defaults (path "auto": from the measured link).
    channelPath: channelPathFromProto(req.channelPath),
    compression: compressionFromProto(req.compression, req.compress),
    preempt: req.preempt || undefined,
    fencingToken: req.fencingToken,
  };
}

/** The compression enum, with the deprecated `compress` bool (true = ON when the enum is unset). */
export function compressionFromProto(c: ChannelCompression, compress: boolean): Compression | undefined {
  const byEnum: Record<number, Compression | undefined> = {
    [ChannelCompression.CHANNEL_COMPRESSION_UNSPECIFIED]: undefined,
    [ChannelCompression.CHANNEL_COMPRESSION_OFF]: "off",
    [ChannelCompression.CHANNEL_COMPRESSION_ON]: "on",
    [ChannelCompression.CHANNEL_COMPRESSION_AUTO]: "auto",
  };
  if (!(c in byEnum)) throw new ServiceError("invalid", `compression ${c} is not one of OFF, ON, AUTO`);
  const v = byEnum[c];
  if (!compress) return v;
  if (v !== undefined && v !== "on")
    throw new ServiceError(
      "invalid",
      `compress (deprecated) = true contradicts compression ${ChannelCompression[c]}`,
    );
  return "on";
}

const phases: Record<Phase, MigrationPhase> = {
  setup: MigrationPhase.MIGRATION_PHASE_SETUP,
  precopy: MigrationPhase.MIGRATION_PHASE_PRECOPY,
  switchover: MigrationPhase.MIGRATION_PHASE_SWITCHOVER,
  postcopy: MigrationPhase.MIGRATION_PHASE_POSTCOPY,
  completed: MigrationPhase.MIGRATION_PHASE_COMPLETED,
  failed: MigrationPhase.MIGRATION_PHASE_FAILED,
  cancelled: MigrationPhase.MIGRATION_PHASE_CANCELLED,
  paused: MigrationPhase.MIGRATION_PHASE_PAUSED,
};

export function migrationToProto(r: MigrationRecord): WatchMigrationResponse {
  const p = r.progress;
  return {
    migrationId: r.id,
    phase: phases[r.phase],
    // On the wire when the page-server channel carried it (compressed, if asked), else QEMU's count.
    bytesSent: r.role === "source" ? r.channelBytes.wireForward || (p?.bytesTransferred ?? 0) : 0,
    bytesRemaining: p?.bytesRemaining ?? 0,
    pagesRequestedOnFault: p?.postcopyRequests ?? 0,
    blocktimeMs: p?.postcopyBlocktimeMs ?? 0,
    downtimeMs: p?.downtimeMs ?? 0,
    error: r.error ?? "",
    bytesBeforeResume: r.bytesBeforeResume,
    resumedUnixMs: r.resumedAtMs,
    pagesSentAhead: r.pagesSentAhead ?? 0,
    faultLatency: r.channelPath === "relay" ? faultLatencyToProto(r.faultTiming?.figures()) : undefined,
    warmQemu: r.warmQemu,
    recoveries: r.recoveries,
  };
}

function faultLatencyToProto(f: FaultFigures | undefined): FaultLatency | undefined {
  if (!f) return undefined;
  return {
    timed: f.count,
    p50Ms: f.p50Ms,
    p99Ms: f.p99Ms,
    maxMs: f.maxMs,
    requested: f.requested,
    inFlight: f.inFlight,
    stopped: f.stopped ?? "",
  };
}
