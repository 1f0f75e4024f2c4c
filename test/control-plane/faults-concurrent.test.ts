// Fault matrix (issue 15), many migrations at once: ten small guests (real QEMU, the workload
// writing and checking memory and disk) run at s1 of the namespace WAN bed, one of them the test
// guest with its home addresses; ten MigrateVm to s2 are requested at once. Every one ends done:
// the VM running only at s2, its guest verifying memory and disk there, its disk at s2 passing
// the disk invariant against its image at s1. Then two MigrateVm of one VM are requested at
// once: exactly one is accepted, the other refused FAILED_PRECONDITION naming the running
// migration; the VM ends in one place, verified, its addresses answering there.
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as assert from "uvu/assert";
import { guestArtefacts } from "../../deploy/guest/build/paths.js";
import type { Migration } from "../../gen/vmhop/v1/control.js";
import { VmState } from "../../gen/vmhop/v1/page.js";
import { BlockServer } from "../../services/control-plane/block-client.js";
import { summarisePings } from "../../services/netreach/probe/analysis.js";
import { VM } from "../../testbed/netreach/bed.js";
import { startPing } from "../../testbed/netreach/probe-process.js";
import { compareImages } from "../../testbed/sites/disk-check.js";
import { SerialFollower } from "../../testbed/sites/serial-follower.js";
import { serialLogAt, startTestVm, workloadCmdline, writeImage } from "../../testbed/sites/whole-vm-run.js";
import { until } from "../helpers/wait.js";
import { faultRow, say } from "./faults-bed.js";
import { migrationEnd } from "./fixtures.js";

const { t, fault } = faultRow("nr-fcc-", "ten migrations at once, two of one VM at once");

/** Ten guests on two shared cores under TCG: as small as the workload allows. */
const SMALL = { memoryMib: 96, diskMib: 16, workloadDiskMib: 4, workloadMemMib: 16, dirtyRateMib: 2 };
const VMS = 10;

interface Guest {
  vmId: string;
  /** Its disk image at s1 (left as it was at the switch-over: the source QEMU stopped then). */
  image: string;
  serial: SerialFollower;
}
const guests: Guest[] = [];

t.after(() => {
  for (const g of guests) g.serial.stop();
});

/** A small guest at s1 without a NIC, its disk an image there served by s1's block-server. */
async function smallGuest(vmId: string): Promise<Guest> {
  const { bed } = fault();
  const [a] = bed.sites;
  const image = join(bed.opts.dir, a.site, `${vmId}.raw`);
  writeImage(image, SMALL.diskMib);
  const art = guestArtefacts();
  const vm = await bed.client.createVm(
    {
      vmId,
      vcpus: 1,
      memoryMib: SMALL.memoryMib,
      diskNbdUrl: "",
      kernelPath: art.kernel,
      initrdPath: art.initrd,
      kernelCmdline: workloadCmdline(SMALL),
      nicTap: "",
      nicMac: "",
    },
    a.hostId,
    undefined,
    { source: { $case: "imagePath", value: image } },
  );
  const serial = new SerialFollower();
  serial.follow(vm.serialLogPath, true);
  return { vmId, image, serial };
}

/** The guest runs at site k, its workload verifying memory and disk there past what it did before. */
async function verifiedAt(g: Guest, k: number): Promise<void> {
  const log = serialLogAt(fault().bed, k, g.vmId);
  g.serial.follow(log, true);
  const before = g.serial.beats.filter((h) => h.path !== log).at(-1);
  await g.serial.waitFor(
    `${g.vmId} verifying its disk at s${k}`,
    (h) => h.path === log && h.diskOk > (before?.diskOk ?? 0) + 10,
    240_000,
  );
  assert.is(
    g.serial.beats.reduce((s, h) => s + h.memErrors + h.diskErrors, 0),
    0,
    `${g.vmId}: no memory or disk error in the guest (${g.serial.errors.slice(0, 3).join("; ")})`,
  );
  assert.is(g.serial.tracker.stats.counterBreaks, 0, `${g.vmId}: one unbroken heartbeat counter`);
}

