// `vmhop testbed relay …`: run the WAN link emulator from a shell or a script. Prints one
// ready line on stdout (the bound address), then relays until SIGINT/SIGTERM.
// `vmhop testbed compose`: the compose test bed end to end (testbed/compose/run.ts).

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { CliError } from "../services/cli/errors.js";
import { onShutdown } from "../services/common/lifecycle.js";
import { createLogger } from "../services/common/log.js";
import { defaultCacheDir, ensureImages } from "./compose/images.js";
import { runComposeBed } from "./compose/run.js";
import { startRelay } from "./relay-tcp.js";
import { startUdpRelay } from "./relay-udp.js";

// node:util parseArgs directly: the relay is a test-bed tool with no environment config.
const relaySpecs = {
  listen: {
    type: "string",
    default: "127.0.0.1:0",
    describe: "accept on HOST:PORT or unix:PATH (UDP: HOST:PORT)",
  },
  to: { type: "string", describe: "relay to HOST:PORT or unix:PATH (required)" },
  "delay-ms": { type: "number", default: 0, describe: "one-way delay added each way, ms" },
  "rate-mbit": { type: "number", default: 0, describe: "rate cap each way, Mbit/s (0 = unlimited)" },
  "jitter-ms": { type: "number", default: 0, describe: "extra random delay 0..N ms (order kept for TCP)" },
  loss: { type: "number", default: 0, describe: "UDP only: probability 0..1 that a datagram is lost" },
  peer: { type: "string", describe: "UDP only: side A's HOST:PORT (default: learn the first sender)" },
  udp: { type: "boolean", default: false, describe: "relay UDP datagrams instead of TCP streams" },
  help: { type: "boolean", short: "h", describe: "show this help" },
} satisfies Record<
  string,
  { type: "string" | "number" | "boolean"; describe: string; default?: unknown; short?: string }
>;

type Spec = (typeof relaySpecs)[keyof typeof relaySpecs];

function helpText(head: string): string {
  const rows = Object.entries(relaySpecs).map(([name, s]: [string, Spec]) => {
    const flag = `--${name}${s.type === "boolean" ? "" : " VALUE"}`;
    const dflt = "default" in s && s.default !== undefined ? ` (default ${JSON.stringify(s.default)})` : "";
    return `  ${flag.padEnd(20)} ${s.describe}${dflt}`;
  });
  return `${head}\n\noptions:\n${rows.join("\n")}`;
}

function parseRelayArgs(argv: string[]) {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {};
  for (const [name, s] of Object.entries(relaySpecs) as [string, Spec][])
    options[name] =
      "short" in s
        ? { type: s.type === "boolean" ? "boolean" : "string", short: s.short }
        : { type: s.type === "boolean" ? "boolean" : "string" };
  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args: argv, options, allowPositionals: true, strict: true }) as {
      values: Record<string, string | boolean | undefined>;
      positionals: string[];
    });
  } catch (err) {
    throw new CliError(`testbed relay: ${(err as Error).message}`);
  }
  if (positionals.length > 0) throw new CliError(`testbed relay: unexpected argument '${positionals[0]}'`);
  const num = (name: "delay-ms" | "rate-mbit" | "jitter-ms" | "loss"): number => {
    const v = values[name];
    if (v === undefined) return relaySpecs[name].default;
    const n = Number(v);
    if (typeof v !== "string" || v.trim() === "" || !Number.isFinite(n) || n < 0)
      throw new CliError(`testbed relay: --${name}: expected a number >= 0, got '${v}'`);
    return n;
  };
  return {
    help: values.help === true,
    listen: (values.listen as string | undefined) ?? relaySpecs.listen.default,
    to: values.to as string | undefined,
    peer: values.peer as string | undefined,
    udp: values.udp === true,
    delayMs: num("delay-ms"),
    rateMbit: num("rate-mbit"),
    jitterMs: num("jitter-ms"),
    loss: num("loss"),
  };
}

