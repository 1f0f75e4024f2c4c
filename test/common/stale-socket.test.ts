// A unix socket left by a killed process no longer stops a restart from listening there: a
// stale one is removed, a live one refused by name; a real block-server killed with -9 comes
// back on its gRPC socket.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { clearStaleSocket, SocketInUseError } from "../../services/common/stale-socket.js";
import { startService } from "../../testbed/service-process.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";

const dir = tempDir("vmhop-stale-sock-");
test.after(() => dir.cleanup());

/** A process listening on `path`, killed with SIGKILL: the socket file stays. */
async function staleSocket(path: string): Promise<void> {
  const code = `require("net").createServer().listen(${JSON.stringify(path)}, () => console.log("up"))`;
  const child = spawn(process.execPath, ["-e", code], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((resolve) => child.stdout!.once("data", () => resolve()));
  child.kill("SIGKILL");
  await new Promise((r) => child.once("exit", r));
}

test("a stale socket is removed and the path binds again; nothing there is fine", async () => {
  const path = join(dir.path, "stale.sock");
  await clearStaleSocket(path); // absent: nothing to do
  await staleSocket(path);
  assert.ok(existsSync(path), "kill -9 leaves the socket file");
  await clearStaleSocket(path);
  assert.not.ok(existsSync(path));
  const s = createServer();
  await new Promise<void>((resolve, reject) => {
    s.once("error", reject);
    s.listen(path, resolve);
  });
  await new Promise((r) => s.close(r));
});

test("a socket another process serves is refused by name, and left alone", async () => {
  const path = join(dir.path, "live.sock");
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(path, resolve));
  try {
    let err: unknown;
    await clearStaleSocket(path).catch((e) => {
      err = e;
    });
    assert.instance(err, SocketInUseError);
    assert.match((err as Error).message, /live\.sock is in use/);
    assert.ok(existsSync(path));
  } finally {
    await new Promise((r) => s.close(r));
  }
});

test("a block-server killed with -9 starts again on the same gRPC socket", async () => {
  const grpc = `unix:${join(dir.path, "block.sock")}`;
  const args = ["block", "serve", "--listen", "127.0.0.1:0", "--grpc", grpc, "--metrics", "none"];
  const first = await startService({ name: "block-server", args, readyMs: 120_000 });
  first.child.kill("SIGKILL");
  await until(
    "the first block-server to end",
    () => first.child.exitCode !== null || first.child.signalCode !== null,
    30_000,
  );
  assert.ok(existsSync(join(dir.path, "block.sock")), "the killed server's socket is left behind");
  const again = await startService({ name: "block-server again", args, readyMs: 120_000 });
  try {
    assert.is(again.grpc, grpc);
  } finally {
    await again.stop();
  }
});

test.run();
