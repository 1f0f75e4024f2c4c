// Warm incoming QEMUs: started with `-incoming defer` before any request, for the VM shapes
// this host is told it may receive (kernel, initrd, command line, memory, vCPUs, accelerator),
// so a migration's PrepareIncoming takes one and adds the VM's own disk and NIC over HMP
// instead of starting QEMU on the switch-over's critical path. Bounded (`max` QEMUs in all),
// refilled one at a time in the background, a warm QEMU that died is dropped and replaced,
// never handed out; all of them are stopped on close.
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { type Logger, silentLogger } from "../../common/log.js";
import { perVmDevices, type VmDevice } from "./qemu-args.js";
import type { VmSpec } from "./spec.js";
import { Vm } from "./vm.js";

/** What a QEMU must have been started with to take a VM's stream (the rest is added later). */
export type VmShape = Pick<VmSpec, "vcpus" | "memoryMib" | "kernel" | "initrd" | "cmdline" | "accel">;

export function shapeOf(spec: VmShape): VmShape {
  const { vcpus, memoryMib, kernel, initrd, cmdline, accel } = spec;
  return { vcpus, memoryMib, kernel, initrd: initrd || undefined, cmdline: cmdline || undefined, accel };
}

/** Equal for two specs a warm QEMU serves alike (an unset field and an empty one are equal). */
export function shapeKey(spec: VmShape): string {
  const s = shapeOf(spec);
  return JSON.stringify([s.vcpus, s.memoryMib, s.kernel, s.initrd ?? "", s.cmdline ?? "", s.accel ?? "auto"]);
}

export interface WarmPoolOptions {
  /** Folder for the warm QEMUs' run folders (emptied at open). */
  root: string;
  /** Most warm QEMUs at once (0: none, every PrepareIncoming starts its own). */
  max: number;
  log?: Logger;
  qemuBinary?: string;
  /** Wait after a warm QEMU failed to start before trying that shape again (doubles, ≤ 60 s). */
  retryMs?: number;
  /** A taken warm QEMU is replaced at refill(), or after this long (default 30 s). */
  refillAfterMs?: number;
}

interface Slot {
  key: string;
  vm: Vm;
}

export class WarmPool {
  private readonly log: Logger;
  /** The shapes to keep one warm QEMU of, in the order asked (the first `max` are served). */
  private wanted = new Map<string, VmShape>();
  private readonly ready: Slot[] = [];
  private filling: Promise<void> | undefined;
  private readonly failures = new Map<string, { count: number; until: number }>();
  private retryTimer: NodeJS.Timeout | undefined;
  private refillTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Handed out since open, for the record and tests. */
  taken = 0;

  constructor(private readonly opts: WarmPoolOptions) {
    this.log = (opts.log ?? silentLogger).child({ part: "warm-pool" });
  }

  /** Removes what an earlier page-server left (its warm QEMUs are killed: nobody owns them). */
  open(): void {
    mkdirSync(this.opts.root, { recursive: true });
    for (const name of readdirSync(this.opts.root)) {
      const dir = join(this.opts.root, name);
      killLeftOver(dir, this.log);
      rmSync(dir, { recursive: true, force: true });
    }
  }

  get max(): number {
    return this.opts.max;
  }

  /**
   * The shapes to keep warm, replacing the earlier set (the caller states them all each time).
   * Beyond `max` the rest are not served; warm QEMUs of shapes no longer wanted are stopped.
   * Returns the shapes served.
   */
  setShapes(shapes: VmShape[]): VmShape[] {
    const next = new Map<string, VmShape>();
    for (const s of shapes) if (next.size < this.opts.max) next.set(shapeKey(s), shapeOf(s));
    const added = [...next.keys()].filter((k) => !this.wanted.has(k)).length;
    const removed = [...this.wanted.keys()].filter((k) => !next.has(k)).length;
    this.wanted = next;
    if (added || removed)
      this.log.info("warm shapes", {
        shapes: next.size,
        added,
        removed,
        asked: shapes.length,
        max: this.max,
      });
    for (const slot of this.ready.filter((s) => !next.has(s.key)))
      this.discard(slot, "shape no longer wanted");
    this.fill();
    return [...next.values()];
  }

