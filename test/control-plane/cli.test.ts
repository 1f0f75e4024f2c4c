// `vmhop control serve` as a process on a real Redis, and the CLI verbs against it; the
// placement service started with --control-plane says so in its ready line.
import * as assert from "uvu/assert";
import { openStore } from "../../services/common/store/index.js";
import { freePort } from "../../testbed/ports.js";
import { type ServiceProcess, startService } from "../../testbed/service-process.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { vmhop } from "../helpers/cli.js";
import { gate } from "../helpers/env.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { suite } from "../helpers/uvu.js";
import { type PageServerHandle, startPageServer } from "./fixtures.js";

const test = gate(suite("vmhop control"), ["redis-server"], "vmhop control on real Redis");
const dir = tempDir("vmhop-cp-cli-");
let redis: RedisHandle;
let page: PageServerHandle;
let page2: PageServerHandle;
const procs: ServiceProcess[] = [];

async function serve(args: string[]): Promise<ServiceProcess> {
  const p = await startService({ name: `vmhop ${args.slice(0, 2).join(" ")}`, args });
  procs.push(p);
  return p;
}

let address = "";

test.before(async () => {
  redis = await startRedis();
  page = await startPageServer(dir.path, "cli-page");
  page2 = await startPageServer(dir.path, "cli-page-2");
});

test.after(async () => {
  for (const p of procs) await p.stop();
  await page?.close();
  await page2?.close();
  await redis?.stop();
  dir.cleanup();
});

test("serve prints a ready line; the verbs talk to it", async () => {
  const cp = await serve(["control", "serve", "--grpc", "127.0.0.1:0", "--store", redis.url]);
  assert.equal(cp.ready.store, "redis");
  assert.equal(cp.ready.resumed, []);
  // The only replica on this Redis leads.
  assert.equal(cp.ready.leader, true);
  assert.match(String(cp.ready.replica), /-\d+$/);
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
  assert.match(table.out, `leader: ${cp.ready.replica} (generation ${cp.ready.generation})`);
  assert.match(
    table.out,
    /^HOST\s+SITE\s+PAGE-SERVER\s+ASLEEP\s+POWER\s+DRIVER\s+POWER-ERROR\s+LIVENESS\nh1\s+lab\s+127\.0\.0\.1:\d+\s+false\s+-\s+-\s+(up|-)$/m,
  );
  const status = await vmhop(["control", "status", "--json", ...s]);
  assert.equal(JSON.parse(status.out), {
    leaderReplica: cp.ready.replica,
    leaderGeneration: cp.ready.generation,
  });
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
  assert.is(await cp.stop(), 0, "graceful shutdown exits 0");
  const again = await serve(["control", "serve", "--grpc", address, "--store", redis.url]);
  assert.equal(again.ready.grpc, address);
  const after = await vmhop(["control", "hosts", "--json", ...s]);
  assert.equal(JSON.parse(after.out).length, 1);
});

