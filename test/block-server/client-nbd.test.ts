import { randomBytes } from "node:crypto";
import { readlinkSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { closeFd } from "../../services/block-server/export/libc.js";
import {
  NbdClient,
  NbdConnectionError,
  NbdHandshakeError,
  NbdRequestError,
} from "../../services/block-server/nbd/client/client.js";
import { formatNbdUrl, parseNbdUrl } from "../../services/block-server/nbd/client/url.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { inheritedOf } from "../helpers/fds.js";
import { test } from "../helpers/uvu.js";
import { makeImage, startNbdkit, startQemuNbd } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-client-");
test.after(() => dir.cleanup());

test("URL parsing: tcp, unix, defaults and clear errors", () => {
  assert.equal(parseNbdUrl("nbd://10.0.0.1:10900/disk0"), {
    transport: "tcp",
    host: "10.0.0.1",
    port: 10900,
    exportName: "disk0",
  });
  assert.equal(parseNbdUrl("nbd://host/"), { transport: "tcp", host: "host", port: 10809, exportName: "" });
  assert.equal(parseNbdUrl("nbd://[::1]:5/a%20b"), {
    transport: "tcp",
    host: "::1",
    port: 5,
    exportName: "a b",
  });
  assert.equal(parseNbdUrl("nbd+unix:///vm1?socket=/run/b.sock"), {
    transport: "unix",
    path: "/run/b.sock",
    exportName: "vm1",
  });
  assert.is(formatNbdUrl(parseNbdUrl("nbd://[::1]:5/x")), "nbd://[::1]:5/x");
  assert.throws(() => parseNbdUrl("disk.img"), /bad NBD URL "disk.img": not a URL/);
  assert.throws(() => parseNbdUrl("http://h/x"), /unsupported scheme http/);
  assert.throws(() => parseNbdUrl("nbd+unix:///x"), /missing \?socket=PATH/);
  assert.throws(() => parseNbdUrl("nbd+unix://h/x?socket=/s"), /take no host/);
  assert.throws(() => parseNbdUrl("nbds://h/x"), /TLS is not supported/);
  assert.throws(() => parseNbdUrl("nbd://h:0/x"), /bad port/);
});

const real = gate(test, ["qemu-nbd", "nbdkit"], "NBD client against real servers");

real("qemu-nbd over TCP and unix: info, pipelined reads and writes, flush, block status", async () => {
  const img = join(dir.path, "q.img");
  for (const socket of [undefined, join(dir.path, "q.sock")]) {
    const data = makeImage(img, 4 << 20);
    const srv = await startQemuNbd(img, { socket });
    try {
      const c = await NbdClient.connect(srv.url);
      assert.is(c.size, 4 << 20);
      assert.ok(c.structured);
      assert.ok(c.metaContextId !== undefined);
      assert.ok(c.blockSizes && c.blockSizes.minimum >= 1);
      // 64 reads at once, answered by cookie.
      const reads = [];
      for (let i = 0; i < 64; i++) reads.push(c.read(i * 65536, 65536));
      const got = Buffer.concat(await Promise.all(reads));
      assert.ok(got.equals(data), "reads match the image");
      const w = randomBytes(10000);
      await c.write(12345, w, { fua: true });
      await c.flush();
      assert.ok((await c.read(12345, 10000)).equals(w));
      // Zero region reported as zero by base:allocation (qemu-nbd: file hole or data).
      const ext = await c.blockStatus(0, 4 << 20);
      assert.ok(ext.length >= 1);
      assert.ok(ext.reduce((a, e) => a + e.length, 0) <= 4 << 20);
      await c.writeZeroes(0, 4096);
      assert.ok((await c.read(0, 4096)).equals(Buffer.alloc(4096)));
      await c.trim(1 << 20, 65536);
      await c.cache(0, 65536);
      await c.disconnect();
      assert.ok(c.closed);
      assert.instance(await c.read(0, 1).catch((x) => x), NbdConnectionError);
    } finally {
      await srv.stop();
    }
  }
});

real("nbdkit: structured reads with holes, simple replies (--no-sr), EXPORT_NAME fallback", async () => {
  const srv = await startNbdkit("memory", ["size=8M"]);
  try {
    const c = await NbdClient.connect(srv.url);
    const w = randomBytes(70000);
    await c.write(1 << 20, w);
    // Range mixing hole and data: nbdkit answers with hole chunks for the rest.
    const got = await c.read((1 << 20) - 4096, 80000);
    assert.ok(got.subarray(0, 4096).equals(Buffer.alloc(4096)));
    assert.ok(got.subarray(4096, 4096 + 70000).equals(w));
    const ext = await c.blockStatus(0, 8 << 20);
    assert.ok(
      ext.some((e) => e.flags === 0),
      "some data extent",
    );
    assert.ok(
      ext.some((e) => (e.flags & 1) === 1),
      "some hole extent",
    );
    const old = await NbdClient.connect(srv.url, { forceExportName: true, structuredReplies: false });
    assert.is(old.size, 8 << 20);
    assert.not.ok(old.structured);
    assert.ok((await old.read(1 << 20, 70000)).equals(w));
    assert.match(String(await old.blockStatus(0, 1).catch((x) => x)), /base:allocation was not negotiated/);
    await old.disconnect();
    await c.disconnect();
  } finally {
    await srv.stop();
  }
  const nosr = await startNbdkit("memory", ["size=1M"], { extra: ["--no-sr"] });
  try {
    const c = await NbdClient.connect(nosr.url);
    assert.not.ok(c.structured);
    await c.write(0, Buffer.alloc(512, 7));
    assert.ok((await c.read(0, 512)).equals(Buffer.alloc(512, 7)));
    await c.disconnect();
  } finally {
    await nosr.stop();
  }
});

real("server errors and unknown exports are clear errors", async () => {
  const srv = await startNbdkit("memory", ["size=1M"], { extra: ["--read-only"] });
  try {
    const c = await NbdClient.connect(srv.url);
    assert.ok(c.readOnly);
    const e = await c.write(0, Buffer.alloc(512)).catch((x) => x);
    assert.instance(e, NbdRequestError);
    assert.is(e.errno, "EPERM");
    await c.disconnect();
  } finally {
    await srv.stop();
  }
  const img = join(dir.path, "u.img");
  makeImage(img, 1 << 20);
  const q = await startQemuNbd(img, { name: "right" });
  try {
    const e = await NbdClient.connect(q.url.replace("/right", "/wrong")).catch((x) => x);
    assert.instance(e, NbdHandshakeError);
    assert.match(e.message, /refused export "wrong": unknown export/);
  } finally {
    await q.stop();
  }
  const e = await NbdClient.connect(q.url).catch((x) => x);
  assert.instance(e, NbdConnectionError);
});

real("peer vanishing mid-transfer rejects every pending request, nothing hangs", async () => {
  // Every read waits 2 s in nbdkit, so they are all pending when it is killed.
  const slow = await startNbdkit("pattern", ["size=4M", "rdelay=2"], { filters: ["delay"] });
  const c = await NbdClient.connect(slow.url);
  let closed: Error | undefined;
  c.on("close", (err) => {
    closed = err;
  });
  const reads = [0, 1, 2, 3].map((i) =>
    c.read(i * 4096, 4096).then(
      () => "ok",
      (x) => x,
    ),
  );
  await new Promise((r) => setTimeout(r, 100));
  assert.is(c.inFlight, 4);
  await slow.kill();
  const results = await Promise.all(reads);
  for (const r of results) {
    assert.instance(r, NbdConnectionError);
    assert.match(r.message, /closed the connection with 4 request\(s\) pending/);
  }
  assert.ok(closed);
  assert.is(c.inFlight, 0);
  const later = await c.read(0, 1).catch((x) => x);
  assert.instance(later, NbdConnectionError);
});

real(
  "a handed-over connection's descriptor is close-on-exec: processes spawned later do not hold it",
  async () => {
    const img = join(dir.path, "h.img");
    makeImage(img, 1 << 20);
    const srv = await startNbdkit("file", [img]);
    let fd = -1;
    try {
      const c = await NbdClient.connect(srv.url);
      fd = c.detachFd();
      const socket = readlinkSync(`/proc/self/fd/${fd}`);
      assert.match(socket, /^socket:\[\d+\]$/);
      // An open copy in a child would keep the connection up after we close ours.
      assert.equal(await inheritedOf([socket]), []);
    } finally {
      if (fd >= 0) closeFd(fd);
      await srv.kill();
    }
  },
);

test.run();
