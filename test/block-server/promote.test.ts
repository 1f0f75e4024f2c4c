// BlockServer.promote: two callers waiting for the copy both see one promotion (neither gets an
// error), and a copy stopped while waiting is a refusal naming the export, not an internal error.
import { join } from "node:path";
import * as assert from "uvu/assert";
import { BlockServer } from "../../services/block-server/block-server.js";
import type { BlockServerError } from "../../services/block-server/errors.js";
import { silentLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { makeImage } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-promote-");
test.after(() => dir.cleanup());

async function proxyOfOrigin(name: string) {
  const img = join(dir.path, `${name}.raw`);
  makeImage(img, 4 << 20);
  const origin = new BlockServer({ log: silentLogger });
  await origin.createExport({ name, source: { mode: "target", imagePath: img }, readOnly: true });
  const at = await origin.listen("127.0.0.1:0");
  const url = `nbd://${"host" in at ? `${at.host}:${at.port}` : ""}/${name}`;
  const bs = new BlockServer({ log: silentLogger, cacheDir: join(dir.path, "caches") });
  await bs.createExport({ name, source: { mode: "proxy", upstreamUrl: url, cachePath: "" } });
  return { origin, bs };
}

test("two promote(wait) at once: one promotion, both answered with the target", async () => {
  const { origin, bs } = await proxyOfOrigin("twice");
  try {
    const both = await Promise.allSettled([
      bs.promote("twice", { wait: true }),
      bs.promote("twice", { wait: true }),
    ]);
    assert.equal(
      both.map((r) => (r.status === "fulfilled" ? r.value.info.mode : String(r.reason))),
      ["target", "target"],
    );
  } finally {
    await bs.close();
    await origin.close();
  }
});

test("the copy stopped while promote waits: a precondition refusal naming the export", async () => {
  const { origin, bs } = await proxyOfOrigin("stopped");
  try {
    const waiting = bs.promote("stopped", { wait: true }).catch((e: BlockServerError) => e);
    await bs.stopCopy("stopped");
    const err = await waiting;
    if (!(err instanceof Error)) {
      // The copy finished before the stop reached it: then the promotion is simply done.
      assert.is(err.info.mode, "target");
      return;
    }
    assert.is(err.kind, "precondition", String(err));
    assert.match(err.message, /cannot promote stopped: /);
  } finally {
    await bs.close();
    await origin.close();
  }
});

test.run();
