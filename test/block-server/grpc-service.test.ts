// BlockService over real gRPC: a BlockServer with NBD listeners, driven like the CLI and the
// control-plane drive it; real NBD clients (nbdcopy, qemu-io) read through the exports.
import * as assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import {
  BlockServiceClient,
  type CreateExportRequest,
  ExportMode,
  ProgressKind,
  type WatchProgressResponse,
} from "../../gen/vmhop/v1/block.js";
import { BlockServer } from "../../services/block-server/block-server.js";
import { blockService } from "../../services/block-server/grpc/block-service.js";
import { call } from "../../services/common/grpc/call.js";
import { type RunningGrpcServer, startGrpcServer } from "../../services/common/grpc/server.js";
import { silentLogger } from "../../services/common/log.js";
import { initTracing } from "../../services/common/tracing.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { rejectsWithStatus } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { healthCheck, reflectionFileContaining, reflectionListServices } from "../helpers/grpc.js";
import { suite } from "../helpers/uvu.js";

// The NBD server runs in this process: clients must run asynchronously, never execFileSync.
const run = promisify(execFile);

const spans = new InMemorySpanExporter();
initTracing("block-server-test", { processors: [new SimpleSpanProcessor(spans)] });

interface Ctx {
  dir: { path: string; cleanup: () => void };
  bs: BlockServer;
  grpc: RunningGrpcServer;
  client: BlockServiceClient;
  nbd: string;
  image: string;
}

const test = gate(
  suite<Ctx>("BlockService over gRPC", {} as Ctx),
  ["nbdcopy", "qemu-io"],
  "BlockService gRPC",
);

test.before(async (ctx) => {
  ctx.dir = tempDir("vmhop-bs-grpc-");
  ctx.image = join(ctx.dir.path, "disk.raw");
  // 16 MiB: random data in the first 6 MiB, a hole after.
  execFileSync("truncate", ["-s", "16M", ctx.image]);
  execFileSync("dd", ["if=/dev/urandom", `of=${ctx.image}`, "bs=1M", "count=6", "conv=notrunc"], {
    stdio: "ignore",
  });
  ctx.bs = new BlockServer({ log: silentLogger });
  const a = await ctx.bs.listen("127.0.0.1:0");
  ctx.nbd = "port" in a ? `127.0.0.1:${a.port}` : "";
  ctx.grpc = await startGrpcServer({
    serviceName: "block-server",
    listen: "127.0.0.1:0",
    services: [blockService(ctx.bs)],
    log: silentLogger,
  });
  ctx.client = new BlockServiceClient(ctx.grpc.address, grpc.credentials.createInsecure());
});

test.after(async (ctx) => {
  ctx.client?.close();
  await ctx.grpc?.shutdown(100);
  await ctx.bs?.close();
  ctx.dir?.cleanup();
});

test("health and reflection answer like any vmhop service", async (ctx) => {
  assert.equal(await healthCheck(ctx.grpc.address), "SERVING");
  assert.equal(await healthCheck(ctx.grpc.address, "vmhop.v1.BlockService"), "SERVING");
  const services = await reflectionListServices(ctx.grpc.address);
  assert.ok(services.includes("vmhop.v1.BlockService"), services.join(","));
  assert.ok(services.includes("grpc.health.v1.Health"), services.join(","));
  assert.ok((await reflectionFileContaining(ctx.grpc.address, "vmhop.v1.BlockService")) >= 1);
});

test("create a target export, read it with nbdcopy, list and status", async (ctx) => {
  const r = await call(ctx.client, "createExport", {
    name: "src",
    source: { $case: "target", value: { imagePath: ctx.image, sizeBytes: 0 } },
    readOnly: false,
    description: "",
    fencingToken: 0,
  });
  assert.equal(r.export?.mode, ExportMode.EXPORT_MODE_TARGET);
  assert.equal(r.export?.sizeBytes, 16 << 20);
  const out = join(ctx.dir.path, "copy.raw");
  await run("nbdcopy", [`nbd://${ctx.nbd}/src`, out]);
  assert.ok(readFileSync(out).equals(readFileSync(ctx.image)));
  const list = await call(ctx.client, "listExports", {});
  assert.deepEqual(
    list.exports.map((e) => e.name),
    ["src"],
  );
  assert.deepEqual(list.nbdListeners, [ctx.nbd]);
  const st = await call(ctx.client, "getExportStatus", { name: "src" });
  assert.equal(st.status?.blocksLocal, st.status?.blocksTotal);
  assert.ok((st.status?.bytesRead ?? 0) >= 6 << 20, "nbdcopy's reads are counted");
});