const usage =
  "usage: vmhop testbed relay --to HOST:PORT [--listen HOST:PORT] [--delay-ms N] [--rate-mbit N] [--udp]";

export async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(
      `usage: vmhop testbed <command>\n\ncommands:\n  relay      WAN link emulator: delay + rate cap, TCP or UDP\n  compose    docker-compose.yml under podman: two hosts, a guest migrated with its disk, torn down\n\n${helpText(usage)}`,
    );
    return cmd ? 0 : 2;
  }
  if (cmd === "compose") return compose(rest);
  if (cmd !== "relay") throw new CliError(`testbed: unknown command '${cmd}' (try: relay, compose)`);
  return relay(rest);
}

async function relay(argv: string[]): Promise<number> {
  const cfg = parseRelayArgs(argv);
  if (cfg.help) {
    console.log(helpText(usage));
    return 0;
  }
  if (!cfg.to) throw new CliError("testbed relay: --to HOST:PORT is required");
  if (!cfg.udp && (cfg.loss || cfg.peer)) throw new CliError("testbed relay: --loss and --peer need --udp");
  const log = createLogger({ svc: "testbed-relay" });
  const common = { delayMs: cfg.delayMs, rateBitsPerSecond: cfg.rateMbit * 1e6, jitterMs: cfg.jitterMs, log };
  let address: string;
  let close: () => Promise<void>;
  try {
    if (cfg.udp) {
      const r = await startUdpRelay({
        ...common,
        listen: cfg.listen,
        target: cfg.to,
        peerA: cfg.peer,
        loss: cfg.loss,
      });
      address = `${r.address} (target side ${r.targetSideAddress})`;
      close = r.close;
    } else {
      const r = await startRelay({ ...common, listen: cfg.listen, target: cfg.to });
      address = r.address;
      close = r.close;
    }
  } catch (err) {
    throw new CliError(`testbed relay: ${(err as Error).message}`);
  }
  const rate = cfg.rateMbit > 0 ? `${cfg.rateMbit} Mbit/s` : "unlimited";
  console.log(
    `relay ready: ${cfg.udp ? "udp" : "tcp"} ${address} -> ${cfg.to}, delay ${cfg.delayMs} ms each way, rate ${rate}`,
  );
  onShutdown(log, [{ name: "relay", close }]);
  await new Promise(() => {});
  return 0;
}

const composeUsage =
  "usage: vmhop testbed compose [--cache-dir DIR]   (as root, with podman, podman-compose, mmdebstrap)";

async function compose(argv: string[]): Promise<number> {
  let values: { "cache-dir"?: string; "images-only"?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        "cache-dir": { type: "string" },
        "images-only": { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (err) {
    throw new CliError(`testbed compose: ${(err as Error).message}\n${composeUsage}`);
  }
  if (values.help) {
    console.log(composeUsage);
    return 0;
  }
  const say = (line: string) => console.error(`[compose] ${line}`);
  if (values["images-only"]) {
    const cacheDir = values["cache-dir"] ?? defaultCacheDir;
    mkdirSync(join(cacheDir, "logs"), { recursive: true });
    await ensureImages({ cacheDir, log: join(cacheDir, "logs", "images.log"), say });
    say(`images ready (log: ${join(cacheDir, "logs", "images.log")})`);
    return 0;
  }
  const r = await runComposeBed({ cacheDir: values["cache-dir"], say });
  const t = Object.entries(r.timings)
    .map(([k, ms]) => `${k} ${(ms / 1000).toFixed(1)} s`)
    .join(", ");
  say(`ok: ${r.migrationId} done; guest heartbeats ${r.heartbeats.atA} at a, ${r.heartbeats.atB} at b; ${t}`);
  console.log(
    JSON.stringify({ ok: true, migrationId: r.migrationId, heartbeats: r.heartbeats, timings: r.timings }),
  );
  return 0;
}
