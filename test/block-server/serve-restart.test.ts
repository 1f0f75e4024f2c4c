// `vmhop block serve` as a real process: it listens only once the exports it was asked for are
// open, and the exports created over gRPC come back after a kill -9 (target exports reopened,
// proxies resuming from their bitmaps), removed ones stay removed, a missing file is reported
// instead of failing the start, a recorded export yields to the command line's, a proxy whose
// upstream is down at restart (or is this server) is served once it returns, a promoted proxy
// comes back as a target, a running copy resumes, the table can live in Redis, and a state
// directory serves one block-server at a time.
import { execFile } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import type { BlockServiceClient, ExportStatus } from "../../gen/vmhop/v1/block.js";
import { BITMAP_HEADER_SIZE } from "../../services/block-server/proxy/bitmap-file.js";
import { call } from "../../services/common/grpc/call.js";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { rejectsWithStatus } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { test } from "../helpers/uvu.js";
import { until, within } from "../helpers/wait.js";
import { makeImage, type RunningServer, startNbdkit, startQemuNbd } from "./fixtures/proxy-servers.js";
import { blockClient, firstConnection, killAll, type Served, serve } from "./fixtures/serve-process.js";

const run = promisify(execFile);
const dir = tempDir("vmhop-serve-restart-");
const cleanups: (() => Promise<void> | void)[] = [];
test.after(async () => {
  killAll();
  for (const c of cleanups.reverse()) await c();
  dir.cleanup();
});

const t = gate(
  test,
  ["nbdkit", "qemu-nbd", "qemu-io", "nbdcopy", "redis-server"],
  "vmhop block serve restarts",
);

const MiB = 1 << 20;
const BS = 65536;

function bitsSet(path: string): number {
  const b = readFileSync(path).subarray(BITMAP_HEADER_SIZE);
  let n = 0;
  for (const x of b) for (let v = x; v; v &= v - 1) n++;
  return n;
}

/** A block-server's flags and clients; start() spawns it, again after a kill. */
async function server(stateArgs: string[], extra: string[] = []) {
  const nbdPort = await freePort();
  const grpcPort = await freePort();
  const grpcAddr = `127.0.0.1:${grpcPort}`;
  const client = blockClient(grpcAddr);
  cleanups.push(() => client.close());
  const args = ["--listen", `127.0.0.1:${nbdPort}`, "--grpc", grpcAddr, ...stateArgs, ...extra];
  return {
    url: (name: string) => `nbd://127.0.0.1:${nbdPort}/${name}`,
    client,
    start: (more: string[] = []): Served => serve([...args, ...more]),
  };
}

async function readAll(url: string, name: string): Promise<Buffer> {
  const out = join(dir.path, `${name}-${Date.now()}.out`);
  await within(run("nbdcopy", [url, out]), 60_000, `nbdcopy of ${url}`);
  const b = readFileSync(out);
  rmSync(out);
  return b;
}

async function qemuIo(url: string, ...cmds: string[]): Promise<void> {
  const args = ["-f", "raw", ...cmds.flatMap((c) => ["-c", c]), url];
  await within(run("qemu-io", args), 60_000, `qemu-io ${cmds.join("; ")} on ${url}`);
}

const status = async (c: BlockServiceClient, name: string): Promise<ExportStatus> =>
  (await call(c, "getExportStatus", { name })).status!;

async function createTarget(c: BlockServiceClient, name: string, imagePath: string) {
  await call(c, "createExport", {
    name,
    source: { $case: "target", value: { imagePath, sizeBytes: 0 } },
    readOnly: false,
    description: "",
    fencingToken: 0,
  });
}

async function createProxy(c: BlockServiceClient, name: string, upstreamUrl: string, cachePath: string) {
  await call(c, "createExport", {
    name,
    source: {
      $case: "proxy",
      value: {
        upstreamUrl,
        cachePath,
        blockSize: 0,
        startBackgroundCopy: false,
        rateLimitBytesPerSecond: 0,
        upstreamControl: "",
        autoPromote: false,
      },
    },
    readOnly: false,
    description: "",
    fencingToken: 0,
  });
}

