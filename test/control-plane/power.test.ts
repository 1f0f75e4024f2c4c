// Host power through the control-plane (real gRPC, a real page-server, the `command` driver's
// scripts keeping a state file): off refused while a VM is on the host or migrating to it, the
// driver asked only once it is empty; MigrateVm to a sleeping host refused with how to wake it;
// a wake counts once the driver says on and the page-server answers, else the host is marked
// failed with the reason; every action recorded on the host; no password in an error, a log
// line or a record. Then `vmhop control serve` as a process and the `power` verb against it.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import * as assert from "uvu/assert";
import { createLogger } from "../../services/common/log.js";
import { MemoryStore } from "../../services/common/store/index.js";
import { initTracing } from "../../services/common/tracing.js";
import { KEYS } from "../../services/control-plane/records.js";
import { Credentials } from "../../services/power/credentials.js";
import { freePort } from "../../testbed/ports.js";
import { type ServiceProcess, startService } from "../../testbed/service-process.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { rejectsWithStatus } from "../helpers/assert.js";
import { vmhop } from "../helpers/cli.js";
import { test } from "../helpers/uvu.js";
import {
  type ControlPlaneHandle,
  host,
  type PageServerHandle,
  plantHost,
  startControlPlane,
  startPageServer,
} from "./fixtures.js";

const SECRET = "pw-Zx81-never-shown";
const spans = new InMemorySpanExporter();
initTracing("control-plane-power-test", { processors: [new SimpleSpanProcessor(spans)] });
const dir = tempDir("vmhop-cp-power-");
const logs: string[] = [];
let page: PageServerHandle;
/** p's own: the one host registered through RegisterHost. */
let pageP: PageServerHandle;
let cp: ControlPlaneHandle;
let store: MemoryStore;
const procs: ServiceProcess[] = [];

/** The command driver's parameters for a host whose state lives in dir/<name>.state; each call is logged in dir/<name>.log. */
function commandPower(name: string, o: { on?: string; status?: string } = {}) {
  const state = join(dir.path, `${name}.state`);
  const log = join(dir.path, `${name}.log`);
  return {
    driver: "command",
    params: {
      on: o.on ?? `echo on >> ${log}; echo on > ${state}`,
      off: `echo off >> ${log}; echo off > ${state}`,
      status: o.status ?? `cat ${state} 2>/dev/null || echo on`,
    },
  };
}
const calls = (name: string) => {
  const f = join(dir.path, `${name}.log`);
  return existsSync(f) ? readFileSync(f, "utf8").trim().split("\n") : [];
};

test.before(async () => {
  page = await startPageServer(dir.path, "power-page");
  pageP = await startPageServer(dir.path, "power-page-p");
  store = new MemoryStore();
  const creds = join(dir.path, "creds.json");
  writeFileSync(creds, JSON.stringify({ "*": { password: SECRET } }));
  cp = await startControlPlane(store, undefined, {
    log: createLogger({ svc: "control-plane" }, { sink: (l) => logs.push(l) }),
    power: { credentials: Credentials.load(creds), wakeTimeoutMs: 1500, offTimeoutMs: 1500, pollMs: 100 },
  });
});

test.after(async () => {
  for (const p of procs) await p.stop();
  await cp?.close();
  await page?.close();
  await pageP?.close();
  dir.cleanup();
});

const vmOn = (vmId: string, hostId: string) =>
  store.set(
    KEYS.vm(vmId),
    JSON.stringify({ vm_id: vmId, spec: { vmId }, host_id: hostId, migration_id: "", fencing_token: 0 }),
  );

