// A whole VM crosses the emulated WAN with its address: the two-site namespace bed
// (testbed/sites: block-server, page-server and netreach site agent per site, the anchor, and a
// control-plane with --netreach) runs the test guest at s1 with home addresses and its disk on
// s1's block-server. One MigrateVm moves memory, disk and address to s2 while a correspondent on
// the home link pings the home addresses; afterwards the VM answers there, bound at s2, and the
// guest's own checks of memory and disk never failed. Moving back, a destination that fails
// before the switch-over rolls everything back: the VM runs at s2, its address answers there,
// bound there.
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import {
  type Binding,
  BindingState,
  NetReachServiceClient,
  type WatchHandoversResponse,
} from "../../gen/vmhop/v1/netreach.js";
import { MigrationMode, type VmSpec, VmState } from "../../gen/vmhop/v1/page.js";
import { call } from "../../services/common/grpc/call.js";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { destroyStaleNetns, ip, uniqueNetnsPrefix } from "../../testbed/netns.js";
import { VM } from "../../testbed/netreach/bed.js";
import { startPing } from "../../testbed/netreach/probe-process.js";
import { SitesBed } from "../../testbed/sites/bed.js";
import { siteQemus } from "../../testbed/sites/qemu-pids.js";
import { warmAt } from "../../testbed/sites/whole-vm-run.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { rejectsWithStatus } from "../helpers/assert.js";
import { gate } from "../helpers/env.js";
import { heartbeats } from "../helpers/heartbeats.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { ensureGuest } from "../page-server/guest.js";
import { migrationEnd } from "./fixtures.js";
import { homeGuestSpec } from "./home-guest.js";

const t = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root", "ip", "nft"],
  "whole-VM migration across the WAN with its address",
);
const PREFIX = uniqueNetnsPrefix("nr-wv-");
const dir = tempDir("vmhop-whole-vm-wan-");
const DISK_MIB = 32;
const TAP = "vmtap0";
const ADDRS = [VM.homeIpv6[0], VM.homeIpv4[0]];

let bed: SitesBed;
let anchor: NetReachServiceClient;
let spec: VmSpec;

const ping = (to: string, count: number) => startPing(bed.cn, to, count);

async function binding(): Promise<Binding | undefined> {
  const r = await call(anchor, "listBindings", {});
  return r.bindings.find((b) => b.vmId === VM.vmId);
}

async function answers(addr: string): Promise<void> {
  await until(
    `${addr} answering from the home link`,
    async () => {
      return summarisePings(await ping(addr, 5).result).received > 0 ? true : undefined;
    },
    120_000,
    100,
  );
}

const waitFinal = (id: string) => migrationEnd(bed.client, id, 300_000);

/** The guest's heartbeats so far carry no memory or disk error. */
function assertGuestClean(log: string): void {
  for (const h of heartbeats(log)) {
    assert.is(h.memErrors, 0, `memory errors in ${JSON.stringify(h)}`);
    assert.is(h.diskErrors, 0, `disk errors in ${JSON.stringify(h)}`);
  }
}

t.before(async () => {
  await destroyStaleNetns("nr-wv-");
  const guest = await ensureGuest();
  bed = await SitesBed.start({
    prefix: PREFIX,
    dir: dir.path,
    sites: 2,
    // The pre-copy migration below is rolled back before its switch-over: QEMU 7.2's TCG
    // pre-copy corruption never reaches a guest that keeps running (refused otherwise).
    controlArgs: ["--allow-unsafe-precopy"],
  });
  anchor = new NetReachServiceClient(bed.anchorAddress!, grpc.credentials.createInsecure());
  spec = await homeGuestSpec(bed, dir.path, guest, { diskMib: DISK_MIB, tap: TAP });
});

/** The fencing token of the move to s2: the binding's generation after it. */
let movedWith = 0;

t.after(async () => {
  anchor?.close();
  await bed?.stop();
  dir.cleanup();
});

