// Export registry, runtime backend swaps, removal, stats, heat tracking, addresses, buffer pool.
import { execFile } from "node:child_process";
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import * as assert from "uvu/assert";
import type { Alloc, Backend, WriteZeroesOptions } from "../../services/block-server/export/backend.js";
import { BufferPool } from "../../services/block-server/export/buffer-pool.js";
import { HeatTracker } from "../../services/block-server/export/heat.js";
import { TargetBackend } from "../../services/block-server/export/target.js";
import * as P from "../../services/block-server/nbd/protocol/index.js";
import { parseListenAddress } from "../../services/block-server/nbd/server/index.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { makeImage, pattern, RawClient, startServer, type TestServer } from "./fixtures/nbd.js";

const MiB = 1 << 20;
const tmp = tempDir("vmhop-nbd-exports-");
const a = join(tmp.path, "a.img");
const b = join(tmp.path, "b.img");
const c = join(tmp.path, "c.img");
let srv: TestServer;
const clients: RawClient[] = [];

/** A backend whose reads wait for a gate: lets a test hold requests in flight. */
class GatedBackend implements Backend {
  private open: Promise<void>;
  release!: () => void;
  started = 0;
  constructor(readonly inner: Backend) {
    this.open = new Promise((r) => {
      this.release = r;
    });
  }
  get size() {
    return this.inner.size;
  }
  get caps() {
    return this.inner.caps;
  }
  get blockSizes() {
    return this.inner.blockSizes;
  }
  async read(offset: number, length: number, alloc?: Alloc) {
    this.started++;
    await this.open;
    return this.inner.read(offset, length, alloc);
  }
  write(o: number, d: Buffer, f: boolean) {
    return this.inner.write(o, d, f);
  }
  flush() {
    return this.inner.flush();
  }
  trim(o: number, l: number, f: boolean) {
    return this.inner.trim(o, l, f);
  }
  writeZeroes(o: number, l: number, x: WriteZeroesOptions) {
    return this.inner.writeZeroes(o, l, x);
  }
  cache(o: number, l: number) {
    return this.inner.cache(o, l);
  }
  blockStatus(o: number, l: number) {
    return this.inner.blockStatus(o, l);
  }
  close() {
    return this.inner.close();
  }
}

async function connect(name: string): Promise<RawClient> {
  const cl = await RawClient.connect(srv.port);
  clients.push(cl);
  await cl.go(name);
  return cl;
}

async function readAt(cl: RawClient, offset: number, length: number, cookie: bigint): Promise<Buffer> {
  cl.request(P.NBD_CMD_READ, offset, length, cookie);
  const r = await cl.simpleReply();
  assert.equal(r, { error: 0, cookie });
  return cl.read(length);
}

test.before(async () => {
  makeImage(a, 4 * MiB, [[0, 4 * MiB]]);
  makeImage(c, 2 * MiB, [[0, MiB]]);
  srv = await startServer(tmp.path, [
    { name: "a", path: a },
    { name: "c", path: c },
  ]);
});

test.after(async () => {
  for (const cl of clients) cl.destroy();
  await srv?.close();
  tmp.cleanup();
});

test("the empty name resolves to the first export; duplicates are refused", () => {
  assert.is(srv.server.exports.resolve("")?.name, "a");
  assert.is(srv.server.exports.resolve("zzz"), undefined);
  assert.throws(() => srv.server.exports.add({ name: "a", backend: new TargetBackend(a) }), /already exists/);
});