  /** Warm QEMUs waiting now, by shape key (for DescribeHost and tests). */
  readyCount(spec?: VmShape): number {
    const key = spec && shapeKey(spec);
    return this.ready.filter((s) => key === undefined || s.key === key).length;
  }

  /** The warm QEMUs waiting now (not to be driven: take() hands one out). */
  readyVms(): Vm[] {
    return this.ready.map((s) => s.vm);
  }

  /**
   * A warm QEMU for `spec`'s shape, taken out of the pool (the caller owns it now), or
   * undefined when none waits. Its devices are not added yet: see attachVmDevices.
   */
  take(spec: VmShape): Vm | undefined {
    const key = shapeKey(spec);
    for (;;) {
      const i = this.ready.findIndex((s) => s.key === key);
      if (i < 0) return undefined;
      const [slot] = this.ready.splice(i, 1);
      if (slot.vm.state !== "incoming") {
        this.log.warn("warm qemu found dead when taken; not handed out", { warm: slot.vm.spec.name });
        continue;
      }
      this.taken++;
      this.log.info("warm qemu taken", { warm: slot.vm.spec.name, pid: slot.vm.pid });
      // Not refilled now: starting a QEMU takes CPU the migration that took this one needs
      // until its switch-over. The taker calls refill() then; at the latest, the timer does.
      clearTimeout(this.refillTimer);
      this.refillTimer = setTimeout(() => this.refill(), this.opts.refillAfterMs ?? 30_000).unref();
      return slot.vm;
    }
  }

  /** Starts the warm QEMUs missing now (a migration that took one has switched over or failed). */
  refill(): void {
    clearTimeout(this.refillTimer);
    this.refillTimer = undefined;
    this.fill();
  }