test("bad requests get precise status codes and change nothing", async (ctx) => {
  const create = (name: string, source: Parameters<BlockServiceClient["createExport"]>[0]["source"]) =>
    call(ctx.client, "createExport", { name, source, readOnly: false, description: "", fencingToken: 0 });
  await rejectsWithStatus(
    create("src", { $case: "target", value: { imagePath: ctx.image, sizeBytes: 0 } }),
    grpc.status.ALREADY_EXISTS,
    /already exists/,
  );
  await rejectsWithStatus(
    create("x", { $case: "target", value: { imagePath: "/nonexistent/disk", sizeBytes: 0 } }),
    grpc.status.INVALID_ARGUMENT,
    /does not exist/,
  );
  await rejectsWithStatus(
    create("bad name!", { $case: "target", value: { imagePath: ctx.image, sizeBytes: 0 } }),
    grpc.status.INVALID_ARGUMENT,
    /bad export name/,
  );
  await rejectsWithStatus(create("nosrc", undefined), grpc.status.INVALID_ARGUMENT, /source is required/);
  await rejectsWithStatus(
    create("p", {
      $case: "proxy",
      value: {
        upstreamUrl: "http://x/y",
        cachePath: join(ctx.dir.path, "c"),
        blockSize: 0,
        startBackgroundCopy: false,
        rateLimitBytesPerSecond: 0,
        upstreamControl: "",
        autoPromote: false,
      },
    }),
    grpc.status.INVALID_ARGUMENT,
    /bad NBD URL/,
  );
  await rejectsWithStatus(
    create("p", {
      $case: "proxy",
      value: {
        upstreamUrl: "nbd://127.0.0.1:1/none",
        cachePath: join(ctx.dir.path, "c"),
        blockSize: 0,
        startBackgroundCopy: false,
        rateLimitBytesPerSecond: 0,
        upstreamControl: "",
        autoPromote: false,
      },
    }),
    grpc.status.UNAVAILABLE,
    /cannot open proxy export p/,
  );
  await rejectsWithStatus(
    call(ctx.client, "getExportStatus", { name: "nope" }),
    grpc.status.NOT_FOUND,
    /no export named "nope"/,
  );
  await rejectsWithStatus(
    call(ctx.client, "removeExport", { name: "", fencingToken: 0, discardLocalCopy: false }),
    grpc.status.INVALID_ARGUMENT,
    /name is required/,
  );
  await rejectsWithStatus(
    call(ctx.client, "startBackgroundCopy", {
      name: "src",
      rateLimitBytesPerSecond: 0,
      parallelism: 0,
      fencingToken: 0,
    }),
    grpc.status.FAILED_PRECONDITION,
    /target mode/,
  );
  const list = await call(ctx.client, "listExports", {});
  assert.deepEqual(
    list.exports.map((e) => e.name),
    ["src"],
    "failed creates leave no export behind",
  );
});

test("proxy export: on-demand read, background copy with progress events, promote under a live client", async (ctx) => {
  const cache = join(ctx.dir.path, "dst.cache");
  await call(ctx.client, "createExport", {
    name: "dst",
    source: {
      $case: "proxy",
      value: {
        upstreamUrl: `nbd://${ctx.nbd}/src`,
        cachePath: cache,
        blockSize: 0,
        startBackgroundCopy: false,
        rateLimitBytesPerSecond: 0,
        upstreamControl: ctx.grpc.address,
        autoPromote: false,
      },
    },
    readOnly: false,
    description: "",
    fencingToken: 0,
  });
  // Promote before the copy: refused, nothing changes.
  await rejectsWithStatus(
    call(ctx.client, "promote", { name: "dst", wait: false, fencingToken: 0 }),
    grpc.status.FAILED_PRECONDITION,
    /not local yet/,
  );

  // An on-demand read through the proxy returns the source's bytes.
  const want = readFileSync(ctx.image).subarray(1 << 20, (1 << 20) + 65536);
  const { stdout: got } = await run("qemu-io", [
    "-f",
    "raw",
    "-c",
    `read -v ${1 << 20} 64k`,
    `nbd://${ctx.nbd}/dst`,
  ]);
  assert.match(got, new RegExp(want.subarray(0, 16).toString("hex").replace(/(..)/g, "$1 ").trim()));
  const st1 = await call(ctx.client, "getExportStatus", { name: "dst" });
  assert.ok((st1.status?.bytesFetchedOnDemand ?? 0) >= 65536);

  // Watch progress, start the copy, expect COPY_DONE.
  const events: WatchProgressResponse[] = [];
  const stream = ctx.client.watchProgress({ name: "dst", intervalMs: 100 });
  const done = new Promise<void>((resolve, reject) => {
    stream.on("data", (ev: WatchProgressResponse) => {
      events.push(ev);
      if (ev.event?.kind === ProgressKind.PROGRESS_KIND_COPY_DONE) resolve();
    });
    stream.on("error", (e: grpc.ServiceError) => (e.code === grpc.status.CANCELLED ? undefined : reject(e)));
  });
  await call(ctx.client, "startBackgroundCopy", {
    name: "dst",
    rateLimitBytesPerSecond: 0,
    parallelism: 0,
    fencingToken: 0,
  });
  await done;
  stream.cancel();
  assert.ok(events.some((e) => e.event?.kind === ProgressKind.PROGRESS_KIND_PERIODIC));

  // Write through the proxy, then promote while a qemu-io session keeps using the export.
  const fill = Buffer.alloc(4096, 0xab);
  writeFileSync(join(ctx.dir.path, "pattern"), fill);
  await run("qemu-io", ["-f", "raw", "-c", "write -P 0xab 8M 4k", `nbd://${ctx.nbd}/dst`]);
  const p = await call(ctx.client, "promote", { name: "dst", wait: false, fencingToken: 0 });
  assert.equal(p.status?.export?.mode, ExportMode.EXPORT_MODE_TARGET);
  assert.equal(p.status?.export?.upstreamUrl, "");
  // The source may go away now: the destination serves everything itself.
  await call(ctx.client, "removeExport", { name: "src", fencingToken: 0, discardLocalCopy: false });
  const out = join(ctx.dir.path, "dst-copy.raw");
  await run("nbdcopy", [`nbd://${ctx.nbd}/dst`, out]);
  const copy = readFileSync(out);
  const src = readFileSync(ctx.image);
  assert.ok(copy.subarray(0, 8 << 20).equals(src.subarray(0, 8 << 20)));
  assert.ok(copy.subarray(8 << 20, (8 << 20) + 4096).equals(fill), "the write landed");
  assert.ok(
    src.subarray(8 << 20, (8 << 20) + 4096).equals(Buffer.alloc(4096)),
    "the source image is untouched",
  );
});