test("setBackend swaps under a connected client; in-flight requests finish on the old backend", async () => {
  const e = srv.server.exports.get("a")!;
  const gated = new GatedBackend(e.backend);
  const original = await e.setBackend(gated);
  const cl = await connect("a");
  cl.request(P.NBD_CMD_READ, 0, 4096, 1n);
  while (gated.started === 0) await new Promise((r) => setTimeout(r, 5));
  // b.img: same size, different content.
  copyFileSync(a, b);
  const fd = new TargetBackend(b);
  await fd.write(0, Buffer.alloc(4096, 0xee), false);
  let swapped = false;
  const swap = e.setBackend(fd).then((old) => {
    swapped = true;
    return old;
  });
  await new Promise((r) => setTimeout(r, 20));
  assert.is(swapped, false, "swap must wait for the request in flight");
  gated.release();
  assert.equal(await cl.simpleReply(), { error: 0, cookie: 1n });
  assert.ok((await cl.read(4096)).equals(pattern(0, 4096)), "in-flight read served by the old backend");
  assert.is(await swap, gated);
  // Same connection, now served by the new backend.
  assert.ok((await readAt(cl, 0, 4096, 2n)).every((x) => x === 0xee));
  assert.is(e.backend, fd);
  await original.close();
  await e.setBackend(fd); // same backend: no-op
  let sizeErr = "";
  await e.setBackend(new TargetBackend(c)).catch((err: Error) => {
    sizeErr = err.message;
  });
  assert.match(sizeErr, /size/);
  cl.destroy();
});

test("stats count requests, bytes and connections", async () => {
  const e = srv.server.exports.get("c")!;
  const s0 = e.snapshot();
  const cl = await connect("c");
  await readAt(cl, 0, 8192, 1n);
  cl.request(P.NBD_CMD_WRITE, MiB, 4096, 2n, 0, Buffer.alloc(4096, 1));
  assert.equal(await cl.simpleReply(), { error: 0, cookie: 2n });
  const s1 = e.snapshot();
  assert.is(s1.bytesRead - s0.bytesRead, 8192);
  assert.is(s1.bytesWritten - s0.bytesWritten, 4096);
  assert.is(s1.requests - s0.requests, 2);
  assert.is(s1.connections, 1);
  assert.is(s1.totalConnections - s0.totalConnections, 1);
  assert.ok(e.heat.hottest(1)[0].offset === 0 || e.heat.hottest(1)[0].offset === MiB);
  cl.destroy();
});

test("adding an export at runtime makes it reachable; removing one disconnects only its clients", async () => {
  makeImage(join(tmp.path, "d.img"), MiB, [[0, MiB]]);
  srv.server.exports.add({ name: "d", backend: new TargetBackend(join(tmp.path, "d.img")) });
  const onD = await connect("d");
  const onC = await connect("c");
  assert.ok((await readAt(onD, 0, 512, 1n)).equals(pattern(0, 512)));
  assert.is(await srv.server.exports.remove("d").then((x) => x !== false), true);
  await onD.closed();
  assert.ok((await readAt(onC, 0, 512, 2n)).equals(pattern(0, 512)), "other export's client unaffected");
  const late = await RawClient.connect(srv.port);
  clients.push(late);
  let msg = "";
  await late.go("d").catch((err: Error) => {
    msg = err.message;
  });
  assert.match(msg, /no export named "d"/);
  assert.is(await srv.server.exports.remove("d"), false);
});

test("a backend returning the wrong amount of data gets EIO, and the stream stays in sync", async () => {
  const inner = new TargetBackend(c);
  const liar = new GatedBackend(inner);
  liar.release();
  liar.read = async (o: number, l: number) => (await inner.read(o, l)).subarray(0, l - 1);
  srv.server.exports.add({ name: "liar", backend: liar });
  const cl = await connect("liar");
  cl.request(P.NBD_CMD_READ, 0, 4096, 1n);
  assert.equal(await cl.simpleReply(), { error: P.NBD_EIO, cookie: 1n });
  cl.request(P.NBD_CMD_FLUSH, 0, 0, 2n);
  assert.equal(await cl.simpleReply(), { error: 0, cookie: 2n });
  await srv.server.exports.remove("liar");
});

