// The fault matrix's bed (issue 15; used by test/control-plane/faults-*.test.ts): the two-site
// namespace WAN bed (testbed/sites: real QEMU, block-servers, page-servers, netreach, a
// control-plane) on a Redis of its own, more control-plane replicas on demand, and the checks
// every row ends with: where QEMU runs, and a migration done with the VM verified by the guest.
import * as assert from "uvu/assert";
import type { Migration } from "../../gen/vmhop/v1/control.js";
import { VmState } from "../../gen/vmhop/v1/page.js";
import { RedisStore } from "../../services/common/store/index.js";
import { KEYS, type MigrationRecord, readJson } from "../../services/control-plane/records.js";
import type { MigrationState } from "../../services/control-plane/states.js";
import { destroyStaleNetns, uniqueNetnsPrefix } from "../../testbed/netns.js";
import { type ServiceProcess, startService } from "../../testbed/service-process.js";
import { SitesBed } from "../../testbed/sites/bed.js";
import { siteQemus } from "../../testbed/sites/qemu-pids.js";
import { runWholeVm, type WholeVmResult } from "../../testbed/sites/whole-vm-run.js";
import { tempDir } from "../../testbed/temp-dir.js";
import { gate } from "../helpers/env.js";
import { type RedisHandle, startRedis } from "../helpers/redis.js";
import { test } from "../helpers/uvu.js";
import { ensureGuest } from "../page-server/guest.js";

/** A small guest: the rows run one after another on two shared cores. */
export const GUEST = { diskMib: 48, workloadDiskMib: 8, workloadMemMib: 32, dirtyRateMib: 8 };
/** The lease: a replica takes over from a dead leader within about this (long enough not to flap on a loaded machine). */
const LEASE = ["--lease-ttl-ms", "5000"];

/** Services start slowly while other QEMU tests share the two cores. */
export const READY_MS = 120_000;

export const say = (l: string) => console.log(`  ${l}`);

/** What every row needs: QEMU and the guest's build, root for namespaces, Redis. */
export const FAULT_BED_NEEDS = ["qemu-system-x86_64", "gcc", "apt-get", "root", "ip", "nft", "redis-server"];

/**
 * One row's suite: gated on what the bed needs, a FaultBed on namespaces named `ns…` started
 * before its test and stopped after (its control-plane given `controlArgs` too); `fault()` is that bed.
 */
export function faultRow(
  ns: string,
  what: string,
  controlArgs: string[] = [],
): { t: typeof test; fault: () => FaultBed } {
  const t = gate(test, FAULT_BED_NEEDS, `fault matrix: ${what}`);
  let fb: FaultBed | undefined;
  t.before(async () => {
    await destroyStaleNetns(ns);
    await ensureGuest();
    fb = await FaultBed.start(ns, controlArgs);
  });
  t.after(async () => {
    await fb?.stop();
  });
  return { t, fault: () => fb! };
}

/**
 * The row "control-plane killed (kill -9) in `phase`, restarted" as a test file of its own
 * (a row takes minutes on a loaded machine: one per file keeps each under the runner's limit).
 */
export function controlKillRow(phase: MigrationState): void {
  const { t, fault } = faultRow(
    `nr-k${phase.slice(0, 2)}-`,
    `the control-plane killed in ${phase}, restarted`,
  );
  t(`the control-plane killed (kill -9) in ${phase} and restarted: it resumes there and finishes`, () =>
    fault().controlKilledIn(phase),
  );
  t.run();
}

async function readRecord(store: RedisStore, id: string): Promise<MigrationRecord | undefined> {
  return (await readJson<MigrationRecord>(store, KEYS.migration(id)))?.value;
}

export class FaultBed {
  readonly extra: ServiceProcess[] = [];

  private constructor(
    readonly bed: SitesBed,
    readonly redis: RedisHandle,
    private readonly cleanup: () => void,
  ) {}

  static async start(nsBase: string, controlArgs: string[] = []): Promise<FaultBed> {
    const dir = tempDir("vmhop-faults-");
    const redis = await startRedis();
    try {
      const bed = await SitesBed.start({
        prefix: uniqueNetnsPrefix(nsBase),
        dir: dir.path,
        store: redis.url,
        controlArgs: [...LEASE, ...controlArgs],
        readyMs: READY_MS,
        say,
      });
      return new FaultBed(bed, redis, () => dir.cleanup());
    } catch (err) {
      await redis.stop();
      dir.cleanup();
      throw err;
    }
  }

