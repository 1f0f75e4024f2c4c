// The upstream misbehaving: killed mid-read (EIO after a bounded retry counted from the loss,
// other clients and local blocks unaffected, reconnect when it is back), taking one client at a time, and
// re-pointed at another replica.
import { copyFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { NbdClient, NbdRequestError } from "../../services/block-server/nbd/client/client.js";
import { parseNbdUrl } from "../../services/block-server/nbd/client/url.js";
import { createLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { serveProxy } from "./fixtures/proxy-serve.js";
import { makeImage, startNbdkit, startQemuNbd } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-proxyup-");
test.after(() => dir.cleanup());
const SIZE = 8 << 20;
const t = gate(test, ["qemu-nbd", "nbdkit"], "proxy upstream failures");

t(
  "upstream killed mid-read: EIO after a bounded retry, local blocks and other clients keep working, then reconnect",
  async () => {
    const image = join(dir.path, "a.img");
    const data = makeImage(image, SIZE);
    // Every upstream read takes 300 ms, so the cold read below is surely in flight when killed.
    const up = await startNbdkit("file", [image, "rdelay=300ms"], { filters: ["delay"] });
    const addr = parseNbdUrl(up.url);
    const port = addr.transport === "tcp" ? addr.port : 0;
    const p = await serveProxy({
      upstreamUrl: up.url,
      cachePath: join(dir.path, "a.cache"),
      retryWindowMs: 2000,
      backoffMinMs: 50,
      backoffMaxMs: 100,
    });
    let restarted: Awaited<ReturnType<typeof startNbdkit>> | undefined;
    try {
      const events: string[] = [];
      let lostAt = 0;
      p.proxy.on("upstream-lost", () => {
        events.push("lost");
        lostAt = performance.now();
      });
      p.proxy.on("upstream-restored", () => events.push("restored"));
      const a = await NbdClient.connect(p.url);
      const b = await NbdClient.connect(p.url);
      assert.ok((await a.read(0, 1 << 20)).equals(data.subarray(0, 1 << 20)), "warm the first MiB");
      const cold = a.read(4 << 20, 65536).then(
        () => "ok",
        (e) => e,
      );
      await new Promise((r) => setTimeout(r, 100));
      await up.kill();
      const e = await cold;
      assert.instance(e, NbdRequestError);
      assert.is(e.errno, "EIO");
      assert.ok(events.includes("lost"));
      const s = p.proxy.stats();
      assert.not.ok(s.upstream.connected);
      assert.match(String(s.upstream.lastError), /closed|refused|ECONNREFUSED/);
      // Other clients, and local blocks, are fine.
      assert.ok((await b.read(65536, 65536)).equals(data.subarray(65536, 131072)));
      assert.ok(
        (await a.read(0, 4096)).equals(data.subarray(0, 4096)),
        "the failed client's connection still works",
      );
      await b.write(6 << 20, Buffer.alloc(65536, 1));
      assert.ok((await b.read(6 << 20, 65536)).equals(Buffer.alloc(65536, 1)));
      // The retry window counts from the loss, which has passed: a cold read now fails at once,
      // not after a window of its own (asked before the upstream is started again, it would
      // otherwise wait for the reconnect and succeed). The cold read above was asked before the
      // loss, so its window ended first: wait for the loss's own.
      await new Promise((r) => setTimeout(r, Math.max(0, lostAt + 2000 + 100 - performance.now())));
      const late = a.read(5 << 20, 65536).then(
        () => "ok",
        (e) => e,
      );
      // The upstream comes back on the same port: the proxy reconnects and the read works.
      restarted = await startNbdkit("file", [image], { port });
      const e2 = await late;
      assert.instance(e2, NbdRequestError, "a read past the window since the loss: EIO");
      assert.is(e2.errno, "EIO");
      for (let i = 0; i < 100 && !p.proxy.stats().upstream.connected; i++)
        await new Promise((r) => setTimeout(r, 20));
      assert.ok(events.includes("restored"));
      assert.ok((await a.read(4 << 20, 65536)).equals(data.subarray(4 << 20, (4 << 20) + 65536)));
      await a.disconnect();
      await b.disconnect();
    } finally {
      await p.stop();
      await up.stop();
      await restarted?.stop();
    }
  },
);

t(
  "an upstream taking one client at a time (qemu-nbd's default): fetches go through that one connection",
  async () => {
    const image = join(dir.path, "one.img");
    const data = makeImage(image, SIZE);
    const up = await startQemuNbd(image, { shared: 1 });
    const logged: string[] = [];
    const log = createLogger({}, { level: "warn", sink: (line) => void logged.push(line) });
    const p = await serveProxy({ upstreamUrl: up.url, cachePath: join(dir.path, "one.cache"), log });
    try {
      await p.proxy.dataReady(); // the second connection's handshake times out
      assert.ok(
        logged.some((m) => /no second connection to the upstream/.test(m)),
        "says why fetches take the slower path",
      );
      assert.is(p.proxy.stats().upstream.zeroCopy, false, "status shows the copying path");
      assert.ok(p.proxy.stats().upstream.connected);
      const c = await NbdClient.connect(p.url);
      assert.ok((await c.read(3 << 20, 65536)).equals(data.subarray(3 << 20, (3 << 20) + 65536)));
      p.proxy.startCopy();
      await p.proxy.whenCopied();
      assert.ok((await c.read(0, SIZE)).equals(data));
      assert.ok(readFileSync(join(dir.path, "one.cache")).equals(data), "the cache holds the disk");
      await c.disconnect();
    } finally {
      await p.stop();
      await up.stop();
    }
  },
);

t("re-pointing the upstream: same disk accepted, other size or other content refused", async () => {
  const image = join(dir.path, "r.img");
  const data = makeImage(image, SIZE);
  const replica = join(dir.path, "r-replica.img");
  copyFileSync(image, replica);
  const otherContent = join(dir.path, "r-other.img");
  makeImage(otherContent, SIZE);
  const otherSize = join(dir.path, "r-small.img");
  makeImage(otherSize, SIZE / 2);
  const up = await startQemuNbd(image);
  const ups = await Promise.all([replica, otherContent, otherSize].map((f) => startQemuNbd(f)));
  const p = await serveProxy({ upstreamUrl: up.url, cachePath: join(dir.path, "r.cache") });
  try {
    const c = await NbdClient.connect(p.url);
    assert.ok((await c.read(0, 65536)).equals(data.subarray(0, 65536)));
    assert.match(
      String(await p.proxy.setUpstream(ups[2].url).catch((e) => e)),
      /size 4194304 differs from the disk's 8388608/,
    );
    assert.match(String(await p.proxy.setUpstream(ups[1].url).catch((e) => e)), /holds a different disk/);
    assert.match(String(await p.proxy.setUpstream("nbd://").catch((e) => e)), /bad NBD URL/);
    await p.proxy.setUpstream(ups[0].url);
    await up.kill(); // the first source is gone: the replica serves the rest
    assert.is(p.proxy.stats().upstream.url, ups[0].url);
    p.proxy.startCopy();
    await p.proxy.whenCopied();
    const got = await c.read(0, SIZE);
    assert.ok(got.equals(data));
    await c.disconnect();
  } finally {
    await p.stop();
    await Promise.all([up, ...ups].map((u) => u.stop()));
  }
});

test.run();
