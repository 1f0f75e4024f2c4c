// The block-server's /metrics as real processes serve it: qemu-io reads and writes through a
// target export and the counters move by exactly those bytes and requests; a proxy export of
// it fetches on demand (latency histogram, blocks local/total); removing the export removes its
// series; `--metrics none` serves nothing; a taken port is one clear error line.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import * as assert from "uvu/assert";
import { call } from "../../services/common/grpc/call.js";
import { DEFAULT_METRICS } from "../../services/common/metrics/flag.js";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { scrape } from "../helpers/metrics.js";
import { test } from "../helpers/uvu.js";
import { within } from "../helpers/wait.js";
import { blockClient, killAll, type Served, serve } from "./fixtures/serve-process.js";

const run = promisify(execFile);
const t = gate(test, ["qemu-io", "ss"], "block-server /metrics");
const dir = tempDir("vmhop-block-metrics-");
const MIB = 1 << 20;
const image = join(dir.path, "disk.img");
writeFileSync(image, randomBytes(4 * MIB)); // no holes: every read moves data
const started: Served[] = [];

t.after(async () => {
  for (const s of started) await s.stop().catch(() => undefined);
  killAll();
  dir.cleanup();
});

async function start(args: string[]) {
  const s = serve(args);
  started.push(s);
  return { s, ready: await within(s.ready, 60_000, "the block-server's ready line") };
}

const qemuIo = (url: string, ...cmds: string[]) =>
  run("qemu-io", ["-f", "raw", ...cmds.flatMap((c) => ["-c", c]), url]);

let source: { nbd: string; grpc: string; metrics: string };

t("NBD bytes and requests by export and command count what the client did", async () => {
  const { ready } = await start([
    "--target",
    image,
    "--listen",
    "127.0.0.1:0",
    "--grpc",
    "127.0.0.1:0",
    "--state-dir",
    "none",
    "--metrics",
    "127.0.0.1:0",
  ]);
  const r = ready as unknown as { nbd: string[]; grpc: string; metrics: string };
  assert.match(r.metrics, /^127\.0\.0\.1:\d+$/);
  source = { nbd: r.nbd[0], grpc: r.grpc, metrics: r.metrics };
  const before = await scrape(source.metrics);
  assert.is(before.value("vmhop_nbd_read_bytes_total", { export: "disk0" }), 0);
  assert.ok(before.declared.has("process_cpu_seconds_total"), "default process metrics");
  assert.ok(before.declared.has("vmhop_proxy_fetch_duration_seconds"));

  await qemuIo(`nbd://${source.nbd}/disk0`, "read 0 1M", "read 2M 64k", "write -P 0xab 1M 64k", "flush");
  const m = await scrape(source.metrics);
  const e = { export: "disk0" };
  assert.is(m.value("vmhop_nbd_read_bytes_total", e), MIB + 65536);
  assert.is(m.value("vmhop_nbd_written_bytes_total", e), 65536);
  assert.is(m.value("vmhop_nbd_requests_total", { ...e, command: "read" }), 2);
  assert.is(m.value("vmhop_nbd_requests_total", { ...e, command: "write" }), 1);
  assert.ok((m.value("vmhop_nbd_requests_total", { ...e, command: "flush" }) ?? 0) >= 1);
  assert.is(m.value("vmhop_nbd_request_errors_total", e), 0);
  assert.is(m.value("vmhop_export_blocks_local", e), m.value("vmhop_export_blocks_total", e));
  assert.is(m.all("vmhop_proxy_fetched_bytes_total").length, 0, "a target export fetches nothing");
});