  /** Another `vmhop control serve` like the bed's, on the same Redis (and `grpc` address if given). */
  async replica(name: string, grpc = "127.0.0.1:0"): Promise<ServiceProcess> {
    const s = await startService({
      name,
      readyMs: READY_MS,
      args: [
        "control",
        "serve",
        "--grpc",
        grpc,
        "--store",
        this.redis.url,
        "--netreach",
        this.bed.anchorAddress!,
        ...LEASE,
      ],
    });
    this.extra.push(s);
    return s;
  }

  /** How many QEMU processes run a VM in each site's namespace (the page-servers' warm ones not counted). */
  async qemus(): Promise<number[]> {
    return Promise.all(this.bed.sites.map(async (s) => (await siteQemus(this.bed, s.k)).vms.length));
  }

  /** The end of a row that finished the move: done, the VM at h2 only, verified by the guest. */
  async assertDoneAtDestination(r: WholeVmResult): Promise<Migration> {
    assert.is(r.state, "done", `migration ${r.migration_id}: ${r.error}`);
    assert.ok(r.memory_verified, `memory verified by the guest: ${JSON.stringify(r.guest)}`);
    assert.ok(r.disk_verified, `disk verified: ${JSON.stringify({ disk: r.disk, guest: r.guest })}`);
    assert.ok(r.address_verified, "the home addresses answer at the destination");
    assert.ok(r.source_disk_unchanged, "the source image untouched since the switch-over");
    const vm = await this.bed.client.getVm("vm1");
    assert.equal([vm.hostId, vm.migrationId, vm.vm?.state], ["h2", "", VmState.VM_STATE_RUNNING]);
    assert.equal(await this.qemus(), [0, 1], "QEMU processes at s1, s2: exactly one, at the destination");
    return this.bed.client.getMigration(r.migration_id);
  }

  /**
   * The row "control-plane killed (kill -9) in `phase`, restarted": the migration's record is
   * watched on the store's channel (every transition is published there) and the bed's only
   * control-plane is killed the moment the record enters `phase`, then started again on its
   * address. The record as the dead process left it must read `phase` (the kill landed in it);
   * the new process takes the lease, resumes from that state (a takeover in the record, in
   * `phase`) and finishes: done, the VM at the destination only, verified by the guest.
   */
  async controlKilledIn(phase: MigrationState): Promise<void> {
    const { bed } = this;
    const address = bed.control.grpc;
    const before = Number(bed.control.ready.generation);
    const store = await RedisStore.connect(this.redis.url);
    let restarted: Promise<ServiceProcess> | undefined;
    let left: Promise<MigrationRecord | undefined> | undefined;
    try {
      await store.subscribe(KEYS.migrations, (msg) => {
        const m = JSON.parse(msg) as MigrationRecord;
        if (restarted || m.state !== phase) return;
        bed.control.child.kill("SIGKILL");
        say(
          `kill -9 the control-plane as ${m.migration_id} entered ${phase}; starting it again on ${address}`,
        );
        // What the dead process left: read once it is gone (nothing writes the record meanwhile).
        left = bed.control.stop(0).then(() => readRecord(store, m.migration_id));
        // The same address: the test's client (as an operator's) finds it again.
        restarted = this.replica("control-plane (restarted)", address);
        restarted.catch(() => {}); // awaited below
        left.catch(() => {});
      });
      const r = await runWholeVm(bed, { ...GUEST, say });
      assert.ok(restarted, `the control-plane was killed in ${phase}`);
      const again = await restarted!;
      assert.is(again.ready.grpc, address);
      const dead = (await left!)!;
      assert.is(dead.state, phase, `the dead control-plane left the record in ${phase}`);
      const m = await this.assertDoneAtDestination(r);
      // Resumed from the record by the new process, under a newer generation than the dead one's
      // (which may itself have re-taken its lease under load: the record names the one it drove under).
      const from = dead.driver_generation ?? 0;
      assert.ok(from >= before && m.driverGeneration > from, "driven to its end by the new leader");
      const last = (await readRecord(store, r.migration_id))?.takeovers?.at(-1);
      assert.equal(
        last && [last.from_generation, last.generation, last.state],
        [from, m.driverGeneration, phase],
        "the record names the resume: from the dead generation, in the state it was killed in",
      );
      // Whether the kill fell between recording `migrating` and the source's StartMigration.
      if (again.stderr().includes("the source never started the migration"))
        say("the source had not been asked to start when the control-plane died: the new one asked it");
      say(
        `killed in ${phase}; resumed and done under generation ${m.driverGeneration}, fencing token ${m.fencingToken}`,
      );
    } finally {
      await store.close();
    }
  }

  async stop(): Promise<void> {
    for (const s of this.extra.splice(0)) await s.stop().catch(() => undefined);
    await this.bed.stop();
    await this.redis.stop();
    this.cleanup();
  }
}