t("CreateVm with home addresses places the VM at its host's site: bound at s1, answering", async () => {
  const vm = await bed.client.createVm(spec, "h1", { homeIpv6: VM.homeIpv6, homeIpv4: VM.homeIpv4 });
  assert.is(vm.state, VmState.VM_STATE_RUNNING);
  const rec = await bed.client.getVm(VM.vmId);
  assert.equal(rec.network, { homeIpv6: VM.homeIpv6, homeIpv4: VM.homeIpv4 });
  // The creation's token is the placement's generation (its number depends on what the store's
  // fencing counter gave before, e.g. the leader lease's generation).
  assert.ok(rec.fencingToken > 0, `token ${rec.fencingToken}`);
  const b = await binding();
  assert.equal(
    [b?.site, b?.generation, b?.state],
    ["s1", rec.fencingToken, BindingState.BINDING_STATE_ACTIVE],
  );
  await until(
    "the guest writing and verifying its disk",
    () => heartbeats(vm.serialLogPath).find((h) => h.diskOk > 0),
    180_000,
  );
  for (const a of ADDRS) await answers(a);
});

t("one MigrateVm moves memory, disk and address to s2 under a correspondent's ping", async () => {
  const before = (await bed.client.getVm(VM.vmId)).vm!;
  const handovers: WatchHandoversResponse[] = [];
  const watch = anchor.watchHandovers({ vmId: VM.vmId });
  watch.on("data", (e: WatchHandoversResponse) => handovers.push(e));
  watch.on("error", () => undefined);
  // 30 s of echoes 10 ms apart on both families, covering the switch-over.
  // s2's page-server keeps a warm incoming QEMU of the VM's shape (the control-plane names it).
  assert.ok(await warmAt(bed.sites[1].pageAddress, 120_000), "no warm incoming QEMU at s2");
  const probes = ADDRS.map((a) => ping(a, 3000));
  await Promise.all(probes.map((p) => p.ready));
  const m = await bed.client.migrateVm({ vmId: VM.vmId, destinationHostId: "h2" });
  assert.is(m.network?.state, "pending");
  const end = await waitFinal(m.migrationId);
  assert.is(end.state, "done", end.error);
  // Relayed post-copy: the source asked for the virtio rings' pages at the switch-over.
  assert.ok((end.memory?.pagesSentAhead ?? 0) > 0, `no pages sent ahead: ${JSON.stringify(end.memory)}`);
  assert.is(end.memory?.destinationWarmQemu, true, "s2 started a QEMU instead of taking its warm one");
  const n = end.network!;
  assert.is(n.state, "settled", JSON.stringify(n));
  assert.equal([n.fromSite, n.toSite, n.port, n.generation], ["s1", "s2", TAP, end.fencingToken]);
  movedWith = end.fencingToken;
  const steps = ["pending", "preparing", "prepared", "switching", "switched", "settled"].map(
    (s) => n.enteredUnixMs[s],
  );
  assert.ok(
    steps.every((x) => x > 0),
    JSON.stringify(n.enteredUnixMs),
  );
  assert.equal(
    [...steps].sort((x, y) => x - y),
    steps,
    "the steps in order",
  );
  // The address followed at the post-copy switch, not at completion.
  assert.ok(n.enteredUnixMs.switching <= end.enteredUnixMs.completing, JSON.stringify(end));
  const b = await binding();
  assert.equal(
    [b?.site, b?.generation, b?.state],
    ["s2", end.fencingToken, BindingState.BINDING_STATE_ACTIVE],
  );
  const vm = await bed.client.getVm(VM.vmId);
  assert.equal([vm.hostId, vm.vm?.state], ["h2", VmState.VM_STATE_RUNNING]);

  const switchedAt = n.enteredUnixMs.switched;
  for (const [i, p] of probes.entries()) {
    const records = await p.result;
    const s = summarisePings(records);
    const first = records[0].sentAtMs;
    const last = records.at(-1)!.sentAtMs;
    assert.ok(first < switchedAt && switchedAt < last, "the ping ran across the switch-over");
    assert.ok(
      records.some((r) => r.recvAtMs !== undefined && r.sentAtMs > switchedAt),
      `${ADDRS[i]}: replies from s2 during the ping`,
    );
    console.log(
      `${ADDRS[i]}: largest silence ${s.silenceMs.toFixed(0)} ms (gap ${s.gapMs.toFixed(0)} ms), ` +
        `beginning ${((s.gapStartMs ?? 0) - switchedAt).toFixed(0)} ms from the recorded switch-over; ` +
        `lost ${s.lost}/${s.sent}; migration ${end.enteredUnixMs.done - end.enteredUnixMs.pending} ms`,
    );
  }
  watch.cancel();
  const h = handovers.find((e) => e.toSite === "s2");
  assert.ok(h, "the anchor re-pointed the VM to s2");
  console.log(
    `anchor: re-pointed ${h!.gapMs.toFixed(1)} ms after the VM attached at s2; ` +
      `switch-over ${n.enteredUnixMs.switched - n.enteredUnixMs.switching} ms after it was recorded`,
  );

  for (const a of ADDRS) {
    const s = summarisePings(await ping(a, 20).result);
    assert.is(s.received, 20, `${a} at s2: ${JSON.stringify(s)}`);
  }
  // The guest runs on at s2 with its memory and disk intact.
  const logB = vm.vm!.serialLogPath;
  const lastA = heartbeats(before.serialLogPath).at(-1)!;
  await until(
    "disk passes at s2",
    () => {
      const hb = heartbeats(logB).filter((x) => x.counter > lastA.counter);
      return hb.length > 0 && hb.at(-1)!.diskOk > lastA.diskOk + 10 ? true : undefined;
    },
    180_000,
  );
  assertGuestClean(before.serialLogPath);
  assertGuestClean(logB);
});

