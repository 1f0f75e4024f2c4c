// Proxy mode with real clients: full copies cold and warm, a two-hop cascade, writes that
// land only in the cache, promote under a connected client.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import * as assert from "uvu/assert";
import { TargetBackend } from "../../services/block-server/export/target.js";
import { NbdClient } from "../../services/block-server/nbd/client/client.js";
import { NbdServer } from "../../services/block-server/nbd/server/server.js";
import { silentLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { type ServedProxy, serveProxy } from "./fixtures/proxy-serve.js";
import {
  makeImage,
  type RunningServer,
  sha256File,
  startNbdkit,
  startQemuNbd,
} from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-proxy-");
const cleanups: (() => Promise<void>)[] = [];
test.after.each(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});
test.after(() => dir.cleanup());

const SIZE = 24 << 20;
let n = 0;
async function setup(upstreamKind: "qemu-nbd" | "nbdkit" = "qemu-nbd") {
  const tag = `t${n++}`;
  const image = join(dir.path, `${tag}.img`);
  const data = makeImage(image, SIZE);
  const up: RunningServer =
    upstreamKind === "qemu-nbd"
      ? await startQemuNbd(image)
      : await startNbdkit("file", [image, "cache=none"]);
  cleanups.push(() => up.stop());
  const cache = join(dir.path, `${tag}.cache`);
  return { image, data, up, cache, tag };
}

async function proxy(upstreamUrl: string, cachePath: string, extra = {}): Promise<ServedProxy> {
  const p = await serveProxy({ upstreamUrl, cachePath, ...extra });
  cleanups.push(() => p.stop());
  return p;
}

// Async: the proxy under test runs in this process, so a blocking exec would deadlock it.
const run = promisify(execFile);
async function nbdcopy(url: string, out: string): Promise<void> {
  await run("nbdcopy", [url, out]);
}

const t = gate(test, ["qemu-nbd", "nbdkit", "nbdcopy", "qemu-img"], "proxy with real NBD clients");

t("nbdcopy through the proxy matches the image cold and warm (qemu-nbd upstream)", async () => {
  const { image, up, cache } = await setup("qemu-nbd");
  const p = await proxy(up.url, cache);
  await nbdcopy(p.url, join(dir.path, "cold.out"));
  assert.is(sha256File(join(dir.path, "cold.out")), sha256File(image));
  // Reads are answered before their fetch is stored; the bitmap catches up.
  await p.proxy.settled();
  const s = p.proxy.stats();
  assert.is(s.blocksLocal, s.blocksTotal, "every block fetched");
  assert.ok(s.bytesFetchedOnDemand >= SIZE - (1 << 20), "fetched on demand");
  assert.ok(s.bytesFetchedOnDemand <= SIZE, "never fetched twice");
  assert.ok(s.fetchLatency.count > 0 && s.fetchLatency.count < SIZE / (64 << 10), "merged requests");
  await up.stop(); // warm: the upstream is no longer needed
  await nbdcopy(p.url, join(dir.path, "warm.out"));
  assert.is(sha256File(join(dir.path, "warm.out")), sha256File(image));
  assert.is(p.proxy.stats().bytesFetchedOnDemand, s.bytesFetchedOnDemand);
});

t("qemu-img convert through a two-hop cascade, cold, nbdkit at the source", async () => {
  const { image, up, cache } = await setup("nbdkit");
  const b = await proxy(up.url, cache);
  const c = await proxy(b.url, `${cache}.hop2`);
  // B copies in the background, slowly, while C is read cold through it.
  b.proxy.setRateLimit(4 << 20);
  b.proxy.startCopy();
  const out = join(dir.path, "cascade.out");
  await run("qemu-img", ["convert", "-f", "raw", "-O", "raw", c.url, out]);
  assert.is(sha256File(out), sha256File(image));
  await c.proxy.settled();
  assert.is(c.proxy.stats().blocksLocal, c.proxy.stats().blocksTotal);
  assert.ok(b.proxy.stats().bytesFetchedOnDemand > 0, "B fetched for C on demand");
  b.proxy.setRateLimit(0);
  await b.proxy.whenCopied();
  assert.is(b.proxy.stats().copy.state, "done");
});

