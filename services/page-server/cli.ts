// `vmhop page serve`: the page-server of this host (gRPC PageService + migration channel).
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CliError } from "../cli/errors.js";
import { checkAdvertise } from "../common/advertise.js";
import { helpText, type OptionSpecs, parseConfig } from "../common/config.js";
import { startGrpcServer } from "../common/grpc/server.js";
import { type Closer, onShutdown } from "../common/lifecycle.js";
import { createLogger } from "../common/log.js";
import { DEFAULT_METRICS, metricsOption, serveMetrics } from "../common/metrics/flag.js";
import type { Compression } from "./channel/compress-policy.js";
import { splitHostPort } from "./channel/outbound.js";
import {
  type ChannelPathChoice,
  checkPathRequest,
  parseChannelPath,
  parseCompression,
} from "./channel/path-policy.js";
import { pageService } from "./grpc/service.js";
import { PageHost } from "./host.js";
import { bindPageMetrics } from "./metrics.js";

const options = {
  listen: {
    type: "string",
    default: "127.0.0.1:7402",
    describe: "gRPC address (HOST:PORT, PORT or unix:PATH)",
  },
  "channel-listen": {
    type: "string",
    default: "127.0.0.1:0",
    describe: "raw TCP migration channel address (HOST:PORT; port 0 = any)",
  },
  "channel-advertise": {
    type: "string",
    describe:
      "the channel address sources dial (HOST:PORT, or HOST for the bound port); default: the bound " +
      "address, which must then not be 0.0.0.0 or ::",
  },
  "run-dir": {
    type: "string",
    default: join(tmpdir(), "vmhop-page"),
    describe: "folder for QEMU sockets, serial logs and QEMU logs",
  },
  "channel-path": {
    type: "string",
    default: "auto",
    describe:
      "default path of the migration stream: auto (measure the channel's round trip: below 2 ms hand the " +
      "TCP connection to QEMU, else relay with the urgent lane and compression auto), handoff or relay",
  },
  preempt: {
    type: "boolean",
    describe:
      "default for migrations whose request does not say: QEMU's postcopy-preempt lane (needs the relay; " +
      "VMHOP_PREEMPT=false turns it off). Unset: on whenever the stream is relayed",
  },
  compression: {
    type: "string",
    default: "auto",
    describe:
      "default compression of a relayed channel: off, on (needs the relay), auto (only on a slow link)",
  },
  "warm-max": {
    type: "string",
    default: "2",
    describe:
      "most warm incoming QEMUs kept (started with -incoming defer for the VM shapes the control-plane names " +
      "with WarmIncoming, so a migration here does not wait for QEMU's start); 0: none",
  },
  metrics: metricsOption(DEFAULT_METRICS["page-server"]),
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies OptionSpecs;

const usage = "usage: vmhop page serve [options]";

function parseWarmMax(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 64) throw new Error(`--warm-max ${JSON.stringify(v)}: a whole number 0-64`);
  return n;
}

export async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(helpText(usage, options));
    return cmd ? 0 : 2;
  }
  if (cmd !== "serve") throw new CliError(`unknown page command '${cmd}'\n\n${helpText(usage, options)}`);
  let cfg: {
    listen: string;
    "channel-listen": string;
    "channel-advertise": string | undefined;
    "run-dir": string;
    "channel-path": ChannelPathChoice;
    preempt: boolean | undefined;
    compression: Compression;
    metrics: string | undefined;
    "warm-max": number;
  };
  let channel: [string, number];
  try {
    const o = parseConfig(options, rest);
    if (o.help) {
      console.log(helpText(usage, options));
      return 0;
    }
    cfg = {
      listen: o.listen!,
      "channel-listen": o["channel-listen"]!,
      "channel-advertise": o["channel-advertise"],
      "run-dir": o["run-dir"]!,
      "channel-path": parseChannelPath(o["channel-path"]!),
      preempt: o.preempt,
      compression: parseCompression(o.compression!),
      metrics: o.metrics,
      "warm-max": parseWarmMax(o["warm-max"]!),
    };
    checkPathRequest({
      path: cfg["channel-path"],
      compression: cfg.compression,
      preempt: cfg.preempt,
      postcopy: true,
    });
    channel = splitHostPort(cfg["channel-listen"]);
    // Refused before anything starts (VMs adopted, ports bound); PageHost.open applies it.
    checkAdvertise(cfg["channel-listen"], cfg["channel-advertise"], "--channel-advertise");
  } catch (err) {
    throw new CliError(`${(err as Error).message}\n\n${helpText(usage, options)}`);
  }
  const log = createLogger({ svc: "page-server" });
  const closers: Closer[] = [];
  const metrics = await serveMetrics(cfg.metrics, DEFAULT_METRICS["page-server"], log, closers);
  const host = new PageHost({
    runRoot: cfg["run-dir"],
    channelHost: channel[0],
    channelPort: channel[1],
    channelAdvertise: cfg["channel-advertise"],
    channelPath: cfg["channel-path"],
    preempt: cfg.preempt,
    compression: cfg.compression,
    warmMax: cfg["warm-max"],
    log,
  });
  let grpc: Awaited<ReturnType<typeof startGrpcServer>>;
  try {
    await host.open();
    grpc = await startGrpcServer({
      serviceName: "page-server",
      listen: cfg.listen,
      services: [pageService(host)],
      log,
    });
  } catch (err) {
    // The metrics server would keep the process alive after the error.
    for (const c of closers) await c.close();
    throw err;
  }
  closers.push({ name: "metrics binding", close: bindPageMetrics(() => host.migrations()) });
  // One line on stdout for scripts and tests: where to reach this page-server.
  console.log(JSON.stringify({ grpc: grpc.address, channel: host.channelListenAddress, metrics }));
  onShutdown(log, [
    ...closers,
    // VMs outlive the page-server: a restart on the same --run-dir adopts them.
    { name: "page host (channel; VMs keep running)", close: () => host.close({ keepVms: true }) },
    { name: "grpc", close: () => grpc.shutdown() },
  ]);
  await new Promise(() => {}); // serve until a signal
  return 0;
}