t(
  "back to s1, whose incoming QEMU dies before the switch-over: the VM, its disk and its address stay at s2",
  async () => {
    // Pre-copy leaves time between the prepared network and the switch-over for the failure.
    const m = await bed.client.migrateVm({
      vmId: VM.vmId,
      destinationHostId: "h1",
      mode: MigrationMode.MIGRATION_MODE_PRECOPY,
    });
    const prepared = await until(
      "the network prepared at s1",
      async () => {
        const cur = await bed.client.getMigration(m.migrationId);
        return cur.network?.state === "prepared" || ["done", "failed"].includes(cur.state) ? cur : undefined;
      },
      180_000,
      50,
    );
    assert.is(prepared.network?.state, "prepared", JSON.stringify(prepared));
    const moving = await binding();
    assert.equal([moving?.site, moving?.movingTo], ["s2", "s1"]);
    // The destination's QEMU dies: the memory stream breaks before the switch-over.
    const { vms: incoming } = await siteQemus(bed, 1);
    for (const pid of incoming) process.kill(pid, "SIGKILL");
    const killed = incoming.length;
    assert.is(killed, 1, "one incoming QEMU at s1 (the source QEMU there ended with the last migration)");
    const end = await waitFinal(m.migrationId);
    assert.is(end.state, "failed", JSON.stringify(end));
    assert.is(end.network?.state, "rolled_back", JSON.stringify(end.network));
    assert.ok(end.network?.enteredUnixMs.rolled_back, "the rollback has its time");
    const vm = await bed.client.getVm(VM.vmId);
    assert.equal([vm.hostId, vm.vm?.state, vm.migrationId], ["h2", VmState.VM_STATE_RUNNING, ""]);
    const b = await binding();
    assert.equal(
      [b?.site, b?.generation, b?.state, b?.movingTo],
      ["s2", movedWith, BindingState.BINDING_STATE_ACTIVE, ""],
      "still bound at s2 with the last move's generation, no longer moving",
    );
    for (const a of ADDRS) {
      const s = summarisePings(await ping(a, 20).result);
      assert.is(s.received, 20, `${a} at s2 after the rollback: ${JSON.stringify(s)}`);
    }
    assertGuestClean(vm.vm!.serialLogPath);
  },
);

t("after the rollback, the move to s1 succeeds: the abandoned partial copy there was discarded", async () => {
  const m = await bed.client.migrateVm({ vmId: VM.vmId, destinationHostId: "h1" });
  const end = await waitFinal(m.migrationId);
  assert.is(end.state, "done", end.error);
  assert.is(end.network?.state, "settled", JSON.stringify(end.network));
  assert.is((await binding())?.site, "s1");
  for (const a of ADDRS) await answers(a);
  assertGuestClean((await bed.client.getVm(VM.vmId)).vm!.serialLogPath);
});

t("DeleteVm: the VM stops, its binding and its site's routes go, its address no longer answers", async () => {
  await bed.client.deleteVm(VM.vmId);
  await rejectsWithStatus(bed.client.getVm(VM.vmId), grpc.status.NOT_FOUND, /unknown VM/);
  assert.is(await binding(), undefined, "no binding left at the anchor");
  for (const a of ADDRS) {
    const s = summarisePings(await ping(a, 10).result);
    assert.is(s.received, 0, `${a} still answers: ${JSON.stringify(s)}`);
  }
  const routes = await ip(bed.sites[0].ns, "-6", "route", "show", VM.homeIpv6[0]);
  assert.is(routes.trim(), "", `s1 still routes ${VM.homeIpv6[0]}: ${routes}`);
});

t.run();
