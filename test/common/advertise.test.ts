// The address a service hands to peers (services/common/advertise.ts): the bound one unless
// told otherwise, never 0.0.0.0 or ::; and the page-server's channel using it end to end.
import { join } from "node:path";
import * as assert from "uvu/assert";
import { advertisedAddress, checkAdvertise, isUnspecifiedHost } from "../../services/common/advertise.js";
import { PageHost } from "../../services/page-server/host.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { vmhop } from "../helpers/cli.js";
import { test } from "../helpers/uvu.js";

const dir = tempDir("vmhop-advertise-");
test.after(() => dir.cleanup());

test("unspecified hosts in every spelling, and only those", () => {
  for (const h of ["0.0.0.0", "::", "[::]", "0:0:0:0:0:0:0:0", "0::0", "::ffff:0.0.0.0", ""])
    assert.ok(isUnspecifiedHost(h), h);
  for (const h of ["127.0.0.1", "::1", "[fd00::1]", "page-a", "10.0.0.0", "0.0.0.1"])
    assert.not.ok(isUnspecifiedHost(h), h);
});

test("without an advertise flag: the bound address, unless it is every address", () => {
  assert.is(advertisedAddress({ host: "10.1.2.3", port: 7403 }, undefined, "--x"), "10.1.2.3:7403");
  assert.is(advertisedAddress({ host: "fd00::5", port: 7403 }, undefined, "--x"), "[fd00::5]:7403");
  assert.is(advertisedAddress({ path: "/run/a.sock" }, undefined, "--x"), "unix:/run/a.sock");
  for (const host of ["0.0.0.0", "::"])
    assert.throws(
      () => advertisedAddress({ host, port: 7403 }, undefined, "--channel-advertise"),
      (e: Error) => /every address/.test(e.message) && /add --channel-advertise HOST:PORT/.test(e.message),
    );
});

test("an advertise flag wins: HOST:PORT, [V6]:PORT, or HOST with the bound port", () => {
  const bound = { host: "0.0.0.0", port: 7403 };
  assert.is(advertisedAddress(bound, "page-a:7403", "--x"), "page-a:7403");
  assert.is(advertisedAddress(bound, "page-a:9000", "--x"), "page-a:9000");
  assert.is(advertisedAddress(bound, "page-a", "--x"), "page-a:7403");
  assert.is(advertisedAddress(bound, "[fd00::7]:7403", "--x"), "[fd00::7]:7403");
  assert.is(advertisedAddress(bound, "fd00::7", "--x"), "[fd00::7]:7403");
});

test("bad advertise values are refused, naming the flag", () => {
  const bound = { host: "0.0.0.0", port: 7403 };
  for (const bad of [
    "0.0.0.0:7403",
    "[::]:7403",
    "page-a:0",
    "page-a:70000",
    "a:b:c:d",
    "host:port",
    ":7403",
  ])
    assert.throws(() => advertisedAddress(bound, bad, "--channel-advertise"), /--channel-advertise/, bad);
  assert.throws(() => advertisedAddress({ host: "0.0.0.0", port: 0 }, "page-a", "--x"), /needs a port/);
});

test("checkAdvertise: before binding, port 0 is no reason to refuse", () => {
  checkAdvertise("0.0.0.0:0", "page-a", "--x");
  checkAdvertise("127.0.0.1:0", undefined, "--x");
  assert.throws(() => checkAdvertise("0.0.0.0:0", undefined, "--x"), /every address/);
  assert.throws(() => checkAdvertise("nowhere", "page-a", "--x"), /bad listen address/);
});

test("PageHost: the channel address handed to sources is the advertised one", async () => {
  const h = new PageHost({
    runRoot: join(dir.path, "a"),
    channelHost: "0.0.0.0",
    channelAdvertise: "page-a",
  });
  await h.open();
  try {
    assert.match(h.channelListenAddress, /^page-a:\d+$/);
    assert.is.not(h.channelListenAddress, "page-a:0");
  } finally {
    await h.close();
  }
  const bare = new PageHost({ runRoot: join(dir.path, "b"), channelHost: "0.0.0.0" });
  try {
    await bare.open();
    assert.unreachable("opened on 0.0.0.0 without an advertised address");
  } catch (err) {
    assert.match((err as Error).message, /migration channel: listening on 0\.0\.0\.0:\d+ \(every address\)/);
  }
});

test("vmhop page serve refuses 0.0.0.0 without --channel-advertise at start, exit 2", async () => {
  const r = await vmhop([
    "page",
    "serve",
    "--listen",
    "0",
    "--channel-listen",
    "0.0.0.0:0",
    "--run-dir",
    join(dir.path, "c"),
  ]);
  assert.is(r.code, 2);
  assert.match(r.err, /add --channel-advertise HOST:PORT/);
});

test.run();
