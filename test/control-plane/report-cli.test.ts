// `vmhop report` as a user runs it: a control-plane process on a real Redis holding the record
// captured from a real run, the page written from what GetMigration / ListMigrations answer over
// gRPC; refusals with their exit codes, and nothing written when there is nothing to report.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { openStore, type Store } from "../../services/common/store/index.js";
import { KEYS, type MigrationRecord } from "../../services/control-plane/records.js";
import { type ServiceProcess, startService } from "../../testbed/service-process.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { vmhop } from "../helpers/cli.js";
import { gate } from "../helpers/env.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { suite } from "../helpers/uvu.js";

const test = gate(suite("vmhop report"), ["redis-server"], "vmhop report on real Redis");
const dir = tempDir("vmhop-report-cli-");
const raw = readFileSync(new URL("../fixtures/migration-record.json", import.meta.url), "utf8");
const rec = JSON.parse(raw) as MigrationRecord;
let redis: RedisHandle;
let store: Store;
let cp: ServiceProcess;
let s: string[];

test.before(async () => {
  redis = await startRedis();
  store = await openStore(redis.url);
  await store.set(KEYS.migration(rec.migration_id), raw);
  cp = await startService({
    name: "vmhop control serve",
    args: ["control", "serve", "--grpc", "127.0.0.1:0", "--store", redis.url],
  });
  s = ["--server", cp.ready.grpc as string];
});

test.after(async () => {
  await cp?.stop();
  await store?.close();
  await redis?.stop();
  dir.cleanup();
});

test("the page of a migration by id, and of a VM's newest migration", async () => {
  const page = join(dir.path, "m.html");
  const r = await vmhop(["report", rec.migration_id, "--html", page, ...s]);
  assert.is(r.code, 0, r.err);
  assert.is(r.out.trim(), `wrote ${page}: ${rec.migration_id} (${rec.state})`);
  const html = readFileSync(page, "utf8");
  for (const state of Object.keys(rec.entered_unix_ms ?? {}))
    assert.ok(html.includes(`</span>${state}</td>`), state);
  // The progress history came through gRPC: the curves are drawn.
  assert.ok((html.match(/<polyline /g) ?? []).length >= 2);
  const byVm = join(dir.path, "vm.html");
  const v = await vmhop(["report", "--vm", rec.vm_id, "--html", byVm, ...s]);
  assert.is(v.code, 0, v.err);
  assert.match(v.out, `${rec.migration_id} (${rec.state})`);
});

test("refusals: unknown migration or VM (exit 1), bad usage (exit 2), an unwritable file; nothing written", async () => {
  const page = join(dir.path, "none.html");
  const unknown = await vmhop(["report", "m-404", "--html", page, ...s]);
  assert.is(unknown.code, 1);
  assert.match(unknown.err, `control-plane ${s[1]}: no migration m-404`);
  const noVm = await vmhop(["report", "--vm", "ghost", "--html", page, ...s]);
  assert.is(noVm.code, 1);
  assert.match(noVm.err, "no migration of VM ghost");
  assert.not.ok(existsSync(page));
  for (const args of [[rec.migration_id], ["--html", page], [rec.migration_id, "m-2", "--html", page]]) {
    const u = await vmhop(["report", ...args, ...s]);
    assert.is(u.code, 2, args.join(" "));
    assert.match(u.err, "give one MIGRATION_ID (or --vm VM_ID) and --html FILE");
  }
  const bad = await vmhop([
    "report",
    rec.migration_id,
    "--html",
    join(dir.path, "no-such-dir", "x.html"),
    ...s,
  ]);
  assert.is(bad.code, 1);
  assert.match(bad.err, /cannot write .*no-such-dir/);
  const down = await vmhop(["report", rec.migration_id, "--html", page, "--server", "127.0.0.1:1"]);
  assert.is(down.code, 1);
  assert.match(down.err, "control-plane 127.0.0.1:1:");
  assert.not.ok(existsSync(page));
});

test.run();
