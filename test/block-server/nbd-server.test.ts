// The NBD server against real clients: nbdinfo, nbdcopy, qemu-img, qemu-io.
import { readFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { notSentLowat } from "../../services/block-server/export/libc.js";
import { NbdClient } from "../../services/block-server/nbd/client/client.js";
import {
  isLoopback,
  LOOPBACK_NOTSENT_LOWAT,
  tuneReplySocket,
} from "../../services/block-server/nbd/server/socket-tuning.js";
import { socketFd } from "../../services/block-server/nbd/socket-fd.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { makeImage, pattern, run, runOk, startServer, type TestServer } from "./fixtures/nbd.js";

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const REGIONS: [number, number][] = [
  [0, 64 * 1024],
  [8 * MiB, 4 * MiB],
  [40 * MiB + 4096, 300 * 1024],
];

const tmp = tempDir("vmhop-nbd-server-");
const img = join(tmp.path, "disk0.img");
const img1 = join(tmp.path, "disk1.img");
const ro = join(tmp.path, "ro.img");
let srv: TestServer;

const t = gate(test, ["nbdinfo", "nbdcopy", "qemu-img", "qemu-io"], "NBD server with real clients");

t.before(async () => {
  makeImage(img, SIZE, REGIONS);
  makeImage(img1, 4 * MiB, [[0, 4 * MiB]]);
  makeImage(join(tmp.path, "disk1.orig"), 4 * MiB, [[0, 4 * MiB]]);
  makeImage(ro, 2 * MiB, [[MiB, MiB]]);
  srv = await startServer(tmp.path, [
    { name: "disk0", path: img, description: "the main disk" },
    { name: "disk1", path: img1 },
    { name: "ro", path: ro, readOnly: true },
  ]);
});

t.after(async () => {
  await srv?.close();
  tmp.cleanup();
});

t("nbdinfo reports size, description, contexts and capabilities", async () => {
  const info = JSON.parse(await runOk("nbdinfo", ["--json", srv.uri("disk0")]));
  const e = info.exports[0];
  assert.is(e["export-size"], SIZE);
  assert.is(e.description, "the main disk");
  assert.ok(e.contexts.includes("base:allocation"));
  assert.is(e.is_read_only, false);
  for (const cap of [
    "can_flush",
    "can_fua",
    "can_trim",
    "can_zero",
    "can_fast_zero",
    "can_cache",
    "can_df",
    "can_multi_conn",
  ])
    assert.is(e[cap], true, cap);
  assert.is(e.block_size_maximum, 32 * MiB);
  assert.is(info.protocol, "newstyle-fixed");
  assert.is((await run("nbdinfo", ["--can", "trim", srv.uri("disk0")])).code, 0);
  assert.is((await run("nbdinfo", ["--is", "read-only", srv.uri("disk0")])).code, 2);
  assert.is((await run("nbdinfo", ["--is", "read-only", srv.uri("ro")])).code, 0);
  assert.is((await run("nbdinfo", ["--can", "trim", srv.uri("ro")])).code, 2);
});

t("nbdinfo --list over a unix socket lists every export", async () => {
  const info = JSON.parse(await runOk("nbdinfo", ["--list", "--json", srv.unixUri("")]));
  const names = info.exports.map((e: { "export-name": string }) => e["export-name"]).sort();
  assert.equal(names, ["disk0", "disk1", "ro"]);
});

t(
  "a client on this host is served with reno congestion control, not the system's pacing default",
  async () => {
    for (const a of ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"]) assert.ok(isLoopback(a), a);
    for (const a of ["10.0.0.1", "128.0.0.1", "::2", "fe80::1", "::ffff:10.0.0.1", undefined, ""])
      assert.not.ok(isLoopback(a), String(a));
    const c = await NbdClient.connect(srv.uri("disk0"));
    try {
      // The server's end of the connection: its local port is the server's.
      const ss = await run("ss", ["-tinH", "state", "established", `( sport = :${srv.port} )`]);
      assert.match(ss.stdout, /\breno\b/, ss.stdout);
    } finally {
      await c.disconnect();
    }
  },
);

test("a loopback client's socket holds at most LOOPBACK_NOTSENT_LOWAT unsent; a remote one keeps the default", async () => {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const accepted = new Promise<net.Socket>((r) => server.once("connection", r));
  const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
  const sock = await accepted;
  try {
    const fd = socketFd(sock);
    assert.is(notSentLowat(fd), 0, "a fresh socket has no unsent cap of its own");
    tuneReplySocket(fd, "10.0.0.1");
    assert.is(notSentLowat(fd), 0, "a remote client got the loopback cap");
    tuneReplySocket(fd, sock.remoteAddress);
    assert.is(notSentLowat(fd), LOOPBACK_NOTSENT_LOWAT);
  } finally {
    client.destroy();
    sock.destroy();
    server.close();
  }
});

t("unknown export name is refused", async () => {
  const r = await run("nbdinfo", [srv.uri("nope")]);
  assert.is.not(r.code, 0);
  assert.match(r.stderr, /nope|unknown|not found|server/i);
});

t("nbdinfo --map shows the sparse layout", async () => {
  const map = JSON.parse(await runOk("nbdinfo", ["--map", "--json", srv.uri("disk0")])) as {
    offset: number;
    length: number;
    type: number;
  }[];
  // Sum of data extents equals what we wrote (regions are 4 KiB-aligned in size).
  const data = map.filter((m) => (m.type & 1) === 0);
  const covered = map.reduce((n, m) => n + m.length, 0);
  assert.is(covered, SIZE);
  assert.is(
    data.reduce((n, m) => n + m.length, 0),
    REGIONS.reduce((n, [, l]) => n + l, 0),
  );
  for (const [off] of REGIONS)
    assert.ok(
      data.some((m) => m.offset <= off && off < m.offset + m.length),
      `data at ${off}`,
    );
});

t("nbdcopy (4 connections, multi-conn) copies byte for byte", async () => {
  const out = join(tmp.path, "copy.img");
  const before = srv.server.exports.get("disk0")!.stats.totalConnections;
  await runOk("nbdcopy", ["--connections=4", "--threads=4", srv.uri("disk0"), out]);
  assert.ok(readFileSync(out).equals(readFileSync(img)), "copy differs from image");
  assert.ok(srv.server.exports.get("disk0")!.stats.totalConnections - before >= 4, "expected multi-conn");
});

t("nbdcopy over the unix socket, and to null:", async () => {
  const out = join(tmp.path, "copy1.img");
  await runOk("nbdcopy", [srv.unixUri("disk1"), out]);
  assert.ok(readFileSync(out).equals(readFileSync(img1)));
  await runOk("nbdcopy", [srv.uri("disk0"), "null:"]);
});

t("nbdcopy into an export (4 connections) writes byte for byte", async () => {
  const src = join(tmp.path, "src.img");
  makeImage(src, 4 * MiB, [
    [0, 3 * MiB],
    [3 * MiB + 8192, 4096],
  ]);
  await runOk("nbdcopy", ["--connections=4", "--threads=4", src, srv.uri("disk1")]);
  assert.ok(readFileSync(img1).equals(readFileSync(src)), "export differs from the source");
  // Put disk1 back as the later tests expect it.
  await runOk("nbdcopy", [join(tmp.path, "disk1.orig"), srv.uri("disk1")]);
  assert.ok(readFileSync(img1).equals(pattern(0, 4 * MiB)));
});

t("qemu-img info, convert, compare and map", async () => {
  const info = JSON.parse(await runOk("qemu-img", ["info", "--output=json", srv.uri("disk0")]));
  assert.is(info["virtual-size"], SIZE);
  const q = join(tmp.path, "conv.qcow2");
  await runOk("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", srv.uri("disk0"), q]);
  assert.match(
    await runOk("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", srv.uri("disk0"), q]),
    /identical/,
  );
  assert.match(
    await runOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", img, srv.uri("disk0")]),
    /identical/,
  );
  const map = JSON.parse(
    await runOk("qemu-img", ["map", "--output=json", "-f", "raw", srv.uri("disk0")]),
  ) as {
    start: number;
    length: number;
    data: boolean;
  }[];
  const dataBytes = map.filter((m) => m.data).reduce((n, m) => n + m.length, 0);
  assert.is(
    dataBytes,
    REGIONS.reduce((n, [, l]) => n + l, 0),
  );
});

