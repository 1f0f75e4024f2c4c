// A proxy must serve a block it never fetched as its upstream holds it now (issue 13, item 2):
// a hole when the proxy opened, written upstream afterwards, reads as the new data through
// the proxy, before and after promote, and block status says data. Real clients throughout:
// qemu-io writes into the upstream and reads through the proxy, nbdinfo --map asks block
// status, the upstream is qemu-nbd (writable: the source VM's disk during a migration).
import { closeSync, openSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { NbdClient } from "../../services/block-server/nbd/client/client.js";
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from "../../services/block-server/nbd/protocol/index.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { makeImage, pattern, run, runOk } from "./fixtures/nbd.js";
import { serveProxy } from "./fixtures/proxy-serve.js";
import { startNbdkit, startQemuNbd } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-proxyfresh-");
test.after(() => dir.cleanup());

const SIZE = 8 << 20;
const KIB64 = 64 << 10;
const t = gate(test, ["qemu-nbd", "nbdkit", "qemu-io", "nbdinfo"], "a proxy over an upstream that changes");

/** `nbdinfo --map` of `url`: [offset, length, type] per extent (type: 0 data, 3 hole+zero). */
async function map(url: string): Promise<[number, number, number][]> {
  const out = await runOk("nbdinfo", ["--map", url]);
  return out
    .trim()
    .split("\n")
    .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number) as [number, number, number]);
}

/** The type nbdinfo reports for the byte at `offset`. */
function typeAt(m: [number, number, number][], offset: number): number | undefined {
  return m.find(([o, l]) => offset >= o && offset < o + l)?.[2];
}

/** qemu-io verifying a pattern through `url`: true when every byte matched. */
async function readsPattern(url: string, byte: number, offset: string, length: string): Promise<boolean> {
  const r = await run("qemu-io", [
    "-f",
    "raw",
    "-r",
    "-c",
    `read -P 0x${byte.toString(16)} ${offset} ${length}`,
    url,
  ]);
  return r.code === 0 && !/Pattern verification failed|error|failed/i.test(r.stdout + r.stderr);
}

t(
  "holes written upstream after the proxy opened read as the new data, before and after promote; block status agrees",
  async () => {
    const image = join(dir.path, "src.img");
    makeImage(image, SIZE, [[0, 1 << 20]]); // data in the first MiB, holes after
    const up = await startQemuNbd(image); // writable and shared, as a source export is
    const cache = join(dir.path, "src.cache");
    const p = await serveProxy({ upstreamUrl: up.url, cachePath: cache });
    try {
      assert.not.ok(p.proxy.stats().upstream.zeroesTrusted, "a writable upstream's holes may fill");
      const before = await map(p.url);
      assert.is(typeAt(before, 2 << 20), 3, "2 MiB is a hole upstream when the proxy opens");
      // The source changes after the proxy learned its holes: two holes get data.
      await runOk("qemu-io", [
        "-f",
        "raw",
        "-c",
        "write -P 0xab 2M 64k",
        "-c",
        "write -P 0xcd 5M 64k",
        up.url,
      ]);

      // Block status of blocks not yet local follows the upstream now.
      const after = await map(p.url);
      assert.is(typeAt(after, 2 << 20), 0, "block status: 2 MiB holds data now");
      assert.is(typeAt(after, 5 << 20), 0, "block status: 5 MiB holds data now");
      assert.is(typeAt(after, (2 << 20) + KIB64) ?? 0, 3, "its neighbour is still a hole");
      // REQ_ONE: one extent, as the upstream says now.
      const c = await NbdClient.connect(p.url);
      assert.equal(await c.blockStatus(2 << 20, 1 << 20, { reqOne: true }), [{ length: KIB64, flags: 0 }]);
      const [hole] = await c.blockStatus((2 << 20) + KIB64, KIB64, { reqOne: true });
      assert.is(hole.flags, NBD_STATE_HOLE | NBD_STATE_ZERO);
      await c.disconnect();

      // Reads: the new data, not the zeroes learned at open.
      assert.ok(await readsPattern(p.url, 0xab, "2M", "64k"), "2 MiB reads as the upstream's new data");
      assert.ok(await readsPattern(p.url, 0, "2112k", "64k"), "the hole beside it reads as zeroes");

      // Promote: 5 MiB was never read; the copy must not make it a local hole unchecked.
      const exp = p.server.exports.get("disk")!;
      const target = await p.proxy.promote({ wait: true });
      const old = await exp.setBackend(target);
      await old.close();
      assert.ok(await readsPattern(p.url, 0xcd, "5M", "64k"), "5 MiB after promote: the upstream's data");
      assert.ok(await readsPattern(p.url, 0xab, "2M", "64k"), "2 MiB after promote");
      assert.ok(await readsPattern(p.url, 0, "6M", "2M"), "holes stay zeroes");
      assert.is(typeAt(await map(p.url), 5 << 20), 0, "block status after promote: data");
      const fd = openSync(cache, "r");
      const got = Buffer.alloc(KIB64);
      readSync(fd, got, 0, KIB64, 5 << 20);
      closeSync(fd);
      assert.ok(got.equals(Buffer.alloc(KIB64, 0xcd)), "the cache file holds it");
      // Checked holes are stored as holes: the cache is not filled with zeroes.
      assert.ok(statSync(cache).blocks * 512 < SIZE / 2, "the cache stays sparse");
      const c2 = await NbdClient.connect(p.url);
      assert.ok(
        (await c2.read(0, 1 << 20)).equals(pattern(0, 1 << 20)),
        "and the data it had from the start",
      );
      await c2.disconnect();
    } finally {
      await p.stop();
      await up.stop();
    }
  },
);

t(
  "a read-only upstream keeps the zero map's savings: its holes are neither fetched nor asked about",
  async () => {
    const image = join(dir.path, "ro.img");
    makeImage(image, SIZE, [[0, 1 << 20]]);
    const up = await startNbdkit("file", [image], { extra: ["-r"] });
    const p = await serveProxy({ upstreamUrl: up.url, cachePath: join(dir.path, "ro.cache") });
    try {
      assert.ok(p.proxy.stats().upstream.zeroesTrusted);
      await p.proxy.settled();
      await up.kill(); // block status and hole reads must not need it
      assert.is(typeAt(await map(p.url), 4 << 20), 3);
      assert.ok(await readsPattern(p.url, 0, "2M", "4M"), "holes read as zeroes with the upstream gone");
      assert.is(p.proxy.stats().bytesFetchedOnDemand, 0);
    } finally {
      await p.stop();
      await up.stop();
    }
  },
);

test.run();
