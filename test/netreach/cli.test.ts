// `vmhop netreach …`: argument errors are clear; `bindings` lists what the anchor stored.
import * as assert from "uvu/assert";
import { RedisStore } from "../../services/common/store/index.js";
import { BindingCache } from "../../services/netreach/binding/cache.js";
import { run } from "../../services/netreach/cli.js";
import { run as demo } from "../../testbed/netreach/demo.js";
import { rejects } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { startRedis } from "../helpers/redis.js";
import { test } from "../helpers/uvu.js";

test("bad arguments get clear errors", async () => {
  await rejects(() => run(["nope"]), /unknown netreach command 'nope'/);
  await rejects(() => demo(["--mode", "zz"]), /--mode must be one of bbm, mbb, mbb-fp/);
  await rejects(() => demo(["--sites", "1"]), /--sites must be an integer 2..9/);
  await rejects(() => demo(["--bogus"]), /Unknown option '--bogus'/);
  await rejects(() => demo(["--dataplane", "gre"]), /--dataplane must be auto, srv6 or vxlan, got 'gre'/);
  await rejects(() => run(["bindings", "--store", "http://x"]), /unsupported store URL/);
  await rejects(() => run(["anchor", "serve", "--home-dev", "h"]), /missing --tunnel-source, --sid6, --sid4/);
  await rejects(() => run(["site", "serve", "--frob"]), /Unknown option '--frob'/);
  await rejects(
    () =>
      run([
        "anchor",
        "serve",
        "--dataplane",
        "gre",
        "--home-dev",
        "h",
        "--tunnel-source",
        "fc00::a",
        "--sid6",
        "fc00::d6",
        "--sid4",
        "fc00::d4",
      ]),
    /--dataplane must be auto, srv6 or vxlan, got 'gre'/,
  );
  await rejects(() => run(["anchor", "start"]), /unknown netreach anchor command 'start' \(want: serve\)/);
});

gate(
  test,
  ["redis-server"],
  "netreach bindings from Redis",
)("bindings lists the stored bindings", async () => {
  const redis = await startRedis();
  const lines: string[] = [];
  const log = console.log;
  try {
    const kv = await RedisStore.connect(redis.url);
    await new BindingCache(kv).register({
      vmId: "vm-9",
      mac: "52:54:00:00:00:09",
      homeIpv6: ["2001:db8::9"],
      homeIpv4: [],
      generation: 4,
      lifetimeSeconds: 60,
      site: "s1",
      sid6: "fc00:1::d6",
      sid4: "fc00:1::d4",
    });
    await kv.close();
    console.log = (s: string) => lines.push(s);
    assert.is(await run(["bindings", "--store", redis.url]), 0);
  } finally {
    console.log = log;
    await redis.stop();
  }
  assert.is(lines.length, 1);
  const b = JSON.parse(lines[0]);
  assert.is(b.vmId, "vm-9");
  assert.is(b.generation, 4);
});

test.run();