test("create-vm and delete-vm: bad flags and refusals; migrate --json prints the final record", async () => {
  const s = ["--server", address];
  const noKernel = await vmhop(["control", "create-vm", "v1", "h1", ...s]);
  assert.is(noKernel.code, 2);
  assert.match(noKernel.err, "--kernel PATH is required");
  const two = await vmhop([
    "control",
    "create-vm",
    "v1",
    "h1",
    "--kernel",
    "/k",
    "--disk-size",
    "1G",
    "--disk-url",
    "nbd://127.0.0.1:1/x",
    ...s,
  ]);
  assert.is(two.code, 2);
  assert.match(two.err, "give one disk, not --disk-url and --disk-size");
  const size = await vmhop([
    "control",
    "create-vm",
    "v1",
    "h1",
    "--kernel",
    "/k",
    "--disk-size",
    "lots",
    ...s,
  ]);
  assert.is(size.code, 2);
  assert.match(size.err, 'bad size "lots": a number of bytes, or with K, M, G or T (e.g. 256M)');
  // h1 has no block-server: a new disk is refused there, and nothing is recorded.
  const noBlock = await vmhop([
    "control",
    "create-vm",
    "v1",
    "h1",
    "--kernel",
    "/k",
    "--disk-size",
    "64M",
    ...s,
  ]);
  assert.is(noBlock.code, 1);
  assert.match(noBlock.err, "host h1 has no block-server registered: a disk cannot be created there");
  const gone = await vmhop(["control", "delete-vm", "v1", ...s]);
  assert.is(gone.code, 1);
  assert.match(gone.err, `control-plane ${address}: unknown VM v1`);

  // A VM as CreateVm records it (no QEMU here), and a second host: the migration fails at
  // PrepareIncoming (no such kernel).
  const store = await openStore(redis.url, { prefix: "vmhop:" });
  await store.set(
    "control:vm:v2",
    JSON.stringify({
      vm_id: "v2",
      spec: { vmId: "v2", vcpus: 1, memoryMib: 64, kernelPath: "/nonexistent/vmlinux" },
      host_id: "h1",
      migration_id: "",
      fencing_token: 0,
    }),
  );
  await store.close();
  // One id per page-server; a page-server that does not answer is not registered.
  const twice = await vmhop(["control", "register-host", "h2", page.address, ...s]);
  assert.is(twice.code, 1);
  assert.match(twice.err, `page-server ${page.address} is already registered as host h1`);
  const deadAddress = `127.0.0.1:${await freePort()}`;
  const dead = await vmhop(["control", "register-host", "h2", deadAddress, ...s]);
  assert.is(dead.code, 1);
  assert.match(dead.err, `host h2: page-server ${deadAddress} does not answer`);
  assert.is((await vmhop(["control", "register-host", "h2", page2.address, ...s])).code, 0);
  const json = await vmhop(["control", "migrate", "v2", "h2", "--json", ...s]);
  assert.is(json.code, 1, "a failed migration exits 1");
  const lines = json.out.trim().split("\n");
  assert.is(lines.length, 1, "one JSON object, nothing else on stdout");
  const m = JSON.parse(lines[0]);
  assert.equal([m.vmId, m.destinationHostId, m.state], ["v2", "h2", "failed"]);
  assert.match(m.error, "PrepareIncoming");
  // Without --json, not a terminal: a progress line per update on stderr, the outcome on stdout.
  const text = await vmhop(["control", "migrate", "v2", "h2", ...s]);
  assert.is(text.code, 1);
  assert.match(
    text.err,
    /^m-[0-9a-z]{10}-[0-9a-z]{16} v2 h1 → h2: failed; .*\d+\.\d s; error: .*PrepareIncoming/m,
  );
  assert.match(text.out, /^m-[0-9a-z]{10}-[0-9a-z]{16} v2 h1 → h2: failed \(.*PrepareIncoming/);
  // delete-vm --json: the VM's page-server does not know it, and it is deleted all the same.
  const del = await vmhop(["control", "delete-vm", "v2", "--json", ...s]);
  assert.is(del.code, 0, del.err);
  assert.equal(JSON.parse(del.out), { vmId: "v2", deleted: true });
  // deregister-host: refused while a VM is on the host, done once it is gone.
  const store2 = await openStore(redis.url, { prefix: "vmhop:" });
  await store2.set(
    "control:vm:v3",
    JSON.stringify({ vm_id: "v3", spec: { vmId: "v3" }, host_id: "h2", migration_id: "", fencing_token: 0 }),
  );
  const busy = await vmhop(["control", "deregister-host", "h2", ...s]);
  assert.is(busy.code, 1);
  assert.match(busy.err, "host h2 cannot be deregistered: VMs on it (v3)");
  await store2.del("control:vm:v3");
  await store2.close();
  const dereg = await vmhop(["control", "deregister-host", "h2", ...s]);
  assert.is(dereg.code, 0, dereg.err);
  assert.match(dereg.out, "deregistered h2");
  const left = await vmhop(["control", "hosts", "--json", ...s]);
  assert.equal(
    JSON.parse(left.out).map((h: { hostId: string }) => h.hostId),
    ["h1"],
  );
  const unknown = await vmhop(["control", "deregister-host", "h2", ...s]);
  assert.is(unknown.code, 1);
  assert.match(unknown.err, "unknown host h2");
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
  assert.is(await p.stop(), 0);
});

test.run();