t("qemu-io writes (plain, FUA, zero, discard) land in the image", async () => {
  const uri = srv.uri("disk0");
  const out = await runOk("qemu-io", [
    "-f",
    "raw",
    "-c",
    "write -P 0xab 1M 64k",
    "-c",
    "read -P 0xab 1M 64k",
    "-c",
    "write -f -P 0xcd 2M 4k",
    "-c",
    "read -P 0xcd 2M 4k",
    "-c",
    "write -z 8M 1M",
    "-c",
    "read -P 0 8M 1M",
    "-c",
    "discard 10M 1M",
    "-c",
    "flush",
    uri,
  ]);
  assert.not.match(out, /fail|error|mismatch/i);
  const f = readFileSync(img);
  assert.ok(f.subarray(MiB, MiB + 65536).every((b) => b === 0xab));
  assert.ok(f.subarray(2 * MiB, 2 * MiB + 4096).every((b) => b === 0xcd));
  assert.ok(f.subarray(8 * MiB, 9 * MiB).every((b) => b === 0));
  // Untouched data around the writes is intact.
  assert.ok(f.subarray(11 * MiB, 12 * MiB).equals(pattern(11 * MiB, MiB)));
  // A verifying read of a wrong pattern fails (the check itself can fail).
  const bad = await run("qemu-io", ["-f", "raw", "-c", "read -P 0x11 1M 4k", uri]);
  assert.match(bad.stdout + bad.stderr, /Pattern verification failed/);
});

t("writes to one export do not touch another", async () => {
  await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 0 4k", srv.uri("disk1")]);
  assert.ok(
    readFileSync(img1)
      .subarray(0, 4096)
      .every((b) => b === 0x5a),
  );
  assert.ok(readFileSync(img1).subarray(4096, 8192).equals(pattern(4096, 4096)));
  assert.ok(readFileSync(img).subarray(0, 4096).equals(pattern(0, 4096)));
});

t("read-only export serves reads and refuses writes", async () => {
  const before = readFileSync(ro);
  assert.match(await runOk("qemu-io", ["-f", "raw", "-r", "-c", "read 1M 4k", srv.uri("ro")]), /read 4096/);
  const w = await run("qemu-io", ["-f", "raw", "-c", "write -P 1 1M 4k", srv.uri("ro")]);
  assert.match(w.stdout + w.stderr, /read-only|Operation not permitted|denied/i);
  assert.ok(readFileSync(ro).equals(before));
});

t.run();
