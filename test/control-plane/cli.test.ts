// `vmhop control serve` as a process on a real Redis, and the CLI verbs against it; the
// placement service started with --control-plane says so in its ready line.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import * as assert from "uvu/assert";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { suite } from "../helpers/uvu.js";
import { type PageServerHandle, startPageServer } from "./fixtures.js";

const test = gate(suite("vmhop control"), ["redis-server"], "vmhop control on real Redis");
const run = promisify(execFile);
const dir = tempDir("vmhop-cp-cli-");
let redis: RedisHandle;
let page: PageServerHandle;
const procs: ChildProcess[] = [];

async function serve(args: string[]): Promise<{ proc: ChildProcess; ready: Record<string, unknown> }> {
  const proc = spawn(process.execPath, ["bin/vmhop.js", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  procs.push(proc);
  const stderr: string[] = [];
  createInterface({ input: proc.stderr! }).on("line", (l) => stderr.push(l));
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once("line", (l) => resolve(JSON.parse(l)));
    proc.once("exit", (code) => reject(new Error(`exited ${code}: ${stderr.join("\n")}`)));
  });
  return { proc, ready };
}

function stop(proc: ChildProcess): Promise<number | null> {
  if (proc.exitCode !== null) return Promise.resolve(proc.exitCode);
  return new Promise((resolve) => {
    proc.once("exit", (code) => resolve(code));
    proc.kill("SIGTERM");
  });
}

async function vmhop(args: string[]): Promise<{ code: number; out: string; err: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ["bin/vmhop.js", ...args]);
    return { code: 0, out: stdout, err: stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, out: x.stdout, err: x.stderr };
  }
}

let address = "";

test.before(async () => {
  redis = await startRedis();
  page = await startPageServer(dir.path, "cli-page");
});

test.after(async () => {
  for (const p of procs) await stop(p);
  await page?.close();
  await redis?.stop();
  dir.cleanup();
});

test("serve prints a ready line; the verbs talk to it", async () => {
  const cp = await serve(["control", "serve", "--grpc", "127.0.0.1:0", "--store", redis.url]);
  assert.equal(cp.ready.store, "redis");
  assert.equal(cp.ready.resumed, []);
  address = cp.ready.grpc as string;
  const s = ["--server", address];
  const reg = await vmhop(["control", "register-host", "h1", page.address, "--site", "lab", ...s]);
  assert.is(reg.code, 0, reg.err);
  assert.match(reg.out, `registered h1 (page-server ${page.address})`);
  const hosts = await vmhop(["control", "hosts", "--json", ...s]);
  assert.equal(
    JSON.parse(hosts.out).map((h: { hostId: string; site: string }) => [h.hostId, h.site]),
    [["h1", "lab"]],
  );
  const table = await vmhop(["control", "hosts", ...s]);
  assert.match(table.out, /^HOST\s+SITE\s+PAGE-SERVER\s+ASLEEP\nh1\s+lab\s+127\.0\.0\.1:\d+\s+false$/m);
  const vms = await vmhop(["control", "vms", "--json", ...s]);
  assert.equal(JSON.parse(vms.out), []);
  const migrations = await vmhop(["control", "migrations", "--json", ...s]);
  assert.equal(JSON.parse(migrations.out), []);
  // Refusals come back as one line and a non-zero exit.
  const bad = await vmhop(["control", "migrate", "ghost", "h1", ...s]);
  assert.is(bad.code, 1);
  assert.match(bad.err, `control-plane ${address}: unknown VM ghost`);
  const usage = await vmhop(["control", "migrate", "ghost", ...s]);
  assert.is(usage.code, 2);
  assert.match(usage.err, "usage: vmhop control migrate VM_ID DEST_HOST_ID");
  const mode = await vmhop(["control", "migrate", "ghost", "h1", "--mode", "teleport", ...s]);
  assert.is(mode.code, 2);
  assert.match(mode.err, "--mode must be one of postcopy, precopy, hybrid, auto");
  // Durable: a restarted control-plane on the same Redis knows the host.
  assert.is(await stop(cp.proc), 0, "graceful shutdown exits 0");
  const again = await serve(["control", "serve", "--grpc", address, "--store", redis.url]);
  assert.equal(again.ready.grpc, address);
  const after = await vmhop(["control", "hosts", "--json", ...s]);
  assert.equal(JSON.parse(after.out).length, 1);
});

test("placement serve --control-plane names it in its ready line", async () => {
  const p = await serve([
    "placement",
    "serve",
    "--grpc",
    "127.0.0.1:0",
    "--store",
    redis.url,
    "--control-plane",
    address,
  ]);
  assert.equal([p.ready.control_plane, p.ready.resumed], [address, []]);
  assert.is(await stop(p.proc), 0);
});

test.run();
