// Probe process, run inside a namespace by tests and benchmarks (`ip netns exec NS node
// --import tsx services/netreach/probe/main.ts MODE …`). Prints one JSON line on stdout when
// done; "ready" on stderr once it is sending or listening.
//   ping --to ADDR --count N --interval-ms MS [--wait-ms MS]
//   tcp-echo --port P
//   tcp-client --to ADDR --port P --count N --interval-ms MS
import { parseArgs } from "node:util";
import { ping } from "./pinger.js";
import { runTcpClient, startEchoServer } from "./tcp-probe.js";

const [mode, ...rest] = process.argv.slice(2);
const { values } = parseArgs({
  args: rest,
  options: {
    to: { type: "string" },
    count: { type: "string" },
    "interval-ms": { type: "string" },
    "wait-ms": { type: "string" },
    port: { type: "string" },
  },
});

function num(name: keyof typeof values, dflt?: number): number {
  const v = values[name];
  if (v === undefined) {
    if (dflt !== undefined) return dflt;
    throw new Error(`--${name} is required`);
  }
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`--${name} must be a number, got '${v}'`);
  return n;
}

function need(name: "to"): string {
  const v = values[name];
  if (!v) throw new Error(`--${name} is required`);
  return v;
}

const ready = () => process.stderr.write("ready\n");

try {
  if (mode === "ping") {
    const records = ping(
      {
        target: need("to"),
        count: num("count"),
        intervalMs: num("interval-ms"),
        waitMs: num("wait-ms", 1000),
      },
      ready,
    );
    process.stdout.write(`${JSON.stringify(records)}\n`);
  } else if (mode === "tcp-echo") {
    await startEchoServer(num("port"));
    ready();
  } else if (mode === "tcp-client") {
    const r = await runTcpClient({
      target: need("to"),
      port: num("port"),
      count: num("count"),
      intervalMs: num("interval-ms"),
      onConnected: ready,
    });
    process.stdout.write(`${JSON.stringify(r)}\n`);
  } else {
    throw new Error(`unknown probe mode '${mode}' (ping, tcp-echo, tcp-client)`);
  }
} catch (err) {
  process.stderr.write(`probe: ${(err as Error).message}\n`);
  process.exit(2);
}