function upstream(s: RunningServer): RunningServer {
  cleanups.push(() => s.stop());
  return s;
}

t("a client that connects the moment the NBD port accepts gets the export (slow proxy open)", async () => {
  const image = join(dir.path, "slow.img");
  const data = makeImage(image, 8 * MiB);
  // Every upstream connection's open takes a second: the proxy export takes seconds to open.
  const up = upstream(await startNbdkit("file", [image, "delay-open=1"], { filters: ["delay"] }));
  const s = await server(["--state-dir", "none"]);
  const srv = s.start(["--proxy", up.url, "--cache", join(dir.path, "slow.cache"), "--grpc", "none"]);
  const first = await within(firstConnection(s.url("disk0"), srv.proc), 60_000, "the first NBD connection");
  assert.is(first.error, undefined, `the first connection was refused the export: ${first.error?.message}`);
  assert.ok(first.refused > 0, "the loop did try before the port accepted");
  const got = await first.client!.read(0, 1 * MiB);
  assert.ok(got.equals(data.subarray(0, 1 * MiB)), "it reads the upstream's data");
  await first.client!.disconnect();
  const ready = await within(srv.ready, 30_000, "the ready line");
  assert.equal(ready.exports, ["disk0"]);
  await srv.stop();
});

t(
  "exports created over gRPC survive kill -9: same data through nbdcopy, the proxy resumes from its bitmap",
  async () => {
    const SIZE = 32 * MiB;
    const src = join(dir.path, "r-src.img");
    const srcData = makeImage(src, SIZE);
    const up = upstream(await startQemuNbd(src));
    const timg = join(dir.path, "r-target.raw");
    const tData = makeImage(timg, 16 * MiB);
    const cache = join(dir.path, "r-proxy.cache");
    const s = await server(["--state-dir", join(dir.path, "r-state")]);

    const a = s.start();
    const ra = await within(a.ready, 30_000, "the first ready line");
    assert.equal(ra.exports, []);
    await createTarget(s.client, "t0", timg);
    await createProxy(s.client, "p0", up.url, cache);
    // Writes, flushed, through both; the first 8 MiB of the proxy read (fetched, made local).
    await qemuIo(s.url("t0"), "write -P 0xcd 1M 64k", "flush");
    await qemuIo(s.url("p0"), "write -P 0xab 20M 64k", "flush");
    await qemuIo(s.url("p0"), "read 0 8M");
    const local = await until(
      "the proxy's bitmap to record the 8 MiB read",
      () => {
        const n = bitsSet(`${cache}.bitmap`);
        return n >= (8 * MiB) / BS + 1 && n;
      },
      10_000,
    );
    await a.kill9();

    const b = s.start();
    // The moment the port accepts, both exports are there, and so on gRPC.
    const first = await within(firstConnection(s.url("p0"), b.proc), 60_000, "the first NBD connection");
    assert.is(first.error, undefined, `restored export refused: ${first.error?.message}`);
    await first.client!.disconnect();
    const listed = await until(
      "ListExports to answer",
      () => call(s.client, "listExports", {}, { deadline: Date.now() + 1000 }).catch(() => undefined),
      30_000,
      10,
    );
    assert.equal(listed.exports.map((e) => e.name).sort(), ["p0", "t0"], "the first gRPC answer lists both");
    const rb = await within(b.ready, 30_000, "the ready line after kill -9");
    assert.equal(rb.restored, ["p0", "t0"]);
    assert.equal(rb.unavailable, {});

    const st0 = await status(s.client, "p0");
    assert.ok(
      st0.blocksLocal >= local,
      `resumed from the bitmap: ${st0.blocksLocal} >= ${local} blocks local`,
    );
    assert.is(st0.bytesFetchedOnDemand + st0.bytesFetchedBackground, 0);
    // What was local is served without a fetch...
    await qemuIo(s.url("p0"), "read 0 8M");
    const st1 = await status(s.client, "p0");
    assert.is(st1.bytesFetchedOnDemand, 0, "re-reading the 8 MiB read before the kill fetched nothing");
    // ...and every byte is right, the flushed writes included.
    const pExpect = Buffer.from(srcData);
    pExpect.fill(0xab, 20 * MiB, 20 * MiB + BS);
    assert.ok((await readAll(s.url("p0"), "p0")).equals(pExpect), "proxy export: same data after kill -9");
    const st2 = await status(s.client, "p0");
    assert.ok(
      st2.bytesFetchedOnDemand <= SIZE - local * BS,
      `fetched ${st2.bytesFetchedOnDemand} bytes, at most what was not local (${SIZE - local * BS})`,
    );
    const tExpect = Buffer.from(tData);
    tExpect.fill(0xcd, 1 * MiB, 1 * MiB + BS);
    assert.ok((await readAll(s.url("t0"), "t0")).equals(tExpect), "target export: same data after kill -9");
    await b.stop();
  },
);