test("HeatTracker: recency-weighted, hottest first, bounded", () => {
  let now = 0;
  const h = new HeatTracker({ blockSize: 4096, halfLifeMs: 1000, maxBlocks: 8, now: () => now });
  h.record(0, 4096);
  h.record(0, 4096);
  h.record(8192, 100); // block 2
  now = 5000; // old heat decays 32x
  h.record(40960, 4096); // block 10, fresh
  const top = h.hottest(3);
  assert.equal(
    top.map((r) => r.offset),
    [40960, 0, 8192],
  );
  assert.ok(top[0].score > top[1].score && top[1].score > top[2].score);
  h.record(4096 * 100, 4096 * 20); // 20 blocks: pruned back to at most maxBlocks
  assert.ok(h.size <= 10, `tracked ${h.size}`);
  assert.throws(() => new HeatTracker({ blockSize: 3000 }), /power of two/);
  h.clear();
  assert.is(h.hottest().length, 0);
});

test("parseListenAddress accepts host:port, [v6]:port, port, unix:path and rejects junk", () => {
  assert.equal(parseListenAddress("127.0.0.1:10809"), { host: "127.0.0.1", port: 10809 });
  assert.equal(parseListenAddress("[::1]:7"), { host: "::1", port: 7 });
  assert.equal(parseListenAddress("0"), { host: "127.0.0.1", port: 0 });
  assert.equal(parseListenAddress("unix:/tmp/x.sock"), { path: "/tmp/x.sock" });
  for (const bad of ["", "host", "h:99999", "unix:", "h:-1"])
    assert.throws(() => parseListenAddress(bad), /bad listen address/);
});

test("BufferPool reuses released buffers and ignores foreign ones", () => {
  const pool = new BufferPool(1 * MiB, 1024);
  const x = pool.alloc(4096);
  pool.release(x);
  assert.is(pool.alloc(4096), x);
  pool.release(Buffer.alloc(4096)); // not ours: ignored
  assert.is(pool.idleBytes, 0);
  const small = pool.alloc(10);
  pool.release(small);
  assert.is(pool.idleBytes, 0);
  const big = [pool.alloc(MiB), pool.alloc(MiB)];
  for (const y of big) pool.release(y);
  assert.is(pool.idleBytes, MiB, "idle bytes are capped");
});

gate(
  test,
  ["qemu-img", "nbdinfo"],
  "NBD handshake for an export being created",
)(
  "a client asking for an export being created waits for it (QEMU opening a migrating disk); an abandoned create answers unknown",
  async () => {
    const run = promisify(execFile);
    const url = (name: string) => `nbd://127.0.0.1:${srv.port}/${name}`;
    const reg = srv.server.exports;
    assert.ok(reg.reserve("late"));
    assert.not.ok(reg.reserve("late"), "a second reservation of a name is refused");
    // QEMU's NBD client asks while the export is still being created (a proxy opening across a WAN).
    const info = run("qemu-img", ["info", "--output=json", url("late")]);
    let answered = false;
    void info.then(
      () => (answered = true),
      () => (answered = true),
    );
    await new Promise((r) => setTimeout(r, 300));
    assert.not.ok(answered, "the handshake is held while the name is reserved");
    reg.add({ name: "late", backend: new TargetBackend(c) });
    reg.release("late");
    const got = JSON.parse((await info).stdout) as { "virtual-size": number };
    assert.is(got["virtual-size"], 2 * MiB);

    // A create that fails: the held client is told the name is unknown, as it would be at once.
    assert.ok(reg.reserve("doomed"));
    const doomed = run("nbdinfo", ["--size", url("doomed")]);
    await new Promise((r) => setTimeout(r, 100));
    reg.release("doomed");
    const err = await doomed.then(
      () => "",
      (e: Error & { stderr?: string }) => e.stderr ?? e.message,
    );
    assert.match(err, /doomed|unknown|not found|No such/i);
    assert.is(reg.isReserved("doomed"), false);
    await reg.remove("late", { closeBackend: true });
  },
);

test.run();
