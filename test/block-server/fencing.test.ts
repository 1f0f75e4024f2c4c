// Fencing on `vmhop block serve` as real processes: each export keeps the highest fencing token
// a call on it carried; a changing call with a lower one is refused (FAILED_PRECONDITION) and
// changes nothing, a higher one takes the export over, 0 (unfenced) is always admitted and
// lowers nothing; the token survives a kill -9, in a state directory and in Redis. The
// relocation chain as the control-plane drives it (A→B by one migration, B→C by the next)
// shows a newer migration taking exports over and the older one's later calls refused.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import type { BlockServiceClient, ProxySource } from "../../gen/vmhop/v1/block.js";
import { call } from "../../services/common/grpc/call.js";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { rejectsWithStatus } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { test } from "../helpers/uvu.js";
import { within } from "../helpers/wait.js";
import { blockClient, killAll, type Served, serve } from "./fixtures/serve-process.js";

const dir = tempDir("vmhop-fencing-");
const cleanups: (() => Promise<void> | void)[] = [];
test.after(async () => {
  killAll();
  for (const c of cleanups.reverse()) await c();
  dir.cleanup();
});

const t = gate(test, [], "block-server fencing");
const tr = gate(test, ["redis-server"], "block-server fencing in Redis");

const MiB = 1 << 20;

/** A `vmhop block serve` on fixed ports (so a restart keeps its addresses) and its client. */
async function server(stateArgs: string[]) {
  const nbdPort = await freePort();
  const grpcAddr = `127.0.0.1:${await freePort()}`;
  const client = blockClient(grpcAddr);
  cleanups.push(() => client.close());
  let proc: Served | undefined;
  const start = async () => {
    proc = serve(["--listen", `127.0.0.1:${nbdPort}`, "--grpc", grpcAddr, ...stateArgs]);
    return within(proc.ready, 30_000, "vmhop block serve's ready line");
  };
  cleanups.push(() => proc?.stop());
  return {
    client,
    grpc: grpcAddr,
    url: (name: string) => `nbd://127.0.0.1:${nbdPort}/${name}`,
    start,
    kill9: () => proc!.kill9(),
  };
}

type Server = Awaited<ReturnType<typeof server>>;

function image(name: string, mib: number): string {
  const path = join(dir.path, name);
  const b = Buffer.alloc(mib * MiB);
  for (let i = 0; i < b.length; i += 4096) b.writeUInt32LE(i, i);
  writeFileSync(path, b);
  return path;
}

const target = (c: BlockServiceClient, name: string, imagePath: string, fencingToken: number) =>
  call(c, "createExport", {
    name,
    source: { $case: "target", value: { imagePath, sizeBytes: 0 } },
    readOnly: false,
    description: "",
    fencingToken,
  });

const proxy = (c: BlockServiceClient, name: string, upstream: Partial<ProxySource>, fencingToken: number) =>
  call(c, "createExport", {
    name,
    source: {
      $case: "proxy",
      value: {
        upstreamUrl: "",
        cachePath: "",
        blockSize: 0,
        startBackgroundCopy: false,
        rateLimitBytesPerSecond: 0,
        upstreamControl: "",
        autoPromote: false,
        ...upstream,
      },
    },
    readOnly: false,
    description: "",
    fencingToken,
  });

/** The changing calls, each with a token. */
const calls = (c: BlockServiceClient, name: string) => ({
  rate: (rateLimitBytesPerSecond: number, fencingToken: number) =>
    call(c, "setRateLimit", { name, rateLimitBytesPerSecond, fencingToken }),
  startCopy: (fencingToken: number) =>
    call(c, "startBackgroundCopy", { name, rateLimitBytesPerSecond: 0, parallelism: 0, fencingToken }),
  stopCopy: (fencingToken: number) => call(c, "stopBackgroundCopy", { name, fencingToken }),
  setUpstream: (upstreamUrl: string, fencingToken: number) =>
    call(c, "setUpstream", { name, upstreamUrl, fencingToken }),
  promote: (fencingToken: number, wait = false) => call(c, "promote", { name, wait, fencingToken }),
  remove: (fencingToken: number) => call(c, "removeExport", { name, fencingToken, discardLocalCopy: false }),
  status: async () => (await call(c, "getExportStatus", { name })).status!,
});

const stale = (p: Promise<unknown>, token: number, name: string, seen: number) =>
  rejectsWithStatus(
    p,
    grpc.status.FAILED_PRECONDITION,
    new RegExp(`^stale fencing token ${token} for export ${name} \\(seen ${seen}\\)$`),
  );

/** An upstream holding a 4 MiB disk as target export `src`. */
async function upstream(): Promise<Server> {
  const a = await server(["--state-dir", "none"]);
  await a.start();
  await target(a.client, "src", image(`src-${Date.now()}.raw`, 4), 0);
  return a;
}

/**
 * The same story on both homes of the export table: older tokens refused, newer ones taking
 * over, 0 admitted, the highest token kept across two kill -9s.
 */