test("off waits for the host to be empty; then the driver switches it and every action is recorded", async () => {
  const c = cp.client;
  // One page-server answers for the other hosts here: they are recorded straight in the store
  // (RegisterHost takes one id per page-server).
  await plantHost(store, "a", page.address);
  const p = await c.registerHost({ ...host("p", pageP.address), power: commandPower("p") });
  assert.is(p.power?.driver, "command");
  assert.is(p.powerState, "");

  assert.is((await c.powerHost("p", "status")).state, "on");
  // A VM on it: refused naming the VM, the driver never asked.
  await vmOn("v1", "p");
  await rejectsWithStatus(
    c.powerHost("p", "off"),
    grpc.status.FAILED_PRECONDITION,
    /host p still has VMs \(v1\) on it or migrating from or to it: it cannot be switched off/,
  );
  // A VM migrating to it (not final): refused too.
  await vmOn("v1", "a");
  await store.set(
    KEYS.migration("m-9"),
    JSON.stringify({
      migration_id: "m-9",
      vm_id: "v1",
      source_host_id: "a",
      destination_host_id: "p",
      state: "migrating",
      created_unix_ms: 1,
    }),
  );
  await rejectsWithStatus(
    c.setHostAsleep("p", true),
    grpc.status.FAILED_PRECONDITION,
    /host p still has VMs \(v1\)/,
  );
  assert.equal(calls("p"), []);
  assert.is((await c.listHosts()).find((h) => h.hostId === "p")?.asleep, false);

  await store.del(KEYS.migration("m-9"));
  const off = await c.powerHost("p", "off");
  assert.is(off.state, "off");
  assert.is(off.host.asleep, true);
  assert.is(off.host.powerState, "off");
  assert.equal(calls("p"), ["off"]);
  assert.is((await c.powerHost("p", "status")).state, "off");

  // Asleep: a migration to it is refused with how to wake it (waking is an explicit step).
  await rejectsWithStatus(
    c.migrateVm({ vmId: "v1", destinationHostId: "p" }),
    grpc.status.FAILED_PRECONDITION,
    /destination host p is asleep: wake it first \(vmhop control power p on\)/,
  );
  const on = await c.powerHost("p", "on");
  assert.equal([on.state, on.host.asleep, on.host.powerState], ["on", false, "on"]);
  assert.equal(calls("p"), ["off", "on"]);
  assert.equal(
    on.host.powerActions.map((a) => [a.action, a.result, a.error]),
    [
      ["status", "on", ""],
      ["off", "off", ""],
      ["status", "off", ""],
      ["on", "on", ""],
    ],
  );
  assert.ok(on.host.powerActions.every((a) => a.timeUnixMs > 0));
  // A new registration keeps the host's power history (it is the control-plane's).
  const again = await c.registerHost({ ...host("p", pageP.address), power: commandPower("p") });
  assert.is(again.powerActions.length, 4);
  await c.powerHost("p", "off");
  const stillOff = await c.registerHost({ ...host("p", pageP.address), power: commandPower("p") });
  assert.equal([stillOff.asleep, stillOff.powerState], [true, "off"]); // the request's asleep: false is not taken
  await c.powerHost("p", "on");
  await rejectsWithStatus(
    c.powerHost("p", "reboot"),
    grpc.status.INVALID_ARGUMENT,
    /power action must be on, off or status/,
  );
  await rejectsWithStatus(
    c.registerHost({ ...host("x", page.address), power: { driver: "ipmi", params: {} } }),
    grpc.status.INVALID_ARGUMENT,
    /host x: power driver ipmi needs the parameter address/,
  );
  // No driver: on/off are bookkeeping, status unknown.
  assert.is((await c.powerHost("a", "status")).state, "unknown");
});

