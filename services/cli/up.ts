// `vmhop up`: the whole mesh on this machine, one child process per service (as on
// separate hosts), sharing one store. Prints where each service listens and keeps the services
// running (supervisor.ts: a crashed one is restarted with back-off, the others, the data plane
// among them, keep running); SIGINT/SIGTERM stops them all.
import { join } from "node:path";
import { ConfigError, helpText, type OptionSpecs, parseConfig } from "../common/config.js";
import { DEFAULT_METRICS } from "../common/metrics/flag.js";
import { CliError } from "./errors.js";
import { type Supervised, Supervisor } from "./supervisor.js";

const specs = {
  store: { type: "string", describe: "redis://HOST:PORT, or empty for each service's embedded store" },
  "block-listen": { type: "string", default: "127.0.0.1:10809", describe: "block-server NBD address" },
  "block-grpc": { type: "string", default: "127.0.0.1:10810", describe: "block-server gRPC address" },
  "page-grpc": { type: "string", default: "127.0.0.1:7402", describe: "page-server gRPC address" },
  "page-channel": { type: "string", default: "127.0.0.1:7403", describe: "page-server migration channel" },
  "placement-grpc": { type: "string", default: "127.0.0.1:7404", describe: "placement gRPC address" },
  "control-grpc": { type: "string", default: "127.0.0.1:7405", describe: "control-plane gRPC address" },
  "block-metrics": {
    type: "string",
    default: DEFAULT_METRICS["block-server"],
    describe: "block-server /metrics, or 'none'",
  },
  "page-metrics": {
    type: "string",
    default: DEFAULT_METRICS["page-server"],
    describe: "page-server /metrics, or 'none'",
  },
  "placement-metrics": {
    type: "string",
    default: DEFAULT_METRICS.placement,
    describe: "placement /metrics, or 'none'",
  },
  "control-metrics": {
    type: "string",
    default: DEFAULT_METRICS["control-plane"],
    describe: "control-plane /metrics, or 'none'",
  },
  "run-dir": { type: "string", default: "/tmp/vmhop", describe: "folder for VM sockets and logs" },
  "disk-dir": {
    type: "string",
    describe:
      "where the block-server keeps the disks create-vm --disk-size makes and the copies of disks migrating in (default RUN_DIR/disks)",
  },
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

export async function run(argv: string[]): Promise<number> {
  let o: ReturnType<typeof parseConfig<typeof specs>>;
  try {
    o = parseConfig(specs, argv);
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(err.message);
    throw err;
  }
  if (o.help) {
    console.log(
      helpText(
        "usage: vmhop up [options]   (run every vmhop service on this machine)\n\n" +
          "A service that dies is logged and started again after 0.5 s, doubling to 30 s while it\n" +
          "keeps dying (back to 0.5 s once it stayed up a minute); the others keep running, so the\n" +
          "block-server, the page-server and their VMs never stop because another service died.\n" +
          "Ctrl-C (SIGINT) or SIGTERM stops them all.",
        specs,
      ),
    );
    return 0;
  }
  const bin = new URL("../../bin/vmhop.js", import.meta.url).pathname;
  const env = { ...process.env, ...(o.store ? { VMHOP_STORE: o.store } : {}) };
  const children: Omit<Supervised, "command">[] = [
    {
      name: "block-server",
      args: [
        "block",
        "serve",
        "--listen",
        o["block-listen"]!,
        "--grpc",
        o["block-grpc"]!,
        "--metrics",
        o["block-metrics"]!,
        // Without it a block-server whose exports are recorded in the store has nowhere to
        // make a new VM's disk or a migrating disk's local copy.
        "--cache-dir",
        o["disk-dir"] || join(o["run-dir"]!, "disks"),
      ],
    },
    {
      name: "page-server",
      args: [
        "page",
        "serve",
        "--listen",
        o["page-grpc"]!,
        "--channel-listen",
        o["page-channel"]!,
        "--run-dir",
        `${o["run-dir"]}/page`,
        "--metrics",
        o["page-metrics"]!,
      ],
    },
    {
      name: "control-plane",
      args: ["control", "serve", "--grpc", o["control-grpc"]!, "--metrics", o["control-metrics"]!],
    },
    // ApplyPlan migrates through the control-plane (hosts: `vmhop control register-host`).
    {
      name: "placement",
      args: [
        "placement",
        "serve",
        "--grpc",
        o["placement-grpc"]!,
        "--control-plane",
        o["control-grpc"]!,
        "--metrics",
        o["placement-metrics"]!,
      ],
    },
  ];
  const supervisor = new Supervisor(
    children.map((c) => ({ ...c, command: process.execPath, args: [bin, ...c.args] })),
    { env },
  );
  // The services have their own process groups (supervisor.ts): a closed terminal's SIGHUP
  // reaches only `vmhop up`, which stops them like Ctrl-C does.
  const stopped = new Promise<NodeJS.Signals>((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const)
      process.once(sig, () => resolve(sig === "SIGHUP" ? "SIGTERM" : sig));
  });
  supervisor.start();
  const metrics = (k: "block-metrics" | "page-metrics" | "placement-metrics" | "control-metrics") =>
    o[k] === "none" ? "" : ` metrics ${o[k]}`;
  console.log(
    `[up] block-server nbd://${o["block-listen"]} grpc ${o["block-grpc"]}${metrics("block-metrics")}; page-server grpc ${o["page-grpc"]}${metrics("page-metrics")}; placement grpc ${o["placement-grpc"]}${metrics("placement-metrics")}; control-plane grpc ${o["control-grpc"]}${metrics("control-metrics")}; Ctrl-C stops all`,
  );
  return supervisor.stop(await stopped);
}
