// Crash safety: the proxy runs in a child process, is killed with SIGKILL in the middle of
// a background copy, restarted on the same cache, and must finish with every byte right
// (a flushed write included). Bitmaps for another disk, or damaged, are refused.
import { randomBytes } from "node:crypto";
import { readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { NbdClient } from "../../services/block-server/nbd/client/client.js";
import { BITMAP_HEADER_SIZE } from "../../services/block-server/proxy/bitmap-file.js";
import { ProxyBackend } from "../../services/block-server/proxy/proxy-backend.js";
import { silentLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { killAll, startProxyChild as startChild } from "./fixtures/proxy-child.js";
import { makeImage, startQemuNbd } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-proxycrash-");
test.after(() => {
  killAll();
  dir.cleanup();
});

function bitsSet(path: string): number {
  const b = readFileSync(path).subarray(BITMAP_HEADER_SIZE);
  let n = 0;
  for (const x of b) for (let v = x; v; v &= v - 1) n++;
  return n;
}

const SIZE = 32 << 20;
const BLOCKS = SIZE / 65536;
const t = gate(test, ["qemu-nbd"], "proxy crash and restart");

t(
  "kill -9 in the middle of a background copy, restart, finish: byte for byte, flushed write kept",
  async () => {
    const image = join(dir.path, "a.img");
    const data = makeImage(image, SIZE);
    const up = await startQemuNbd(image);
    const cache = join(dir.path, "a.cache");
    try {
      const first = await startChild([up.url, cache, "--copy", "--rate", String(4 << 20)]);
      const c = await NbdClient.connect(first.url);
      const w = randomBytes(100000);
      const at = SIZE - 300000; // the copy runs from the start: this region is still missing
      await c.write(at, w);
      await c.flush();
      // Wait until some, not all, of the copy is durable on disk.
      for (let i = 0; i < 400 && bitsSet(`${cache}.bitmap`) < BLOCKS / 8; i++)
        await new Promise((r) => setTimeout(r, 25));
      const persisted = bitsSet(`${cache}.bitmap`);
      assert.ok(persisted > 0 && persisted < BLOCKS, `middle of the copy (${persisted}/${BLOCKS})`);
      first.proc.kill("SIGKILL");
      await new Promise((r) => first.proc.once("exit", r));
      c.destroy();

      const second = await startChild([up.url, cache, "--copy"]);
      const stats = (await second.done) as { blocksLocal: number; bytesFetchedBackground: number };
      assert.is(stats.blocksLocal, BLOCKS);
      assert.ok(
        stats.bytesFetchedBackground <= SIZE - persisted * 65536,
        "resumed: did not refetch what was saved",
      );
      const expect = Buffer.from(data);
      w.copy(expect, at);
      const c2 = await NbdClient.connect(second.url);
      const got = Buffer.concat(
        await Promise.all([0, 1, 2, 3].map((i) => c2.read((i * SIZE) / 4, SIZE / 4))),
      );
      assert.ok(got.equals(expect), "every byte right after the crash, including the flushed write");
      await c2.disconnect();
      second.proc.kill("SIGTERM");
      assert.ok(readFileSync(cache).equals(expect), "cache file too");
    } finally {
      await up.stop();
    }
  },
);

t("bitmaps of another disk, a bad magic or a wrong size are refused with clear errors", async () => {
  const image = join(dir.path, "b.img");
  makeImage(image, 4 << 20);
  const other = join(dir.path, "b-other.img");
  makeImage(other, 4 << 20);
  const small = join(dir.path, "b-small.img");
  makeImage(small, 2 << 20);
  const up = await startQemuNbd(image);
  const upOther = await startQemuNbd(other);
  const upSmall = await startQemuNbd(small);
  const cache = join(dir.path, "b.cache");
  const open = (upstreamUrl: string, extra = {}) =>
    ProxyBackend.open({ upstreamUrl, cachePath: cache, log: silentLogger, ...extra });
  try {
    const p = await open(up.url);
    await p.read(0, 65536);
    await p.close();
    const err = async (url: string, extra = {}) =>
      String(
        await open(url, extra).then(
          (x) => x.close(),
          (e) => e,
        ),
      );
    assert.match(
      await err(upOther.url),
      /upstream disk identity .* does not match .*belongs to another disk/,
    );
    assert.match(await err(upSmall.url), /disk size 4194304 does not match 2097152/);
    assert.match(await err(up.url, { blockSize: 4096 }), /block size 65536 does not match 4096/);
    const bm = `${cache}.bitmap`;
    const good = readFileSync(bm);
    truncateSync(bm, good.length - 1);
    assert.match(
      await err(up.url),
      /bitmap file .*b\.cache\.bitmap: file is \d+ bytes, expected \d+ for 64 blocks/,
    );
    const bad = Buffer.from(good);
    bad.write("XXXX", 0);
    writeFileSync(bm, bad);
    assert.match(await err(up.url), /bad magic \(not a vmhop bitmap\)/);
    writeFileSync(bm, good);
    truncateSync(cache, 1 << 20);
    assert.match(await err(up.url), /cache .* is 1048576 bytes, the disk 4194304/);
    // With the right disk it resumes: block 0 is local, the rest is fetched.
    truncateSync(cache, 4 << 20);
    const again = await open(up.url);
    assert.ok(again.bitmap.has(0));
    assert.is(again.bitmap.local, 1);
    await again.close();
  } finally {
    await Promise.all([up.stop(), upOther.stop(), upSmall.stop()]);
  }
});

test.run();
