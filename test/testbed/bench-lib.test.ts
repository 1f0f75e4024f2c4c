// The benchmark helpers in bench/lib that start NBD servers and build images.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { makeImage } from "../../bench/lib/image.js";
import { nbdkitFile, startServer, vmhopDaemon } from "../../bench/lib/nbd-servers.js";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";

test("makeImage: the requested size, part data, part zeros", () => {
  const dir = tempDir("vmhop-testbed-");
  try {
    const path = join(dir.path, "img.raw");
    makeImage(path, 16 << 20);
    assert.is(statSync(path).size, 16 << 20);
    const img = readFileSync(path);
    let zeroExtents = 0;
    for (let off = 0; off < img.length; off += 1 << 20) {
      if (img.subarray(off, off + (1 << 20)).every((b) => b === 0)) zeroExtents++;
    }
    assert.ok(zeroExtents > 0 && zeroExtents < 16, `zero extents ${zeroExtents}`);
  } finally {
    dir.cleanup();
  }
});

gate(
  test,
  ["nbdkit", "nbdinfo"],
  "NBD server helpers",
)("servers are ready when they answer a handshake; a dead one is reported", async () => {
  const dir = tempDir("vmhop-testbed-");
  try {
    const path = join(dir.path, "img.raw");
    makeImage(path, 4 << 20);
    const s = await nbdkitFile(path);
    try {
      assert.is(execFileSync("nbdinfo", ["--size", s.uri], { encoding: "utf8" }).trim(), String(4 << 20));
    } finally {
      await s.close();
    }
    const port = await freePort();
    try {
      await startServer("nbdkit", ["-f", "-p", String(port), "no-such-plugin"], port, "disk0");
      assert.unreachable("a server that cannot start was reported ready");
    } catch (err) {
      assert.match((err as Error).message, /exited with 1 before nbd:\/\/127\.0\.0\.1:\d+\/disk0 was ready/);
    }
  } finally {
    dir.cleanup();
  }
});

gate(
  test,
  ["nbdkit", "nbdinfo", "nbdcopy"],
  "NBD server helpers",
)("a running vmhop block-server serves an export per run, over gRPC", async () => {
  const dir = tempDir("vmhop-testbed-");
  const host = await vmhopDaemon();
  try {
    const path = join(dir.path, "img.raw");
    makeImage(path, 4 << 20);
    const t = await host.target(path, "t1");
    const copy = join(dir.path, "t1.raw");
    execFileSync("nbdcopy", [t.uri, copy]);
    assert.ok(readFileSync(copy).equals(readFileSync(path)), "target export serves the image");
    await t.close();
    assert.throws(() => execFileSync("nbdinfo", ["--size", t.uri], { stdio: "pipe" }), "removed export gone");

    const origin = await nbdkitFile(path);
    try {
      const cache = join(dir.path, "cache-p1");
      const p = await host.proxy(origin.uri, cache, "p1");
      const copy2 = join(dir.path, "p1.raw");
      execFileSync("nbdcopy", [p.uri, copy2]);
      assert.ok(readFileSync(copy2).equals(readFileSync(path)), "proxy export serves the image");
      await p.close();
      assert.ok(existsSync(cache), "the cache file is the caller's to remove");
    } finally {
      await origin.close();
    }
  } finally {
    await host.close();
    dir.cleanup();
  }
});

test.run();
