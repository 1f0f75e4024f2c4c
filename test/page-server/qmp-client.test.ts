import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { QmpClient } from "../../services/page-server/qmp/client.js";
import {
  QmpClosedError,
  QmpConnectError,
  QmpError,
  QmpTimeoutError,
} from "../../services/page-server/qmp/errors.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";

const qemuTest = gate(test, ["qemu-system-x86_64"], "QMP against a real QEMU");
const dir = tempDir("vmhop-qmp-");
let qemu: ChildProcess | undefined;
let server: Server | undefined;

function startQemu(sock: string): ChildProcess {
  // No guest at all: just the monitor. -S keeps the (empty) machine paused.
  return spawn(
    "qemu-system-x86_64",
    ["-machine", "none", "-nodefaults", "-display", "none", "-S", "-qmp", `unix:${sock},server=on,wait=off`],
    { stdio: "ignore" },
  );
}

test.after.each(async () => {
  if (qemu && qemu.exitCode === null && qemu.signalCode === null) {
    qemu.kill("SIGKILL");
    await once(qemu, "exit");
  }
  qemu = undefined;
  if (server) await new Promise((r) => server!.close(r));
  server = undefined;
});
test.after(() => dir.cleanup());

qemuTest("greeting, query-status, events, typed error for a bad command, close on quit", async () => {
  const sock = join(dir.path, "q1.sock");
  qemu = startQemu(sock);
  const qmp = await QmpClient.connect(sock, { timeoutMs: 10_000 });
  assert.is(qmp.greeting?.version.qemu.major !== undefined, true);

  const st = await qmp.execute<{ status: string; running: boolean }>("query-status");
  assert.is(st.status, "prelaunch");
  assert.is(st.running, false);

  // Out-of-band execution is negotiated; only commands that allow it may use it.
  assert.ok(qmp.oobEnabled);
  try {
    await qmp.execute("migrate-recover", { uri: "unix:/nonexistent" }, { oob: true });
    assert.unreachable("recover outside a paused post-copy");
  } catch (err) {
    assert.instance(err, QmpError);
    assert.match((err as QmpError).desc, /postcopy is paused/);
  }
  try {
    await qmp.execute("query-status", undefined, { oob: true });
    assert.unreachable("query-status ran out-of-band");
  } catch (err) {
    assert.instance(err, QmpError);
    assert.match((err as QmpError).desc, /does not support OOB/);
  }

  const resumed = qmp.waitForEvent("RESUME", { timeoutMs: 5000 });
  await qmp.execute("cont");
  await resumed;
  assert.is((await qmp.execute<{ status: string }>("query-status")).status, "running");

  try {
    await qmp.execute("no-such-command");
    assert.unreachable("bad command accepted");
  } catch (err) {
    assert.instance(err, QmpError);
    assert.is((err as QmpError).errorClass, "CommandNotFound");
    assert.match((err as QmpError).desc, /no-such-command/);
  }
  try {
    await qmp.execute("migrate-set-parameters", { "max-bandwidth": "fast" });
    assert.unreachable("bad argument accepted");
  } catch (err) {
    assert.instance(err, QmpError);
    assert.is((err as QmpError).errorClass, "GenericError");
  }

  const closed = once(qmp, "close");
  await qmp.execute("quit");
  const [reason] = await closed;
  assert.match(String(reason), /QEMU closed/);
  assert.ok(qmp.closed);
  try {
    await qmp.execute("query-status");
    assert.unreachable("command after close");
  } catch (err) {
    assert.instance(err, QmpClosedError);
  }
});

qemuTest("a killed QEMU fails pending waits with QmpClosedError", async () => {
  const sock = join(dir.path, "q2.sock");
  qemu = startQemu(sock);
  const qmp = await QmpClient.connect(sock);
  const waiting = qmp.waitForEvent("RESUME", { timeoutMs: 10_000 });
  qemu.kill("SIGKILL");
  try {
    await waiting;
    assert.unreachable("wait survived a dead QEMU");
  } catch (err) {
    assert.instance(err, QmpClosedError);
  }
});

test("connect to a missing socket fails with QmpConnectError after the timeout", async () => {
  try {
    await QmpClient.connect(join(dir.path, "absent.sock"), { timeoutMs: 200 });
    assert.unreachable("connected to nothing");
  } catch (err) {
    assert.instance(err, QmpConnectError);
    assert.match((err as Error).message, /absent\.sock/);
  }
});

test("a command without reply times out with QmpTimeoutError; later replies are ignored", async () => {
  // A peer that greets and acknowledges capabilities, then goes silent.
  const sock = join(dir.path, "silent.sock");
  server = createServer((c) => {
    c.write('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}\r\n');
    c.on("data", (d) => {
      const msg = JSON.parse(d.toString().trim().split("\n")[0]);
      if (msg.execute === "qmp_capabilities") c.write(`{"return": {}, "id": "${msg.id}"}\r\n`);
    });
  });
  server.listen(sock);
  await once(server, "listening");
  const qmp = await QmpClient.connect(sock);
  try {
    await qmp.execute("query-status", undefined, { timeoutMs: 100 });
    assert.unreachable("reply from a silent peer");
  } catch (err) {
    assert.instance(err, QmpTimeoutError);
    assert.is((err as QmpTimeoutError).command, "query-status");
  }
  await qmp.close();
  assert.ok(qmp.closed);
});

test.run();