t(
  "a removed export stays removed; a missing image, cache or bitmap is reported, the rest served",
  async () => {
    const s = await server(["--state-dir", join(dir.path, "m-state")]);
    const imgs = ["keep", "gone", "removed"].map((n) => {
      const p = join(dir.path, `m-${n}.raw`);
      makeImage(p, 4 * MiB);
      return p;
    });
    const src = join(dir.path, "m-src.img");
    makeImage(src, 4 * MiB);
    const up = upstream(await startQemuNbd(src));
    const a = s.start();
    await within(a.ready, 30_000, "the ready line");
    await createTarget(s.client, "keep", imgs[0]);
    await createTarget(s.client, "gone", imgs[1]);
    await createTarget(s.client, "removed", imgs[2]);
    await createProxy(s.client, "nocache", up.url, join(dir.path, "m-nocache.cache"));
    await createProxy(s.client, "nobitmap", up.url, join(dir.path, "m-nobitmap.cache"));
    await call(s.client, "removeExport", { name: "removed", fencingToken: 0, discardLocalCopy: false });
    await a.kill9();
    rmSync(imgs[1]);
    rmSync(join(dir.path, "m-nocache.cache"));
    rmSync(join(dir.path, "m-nobitmap.cache.bitmap"));

    const b = s.start();
    const rb = await within(b.ready, 30_000, "the ready line");
    assert.equal(rb.exports, ["keep"]);
    assert.equal(Object.keys(rb.unavailable).sort(), ["gone", "nobitmap", "nocache"]);
    assert.match(rb.unavailable.gone, /image .*m-gone\.raw is missing/);
    assert.match(rb.unavailable.nocache, /cache .*m-nocache\.cache is missing/);
    assert.match(rb.unavailable.nobitmap, /bitmap .*m-nobitmap\.cache\.bitmap is missing/);
    const logged = b.logs(/persisted export not served/).map((l) => l.name);
    assert.equal(logged.sort(), ["gone", "nobitmap", "nocache"], "each is a log line");
    await rejectsWithStatus(
      status(s.client, "gone"),
      grpc.status.UNAVAILABLE,
      /persisted but not served: its image .* is missing/,
    );
    await rejectsWithStatus(status(s.client, "removed"), grpc.status.NOT_FOUND, /no export named/);
    await rejectsWithStatus(
      createTarget(s.client, "gone", imgs[0]),
      grpc.status.ALREADY_EXISTS,
      /already exists .*persisted but not served/,
    );
    assert.ok((await readAll(s.url("keep"), "keep")).equals(readFileSync(imgs[0])));
    // Removing one that is not served drops its record for good.
    await call(s.client, "removeExport", { name: "gone", fencingToken: 0, discardLocalCopy: false });
    await b.kill9();
    const c = s.start();
    const rc = await within(c.ready, 30_000, "the ready line");
    assert.equal(rc.exports, ["keep"]);
    assert.equal(Object.keys(rc.unavailable).sort(), ["nobitmap", "nocache"]);
    await c.stop();
  },
);

