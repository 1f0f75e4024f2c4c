// `vmhop page serve` as a process: prints where it listens, answers gRPC, ends on SIGTERM.
import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { credentials } from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { PageServiceClient } from "../../gen/vmhop/v1/page.js";
import { call } from "../../services/common/grpc/call.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";

const root = new URL("../..", import.meta.url).pathname;
const bin = join(root, "bin/vmhop.js");
const dir = tempDir("vmhop-pagecli-");
test.after(() => dir.cleanup());

test("serve prints its addresses, lists no VMs, exits 0 on SIGTERM", async () => {
  const child = spawn(bin, ["page", "serve", "--listen", "0", "--run-dir", dir.path], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  try {
    let out = "";
    child.stdout.setEncoding("utf8");
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout.on("data", (d: string) => {
        out += d;
        if (out.includes("\n")) resolve(out.split("\n")[0]);
      });
      child.once("exit", (code) => reject(new Error(`page serve exited early with ${code}`)));
    });
    const addr = JSON.parse(line) as { grpc: string; channel: string };
    assert.match(addr.grpc, /^127\.0\.0\.1:\d+$/);
    assert.match(addr.channel, /^127\.0\.0\.1:\d+$/);
    const client = new PageServiceClient(addr.grpc, credentials.createInsecure());
    const res = await call(client, "listHostVms", {});
    assert.equal(res.vms, []);
    client.close();
    child.kill("SIGTERM");
    const [code] = await once(child, "exit");
    assert.is(code, 0);
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
  }
});

test("bad options fail with a clear message, exit 2", () => {
  const r = spawnSync(bin, ["page", "serve", "--channel-listen", "nowhere"], { encoding: "utf8" });
  assert.is(r.status, 2);
  assert.match(r.stderr, /bad channel address "nowhere"/);
  const u = spawnSync(bin, ["page", "frob"], { encoding: "utf8" });
  assert.is(u.status, 2);
  assert.match(u.stderr, /unknown page command 'frob'/);
});

test.run();
