// `vmhop up`: the whole mesh on this machine, one child process per service (as on
// separate hosts), sharing one store. Prints where each service listens, forwards
// SIGINT/SIGTERM, and stops everything if one service dies.
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { ConfigError, helpText, type OptionSpecs, parseConfig } from "../common/config.js";
import { DEFAULT_METRICS } from "../common/metrics/flag.js";
import { CliError } from "./errors.js";

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
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

interface Child {
  name: string;
  args: string[];
  proc?: ChildProcess;
}

export async function run(argv: string[]): Promise<number> {
  let o: ReturnType<typeof parseConfig<typeof specs>>;
  try {
    o = parseConfig(specs, argv);
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(err.message);
    throw err;
  }
  if (o.help) {
    console.log(helpText("usage: vmhop up [options]   (run every vmhop service on this machine)", specs));
    return 0;
  }
  const bin = new URL("../../bin/vmhop.js", import.meta.url).pathname;
  const env = { ...process.env, ...(o.store ? { VMHOP_STORE: o.store } : {}) };
  const children: Child[] = [
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
  let stopping = false;
  const stopAll = (sig: NodeJS.Signals = "SIGTERM") => {
    stopping = true;
    for (const c of children) if (c.proc && c.proc.exitCode === null) c.proc.kill(sig);
  };
  const exits = children.map(
    (c) =>
      new Promise<number>((resolve) => {
        c.proc = spawn(process.execPath, [bin, ...c.args], { env, stdio: ["ignore", "pipe", "pipe"] });
        const prefix = (line: string) => `[${c.name}] ${line}`;
        createInterface({ input: c.proc.stdout! }).on("line", (l) => console.log(prefix(l)));
        createInterface({ input: c.proc.stderr! }).on("line", (l) => console.error(prefix(l)));
        c.proc.on("exit", (code, signal) => {
          if (!stopping) {
            console.error(`[up] ${c.name} exited (${signal ?? code}); stopping the mesh`);
            stopAll();
          }
          resolve(code ?? 1);
        });
      }),
  );
  process.on("SIGINT", () => stopAll("SIGINT"));
  process.on("SIGTERM", () => stopAll("SIGTERM"));
  const metrics = (k: "block-metrics" | "page-metrics" | "placement-metrics" | "control-metrics") =>
    o[k] === "none" ? "" : ` metrics ${o[k]}`;
  console.log(
    `[up] block-server nbd://${o["block-listen"]} grpc ${o["block-grpc"]}${metrics("block-metrics")}; page-server grpc ${o["page-grpc"]}${metrics("page-metrics")}; placement grpc ${o["placement-grpc"]}${metrics("placement-metrics")}; control-plane grpc ${o["control-grpc"]}${metrics("control-metrics")}; Ctrl-C stops all`,
  );
  const codes = await Promise.all(exits);
  return stopping && codes.every((c) => c === 0 || c === null) ? 0 : Math.max(...codes, 1);
}