test("a host that does not wake is marked failed with the reason and refuses migrations", async () => {
  const c = cp.client;
  // The driver accepts `on` but the host never reports on.
  await plantHost(store, "q", page.address, { power: commandPower("q", { on: "true", status: "echo off" }) });
  await c.powerHost("q", "off");
  await rejectsWithStatus(
    c.powerHost("q", "on"),
    grpc.status.UNAVAILABLE,
    /host q did not wake: not on within 2 s \(the driver reports off\)/,
  );
  const q = (await c.listHosts()).find((h) => h.hostId === "q")!;
  assert.equal([q.asleep, q.powerState], [true, "failed"]);
  assert.match(q.powerError, /waking: not on within 2 s \(the driver reports off\)/);
  assert.equal(q.powerActions.at(-1)?.action, "on");
  assert.equal(q.powerActions.at(-1)?.result, "failed");
  await rejectsWithStatus(
    c.migrateVm({ vmId: "v1", destinationHostId: "q" }),
    grpc.status.FAILED_PRECONDITION,
    /destination host q failed to power on \(waking: not on within 2 s/,
  );

  // The driver says on but the host's page-server never answers: not woken either.
  const dead = `127.0.0.1:${await freePort()}`;
  await plantHost(store, "d", dead, { power: commandPower("d") });
  await c.powerHost("d", "off");
  await rejectsWithStatus(
    c.powerHost("d", "on"),
    grpc.status.UNAVAILABLE,
    /host d did not wake: not on within 2 s \(host d: page-server 127\.0\.0\.1:\d+ is unreachable/,
  );

  // A driver failing with the password in its output: kept out of the error, the record and the log.
  await plantHost(store, "r", page.address, {
    power: {
      driver: "command",
      params: { on: 'echo "bmc refused $VMHOP_POWER_PASSWORD" >&2; exit 2', off: "true" },
    },
  });
  await c.powerHost("r", "off");
  await rejectsWithStatus(
    c.powerHost("r", "on"),
    grpc.status.UNAVAILABLE,
    /host r did not wake: .*exited 2: bmc refused \*\*\*/,
  );
  const all = JSON.stringify(await c.listHosts());
  assert.match(all, /bmc refused \*\*\*/);
  assert.not.match(all, new RegExp(SECRET));
  assert.ok(
    logs.some((l) => /"msg":"host power".*"host":"r".*bmc refused \*\*\*/.test(l)),
    logs.join("\n"),
  );
  assert.not.match(logs.join("\n"), new RegExp(SECRET));
  // Each action is a span: the failed wake with its reason, redacted too.
  const wakeR = spans
    .getFinishedSpans()
    .filter((x) => x.name === "host power on" && x.attributes["vmhop.host.id"] === "r");
  assert.is(wakeR.length, 1);
  assert.match(wakeR[0].status.message ?? "", /host r did not wake: .*bmc refused \*\*\*/);
  // The refused offs of p are spans with their reason; the one that switched it records the result.
  const offP = spans
    .getFinishedSpans()
    .filter((x) => x.name === "host power off" && x.attributes["vmhop.host.id"] === "p");
  assert.match(offP[0].status.message ?? "", /host p still has VMs \(v1\)/);
  assert.ok(offP.some((x) => x.attributes["vmhop.power.result"] === "off"));
});

test("vmhop control power against a control-plane process: off, status, hosts, on", async () => {
  const env = { ...process.env, VMHOP_COMMAND_PASSWORD: SECRET };
  const proc = await startService({
    name: "control serve",
    args: ["control", "serve", "--grpc", "127.0.0.1:0", "--wake-timeout-s", "5"],
    env,
  });
  procs.push(proc);
  const s = ["--server", proc.grpc];
  const power = JSON.stringify(commandPower("cli").params);
  const reg = await vmhop([
    "control",
    "register-host",
    "h1",
    page.address,
    "--power-driver",
    "command",
    "--power-params",
    power,
    ...s,
  ]);
  assert.is(reg.code, 0, reg.err);
  assert.match(reg.out, /registered h1 \(page-server .*, power command\)/);
  const off = await vmhop(["control", "power", "h1", "off", ...s]);
  assert.is(off.code, 0, off.err);
  assert.is(off.out.trim(), "h1: off");
  const status = await vmhop(["control", "power", "h1", "status", "--json", ...s]);
  assert.is(JSON.parse(status.out).state, "off");
  const table = await vmhop(["control", "hosts", ...s]);
  // (then the leader's liveness of the host)
  assert.match(table.out, /^h1\s+127\.0\.0\.1:\d+\s+true\s+off\s+command(\s|$)/m);
  const on = await vmhop(["control", "power", "h1", "on", ...s]);
  assert.is(on.out.trim(), "h1: on");
  assert.equal(calls("cli"), ["off", "on"]);
  assert.not.match(proc.stderr(), new RegExp(SECRET));
  assert.match(proc.stderr(), /"msg":"host power"/);
});

test.run();