  /** The folder a taken warm QEMU was started in, once it moved out (becomeVm). */
  forget(dir: string): void {
    rmSync(dir, { recursive: true, force: true });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.refillTimer);
    await this.filling;
    await Promise.all(this.ready.splice(0).map((s) => this.stopSlot(s)));
  }

  private discard(slot: Slot, why: string): void {
    const i = this.ready.indexOf(slot);
    if (i >= 0) this.ready.splice(i, 1);
    this.log.info("warm qemu stopped", { warm: slot.vm.spec.name, why });
    void this.stopSlot(slot);
  }

  private async stopSlot(slot: Slot): Promise<void> {
    await slot.vm.kill().catch(() => {});
    rmSync(join(this.opts.root, slot.vm.spec.name), { recursive: true, force: true });
  }

  /** Starts the missing warm QEMUs one after the other (each start is CPU on a shared host). */
  private fill(): void {
    // Held while a migration that took a warm QEMU has not switched over (see take).
    if (this.closed || this.filling || this.refillTimer) return;
    this.filling = (async () => {
      for (let next = this.nextShape(); next && !this.closed; next = this.nextShape())
        await this.startOne(...next);
    })().finally(() => {
      this.filling = undefined;
    });
  }

  private nextShape(): [string, VmShape] | undefined {
    const now = Date.now();
    let wait = Number.POSITIVE_INFINITY;
    for (const [key, shape] of this.wanted) {
      if (this.ready.some((s) => s.key === key)) continue;
      if (this.ready.length >= this.max) break;
      const f = this.failures.get(key);
      if (f && f.until > now) {
        wait = Math.min(wait, f.until - now);
        continue;
      }
      return [key, shape];
    }
    if (Number.isFinite(wait) && !this.closed) {
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.fill(), wait).unref();
    }
    return undefined;
  }

  private async startOne(key: string, shape: VmShape): Promise<void> {
    const name = `warm-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
    const runDir = join(this.opts.root, name);
    const vm = new Vm({ ...shape, name }, { runDir, log: this.opts.log, qemuBinary: this.opts.qemuBinary });
    const slot = { key, vm };
    try {
      await vm.start({ incoming: true });
    } catch (err) {
      const count = (this.failures.get(key)?.count ?? 0) + 1;
      const delay = Math.min(60_000, (this.opts.retryMs ?? 5000) * 2 ** (count - 1));
      this.failures.set(key, { count, until: Date.now() + delay });
      this.log.warn("warm qemu did not start; shape retried later", { warm: name, err, retryInMs: delay });
      rmSync(runDir, { recursive: true, force: true });
      return;
    }
    this.failures.delete(key);
    if (this.closed || !this.wanted.has(key)) {
      await this.stopSlot(slot);
      return;
    }
    vm.on("state", (state) => {
      if (state === "incoming" || !this.ready.includes(slot)) return;
      this.ready.splice(this.ready.indexOf(slot), 1);
      this.log.warn("warm qemu ended while waiting; replaced", { warm: name, reason: vm.endReason });
      rmSync(runDir, { recursive: true, force: true });
      this.fill();
    });
    this.ready.push(slot);
    this.log.info("warm qemu ready", {
      warm: name,
      pid: vm.pid,
      memoryMib: shape.memoryMib,
      vcpus: shape.vcpus,
    });
  }
}

/**
 * Adds `spec`'s NIC or disk to a warm QEMU, with the command line's own words (qemu-args.ts
 * perVmDevices) through HMP, which parses them as the command line does. HMP answers errors as
 * text: anything but nothing (or drive_add's "OK") is one.
 */
export async function attachVmDevices(
  vm: Vm,
  spec: Pick<VmSpec, "disk" | "nic">,
  part: "nic" | "disk",
): Promise<void> {
  for (const d of perVmDevices(part === "nic" ? { nic: spec.nic } : { disk: spec.disk }))
    await addDevice(vm, d);
}

async function addDevice(vm: Vm, d: VmDevice): Promise<void> {
  const line = d.kind === "drive" ? `drive_add 0 ${d.opts}` : `${d.kind}_add ${d.opts}`;
  const out = (
    await vm.qmp.execute<string>("human-monitor-command", { "command-line": line }, { timeoutMs: 60_000 })
  ).trim();
  if (out !== "" && out !== "OK") throw new Error(`warm QEMU refused ${d.kind} ${d.opts}: ${out}`);
}

/**
 * Makes sure the VM's QEMU has its disk: a warm QEMU gets it here (a cold one has it from its
 * command line, and one that got it already is left alone). Its NBD export may not be open yet
 * (the destination's proxy export is created beside PrepareIncoming: the block-server holds a
 * handshake for an export being created, but refuses a name nobody creates yet), so a refused
 * attach is tried again every `retryMs` until `withinMs` have passed.
 */
export async function ensureDisk(
  vm: Vm,
  o: { retryMs?: number; withinMs?: number; log?: Logger } = {},
): Promise<void> {
  if (!vm.spec.disk) return;
  const [drive, device] = perVmDevices({ disk: vm.spec.disk });
  const started = Date.now();
  const deadline = started + (o.withinMs ?? 20_000);
  for (;;) {
    const blocks = await vm.qmp.execute<{ device: string; qdev?: string }[]>("query-block", undefined, {
      timeoutMs: 60_000,
    });
    const disk = blocks.find((b) => b.device === "disk0");
    if (disk?.qdev) return;
    try {
      if (!disk) await addDevice(vm, drive);
      await addDevice(vm, device);
      o.log?.info("warm qemu: disk attached", { vm: vm.spec.name, ms: Date.now() - started });
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      o.log?.info("warm qemu: disk not attached yet; again", { vm: vm.spec.name, err });
      await new Promise((r) => setTimeout(r, o.retryMs ?? 250));
    }
  }
}

/** A warm QEMU an earlier page-server left in `dir`: killed when its pidfile still names it. */
function killLeftOver(dir: string, log: Logger): void {
  const pidFile = join(dir, "qemu.pid");
  if (!existsSync(pidFile)) return;
  try {
    const pid = Number(readFileSync(pidFile, "utf8").trim());
    if (pid > 0 && readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(join(dir, "qmp.sock"))) {
      process.kill(pid, "SIGKILL");
      log.info("killed a warm qemu an earlier page-server left", { dir, pid });
    }
  } catch {
    // gone already
  }
}
