// Plays a trace day into a running PlacementService as host agents would: each round reports
// every host's and VM's load, asks for a plan and carries its moves out at once (standing in
// for the control-plane). Used by `vmhop placement replay` and the benchmark's service timing.
import * as grpc from "@grpc/grpc-js";
import { PlacementServiceClient } from "../../../gen/vmhop/v1/placement.js";
import { call } from "../../common/grpc/call.js";
import { MAX_MESSAGE_BYTES } from "../../common/grpc/server.js";
import { DEFAULT_HOSTS, hostTypeOf, vmTypeOf } from "../sim/setup.js";
import type { DayTraces } from "../traces/trace.js";

export interface ReplayResult {
  rounds: number;
  moves: number;
  /** ComputePlan round trip (Store scan, policy, store and publish), per round. */
  rpcMs: number[];
  /** The policy and predicted effect alone, as the service measured it. */
  computeMs: number[];
}

export async function replayDay(
  address: string,
  day: DayTraces,
  opts: { hosts?: number; rounds?: number; every?: number; policy?: string; costModel?: string } = {},
): Promise<ReplayResult> {
  const nHosts = opts.hosts ?? DEFAULT_HOSTS;
  const every = opts.every ?? 1;
  const samples = day.vms[0]?.samples.length ?? 0;
  const rounds = Math.min(opts.rounds ?? Number.POSITIVE_INFINITY, Math.floor(samples / every));
  const client = new PlacementServiceClient(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  });
  const hosts = Array.from({ length: nHosts }, (_, i) => hostTypeOf(i));
  const vms = day.vms.map((v, i) => ({
    name: v.name,
    type: vmTypeOf(i, day.vms.length),
    samples: v.samples,
  }));
  // Initial placement: first fit decreasing on each VM's full MIPS, as VMs would be started.
  const where = new Map<string, number>();
  const free = hosts.map((t) => t.cores * t.mipsPerCore);
  for (const v of [...vms].sort((a, b) => b.type.mips - a.type.mips)) {
    const h = free.findIndex((f) => f >= v.type.mips);
    if (h < 0) throw new Error(`replay: no host fits VM ${v.name} (${v.type.mips} MIPS)`);
    free[h] -= v.type.mips;
    where.set(v.name, h);
  }
  const out: ReplayResult = { rounds: 0, moves: 0, rpcMs: [], computeMs: [] };
  try {
    for (let r = 0; r < rounds; r++) {
      const k = r * every;
      const used = new Set(where.values());
      await call(client, "reportLoad", {
        hosts: hosts.map((t, i) => ({
          hostId: `h${i}`,
          model: t.name,
          cpuCapacityMips: 0,
          memoryMib: t.ramMb,
          cpuUtilization: 0,
          asleep: !used.has(i),
        })),
        vms: vms.map((v) => ({
          vmId: v.name,
          hostId: `h${where.get(v.name)}`,
          cpuRequestedMips: v.type.mips,
          memoryMib: v.type.ramMb,
          cpuUtilization: v.samples[k],
          dirtyRateMibPerS: 0,
          migratingToHostId: "",
        })),
        timeUnixMs: 0,
      });
      const t0 = performance.now();
      const res = await call(client, "computePlan", {
        policy: opts.policy ?? "",
        costModel: opts.costModel ?? "",
      });
      out.rpcMs.push(performance.now() - t0);
      const plan = res.plan!;
      out.computeMs.push(plan.computeMs);
      for (const m of plan.moves) where.set(m.vmId, Number(m.toHostId.slice(1)));
      out.moves += plan.moves.length;
      out.rounds++;
    }
  } finally {
    client.close();
  }
  return out;
}