t("random writes land only in the cache; reads return them; flush persists", async () => {
  const { image, data, up, cache } = await setup();
  const before = sha256File(image);
  const p = await proxy(up.url, cache);
  const c = await NbdClient.connect(p.url);
  const expect = Buffer.from(data);
  for (let i = 0; i < 40; i++) {
    const off = Math.floor(Math.random() * (SIZE - 300000));
    const len = 1 + Math.floor(Math.random() * 300000);
    const w = randomBytes(len);
    await c.write(off, w);
    w.copy(expect, off);
  }
  await c.writeZeroes(5 << 20, 200000);
  expect.fill(0, 5 << 20, (5 << 20) + 200000);
  await c.flush();
  const got = Buffer.concat(await Promise.all([0, 1, 2].map((i) => c.read(i * (SIZE / 3), SIZE / 3))));
  assert.ok(got.equals(expect), "reads return the writes over upstream data");
  await run("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 1M 64k", p.url]);
  expect.fill(0x5a, 1 << 20, (1 << 20) + 65536);
  assert.is(sha256File(image), before, "upstream image unchanged");
  await c.disconnect();
  await p.proxy.startCopy();
  await p.proxy.whenCopied();
  await p.stop();
  assert.ok(readFileSync(cache).equals(expect), "cache holds upstream data plus the writes");
});

t("promote keeps a connected client reading and writing; upstream may then die", async () => {
  const { image, data, up, cache } = await setup();
  const p = await proxy(up.url, cache);
  const c = await NbdClient.connect(p.url);
  const exp = p.server.exports.get("disk")!;
  const w = randomBytes(70000);
  await c.write(3 << 20, w);
  assert.match(
    String(await p.proxy.promote().catch((e) => e)),
    /cannot promote: \d+ of \d+ blocks are not local yet/,
  );
  p.proxy.startCopy();
  // The client keeps working while the copy runs and the backend is swapped.
  let stop = false;
  let ops = 0;
  const load = (async () => {
    while (!stop) {
      const off = Math.floor(Math.random() * (SIZE - 65536));
      const got = await c.read(off, 65536);
      const want = Buffer.from(data.subarray(off, off + 65536));
      const ws = 3 << 20;
      for (let i = 0; i < 65536; i++) if (off + i >= ws && off + i < ws + 70000) want[i] = w[off + i - ws];
      assert.ok(got.equals(want), `read at ${off}`);
      ops++;
    }
  })();
  load.catch(() => {}); // awaited below; keeps a failed read from crashing the process early
  await p.proxy.whenCopied();
  let promotedEvent = false;
  p.proxy.once("promoted", () => {
    promotedEvent = true;
  });
  const target = await p.proxy.promote();
  const old = await exp.setBackend(target);
  assert.is(old, p.proxy);
  await old.close();
  assert.ok(promotedEvent);
  await up.kill(); // the old source is gone; the export does not care
  const before = ops;
  await new Promise((r) => setTimeout(r, 300));
  stop = true;
  await load;
  assert.ok(ops > before, "client kept reading after promote and upstream death");
  const w2 = randomBytes(4096);
  await c.write(0, w2, { fua: true });
  assert.ok((await c.read(0, 4096)).equals(w2));
  await c.disconnect();
  assert.is(sha256File(image), sha256File(image));
});

t("our own target server as the upstream: cold copy matches", async () => {
  const { image } = await setup("qemu-nbd");
  const server = new NbdServer({ log: silentLogger });
  server.exports.add({ name: "disk", backend: new TargetBackend(image, { readOnly: true }) });
  const addr = await server.listen({ host: "127.0.0.1", port: 0 });
  cleanups.push(async () => {
    await server.close();
    await server.exports.clear();
  });
  const p = await proxy(
    `nbd://127.0.0.1:${"port" in addr ? addr.port : 0}/disk`,
    join(dir.path, "own.cache"),
  );
  const out = join(dir.path, "own.out");
  await nbdcopy(p.url, out);
  assert.is(sha256File(out), sha256File(image));
});

test.run();
