// `vmhop up` as a supervisor, as a user runs it: every service up; the control-plane killed
// with SIGKILL is logged and started again (a new pid that answers), while the block-server
// (same pid, its export still served) and the page-server (same pid) were never touched;
// SIGINT then stops them all and `vmhop up` exits 0.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import * as assert from "uvu/assert";
import { BlockServer } from "../../services/control-plane/block-client.js";
import { ControlClient } from "../../services/control-plane/client.js";
import { PageServer } from "../../services/control-plane/page-client.js";
import { freePort } from "../../testbed/ports.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";

const bin = new URL("../../bin/vmhop.js", import.meta.url).pathname;
const dir = tempDir("vmhop-up-");
let up: ChildProcess | undefined;

test.after(async () => {
  if (up && up.exitCode === null && up.signalCode === null) {
    up.kill("SIGINT");
    await once(up, "exit");
  }
  dir.cleanup();
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The pid of `vmhop up`'s child running `vmhop <service> serve`, if one runs. */
function childPid(upPid: number, service: string): number | undefined {
  let children: number[] = [];
  try {
    children = readFileSync(`/proc/${upPid}/task/${upPid}/children`, "utf8").trim().split(/\s+/).map(Number);
  } catch {
    return undefined;
  }
  for (const pid of children) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      if (argv.includes(service) && argv.includes("serve")) return pid;
    } catch {
      // ended meanwhile
    }
  }
  return undefined;
}

test("a killed control-plane is restarted; the data plane keeps running; SIGINT stops all", async () => {
  const [nbd, blockGrpc, pageGrpc, pageChannel, placement, control] = await Promise.all(
    Array.from({ length: 6 }, () => freePort()),
  );
  const addr = (p: number) => `127.0.0.1:${p}`;
  up = spawn(
    process.execPath,
    [
      bin,
      "up",
      "--block-listen",
      addr(nbd!),
      "--block-grpc",
      addr(blockGrpc!),
      "--page-grpc",
      addr(pageGrpc!),
      "--page-channel",
      addr(pageChannel!),
      "--placement-grpc",
      addr(placement!),
      "--control-grpc",
      addr(control!),
      "--run-dir",
      join(dir.path, "run"),
    ],
    // The block-server records its exports here (not in /var/lib).
    {
      env: { ...process.env, VMHOP_STATE_DIR: join(dir.path, "block-state") },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const lines: string[] = [];
  createInterface({ input: up.stdout! }).on("line", (l) => lines.push(l));
  createInterface({ input: up.stderr! }).on("line", (l) => lines.push(l));
  const upPid = up.pid!;

  const cp = new ControlClient(addr(control!));
  const block = new BlockServer(addr(blockGrpc!));
  const page = new PageServer(addr(pageGrpc!));
  try {
    await until("the control-plane answering", () => cp.listHosts(), 120_000, 200);
    await until("the page-server answering", () => page.describe(2000), 120_000, 200);
    // A disk export on the block-server, as a VM's would be.
    const image = join(dir.path, "disk.raw");
    writeFileSync(image, Buffer.alloc(1 << 20));
    await until(
      "the block-server answering",
      () => block.createTarget("disk0", image, 0).then(() => true),
      120_000,
      200,
    );
    const pids = {
      block: childPid(upPid, "block"),
      page: childPid(upPid, "page"),
      control: childPid(upPid, "control"),
    };
    assert.ok(pids.block && pids.page && pids.control, JSON.stringify(pids));

    process.kill(pids.control!, "SIGKILL");
    await until(
      "the restart logged",
      () => lines.find((l) => l.startsWith("[up] control-plane exited (SIGKILL); restarting it in 0.5 s")),
      60_000,
    );
    const again = await until("a new control-plane", () => childPid(upPid, "control"), 60_000);
    assert.is.not(again, pids.control);
    await until("the new control-plane answering", () => cp.listHosts(), 120_000, 200);
    assert.not.ok(
      lines.some((l) => /stopping the mesh|\[up\] (block-server|page-server|placement) exited/.test(l)),
      lines.join("\n"),
    );
    // The data plane was not touched: same processes, the export still served.
    assert.is(childPid(upPid, "block"), pids.block);
    assert.is(childPid(upPid, "page"), pids.page);
    assert.is((await block.status("disk0")).export?.name, "disk0");
    await page.describe(5000);
  } finally {
    cp.close();
    block.close();
    page.close();
  }

  const last = ["block", "page", "control", "placement"].map((x) => childPid(upPid, x));
  assert.ok(last.every(Boolean), JSON.stringify(last));
  const exited = once(up, "exit");
  up.kill("SIGINT");
  const [code] = (await exited) as [number | null];
  assert.is(code, 0, lines.slice(-20).join("\n"));
  // Every service ended with it.
  for (const pid of last) assert.not.ok(alive(pid!), `service pid ${pid} still runs`);
});

test.run();