t(
  "a recorded export and one of the same name on the command line: the command line wins, logged",
  async () => {
    const s = await server(["--state-dir", join(dir.path, "c-state")]);
    const recorded = join(dir.path, "c-recorded.raw");
    const given = join(dir.path, "c-given.raw");
    makeImage(recorded, 4 * MiB);
    const givenData = makeImage(given, 4 * MiB);
    const a = s.start();
    await within(a.ready, 30_000, "the ready line");
    await createTarget(s.client, "disk0", recorded);
    await createTarget(s.client, "other", recorded);
    await a.stop();

    const b = s.start(["--target", given, "--name", "disk0"]);
    const rb = await within(b.ready, 30_000, "the ready line");
    assert.equal(rb.exports.sort(), ["disk0", "other"]);
    assert.equal(rb.restored, ["other"]);
    const warn = b.logs(/same name was given on the command line/);
    assert.is(warn.length, 1);
    assert.is(warn[0].name, "disk0");
    assert.ok((await readAll(s.url("disk0"), "c-disk0")).equals(givenData), "disk0 is the command line's");
    await b.stop();
    // The recorded one was dropped (not merely hidden): without the flag, disk0 is gone.
    const c = s.start();
    const rc = await within(c.ready, 30_000, "the ready line");
    assert.equal(rc.exports, ["other"]);
    await c.stop();
  },
);

t("a proxy whose upstream is down at restart is reported, retried, and served once it returns", async () => {
  const image = join(dir.path, "u-src.img");
  const data = makeImage(image, 4 * MiB);
  const port = await freePort();
  let up = await startNbdkit("file", [image], { port });
  cleanups.push(() => up.stop());
  const s = await server(["--state-dir", join(dir.path, "u-state")]);
  const a = s.start();
  await within(a.ready, 30_000, "the ready line");
  await createProxy(s.client, "p", up.url, join(dir.path, "u.cache"));
  await a.kill9();
  await up.stop();

  const b = s.start();
  const rb = await within(b.ready, 30_000, "the ready line with the upstream down");
  assert.equal(rb.exports, []);
  assert.match(rb.unavailable.p, /retrying/);
  await rejectsWithStatus(
    status(s.client, "p"),
    grpc.status.UNAVAILABLE,
    /persisted but not served: .*retrying/,
  );
  up = await startNbdkit("file", [image], { port });
  await until(
    "the proxy export to be served again",
    () => status(s.client, "p").catch(() => undefined),
    30_000,
  );
  assert.ok((await readAll(s.url("p"), "u-p")).equals(data));
  await b.stop();
});

t("a proxy of another export of the same block-server comes back once that one listens", async () => {
  const image = join(dir.path, "self.raw");
  const data = makeImage(image, 4 * MiB);
  const s = await server(["--state-dir", join(dir.path, "self-state")]);
  const a = s.start();
  await within(a.ready, 30_000, "the ready line");
  await createTarget(s.client, "t", image);
  await createProxy(s.client, "p", s.url("t"), join(dir.path, "self.cache"));
  await a.kill9();
  const b = s.start();
  const rb = await within(b.ready, 30_000, "the ready line");
  assert.equal(rb.restored, ["t"]);
  assert.match(rb.unavailable.p ?? "", /ECONNREFUSED.*retrying/);
  await until("the proxy export to be served", () => status(s.client, "p").catch(() => undefined), 30_000);
  assert.ok((await readAll(s.url("p"), "self-p")).equals(data));
  await b.stop();
});

t("a promoted proxy comes back as a target on its cache, without its upstream", async () => {
  const image = join(dir.path, "pr-src.img");
  const data = makeImage(image, 4 * MiB);
  const up = await startQemuNbd(image);
  cleanups.push(() => up.stop());
  const cache = join(dir.path, "pr.cache");
  const s = await server(["--state-dir", join(dir.path, "pr-state")]);
  const a = s.start();
  await within(a.ready, 30_000, "the ready line");
  await createProxy(s.client, "p", up.url, cache);
  await call(s.client, "promote", { name: "p", wait: true, fencingToken: 0 });
  await a.kill9();
  await up.stop();
  const table = JSON.parse(readFileSync(join(dir.path, "pr-state", "exports.json"), "utf8"));
  assert.equal(table.exports[0].source, { mode: "target", imagePath: cache, promotedFrom: up.url });

  const b = s.start();
  const rb = await within(b.ready, 30_000, "the ready line");
  assert.equal(rb.restored, ["p"]);
  assert.is((await status(s.client, "p")).export?.mode, 1, "target mode");
  assert.ok((await readAll(s.url("p"), "pr-p")).equals(data));
  await b.stop();
});