/** Migration `m` done, the VM free and running at host k only; its disk at k passes the invariant against `sourceImage`. */
async function doneAt(m: Migration, k: number, sourceImage: string): Promise<void> {
  const { bed } = fault();
  const site = bed.sites[k - 1];
  assert.is(m.state, "done", `${m.vmId} ${m.migrationId}: ${m.error}`);
  assert.is(m.lost, "", `${m.vmId}: nothing lost`);
  assert.ok(m.disk?.promoted, `${m.vmId}: its disk promoted at ${site.site}`);
  const vm = await bed.client.getVm(m.vmId);
  assert.equal([vm.hostId, vm.migrationId, vm.vm?.state], [site.hostId, "", VmState.VM_STATE_RUNNING]);
  const block = new BlockServer(site.blockAddress);
  try {
    const path = (await block.status(m.disk!.destinationExport)).export!.path;
    const disk = compareImages(sourceImage, path);
    assert.ok(disk.ok, `${m.vmId}'s disk at ${site.site}: ${JSON.stringify(disk)}`);
  } finally {
    block.close();
  }
}

async function answersAt(): Promise<void> {
  const { bed } = fault();
  for (const to of [VM.homeIpv6[0], VM.homeIpv4[0]])
    await until(
      `${to} answering`,
      async () => summarisePings(await startPing(bed.cn, to, 5).result).received > 0,
      60_000,
      200,
    );
}

t("ten migrations of different VMs at once: every one done, each VM at s2 only, verified", async () => {
  const fb = fault();
  const { bed } = fb;
  const [, b] = bed.sites;
  const first = await startTestVm(bed, { ...SMALL, say });
  guests.push({ vmId: first.vmId, image: first.image, serial: first.serial });
  for (let i = 2; i <= VMS; i++) guests.push(await smallGuest(`vm${i}`));
  await Promise.all(
    guests.map((g) =>
      g.serial.waitFor(`${g.vmId} writing and verifying its disk`, (h) => h.diskOk > 0, 300_000),
    ),
  );
  assert.equal(await fb.qemus(), [VMS, 0]);
  say(`${VMS} guests run at s1; ${VMS} MigrateVm to s2 at once`);

  const started = await Promise.all(
    guests.map((g) => bed.client.migrateVm({ vmId: g.vmId, destinationHostId: b.hostId })),
  );
  assert.is(new Set(started.map((m) => m.migrationId)).size, VMS, "ten distinct migrations");
  const ends = await Promise.all(started.map((m) => migrationEnd(bed.client, m.migrationId, 400_000)));
  for (const m of ends) say(`${m.vmId}: ${m.migrationId} ${m.state}${m.error ? `: ${m.error}` : ""}`);
  for (const [i, m] of ends.entries()) await doneAt(m, b.k, guests[i].image);
  await Promise.all(guests.map((g) => verifiedAt(g, b.k)));
  assert.equal(await fb.qemus(), [0, VMS], "QEMU processes at s1, s2: each VM once, at s2");
  await answersAt();
});

t(
  "two migrations of one VM at once: one accepted, the other refused naming it; the VM in one place",
  async () => {
    const fb = fault();
    const { bed } = fb;
    const [a, b] = bed.sites;
    const g = guests[0];
    // Its image at s2 (the promoted export's file): the next source, unchanged once it switched over.
    const block = new BlockServer(b.blockAddress);
    const pathAtB = (await block.status(g.vmId)).export!.path;
    block.close();
    const asked = await Promise.allSettled([
      bed.client.migrateVm({ vmId: g.vmId, destinationHostId: a.hostId }),
      bed.client.migrateVm({ vmId: g.vmId, destinationHostId: a.hostId }),
    ]);
    const accepted = asked.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    const refused = asked.flatMap((r) => (r.status === "rejected" ? [r.reason as grpc.ServiceError] : []));
    assert.is(accepted.length, 1, `exactly one accepted: ${JSON.stringify(asked.map((r) => r.status))}`);
    assert.is(refused.length, 1);
    const m = accepted[0];
    say(`accepted ${m.migrationId}; refused: ${grpc.status[refused[0].code]} ${refused[0].details}`);
    assert.ok(
      [grpc.status.FAILED_PRECONDITION, grpc.status.ABORTED].includes(refused[0].code),
      `refused with ${grpc.status[refused[0].code]}`,
    );
    assert.match(refused[0].details, m.migrationId, "the refusal names the running migration");
    const end = await migrationEnd(bed.client, m.migrationId, 300_000);
    await doneAt(end, a.k, pathAtB);
    await verifiedAt(g, a.k);
    assert.equal(await fb.qemus(), [1, VMS - 1], "the VM once, back at s1; the others at s2");
    await answersAt();
  },
);

t.run();
