// `npm run bench -- nbd-wan [--delay-ms 15] [--rate-mbit 450] [--reads 200] [--runs 3] [--quick]`:
// latency of on-demand 4 KiB random reads when the upstream is across an emulated WAN (the
// testbed relay: one-way delay D each way, a rate cap). Subjects, each reading the same
// offsets one at a time from a fresh (cold) server per run:
//   vmhop   - a vmhop block-server proxy whose upstream is reached through the relay;
//   nbdkit  - nbdkit's cow filter over its nbd plugin, through the same relay;
//   direct  - the client itself reading across the relay: the physical floor, one RTT.
// The upstream is nbdkit serving a file; the timing client is vmhop's own NBD client.
// Then (unless --no-copy) a whole cold `nbdcopy … null:` through each, against the link rate.

import { once } from "node:events";
import { rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { NbdClient } from "../services/block-server/nbd/client/client.js";
import { startRelay } from "../testbed/relay.js";
import { tempDir } from "../testbed/temp-dir.js";
import { makeImage } from "./lib/image.js";
import { readAll } from "./lib/nbd-clients.js";
import { type NbdServer, nbdkitCow, nbdkitFile, vmhopProxy } from "./lib/nbd-servers.js";
import {
  type BenchCase,
  flagValue,
  hasFlag,
  type Metrics,
  median,
  percentile,
  printTable,
  summarise,
  writeResults,
} from "./lib/report.js";

const READ = 4096;
const EXTENT = 1 << 20;

/** Distinct 1 MiB extents (so no read profits from another's fetch), a 4 KiB-aligned offset in each. */
function offsets(sizeBytes: number, n: number): number[] {
  const extents = Array.from({ length: sizeBytes / EXTENT - 1 }, (_, i) => i + 1);
  for (let i = extents.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [extents[i], extents[j]] = [extents[j], extents[i]];
  }
  return extents.slice(0, n).map((e) => e * EXTENT + Math.floor(Math.random() * (EXTENT / READ)) * READ);
}

async function timeReads(uri: string, offs: number[]): Promise<number[]> {
  const c = await NbdClient.connect(uri);
  try {
    await c.read(0, READ); // connection warm-up, not measured
    const ms: number[] = [];
    for (const off of offs) {
      const t0 = performance.now();
      const b = await c.read(off, READ);
      ms.push(performance.now() - t0);
      if (b.length !== READ) throw new Error(`short read at ${off}: ${b.length}`);
    }
    return ms;
  } finally {
    await c.disconnect().catch(() => c.destroy());
  }
}

/** Median TCP ping-pong (1 byte) through a relay with the given link to an echo server. */
async function measureRtt(delayMs: number, rateBitsPerSecond: number, pings = 10): Promise<number> {
  const echo = createServer((s) => {
    s.on("error", () => {}); // the relay resets it on close
    s.pipe(s);
  });
  echo.listen(0, "127.0.0.1");
  await once(echo, "listening");
  const relay = await startRelay({
    target: `127.0.0.1:${(echo.address() as { port: number }).port}`,
    delayMs,
    rateBitsPerSecond,
  });
  const s = connect({ port: relay.port as number, host: "127.0.0.1" });
  await once(s, "connect");
  const rtts: number[] = [];
  try {
    s.setNoDelay(true);
    for (let i = 0; i < pings; i++) {
      const t0 = performance.now();
      s.write("p");
      await once(s, "data");
      rtts.push(performance.now() - t0);
    }
  } finally {
    s.destroy();
    await relay.close();
    echo.close();
  }
  return median(rtts);
}

export async function main(args: string[]): Promise<void> {
  const quick = hasFlag(args, "--quick");
  const delayMs = Number(flagValue(args, "--delay-ms") ?? 15);
  const rateMbit = Number(flagValue(args, "--rate-mbit") ?? 450);
  const runs = Number(flagValue(args, "--runs") ?? 3);
  const sizeMib = quick ? 64 : 256;
  const reads = Math.min(Number(flagValue(args, "--reads") ?? (quick ? 40 : 200)), sizeMib - 1);
  if (!(delayMs >= 0) || !(rateMbit >= 0) || !(runs >= 1) || !(reads >= 1))
    throw new Error("--delay-ms, --rate-mbit must be >= 0; --runs, --reads >= 1");
  const rate = rateMbit * 1e6;
  const tmp = tempDir("vmhop-bench-nbdwan-");
  const image = join(tmp.path, "disk.raw");
  makeImage(image, sizeMib << 20);
  const origin = await nbdkitFile(image);
  const relay = await startRelay({ target: `127.0.0.1:${origin.port}`, delayMs, rateBitsPerSecond: rate });
  const overWan = `nbd://${relay.address}/disk0`;
  const subjects: { subject: string; start: (run: number) => Promise<NbdServer | undefined> }[] = [
    {
      subject: "vmhop",
      start: (run) => vmhopProxy(overWan, join(tmp.path, `cache-${run}-${Math.random()}`)),
    },
    { subject: "nbdkit", start: () => nbdkitCow(overWan) },
    { subject: "direct", start: async () => undefined },
  ];
  const cases: BenchCase[] = [];
  const copies: BenchCase[] = [];
  try {
    const rttMeasured = await measureRtt(delayMs, rate);
    for (const sub of subjects) {
      const perRun: Metrics[] = [];
      for (let run = 0; run < runs; run++) {
        const server = await sub.start(run);
        try {
          const ms = await timeReads(server?.uri ?? overWan, offsets(sizeMib << 20, reads));
          perRun.push({
            p50_ms: percentile(ms, 50),
            p99_ms: percentile(ms, 99),
            mean_ms: ms.reduce((a, b) => a + b, 0) / ms.length,
            rtt_ms: 2 * delayMs,
            rtt_measured_ms: rttMeasured,
            reads: ms.length,
          });
        } finally {
          await server?.close();
        }
      }
      const c = summarise(`ondemand-4k/delay-${delayMs}ms`, sub.subject, perRun);
      cases.push(c);
      console.error(
        `${sub.subject}: p50 ${(c.metrics.p50_ms as number).toFixed(2)} ms, p99 ${(c.metrics.p99_ms as number).toFixed(2)} ms`,
      );
    }
    // A whole cold copy across the same path: how close each gets to the link's rate.
    if (!hasFlag(args, "--no-copy")) {
      for (const sub of subjects) {
        const perRun: Metrics[] = [];
        for (let run = 0; run < runs; run++) {
          const server = await sub.start(run);
          try {
            // Holes are skipped (block status), so image MiB/s can beat the link; wire MiB/s cannot.
            const wire0 = relay.stats.bytesToClient;
            const mibPerS = await readAll("nbdcopy", server?.uri ?? overWan, sizeMib << 20);
            const seconds = sizeMib / mibPerS;
            perRun.push({
              mib_per_s: mibPerS,
              wire_mib_per_s: (relay.stats.bytesToClient - wire0) / (1 << 20) / seconds,
              link_mib_per_s: rate > 0 ? rate / 8 / (1 << 20) : null,
            });
          } finally {
            await server?.close();
          }
        }
        copies.push(summarise(`copy-cold/delay-${delayMs}ms`, sub.subject, perRun));
      }
    }
  } finally {
    await relay.close();
    await origin.close();
    rmSync(tmp.path, { recursive: true, force: true });
  }
  const floor = cases.find((c) => c.subject === "direct")?.metrics.p50_ms as number;
  printTable(
    cases.map((c) => ({
      case: c.case,
      subject: c.subject,
      p50_ms: c.metrics.p50_ms as number,
      p99_ms: c.metrics.p99_ms as number,
      rtt_ms: c.metrics.rtt_ms as number,
      rtt_measured_ms: c.metrics.rtt_measured_ms as number,
      "p50 vs direct": `${((c.metrics.p50_ms as number) / floor).toFixed(2)}x`,
    })),
  );
  if (copies.length > 0)
    printTable(
      copies.map((c) => ({
        case: c.case,
        subject: c.subject,
        "image MiB/s": c.metrics.mib_per_s as number,
        min: c.min?.mib_per_s as number,
        max: c.max?.mib_per_s as number,
        "wire MiB/s": c.metrics.wire_mib_per_s as number,
        "link MiB/s": (c.metrics.link_mib_per_s as number | null) ?? "unlimited",
      })),
    );
  const file = writeResults("nbd-wan", [...cases, ...copies], {
    delay_ms: delayMs,
    rate_mbit: rateMbit,
    reads,
    runs,
    image_mib: sizeMib,
  });
  console.log(`wrote ${file}`);
}
