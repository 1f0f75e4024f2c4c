// Background copy: hot blocks first, rate limit changeable at runtime, stop/resume, never
// fetching a block twice, events and stats.
import { join } from "node:path";
import * as assert from "uvu/assert";
import { ProxyBackend } from "../../services/block-server/proxy/proxy-backend.js";
import { silentLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { makeImage, startQemuNbd } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-proxybg-");
test.after(() => dir.cleanup());
const SIZE = 16 << 20;
const BS = 65536;
const t = gate(test, ["qemu-nbd"], "proxy background copy");

const until = async (cond: () => boolean, what: string) => {
  for (let i = 0; i < 1500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), what);
};

t("hot first, stop/resume, runtime rate change, each block fetched once, events", async () => {
  const image = join(dir.path, "a.img");
  const data = makeImage(image, SIZE);
  const up = await startQemuNbd(image);
  const p = await ProxyBackend.open({
    upstreamUrl: up.url,
    cachePath: join(dir.path, "a.cache"),
    log: silentLogger,
    copyRateBytesPerSec: 2 << 20,
    hotSources: [() => [{ offset: 12 << 20, length: 1 << 20 }]], // blocks 192..207
  });
  try {
    const events: string[] = [];
    for (const ev of ["copy-started", "copy-stopped", "copy-done"]) p.on(ev, () => events.push(ev));
    assert.is(p.stats().copy.state, "idle");
    p.startCopy();
    assert.ok(p.stats().copy.running);
    const hot = () => {
      for (let b = 192; b < 208; b++) if (!p.bitmap.has(b)) return false;
      return true;
    };
    await until(hot, "hot blocks copied");
    // At 2 MiB/s after a 4 MiB burst, the sequential part cannot have reached 6.25 MiB yet.
    assert.not.ok(p.bitmap.has(100), "hot blocks came before the sequential rest");
    await p.stopCopy();
    const s1 = p.stats();
    assert.is(s1.copy.state, "stopped");
    assert.is(s1.copy.inFlight, 0);
    await new Promise((r) => setTimeout(r, 200));
    assert.is(p.stats().blocksLocal, s1.blocksLocal, "no progress while stopped");
    // A reader still gets data on demand while the copy is stopped.
    const got = await p.read(14 << 20, 1 << 20);
    assert.ok(got.equals(data.subarray(14 << 20, 15 << 20)));
    assert.is(p.stats().bytesFetchedOnDemand, 1 << 20);
    p.setRateLimit(0);
    assert.is(p.stats().copy.rateBytesPerSec, 0);
    p.startCopy();
    await p.whenCopied();
    const s = p.stats();
    assert.is(s.blocksLocal, s.blocksTotal);
    assert.is(s.copy.state, "done");
    assert.ok(s.copy.done);
    assert.is(s.bytesFetchedOnDemand + s.bytesFetchedBackground, SIZE, "every block fetched exactly once");
    assert.equal(events, ["copy-started", "copy-stopped", "copy-started", "copy-done"]);
    assert.ok((await p.read(0, SIZE)).equals(data));
    assert.throws(() => p.setRateLimit(-5), /rate limit must be >= 0/);
    // The persisted bitmap says complete: a reopen needs nothing from upstream.
    await p.close();
    const again = await ProxyBackend.open({
      upstreamUrl: up.url,
      cachePath: join(dir.path, "a.cache"),
      log: silentLogger,
    });
    assert.ok(again.bitmap.complete);
    assert.ok((await again.read(SIZE - BS, BS)).equals(data.subarray(SIZE - BS)));
    assert.is(again.stats().bytesFetchedOnDemand, 0);
    await again.close();
  } finally {
    await p.close();
    await up.stop();
  }
});

test.run();
