// Test helpers for migrations between two page-servers: the test guest running on the first
// host, a migration's end, and the guest's heartbeat continuing across it (counter unbroken
// over both serial logs, memory verified at the destination, the source QEMU gone).
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import * as assert from "uvu/assert";
import { guestCmdline } from "../../deploy/guest/build/paths.js";
import { type MigrationRecord, PageHost } from "../../services/page-server/host.js";
import { isFinalPhase } from "../../services/page-server/migration/phase.js";
import type { VmSpec } from "../../services/page-server/vm/spec.js";
import type { Vm } from "../../services/page-server/vm/vm.js";
import { heartbeats } from "../helpers/heartbeats.js";
import { ensureGuest } from "./guest.js";

/**
 * Two page-servers under `root` (`${tag}-a`, `${tag}-b`, closed by `closers`) and the test
 * guest running on the first with one memory verification pass done.
 */
export async function guestOnTwoHosts(
  root: string,
  tag: string,
  closers: (() => Promise<void>)[],
  opts: {
    name?: string;
    memoryMib?: number;
    workload?: Parameters<typeof guestCmdline>[0];
    /** More of the VM's spec (a disk, a NIC). */
    extra?: Partial<VmSpec>;
    /** The second host's warm incoming QEMUs (PageHostOptions.warmMax). */
    warmMax?: number;
  } = {},
): Promise<{ a: PageHost; b: PageHost; spec: VmSpec; src: Vm }> {
  const guest = await ensureGuest();
  const a = new PageHost({ runRoot: join(root, `${tag}-a`) });
  const b = new PageHost({ runRoot: join(root, `${tag}-b`), warmMax: opts.warmMax });
  for (const h of [a, b]) {
    await h.open();
    closers.push(() => h.close());
  }
  const spec: VmSpec = {
    name: opts.name ?? tag,
    vcpus: 1,
    memoryMib: opts.memoryMib ?? 160,
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: guestCmdline(opts.workload ?? { memMib: 48, rateMib: 16, verifyMib: 48 }),
    ...opts.extra,
  };
  a.define(spec);
  const src = await a.start(spec.name);
  await src.serial.waitForHeartbeat((h) => h.passes >= 1, 60_000);
  return { a, b, spec, src };
}

export function finished(rec: MigrationRecord): Promise<MigrationRecord> {
  return new Promise((resolve) => {
    if (isFinalPhase(rec.phase)) return resolve(rec);
    const on = (r: MigrationRecord) => {
      if (isFinalPhase(r.phase)) {
        rec.events.off("update", on);
        resolve(r);
      }
    };
    rec.events.on("update", on);
  });
}

/** Two more verification passes than `passesBefore` at the destination, no counter break, source stopped. */
export async function assertGuestContinued(src: Vm, dst: Vm, passesBefore: number): Promise<void> {
  const logs = [src.paths.serialLog, dst.paths.serialLog];
  const deadline = Date.now() + 60_000;
  let after = heartbeats(logs).at(-1);
  while ((after?.passes ?? 0) < passesBefore + 2 && Date.now() < deadline) {
    await sleep(200);
    after = heartbeats(logs).at(-1);
  }
  assert.ok((after?.passes ?? 0) >= passesBefore + 2, "no full verification pass at the destination");
  assert.is(after!.memErrors, 0, "memory verification failed after the migration");
  const all = heartbeats(logs);
  assert.equal(
    all.filter((h, i) => i > 0 && h.counter !== all[i - 1].counter + 1),
    [],
    "heartbeat counter broke",
  );
  assert.is(dst.state, "running");
  for (let i = 0; i < 50 && src.state !== "stopped"; i++) await sleep(100);
  assert.is(src.state, "stopped");
}