t("a background copy that was running resumes after kill -9, at its rate", async () => {
  const image = join(dir.path, "bg-src.img");
  const data = makeImage(image, 8 * MiB);
  const up = upstream(await startQemuNbd(image));
  const state = join(dir.path, "bg-state");
  const s = await server(["--state-dir", state]);
  const a = s.start();
  await within(a.ready, 30_000, "the ready line");
  await createProxy(s.client, "p", up.url, join(dir.path, "bg.cache"));
  await call(s.client, "startBackgroundCopy", {
    name: "p",
    rateLimitBytesPerSecond: MiB,
    parallelism: 0,
    fencingToken: 0,
  });
  // StartBackgroundCopy is recorded just after it answers.
  await until(
    "the table to record the running copy",
    () => JSON.parse(readFileSync(join(state, "exports.json"), "utf8")).exports[0].source.copy === true,
    10_000,
  );
  await a.kill9();
  const b = s.start();
  await within(b.ready, 30_000, "the ready line");
  const st = await status(s.client, "p");
  assert.ok(st.backgroundCopy?.running, "the copy runs again");
  assert.is(st.backgroundCopy?.rateLimitBytesPerSecond, MiB, "at the rate it had");
  await call(s.client, "setRateLimit", { name: "p", rateLimitBytesPerSecond: 0, fencingToken: 0 });
  await until("the copy to finish", async () => (await status(s.client, "p")).backgroundCopy?.done, 30_000);
  await up.stop();
  assert.ok((await readAll(s.url("p"), "bg-p")).equals(data), "every byte local and right");
  await b.stop();
});

t("--store redis://: the table lives in Redis, and a restart serves it", async () => {
  const redis: RedisHandle = await startRedis();
  cleanups.push(() => redis.stop());
  const img = join(dir.path, "rd.raw");
  const data = makeImage(img, 4 * MiB);
  const s = await server(["--store", redis.url, "--state-key", "test-host/rd"]);
  const a = s.start();
  const ra = await within(a.ready, 30_000, "the ready line");
  assert.match(ra.state ?? "", /^redis:\/\/127\.0\.0\.1:\d+ block-server\/test-host\/rd\/exports\/\*$/);
  await createTarget(s.client, "r0", img);
  await a.kill9();
  const b = s.start();
  const rb = await within(b.ready, 30_000, "the ready line");
  assert.equal(rb.restored, ["r0"]);
  assert.ok((await readAll(s.url("r0"), "rd-r0")).equals(data));
  await call(s.client, "removeExport", { name: "r0", fencingToken: 0, discardLocalCopy: false });
  await b.stop();
  const c = s.start();
  assert.equal((await within(c.ready, 30_000, "the ready line")).exports, []);
  await c.stop();
});

t("two block-servers on one state directory: the second is refused, naming the first", async () => {
  const state = join(dir.path, "lock-state");
  const s1 = await server(["--state-dir", state]);
  const s2 = await server(["--state-dir", state]);
  const a = s1.start();
  await within(a.ready, 30_000, "the first ready line");
  const b = s2.start();
  const code = await within(b.exited, 30_000, "the second server to exit");
  assert.is(code, 1);
  assert.match(
    b.stderr(),
    new RegExp(`state directory .* is in use by another block-server \\(pid ${a.proc.pid}\\)`),
  );
  await a.kill9();
  // kill -9 releases the lock: the next one starts.
  const c = s2.start();
  await within(c.ready, 30_000, "the ready line after the holder died");
  await c.stop();
  writeFileSync(join(state, "exports.json"), "{ not json");
  const d = s1.start();
  assert.is(await within(d.exited, 30_000, "a server on a damaged table to exit"), 1);
  assert.match(d.stderr(), /exports\.json is not valid JSON .*fix it or move it aside/);
});

test.run();