test("a proxy removed with discardLocalCopy leaves no copy: the same name proxies a changed upstream afresh", async (ctx) => {
  const image = join(ctx.dir.path, "up.raw");
  writeFileSync(image, randomBytes(4 << 20));
  const create = (name: string, source: CreateExportRequest["source"]) =>
    call(ctx.client, "createExport", { name, source, readOnly: false, description: "", fencingToken: 0 });
  const remove = (name: string, discardLocalCopy: boolean) =>
    call(ctx.client, "removeExport", { name, fencingToken: 0, discardLocalCopy });
  const cache = join(ctx.dir.path, "p.cache");
  const proxy = () =>
    create("p", {
      $case: "proxy",
      value: {
        upstreamUrl: `nbd://${ctx.nbd}/up`,
        cachePath: cache,
        blockSize: 0,
        startBackgroundCopy: false,
        rateLimitBytesPerSecond: 0,
        upstreamControl: "",
        autoPromote: false,
      },
    });
  const read = async () =>
    (await run("qemu-io", ["-f", "raw", "-c", "read -v 0 16", `nbd://${ctx.nbd}/p`])).stdout;
  const hex = (b: Buffer) => b.subarray(0, 16).toString("hex").replace(/(..)/g, "$1 ").trim();
  await create("up", { $case: "target", value: { imagePath: image, sizeBytes: 0 } });
  await proxy();
  assert.match(await read(), new RegExp(hex(readFileSync(image))));
  // Discarded: the copy, its bitmap and journal go...
  await remove("p", true);
  for (const f of [cache, `${cache}.bitmap`, `${cache}.bitmap.journal`]) assert.ok(!existsSync(f), f);
  // ...so once the upstream changed (a source disk the rolled-back VM kept writing), the same
  // name proxies it afresh.
  const changed = randomBytes(4 << 20);
  writeFileSync(image, changed);
  await proxy();
  assert.match(await read(), new RegExp(hex(changed)));
  // Without discarding, the kept copy no longer matches a changed upstream: refused.
  await remove("p", false);
  assert.ok(existsSync(`${cache}.bitmap`));
  writeFileSync(image, randomBytes(4 << 20));
  await rejectsWithStatus(proxy(), grpc.status.FAILED_PRECONDITION, /different disk|identity|fingerprint/);
  // A target's image is never a copy to discard: refused, the export and its image stay.
  await rejectsWithStatus(remove("up", true), grpc.status.FAILED_PRECONDITION, /not a proxy/);
  assert.ok(existsSync(image));
  await remove("up", false);
});

test("every RPC is traced", async () => {
  const names = spans.getFinishedSpans().map((s) => s.name);
  assert.ok(names.includes("vmhop.v1.BlockService/CreateExport"), names.join(","));
  const failed = spans
    .getFinishedSpans()
    .find((s) => s.name === "vmhop.v1.BlockService/GetExportStatus" && s.status.code === 2);
  assert.ok(failed, "a failed RPC's span is marked as an error");
  assert.equal(failed?.attributes["rpc.grpc.status_code"], grpc.status.NOT_FOUND);
});

test.run();