async function fencedAcrossRestarts(stateArgs: string[]) {
  const a = await upstream();
  const b = await server(stateArgs);
  await b.start();
  const e = calls(b.client, "disk0");
  // Migration 5 creates the proxy (no copy yet, as before a switch-over).
  await proxy(b.client, "disk0", { upstreamUrl: a.url("src") }, 5);
  await stale(e.startCopy(4), 4, "disk0", 5);
  assert.not.ok((await e.status()).backgroundCopy?.running, "a refused call changed nothing");
  await e.rate(1 * MiB, 5);
  // Migration 7 takes the export over: from now on migration 5's calls are refused.
  await e.rate(2 * MiB, 7);
  await stale(e.rate(8 * MiB, 5), 5, "disk0", 7);
  await stale(e.startCopy(6), 6, "disk0", 7);
  await stale(e.stopCopy(6), 6, "disk0", 7);
  await stale(e.setUpstream(a.url("src"), 6), 6, "disk0", 7);
  await stale(e.promote(5, true), 5, "disk0", 7);
  await stale(e.remove(5), 5, "disk0", 7);
  const st = await e.status();
  assert.is(st.backgroundCopy?.rateLimitBytesPerSecond, 2 * MiB, "the refused rate was not applied");
  assert.not.ok(st.backgroundCopy?.running);
  // Unfenced (an operator, the CLI): admitted, and it lowers nothing.
  await e.rate(3 * MiB, 0);
  await stale(e.rate(3 * MiB, 6), 6, "disk0", 7);

  // A kill -9: the token raised by SetRateLimit (not by the create) is still there.
  await b.kill9();
  assert.equal((await b.start()).restored, ["disk0"]);
  await stale(e.rate(1 * MiB, 6), 6, "disk0", 7);
  await e.startCopy(8);
  await b.kill9();
  assert.equal((await b.start()).restored, ["disk0"]);
  await stale(e.promote(7, true), 7, "disk0", 8);
  // The newest migration finishes: copy, promote, remove.
  await e.promote(8, true);
  assert.is((await e.status()).blocksLocal, (await e.status()).blocksTotal);
  await e.remove(9);
  await rejectsWithStatus(e.status(), grpc.status.NOT_FOUND, /no export named "disk0"/);
}

t(
  "a call with an older fencing token is refused, a newer one takes over; kept across kill -9 (state dir)",
  () => fencedAcrossRestarts(["--state-dir", join(dir.path, "state-b")]),
);

tr("the same with the export table in Redis", async () => {
  const redis: RedisHandle = await startRedis();
  cleanups.push(() => redis.stop());
  await fencedAcrossRestarts([
    "--store",
    redis.url,
    "--state-key",
    "fencing/b",
    "--cache-dir",
    join(dir.path, "cache-redis"),
  ]);
});

t(
  "the relocation chain: the next migration takes B's export over and the older one's calls are refused",
  async () => {
    // m1 (token 1) moved the VM A→B: B's disk0 proxies A's. The VM moves on B→C (m2, token 2)
    // while B still copies: C's disk0 proxies B's.
    const a = await server(["--state-dir", join(dir.path, "chain-a")]);
    const b = await server(["--state-dir", join(dir.path, "chain-b")]);
    const c = await server(["--state-dir", join(dir.path, "chain-c")]);
    for (const s of [a, b, c]) await s.start();
    await target(a.client, "disk0", image("chain.raw", 4), 0);
    const [atA, atB, atC] = [calls(a.client, "disk0"), calls(b.client, "disk0"), calls(c.client, "disk0")];
    await proxy(b.client, "disk0", { upstreamUrl: a.url("disk0"), upstreamControl: a.grpc }, 1);
    await atB.rate(64 << 10, 1); // m1's copy, slow
    await atB.startCopy(1);
    await proxy(c.client, "disk0", { upstreamUrl: b.url("disk0"), upstreamControl: b.grpc }, 2);
    // m2 pulls its disk whole through B, promotes C's export and releases B's (its source).
    await atC.promote(2, true);
    await atB.remove(2);
    // m1's later calls on B's export: it is gone.
    await rejectsWithStatus(atB.promote(1), grpc.status.NOT_FOUND, /no export named "disk0"/);
    // The VM comes back to B (m3, token 3) before m1 noticed: B's disk0 is m3's now, and every
    // changing call of m1 on it is refused, also across a restart of B.
    await proxy(b.client, "disk0", { upstreamUrl: c.url("disk0"), upstreamControl: c.grpc }, 3);
    await stale(atB.rate(0, 1), 1, "disk0", 3);
    await b.kill9();
    await b.start();
    await stale(atB.promote(1, true), 1, "disk0", 3);
    await stale(atB.remove(1), 1, "disk0", 3);
    assert.is((await atB.status()).export?.upstreamUrl, c.url("disk0"), "m3's export is untouched");
    // m1 releases its source, A's disk0, with its own token: admitted there (nothing newer acted on it).
    await atA.remove(1);
    await rejectsWithStatus(atA.status(), grpc.status.NOT_FOUND, /no export named "disk0"/);
    await atB.promote(3, true);
  },
);

test.run();
