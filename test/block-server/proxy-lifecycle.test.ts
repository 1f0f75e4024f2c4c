// A proxy's lifecycle under concurrent calls (issue 13, item 7): promote happens once however
// many callers ask at the same time; whenCopied() settles when the copy stops or the proxy
// closes (its export removed) instead of waiting for ever; and once close() has begun no new
// fetch reaches the upstream (the upstream's own request log is the witness).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { BackendError } from "../../services/block-server/export/backend.js";
import type { TargetBackend } from "../../services/block-server/export/target.js";
import { NbdClient } from "../../services/block-server/nbd/client/client.js";
import { PromoteError, ProxyBackend } from "../../services/block-server/proxy/proxy-backend.js";
import { silentLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { until, within } from "../helpers/wait.js";
import { type ServedProxy, serveProxy } from "./fixtures/proxy-serve.js";
import { makeImage, type RunningServer, startNbdkit, startQemuNbd } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-proxylife-");
const cleanups: (() => Promise<void>)[] = [];
test.after.each(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});
test.after(() => dir.cleanup());

const SIZE = 8 << 20;
const BS = 65536;
let n = 0;
const t = gate(test, ["qemu-nbd", "nbdkit"], "proxy lifecycle against real upstreams");

async function setup(extra = {}): Promise<{ data: Buffer; up: RunningServer; p: ServedProxy }> {
  const image = join(dir.path, `d${n}.img`);
  const data = makeImage(image, SIZE);
  const up = await startQemuNbd(image);
  cleanups.push(() => up.stop());
  const p = await serveProxy({ upstreamUrl: up.url, cachePath: join(dir.path, `d${n++}.cache`), ...extra });
  cleanups.push(() => p.stop());
  return { data, up, p };
}

/** What a promise came to, bounded: its value, or its error. */
function outcome<T>(p: Promise<T>, what: string): Promise<T | Error> {
  return within(
    p.catch((e: Error) => e),
    10_000,
    what,
  );
}

t("two promote(wait) calls at once promote once; the export serves the one target", async () => {
  const { data, p } = await setup();
  const exp = p.server.exports.get("disk")!;
  const c = await NbdClient.connect(p.url);
  let promotedEvents = 0;
  p.proxy.on("promoted", () => promotedEvents++);
  const results = await Promise.all([
    outcome(p.proxy.promote({ wait: true }), "the first promote(wait)"),
    outcome(p.proxy.promote({ wait: true }), "the second promote(wait)"),
  ]);
  const targets = results.filter((r) => !(r instanceof Error)) as TargetBackend[];
  const refused = results.filter((r) => r instanceof Error);
  assert.is(targets.length, 1, `exactly one promote succeeds (got: ${results.map(String).join("; ")})`);
  assert.instance(refused[0], PromoteError);
  assert.is((refused[0] as PromoteError).reason, "in-progress");
  assert.is(promotedEvents, 1, "promoted once");
  const old = await exp.setBackend(targets[0]);
  await old.close();
  const again = await outcome(p.proxy.promote(), "a promote after the promote");
  assert.instance(again, PromoteError);
  assert.match(String(again), /already promoted/);
  assert.ok((await c.read(0, SIZE)).equals(data), "the client reads the disk through the one target");
  await c.disconnect();
});

t("two promote() calls at once on a complete proxy: one target, not two", async () => {
  const { p } = await setup();
  p.proxy.startCopy();
  await within(p.proxy.whenCopied(), 10_000, "the copy");
  const results = await Promise.all([
    outcome(p.proxy.promote(), "promote 1"),
    outcome(p.proxy.promote(), "promote 2"),
  ]);
  assert.is(results.filter((r) => !(r instanceof Error)).length, 1, "one target backend made");
  const target = results.find((r) => !(r instanceof Error)) as TargetBackend;
  const old = await p.server.exports.get("disk")!.setBackend(target);
  await old.close();
});

t(
  "whenCopied() and promote(wait) settle when the copy is stopped, and when the export is removed",
  async () => {
    const { p } = await setup({ copyRateBytesPerSec: 256 << 10 });
    // No copy running and blocks missing: nothing would ever finish it.
    const idle = await outcome(p.proxy.whenCopied(), "whenCopied with no copy running");
    assert.instance(idle, PromoteError);
    assert.match(String(idle), /background copy is not running while \d+ of 128 blocks are not local/);

    p.proxy.startCopy();
    const waiting = outcome(p.proxy.whenCopied(), "whenCopied after stopCopy");
    await p.proxy.stopCopy();
    const stopped = await waiting;
    assert.instance(stopped, PromoteError);
    assert.is((stopped as PromoteError).reason, "stopped");

    // promote(wait) starts the copy again; the export is removed meanwhile.
    const promoting = outcome(p.proxy.promote({ wait: true }), "promote(wait) after the export was removed");
    const waiting2 = outcome(p.proxy.whenCopied(), "whenCopied after the export was removed");
    await until("the copy to run again", () => p.proxy.stats().copy.running, 5000);
    await p.server.exports.remove("disk"); // closes the proxy
    for (const e of [await waiting2, await promoting]) {
      assert.instance(e, PromoteError);
      assert.is((e as PromoteError).reason, "closed");
      assert.match(String(e), /proxy closed \(export removed\?\) while \d+ of 128 blocks are not local/);
    }
    assert.not.ok(p.proxy.promoted);
  },
);

t(
  "once close() has begun no new fetch starts: a read gets ESHUTDOWN and never reaches the upstream",
  async () => {
    const image = join(dir.path, "slow.img");
    const data = makeImage(image, SIZE);
    const logfile = join(dir.path, "upstream.log");
    // Every upstream read takes 300 ms, so the first fetch is surely in flight during close().
    const up = await startNbdkit("file", [image, "rdelay=300ms", `logfile=${logfile}`], {
      filters: ["log", "delay"],
    });
    cleanups.push(() => up.stop());
    const p = await ProxyBackend.open({
      upstreamUrl: up.url,
      cachePath: join(dir.path, "slow.cache"),
      log: silentLogger,
    });
    const reads = (offset: number) =>
      readFileSync(logfile, "utf8")
        .split("\n")
        .filter(
          (l) =>
            / Read id=\d+ offset=0x([0-9a-f]+) /.test(l) && l.includes(`offset=0x${offset.toString(16)} `),
        );
    const first = p.read(0, BS);
    await until("the first fetch to reach the upstream", () => reads(0).length > 1, 5000); // [fingerprint, fetch]
    const closing = p.close();
    const late = [
      await outcome(p.read(32 * BS, BS), "a read after close began"),
      await outcome(p.cache(40 * BS, BS), "a CACHE after close began"),
      await outcome(p.write(48 * BS + 100, Buffer.alloc(100, 1), false), "a partial write after close began"),
    ];
    for (const e of late) {
      assert.instance(e, BackendError);
      assert.is((e as BackendError).errno, "ESHUTDOWN");
    }
    const got = await outcome(first, "the read whose fetch was in flight");
    assert.ok(
      Buffer.isBuffer(got) && got.equals(data.subarray(0, BS)),
      "the fetch in flight completes its read",
    );
    await within(closing, 10_000, "close()");
    for (const off of [32 * BS, 40 * BS, 48 * BS])
      assert.equal(reads(off), [], `no upstream READ at ${off} after close began`);
  },
);

test.run();
