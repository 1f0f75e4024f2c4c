// The export table on its own (file format, atomic replacement, refusals) and the
// BlockServer's use of it in-process: what is recorded when, a create that cannot be recorded
// is not served, a name being created is reserved, close() keeps the records.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { BlockServer } from "../../services/block-server/block-server.js";
import type { BlockServerError } from "../../services/block-server/errors.js";
import {
  defaultStateDir,
  type ExportRecord,
  type ExportTable,
  FileExportTable,
} from "../../services/block-server/export-table.js";
import { silentLogger } from "../../services/common/log.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { makeImage } from "./fixtures/proxy-servers.js";

const dir = tempDir("vmhop-export-table-");
test.after(() => dir.cleanup());

const rec = (name: string, imagePath = `/img/${name}.raw`): ExportRecord => ({
  name,
  description: "",
  readOnly: false,
  source: { mode: "target", imagePath },
});

test("a file table: every change durable on return, read back whole; a crashed write's .tmp is ignored", async () => {
  const d = join(dir.path, "a");
  const t = await FileExportTable.open(d);
  assert.equal(await t.load(), []);
  await Promise.all(["a", "b", "c", "d"].map((n) => t.put(rec(n))));
  await Promise.all([t.remove("b"), t.put(rec("a", "/img/a2.raw")), t.remove("nothing")]);
  const onDisk = JSON.parse(readFileSync(join(d, "exports.json"), "utf8"));
  assert.is(onDisk.version, 1);
  assert.equal(
    onDisk.exports.map((r: ExportRecord) => r.name),
    ["a", "c", "d"],
  );
  await t.close();
  writeFileSync(join(d, "exports.json.tmp"), "{ half a wri");
  const again = await FileExportTable.open(d);
  assert.equal(
    (await again.load()).map((r) => [r.name, r.source.mode === "target" && r.source.imagePath]),
    [
      ["a", "/img/a2.raw"],
      ["c", "/img/c.raw"],
      ["d", "/img/d.raw"],
    ],
  );
  assert.not.ok(existsSync(join(d, "exports.json.tmp")), "the interrupted write is cleared away");
  await again.close();
});

test("a file table refuses: a second opener, bad JSON, another version, a bad record", async () => {
  const d = join(dir.path, "b");
  const t = await FileExportTable.open(d);
  // flock() locks are per open file: a second open in this process is refused like another process.
  const err = await FileExportTable.open(d).catch((e: Error) => e);
  assert.match(
    String(err),
    new RegExp(`state directory ${d} is in use by another block-server \\(pid ${process.pid}\\)`),
  );
  await t.close();
  const f = join(d, "exports.json");
  const refused = async (text: string) => {
    writeFileSync(f, text);
    return String(
      await FileExportTable.open(d).then(
        (x) => x.close(),
        (e: Error) => e,
      ),
    );
  };
  assert.match(await refused("{"), /exports\.json is not valid JSON .*fix it or move it aside/);
  assert.match(
    await refused('{"version":2,"exports":[]}'),
    /unknown format \(version 2, this block-server reads 1\)/,
  );
  assert.match(
    await refused('{"version":1,"exports":[{"name":"x","source":{"mode":"copy"}}]}'),
    /bad export record \(source\.mode is neither target nor proxy\)/,
  );
});

test("default state directory: one per NBD address, root's under /var/lib/vmhop", () => {
  const d = defaultStateDir("127.0.0.1:10809", { XDG_STATE_HOME: "/x/state" });
  const base = process.getuid?.() === 0 ? "/var/lib/vmhop" : "/x/state/vmhop";
  assert.is(d, `${base}/block-server/127.0.0.1_10809`);
  assert.is(defaultStateDir("unix:/run/vmhop/nbd.sock", {}).split("/").pop(), "unix__run_vmhop_nbd.sock");
});

/** A table in memory that can be told to fail. */
class FakeTable implements ExportTable {
  readonly where = "fake";
  readonly records = new Map<string, ExportRecord>();
  failing = false;
  async load() {
    return [...this.records.values()];
  }
  async put(r: ExportRecord) {
    if (this.failing) throw new Error("disk full");
    this.records.set(r.name, structuredClone(r));
  }
  async remove(name: string) {
    if (this.failing) throw new Error("disk full");
    this.records.delete(name);
  }
  async close() {}
}

test("BlockServer: records what is created over the API, not what persist:false creates; close() keeps them", async () => {
  const img = join(dir.path, "bs.raw");
  makeImage(img, 1 << 20);
  const table = new FakeTable();
  const bs = new BlockServer({ log: silentLogger, table });
  await bs.createExport({ name: "api", source: { mode: "target", imagePath: img } });
  await bs.createExport({ name: "cli", source: { mode: "target", imagePath: img } }, { persist: false });
  assert.equal([...table.records.keys()], ["api"]);
  // Two creates of one name at once: the second is refused at once, not half-served.
  const both = await Promise.allSettled([
    bs.createExport({ name: "twice", source: { mode: "target", imagePath: img } }),
    bs.createExport({ name: "twice", source: { mode: "target", imagePath: img } }),
  ]);
  assert.equal(
    both.map((r) => r.status),
    ["fulfilled", "rejected"],
  );
  assert.is(((both[1] as PromiseRejectedResult).reason as BlockServerError).kind, "exists");
  // A create that cannot be recorded is not served; a removal that cannot be recorded keeps it.
  table.failing = true;
  const err = await bs
    .createExport({ name: "unrecorded", source: { mode: "target", imagePath: img } })
    .catch((e: BlockServerError) => e);
  assert.match(String(err), /export unrecorded not created: cannot record it in fake: disk full/);
  assert.not.ok(bs.names().includes("unrecorded"));
  const rm = await bs.removeExport("api").catch((e: BlockServerError) => e);
  assert.match(String(rm), /export api not removed: cannot update fake: disk full/);
  assert.ok(bs.names().includes("api"));
  table.failing = false;
  await bs.removeExport("twice");
  await bs.close();
  assert.equal([...table.records.keys()], ["api"], "close() keeps records; remove drops them");
});

test("a proxy created without a cache path keeps it in the cache directory; without one it is refused", async () => {
  const img = join(dir.path, "up.raw");
  const data = makeImage(img, 1 << 20);
  const origin = new BlockServer({ log: silentLogger });
  await origin.createExport({ name: "up", source: { mode: "target", imagePath: img } });
  const at = await origin.listen("127.0.0.1:0");
  const url = `nbd://${"host" in at ? `${at.host}:${at.port}` : ""}/up`;
  const caches = join(dir.path, "caches");
  const bs = new BlockServer({ log: silentLogger, cacheDir: caches });
  const bare = new BlockServer({ log: silentLogger });
  try {
    const info = await bs.createExport({
      name: "vm1",
      source: { mode: "proxy", upstreamUrl: url, cachePath: "" },
    });
    assert.is(info.path, join(caches, "vm1.cache"));
    assert.ok(existsSync(join(caches, "vm1.cache")));
    assert.ok(data.length > 0);
    const err = await bare
      .createExport({ name: "vm1", source: { mode: "proxy", upstreamUrl: url, cachePath: "" } })
      .catch((e: BlockServerError) => e);
    assert.match(
      String(err),
      /proxy export needs a cache path \(or a block-server started with a cache directory/,
    );
  } finally {
    await Promise.all([bs.close(), bare.close()]);
    await origin.close();
  }
});

test.run();