t("a proxy export: on-demand fetch latency, blocks local/total; its series go with it", async () => {
  const { ready } = await start([
    "--proxy",
    `nbd://${source.nbd}/disk0`,
    "--cache",
    join(dir.path, "proxy.cache"),
    "--name",
    "lazy",
    "--block-size",
    "65536",
    "--listen",
    "127.0.0.1:0",
    "--grpc",
    "127.0.0.1:0",
    "--state-dir",
    "none",
    "--metrics",
    "127.0.0.1:0",
  ]);
  const r = ready as unknown as { nbd: string[]; grpc: string; metrics: string };
  const e = { export: "lazy" };
  const m0 = await scrape(r.metrics);
  assert.is(m0.value("vmhop_export_blocks_total", e), 64);
  assert.is(m0.value("vmhop_export_blocks_local", e), 0);

  await qemuIo(`nbd://${r.nbd[0]}/lazy`, "read 0 1M", "read 0 1M");
  const m = await scrape(r.metrics);
  assert.is(m.value("vmhop_nbd_read_bytes_total", e), 2 * MIB);
  assert.is(m.value("vmhop_export_blocks_local", e), 16, "1 MiB in 64 KiB blocks");
  assert.is(m.value("vmhop_proxy_fetched_bytes_total", { ...e, source: "demand" }), MIB);
  assert.is(m.value("vmhop_proxy_fetched_bytes_total", { ...e, source: "background" }), 0);
  const fetches = m.value("vmhop_proxy_fetch_duration_seconds_count", e) ?? 0;
  assert.ok(fetches >= 1, "the first read waited for fetches");
  assert.is(m.value("vmhop_proxy_fetch_duration_seconds_bucket", { ...e, le: "+Inf" }), fetches);
  assert.ok((m.value("vmhop_proxy_fetch_duration_seconds_sum", e) ?? 0) > 0);
  assert.is(m.value("vmhop_proxy_copy_running", e), 0);

  const client = blockClient(r.grpc);
  try {
    await call(client, "removeExport", { name: "lazy", fencingToken: 0, discardLocalCopy: false });
  } finally {
    client.close();
  }
  const gone = await scrape(r.metrics);
  const left = gone.samples.filter((s) => s.labels.export === "lazy");
  assert.equal(left, [], "no series of a removed export");
  assert.ok(gone.declared.has("vmhop_proxy_fetch_duration_seconds"), "the metric itself stays declared");
});

/** TCP ports a process listens on (ss -ltnp). */
async function listeningPorts(pid: number): Promise<number[]> {
  const { stdout } = await run("ss", ["-Hltnp"]);
  return stdout
    .split("\n")
    .filter((l) => l.includes(`pid=${pid},`))
    .map((l) => Number(/:(\d+)\s/.exec(l.split(/\s+/)[3] + " ")?.[1]));
}

t("--metrics none serves nothing; the ready line says null", async () => {
  const { s, ready } = await start([
    "--target",
    image,
    "--listen",
    "127.0.0.1:0",
    "--grpc",
    "none",
    "--state-dir",
    "none",
    "--metrics",
    "none",
  ]);
  const r = ready as unknown as { nbd: string[]; metrics: string | null };
  assert.is(r.metrics, null);
  const nbdPort = Number(r.nbd[0].split(":")[1]);
  assert.equal(await listeningPorts(s.proc.pid!), [nbdPort], "only the NBD listener");
});

function hold(port: number): Promise<Server | undefined> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(undefined)); // taken by someone else: just as good
    srv.listen(port, "127.0.0.1", () => resolve(srv));
  });
}

t("a taken --metrics port is one clear error line; a taken default falls back to a free port", async () => {
  const port = await freePort();
  const held = await hold(port);
  try {
    const s = serve([
      "--target",
      image,
      "--listen",
      "127.0.0.1:0",
      "--grpc",
      "none",
      "--state-dir",
      "none",
      "--metrics",
      `127.0.0.1:${port}`,
    ]);
    started.push(s);
    assert.is(await within(s.exited, 60_000, "the block-server to exit"), 1);
    const lines = s
      .stderr()
      .trim()
      .split("\n")
      .filter((l) => !l.startsWith("{"));
    assert.equal(lines, [`vmhop: cannot serve metrics on 127.0.0.1:${port}: address already in use`]);
  } finally {
    held?.close();
  }
  const dflt = Number(DEFAULT_METRICS["block-server"].split(":")[1]);
  const heldDefault = await hold(dflt);
  try {
    const { ready } = await start([
      "--target",
      image,
      "--listen",
      "127.0.0.1:0",
      "--grpc",
      "none",
      "--state-dir",
      "none",
    ]);
    const r = ready as unknown as { metrics: string };
    assert.match(r.metrics, /^127\.0\.0\.1:\d+$/);
    assert.is.not(r.metrics, DEFAULT_METRICS["block-server"]);
    assert.ok((await scrape(r.metrics)).declared.has("vmhop_nbd_read_bytes_total"));
  } finally {
    heldDefault?.close();
  }
});

t.run();
