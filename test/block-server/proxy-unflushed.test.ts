// Acknowledged writes a client never flushed, through a proxy killed with SIGKILL (issue 13,
// item 8). Restarted in the same boot (the page cache survived) they are all kept, as a
// target export keeps them: full and partial blocks of missing blocks, a block fetched just
// before, WRITE_ZEROES. Restarted after a reboot (simulated: the journal names another
// boot) only flushed writes are kept and the unflushed ones read as the upstream's data
// again, which the NBD spec allows and a target export's page cache would do on a power cut.
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { NbdClient } from "../../services/block-server/nbd/client/client.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { killAll, startProxyChild } from "./fixtures/proxy-child.js";
import { makeImage, sha256File, startQemuNbd } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-proxyunflushed-");
test.after(() => {
  killAll();
  dir.cleanup();
});

const SIZE = 8 << 20;
const BS = 65536;
const t = gate(test, ["qemu-nbd"], "a proxy killed with unflushed writes");

/**
 * Writes through the proxy: one flushed, then several acknowledged and never flushed.
 * Returns the disk with every write applied, and the regions of the unflushed ones.
 */
async function writeThrough(
  url: string,
  data: Buffer,
): Promise<{ all: Buffer; unflushed: [number, number][] }> {
  const all = Buffer.from(data);
  const c = await NbdClient.connect(url);
  const put = async (off: number, buf: Buffer) => {
    await c.write(off, buf);
    buf.copy(all, off);
  };
  await put(2 * BS, randomBytes(BS));
  await c.flush();
  const unflushed: [number, number][] = [];
  // A whole missing block (claimed, never fetched).
  await put(10 * BS, randomBytes(BS));
  unflushed.push([10 * BS, BS]);
  // Part of a missing block (its head and tail are fetched first), across into the next.
  await put(20 * BS + 500, randomBytes(BS));
  unflushed.push([20 * BS, 2 * BS]);
  // A block fetched (local, its bit not yet durable), then written in part.
  assert.ok((await c.read(30 * BS, BS)).equals(data.subarray(30 * BS, 31 * BS)));
  await put(30 * BS + 100, randomBytes(300));
  unflushed.push([30 * BS, BS]);
  // WRITE_ZEROES over a missing block.
  await c.writeZeroes(40 * BS, BS);
  all.fill(0, 40 * BS, 41 * BS);
  unflushed.push([40 * BS, BS]);
  // A block flushed earlier, written again (its bit is durable: the page cache keeps it).
  await put(2 * BS + 7, randomBytes(10));
  c.destroy(); // no FLUSH, no DISC
  return { all, unflushed };
}

t(
  "kill -9 with acknowledged, unflushed writes: restarted in the same boot, every write is kept",
  async () => {
    const image = join(dir.path, "a.img");
    const data = makeImage(image, SIZE);
    const before = sha256File(image);
    const up = await startQemuNbd(image);
    const cache = join(dir.path, "a.cache");
    try {
      const first = await startProxyChild([up.url, cache]);
      const { all } = await writeThrough(first.url, data);
      await first.kill();
      const second = await startProxyChild([up.url, cache]);
      const c = await NbdClient.connect(second.url);
      const got = await c.read(0, SIZE);
      for (const [off, len, what] of [
        [10 * BS, BS, "a whole missing block"],
        [20 * BS, 2 * BS, "a partial write over missing blocks"],
        [30 * BS, BS, "a fetched block written in part"],
        [40 * BS, BS, "WRITE_ZEROES"],
        [2 * BS, BS, "flushed, then written again"],
      ] as const)
        assert.ok(got.subarray(off, off + len).equals(all.subarray(off, off + len)), `${what} kept`);
      assert.ok(got.equals(all), "every byte as written");
      await c.disconnect();
      await second.kill();
      assert.is(sha256File(image), before, "the upstream image is never written");
    } finally {
      await up.stop();
    }
  },
);

t(
  "restarted after a reboot (journal of another boot): flushed writes kept, unflushed ones read as upstream",
  async () => {
    const image = join(dir.path, "b.img");
    const data = makeImage(image, SIZE);
    const up = await startQemuNbd(image);
    const cache = join(dir.path, "b.cache");
    try {
      const first = await startProxyChild([up.url, cache]);
      const { all, unflushed } = await writeThrough(first.url, data);
      await first.kill();
      // The machine "restarted": the journal was written in another boot, so the page cache
      // it vouches for may be gone. Boot ids live at bytes 24-60 of its header.
      const journal = `${cache}.bitmap.journal`;
      const j = readFileSync(journal);
      assert.is(j.toString("latin1", 0, 8), "VMHOPJNL");
      j.write("00000000-0000-4000-8000-000000000000", 24, 36, "latin1");
      writeFileSync(journal, j);
      const second = await startProxyChild([up.url, cache]);
      const c = await NbdClient.connect(second.url);
      const got = await c.read(0, SIZE);
      assert.ok(
        got.subarray(2 * BS, 2 * BS + 7).equals(all.subarray(2 * BS, 2 * BS + 7)),
        "the flushed write is kept",
      );
      for (const [off, len] of unflushed)
        assert.ok(
          got.subarray(off, off + len).equals(data.subarray(off, off + len)),
          `unflushed at ${off}: upstream data`,
        );
      await c.disconnect();
      await second.kill();
    } finally {
      await up.stop();
    }
  },
);

test.run();
