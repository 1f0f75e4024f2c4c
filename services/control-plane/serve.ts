// `vmhop control serve`: the ControlPlaneService over gRPC, registries and migrations in the
// Store. On start it resumes the migrations a previous control-plane left unfinished.

import { hostname } from "node:os";
import { serveUntilSignal } from "../cli/serve-until-signal.js";
import { type Config, helpText, type OptionSpecs } from "../common/config.js";
import { startGrpcServer } from "../common/grpc/server.js";
import type { Closer } from "../common/lifecycle.js";
import { createLogger } from "../common/log.js";
import { DEFAULT_METRICS, metricsOption, serveMetrics } from "../common/metrics/flag.js";
import { openStore } from "../common/store/index.js";
import { Credentials } from "../power/credentials.js";
import { DEFAULT_CONTROL_GRPC } from "./client.js";
import { ControlPlane } from "./control-plane.js";
import { controlPlaneService } from "./grpc.js";
import { Replica } from "./replica.js";

export const serveSpecs = {
  grpc: {
    type: "string",
    default: DEFAULT_CONTROL_GRPC,
    describe: "gRPC listen address HOST:PORT",
    // Not VMHOP_GRPC: other services on the same host read that one.
    env: "VMHOP_CONTROL_GRPC",
  },
  store: {
    type: "string",
    describe: "redis://HOST:PORT for durable state (default: embedded, lost when the process ends)",
  },
  "disk-copy-rate-mib": {
    type: "number",
    // About 70 Mbit/s: a small share of a WAN link, so the post-copy pages the VM waits on
    // keep the rest (50 would take most of a 450 Mbit/s link).
    default: 8,
    describe:
      "LAZY storage: the disk's background copy cap in MiB/s while memory still moves (post-copy pages keep priority on the link; 0 = none); lifted once memory is complete",
  },
  "disk-copy-rate-mib-after": {
    type: "number",
    default: 0,
    describe: "LAZY storage: the disk's background copy cap in MiB/s once memory is complete (0 = none)",
  },
  netreach: {
    type: "string",
    describe:
      "the netreach anchor's gRPC address HOST:PORT: VMs with home addresses keep them across sites (absent: no address mobility)",
  },
  "allow-unsafe-precopy": {
    type: "boolean",
    describe:
      "run an explicit pre-copy or hybrid migration even where it corrupts guests (QEMU < 8.0 under TCG; refused otherwise): only for tests that roll it back before the switch-over",
  },
  "power-credentials": {
    type: "string",
    describe:
      'power drivers\' passwords: a JSON file {"<host_id>"|"*": {"password": "…"}} (else VMHOP_IPMI_PASSWORD, VMHOP_REDFISH_PASSWORD, VMHOP_COMMAND_PASSWORD)',
    env: "VMHOP_POWER_CREDENTIALS",
  },
  "wake-timeout-s": {
    type: "number",
    default: 300,
    describe:
      "how long a woken host has to come up (its driver says on, its page-server answers) before it is marked failed",
  },
  "power-off-timeout-s": {
    type: "number",
    default: 300,
    describe: "how long a host has to report off after a shutdown request",
  },
  metrics: metricsOption(DEFAULT_METRICS["control-plane"]),
  "replica-id": {
    type: "string",
    describe:
      "this replica's name among the control-plane replicas on one store (default HOSTNAME-PID); the one holding the leader lease drives the migrations",
  },
  "lease-ttl-ms": {
    type: "number",
    default: 5000,
    describe: "the leader lease's TTL: how soon another replica takes over from a leader that died",
  },
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

export async function serve(o: Config<typeof serveSpecs>): Promise<number> {
  if (o.help) {
    console.log(helpText("usage: vmhop control serve [options]", serveSpecs));
    return 0;
  }
  const log = createLogger({ svc: "control-plane" });
  const closers: Closer[] = [];
  return serveUntilSignal(log, closers, async () => {
    // Read before anything starts: a bad credentials file stops the start with its reason.
    const credentials = Credentials.load(o["power-credentials"]);
    const metrics = await serveMetrics(o.metrics, DEFAULT_METRICS["control-plane"], log, closers);
    const store = await openStore(o.store);
    closers.push({ name: "store", close: () => store.close() });
    const cp = new ControlPlane(store, {
      log,
      netreach: o.netreach || undefined,
      allowUnsafePrecopy: o["allow-unsafe-precopy"] ?? false,
      power: {
        credentials,
        wakeTimeoutMs: (o["wake-timeout-s"] ?? 300) * 1000,
        offTimeoutMs: (o["power-off-timeout-s"] ?? 300) * 1000,
      },
      executor: {
        diskCopyRateWhileMemory: (o["disk-copy-rate-mib"] ?? 0) * 2 ** 20,
        diskCopyRateAfterMemory: (o["disk-copy-rate-mib-after"] ?? 0) * 2 ** 20,
      },
    });
    // Closed before the store: running migrations stay as recorded, for the next start.
    closers.push({ name: "control-plane (migrations resume on restart)", close: async () => cp.close() });
    const replica = new Replica(cp, store, {
      id: o["replica-id"] || `${hostname()}-${process.pid}`,
      leaseTtlMs: o["lease-ttl-ms"],
      log,
    });
    // Released first on a stop: another replica takes over at once.
    closers.push({ name: "leader lease", close: () => replica.stop() });
    const g = await startGrpcServer({
      serviceName: "control-plane",
      listen: o.grpc!,
      services: [controlPlaneService(cp, log)],
      log,
    });
    closers.push({ name: "grpc", close: () => g.shutdown() });
    await replica.start();
    // One machine-readable ready line on stdout: scripts wait for it.
    console.log(
      JSON.stringify({
        ready: true,
        grpc: g.address,
        store: store.kind,
        netreach: o.netreach ?? "",
        replica: replica.opts.id,
        leader: replica.generation !== undefined,
        generation: replica.generation ?? 0,
        resumed: replica.resumed,
        metrics,
      }),
    );
  });
}
