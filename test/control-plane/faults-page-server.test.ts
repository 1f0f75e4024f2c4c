// Fault matrix (issue 15), the destination page-server killed before the switch-over: the test
// guest (real QEMU) runs at s1 of the namespace WAN bed; its whole-VM migration to s2 starts and
// s2's page-server is killed (kill -9) once the record reads `migrating`. The migration rolls
// back: failed with the reason, the VM running at s1 (the guest goes on verifying its memory and
// disk there), its address answering there, s2 seen suspect or down by the leader's liveness
// checks. Once s2's page-server is back (it adopts the waiting QEMU it left), the leader stops
// that QEMU: the VM runs in exactly one place.
import { rmSync } from "node:fs";
import { join } from "node:path";
import * as assert from "uvu/assert";
import { HostLiveness } from "../../gen/vmhop/v1/control.js";
import { VmState } from "../../gen/vmhop/v1/page.js";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { destroyStaleNetns } from "../../testbed/netns.js";
import { VM } from "../../testbed/netreach/bed.js";
import { startPing } from "../../testbed/netreach/probe-process.js";
import { startService } from "../../testbed/service-process.js";
import { serviceAddressOf } from "../../testbed/sites/bed.js";
import { serialLogAt, startTestVm, type TestVm } from "../../testbed/sites/whole-vm-run.js";
import { gate } from "../helpers/env.js";
import { test } from "../helpers/uvu.js";
import { until } from "../helpers/wait.js";
import { ensureGuest } from "../page-server/guest.js";
import { FaultBed, GUEST, READY_MS, say } from "./faults-bed.js";
import { migrationEnd } from "./fixtures.js";

const t = gate(
  test,
  ["qemu-system-x86_64", "gcc", "apt-get", "root", "ip", "nft", "redis-server"],
  "fault matrix: the destination page-server killed before the switch-over",
);
const NS = "nr-fp-";
let fb: FaultBed | undefined;
let vm: TestVm | undefined;

t.before(async () => {
  await destroyStaleNetns(NS);
  await ensureGuest();
  fb = await FaultBed.start(NS);
  vm = await startTestVm(fb.bed, { ...GUEST, say });
});

t.after(async () => {
  vm?.serial.stop();
  await fb?.stop();
});

t(
  "the destination page-server killed before the switch-over: rolled back, the VM at the source only",
  async () => {
    const { bed } = fb!;
    const [a, b] = bed.sites;
    let m = await bed.client.migrateVm({ vmId: vm!.vmId, destinationHostId: b.hostId });
    for (;;) {
      m = await bed.client.getMigration(m.migrationId);
      if (m.state === "migrating") break;
      assert.ok(["pending", "preparing"].includes(m.state), `reached ${m.state} before the kill: ${m.error}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    say(`kill -9 ${b.site}'s page-server (pid ${b.page.child.pid}) in ${m.state}`);
    b.page.child.kill("SIGKILL");
    const end = await migrationEnd(bed.client, m.migrationId, 300_000);
    say(`migration ${end.state}: ${end.error}`);
    assert.is(end.state, "failed");
    assert.ok(end.error.length > 0, "the record says why");
    assert.is(end.enteredUnixMs.switched, undefined, "never switched over");
    assert.is(end.network?.state, "rolled_back", "the address preparation undone");

    // The VM at the source, free, running; the guest goes on verifying memory and disk there.
    const at = await bed.client.getVm(vm!.vmId);
    assert.equal([at.hostId, at.migrationId, at.vm?.state], [a.hostId, "", VmState.VM_STATE_RUNNING]);
    const aLog = serialLogAt(bed, a.k);
    const last = vm!.serial.beats.filter((h) => h.path === aLog).at(-1)!;
    await vm!.serial.waitFor(
      "the guest verifying its disk at s1 after the rollback",
      (h) => h.path === aLog && h.diskOk > last.diskOk + 10,
      120_000,
    );
    const beats = vm!.serial.beats;
    assert.is(
      beats.reduce((s, h) => s + h.memErrors + h.diskErrors, 0),
      0,
      "no memory or disk error in the guest",
    );
    assert.is(vm!.serial.tracker.stats.counterBreaks, 0, "one unbroken heartbeat counter");
    for (const to of [VM.homeIpv6[0], VM.homeIpv4[0]])
      await until(
        `${to} answering at s1`,
        async () => summarisePings(await startPing(bed.cn, to, 5).result).received > 0,
        60_000,
        200,
      );

    // The leader's checks saw s2 go.
    const live = await until(
      "s2 suspect or down",
      async () => {
        const l = (await bed.client.hostsStatus()).liveness.find((x) => x.hostId === b.hostId);
        return l && l.state !== HostLiveness.HOST_LIVENESS_UP ? l : undefined;
      },
      60_000,
      200,
    );
    assert.match(live.detail, /page-server/);

    // s2's page-server back (it adopts the waiting QEMU it left); the leader stops that QEMU.
    // The killed one left its gRPC socket file behind; a new one cannot bind over it.
    rmSync(b.pageAddress.replace(/^unix:/, ""), { force: true });
    const page = await startService({
      name: `${b.site} page-server (restarted)`,
      netns: b.ns,
      args: [
        "page",
        "serve",
        "--listen",
        b.pageAddress,
        "--channel-listen",
        `[${serviceAddressOf(b.k)}]:0`,
        "--run-dir",
        join(bed.opts.dir, b.site, "page"),
      ],
      readyMs: READY_MS,
    });
    fb!.extra.push(page);
    await until(
      "QEMU at s1 only",
      async () => {
        const q = await fb!.qemus();
        return q[0] === 1 && q[1] === 0 ? q : undefined;
      },
      120_000,
      500,
    );
    const still = await bed.client.getVm(vm!.vmId);
    assert.equal([still.hostId, still.vm?.state], [a.hostId, VmState.VM_STATE_RUNNING]);
  },
);

t.run();
