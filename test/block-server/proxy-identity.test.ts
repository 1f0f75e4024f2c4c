// Another disk at the upstream's address (issue 13, item 3): the upstream restarts on the
// same port serving a different image of the same size. The proxy must refuse it on
// reconnect as a proxy restart would (same identity check), say so in its log, and fail reads
// that need the upstream with EIO: never serve the other disk's data, never a mix. When the
// right disk comes back it is taken again.
import { closeSync, openSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { NbdClient, NbdRequestError } from "../../services/block-server/nbd/client/client.js";
import { parseNbdUrl } from "../../services/block-server/nbd/client/url.js";
import { BitmapFile } from "../../services/block-server/proxy/bitmap-file.js";
import {
  FINGERPRINT_SAMPLE,
  fingerprint,
  identityOf,
  isFingerprint,
} from "../../services/block-server/proxy/identity.js";
import { createLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { until, within } from "../helpers/wait.js";
import { run } from "./fixtures/nbd.js";
import { serveProxy } from "./fixtures/proxy-serve.js";
import { makeImage, type RunningServer, startNbdkit } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-proxyid-");
test.after(() => dir.cleanup());
const SIZE = 8 << 20;
const BS = 65536;
const t = gate(test, ["nbdkit", "qemu-io"], "a proxy whose upstream is replaced by another disk");

test("fingerprint: 4 KiB at each end, one round of reads; caches of the whole-block scheme still checked", async () => {
  const disk = Buffer.alloc(1 << 20);
  const asked: [number, number][] = [];
  const read = async (o: number, l: number) => {
    asked.push([o, l]);
    return disk.subarray(o, o + l);
  };
  const a = await fingerprint(read, disk.length);
  assert.equal(asked, [
    [0, FINGERPRINT_SAMPLE],
    [disk.length - FINGERPRINT_SAMPLE, FINGERPRINT_SAMPLE],
  ]);
  assert.ok(isFingerprint(a) && a.startsWith("sha256s:"));
  // What identifies a disk sits at its ends: a changed GPT header (sector 1) or last sector shows.
  disk[512] = 1;
  const b = await fingerprint(read, disk.length);
  assert.is.not(b, a);
  disk[disk.length - 1] = 1;
  assert.is.not(await fingerprint(read, disk.length), b);
  // A tiny disk is read once, whole.
  asked.length = 0;
  await fingerprint(read, 1000);
  assert.equal(asked, [[0, 1000]]);
  // A cache created with the first scheme (whole blocks) is checked by that scheme.
  asked.length = 0;
  const old = await identityOf(read, disk.length, BS, "sha256:0123");
  assert.ok(old.startsWith("sha256:") && !old.startsWith("sha256s:"));
  assert.equal(asked, [
    [0, BS],
    [disk.length - BS, BS],
  ]);
  assert.is(await identityOf(read, disk.length, BS, "disk-42"), "disk-42", "a given name is taken as given");
});

t(
  "an upstream restarted with another disk of the same size is refused on reconnect: EIO, never its data",
  async () => {
    const a = join(dir.path, "a.img");
    const dataA = makeImage(a, SIZE);
    const b = join(dir.path, "b.img");
    const dataB = makeImage(b, SIZE); // same size, other content
    const servers: RunningServer[] = [];
    const start = async (image: string, port?: number) => {
      const s = await startNbdkit("file", [image], port ? { port } : {});
      servers.push(s);
      return s;
    };
    const upA = await start(a);
    const addr = parseNbdUrl(upA.url);
    const port = addr.transport === "tcp" ? addr.port : 0;
    const logged: string[] = [];
    const log = createLogger(
      {},
      {
        level: "debug",
        sink: (line) => {
          logged.push(line);
          process.stderr.write(line + "\n");
        },
      },
    );
    const p = await serveProxy({
      upstreamUrl: upA.url,
      cachePath: join(dir.path, "a.cache"),
      retryWindowMs: 300,
      backoffMinMs: 20,
      backoffMaxMs: 100,
      log,
    });
    const events: string[] = [];
    for (const ev of ["upstream-lost", "upstream-refused", "upstream-restored"])
      p.proxy.on(ev, () => events.push(ev));
    try {
      const c = await NbdClient.connect(p.url);
      assert.ok((await c.read(0, 2 * BS)).equals(dataA.subarray(0, 2 * BS)), "two blocks of A made local");

      await upA.kill();
      const upB = await start(b, port);
      // Once the proxy has tried the new server (taken it or refused it)…
      await until(
        "the proxy to try the server now at the address",
        () => p.proxy.stats().upstream.connected || p.proxy.stats().upstream.refused,
        10_000,
      );
      // Reads that need the upstream fail with EIO; none returns B's bytes (or a mix).
      for (const off of [4 << 20, SIZE - BS, 3 * BS]) {
        const got = await c.read(off, BS).then(
          (buf) => buf,
          (e) => e,
        );
        if (Buffer.isBuffer(got))
          assert.unreachable(
            `read at ${off} served ${got.equals(dataB.subarray(off, off + BS)) ? "the other disk's data" : "data"} instead of failing`,
          );
        assert.instance(got, NbdRequestError, `read at ${off} must fail`);
        assert.is((got as NbdRequestError).errno, "EIO");
      }
      const q = await run("qemu-io", ["-f", "raw", "-r", "-c", `read 4M 64k`, p.url]);
      assert.match(q.stdout + q.stderr, /Input\/output error/, "qemu-io gets EIO too");
      // A read spanning local and missing blocks fails whole: no mix of A and nothing.
      assert.instance(await c.read(BS, 2 * BS).catch((e) => e), NbdRequestError);
      // …it refused it, and says why.
      const refused = String(p.proxy.stats().upstream.refused);
      assert.match(
        refused,
        /refusing upstream .*: it holds a different disk \(fingerprint sha256s:\w+, expected sha256s:\w+\)/,
      );
      assert.ok(events.includes("upstream-refused"), "an event says so");
      assert.ok(
        logged.some((l) => /upstream refused: it serves another disk/.test(l) && /"level":"error"/.test(l)),
        "an error in the log says so",
      );
      assert.not.ok(p.proxy.stats().upstream.connected);

      // Local blocks are A's and still served.
      assert.ok((await c.read(0, 2 * BS)).equals(dataA.subarray(0, 2 * BS)));
      // The background copy takes nothing from B either.
      p.proxy.startCopy();
      await new Promise((r) => setTimeout(r, 300));
      await p.proxy.stopCopy();
      assert.is(p.proxy.stats().blocksLocal, 2, "nothing copied from the other disk");

      // The right disk comes back at the address: taken again, reads are A's.
      await upB.kill();
      await start(a, port);
      await until("the proxy to take disk A back", () => p.proxy.stats().upstream.connected, 10_000);
      assert.is(p.proxy.stats().upstream.refused, undefined);
      assert.ok(events.includes("upstream-restored"));
      const all = await within(c.read(0, SIZE), 10_000, "a whole read of disk A");
      assert.ok(all.equals(dataA), "every byte is A's");
      assert.not.ok(all.subarray(4 << 20, (4 << 20) + BS).equals(dataB.subarray(4 << 20, (4 << 20) + BS)));
      await c.disconnect();
    } finally {
      await p.stop();
      for (const s of servers) await s.stop();
    }
  },
);

t(
  "a writable upstream whose first block changed before the copy started: its fingerprint retaken then, a later reconnect accepted",
  async () => {
    const a = join(dir.path, "w.img");
    makeImage(a, SIZE);
    const servers: RunningServer[] = [];
    const start = async (port?: number) => {
      const s = await startNbdkit("file", [a], port ? { port } : {});
      servers.push(s);
      return s;
    };
    const up = await start();
    const addr = parseNbdUrl(up.url);
    const port = addr.transport === "tcp" ? addr.port : 0;
    const cachePath = join(dir.path, "w.cache");
    const p = await serveProxy({
      upstreamUrl: up.url,
      cachePath,
      retryWindowMs: 300,
      backoffMinMs: 20,
      backoffMaxMs: 100,
    });
    try {
      const opened = p.proxy.identity;
      // The source VM writes its first block after the proxy opened, then stops (the switch-over).
      const fd = openSync(a, "r+");
      writeSync(fd, Buffer.alloc(BS, 0x5a), 0, BS, 0);
      closeSync(fd);
      const data = readFileSync(a);
      p.proxy.setRateLimit(BS); // slow: the copy is still running when the upstream drops
      p.proxy.startCopy();
      await until("the fingerprint retaken", () => p.proxy.identity !== opened, 10_000);
      assert.is(
        (await BitmapFile.peekHeader(`${cachePath}.bitmap`)).identity,
        p.proxy.identity,
        "saved in the bitmap header",
      );
      // The upstream drops and comes back with the same (changed) disk: accepted, the copy ends right.
      await up.kill();
      await start(port);
      await until("the proxy to take the disk back", () => p.proxy.stats().upstream.connected, 10_000);
      assert.is(p.proxy.stats().upstream.refused, undefined);
      p.proxy.setRateLimit(0);
      await within(p.proxy.whenCopied(), 30_000, "the copy");
      assert.ok(readFileSync(cachePath).equals(data), "the cache holds the disk as the upstream left it");
    } finally {
      await p.stop();
      for (const s of servers) await s.stop();
    }
  },
);

test.run();
