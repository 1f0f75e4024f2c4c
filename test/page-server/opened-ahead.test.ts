// The registry of migration channels opened ahead of their start (OpenMigrationChannel):
// asked again it answers the same opening, other options replace it, a start takes it, and
// one left unused, aborted or dropped at shutdown is closed.
import * as assert from "uvu/assert";
import { silentLogger } from "../../services/common/log.js";
import { OpenedAhead } from "../../services/page-server/migration/opened-ahead.js";
import type { StartMigrationOptions } from "../../services/page-server/migration/outgoing.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";

interface Fake {
  n: number;
  closed: boolean;
  out: { close(): Promise<void> };
}

let opened = 0;
function opening(): Promise<Fake> {
  const f: Fake = {
    n: ++opened,
    closed: false,
    out: {
      close: async () => {
        f.closed = true;
      },
    },
  };
  return Promise.resolve(f);
}

const start = (o: Partial<StartMigrationOptions> = {}): StartMigrationOptions => ({
  vmId: "vm1",
  migrationId: "m1",
  channelAddress: "[::1]:7000",
  mode: "postcopy",
  fencingToken: 3,
  ...o,
});

test("asked again with the same options (the fencing token aside): the same opening", async () => {
  const reg = new OpenedAhead<Fake>(silentLogger);
  const a = await reg.get(start(), opening);
  const b = await reg.get(start({ fencingToken: 4 }), opening);
  assert.is(b, a);
  assert.is(reg.vmOf("m1"), "vm1");
  assert.is(reg.vmOf("other"), undefined);
});

test("other options replace it (the first closed); a start with other options drops it", async () => {
  const reg = new OpenedAhead<Fake>(silentLogger);
  const a = await reg.get(start(), opening);
  const b = await reg.get(start({ channelAddress: "[::1]:7001" }), opening);
  assert.is.not(b, a);
  await until("the first closed", () => a.closed || undefined, 2000);
  assert.not.ok(b.closed);
  assert.is(reg.take(start()), undefined, "a start with other options than the opening's");
  await until("the second closed", () => b.closed || undefined, 2000);
  assert.is(reg.vmOf("m1"), undefined);
});

test("a start takes it out, open; then nothing is left to drop", async () => {
  const reg = new OpenedAhead<Fake>(silentLogger);
  const a = await reg.get(start(), opening);
  const taken = await reg.take(start({ fencingToken: 9 }));
  assert.is(taken, a);
  assert.not.ok(a.closed);
  assert.is(reg.take(start()), undefined);
  assert.not.ok(reg.drop("m1", "aborted"), "already taken");
});

test("unused past its time, aborted, or at shutdown: closed", async () => {
  const reg = new OpenedAhead<Fake>(silentLogger, 50);
  const a = await reg.get(start(), opening);
  await until("closed unused", () => a.closed || undefined, 2000);
  assert.is(reg.vmOf("m1"), undefined);
  const b = await reg.get(start(), opening);
  assert.ok(reg.drop("m1", "aborted"));
  await until("closed on abort", () => b.closed || undefined, 2000);
  const long = new OpenedAhead<Fake>(silentLogger);
  const c = await long.get(start({ migrationId: "m2" }), opening);
  const d = await long.get(start({ migrationId: "m3" }), opening);
  long.dropAll("shutting down");
  await until("all closed", () => (c.closed && d.closed) || undefined, 2000);
});

test("an opening that failed is forgotten: asked again, it opens afresh", async () => {
  const reg = new OpenedAhead<Fake>(silentLogger);
  await reg
    .get(start(), () => Promise.reject(new Error("refused")))
    .then(
      () => assert.unreachable("opened"),
      (e: Error) => assert.match(e.message, /refused/),
    );
  await new Promise((r) => setImmediate(r));
  assert.is(reg.vmOf("m1"), undefined);
  const a = await reg.get(start(), opening);
  assert.not.ok(a.closed);
});

test.run();
