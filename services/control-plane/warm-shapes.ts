// Warm incoming QEMUs, the control-plane's part: while it leads, it tells every registered
// host's page-server, every few seconds, the shapes of the VMs it knows (kernel, initrd,
// command line, memory, vCPUs; most common first), so a migration's destination finds a QEMU
// of the VM's shape already started (page-server vm/warm-pool.ts). The whole set each time:
// a restarted page-server learns it again within one period, a deleted VM's shape goes away.
// A page-server that does not answer (or predates WarmIncoming) is left out of that round.
import { VmSpec } from "../../gen/vmhop/v1/page.js";
import type { Logger } from "../common/log.js";
import type { Store } from "../common/store/index.js";
import type { PageServers } from "./page-client.js";
import { type HostRecord, KEYS, scanJson, type VmRecord } from "./records.js";

export interface WarmShapesOptions {
  /** Between two rounds (default 5 s). */
  everyMs?: number;
  /** Each page-server call's deadline (default 2 s). */
  deadlineMs?: number;
  log: Logger;
}

/** The distinct shapes of `vms`' specs, most common first (ties by the first VM id). */
export function vmShapes(vms: Pick<VmRecord, "vm_id" | "spec">[]): VmSpec[] {
  const byKey = new Map<string, { shape: VmSpec; count: number; first: string }>();
  for (const vm of [...vms].sort((a, b) => a.vm_id.localeCompare(b.vm_id))) {
    const s = VmSpec.fromJSON(vm.spec);
    const shape = VmSpec.fromPartial({
      vcpus: s.vcpus,
      memoryMib: s.memoryMib,
      kernelPath: s.kernelPath,
      initrdPath: s.initrdPath,
      kernelCmdline: s.kernelCmdline,
    });
    const key = JSON.stringify(VmSpec.toJSON(shape));
    const e = byKey.get(key);
    if (e) e.count++;
    else byKey.set(key, { shape, count: 1, first: vm.vm_id });
  }
  return [...byKey.values()]
    .sort((a, b) => b.count - a.count || a.first.localeCompare(b.first))
    .map((e) => e.shape);
}

export class WarmShapes {
  private timer?: NodeJS.Timeout;
  private round?: Promise<void>;
  private stopped = false;
  /** Per host, what the last round ended with (logged when it changes). */
  private readonly last = new Map<string, string>();

  constructor(
    private readonly store: Store,
    private readonly pages: PageServers,
    private readonly opts: WarmShapesOptions,
  ) {}

  start(): void {
    const tick = () => {
      if (this.stopped) return;
      this.round = this.tellAll()
        .catch((err) => this.opts.log.warn("warm shapes round", { err }))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, this.opts.everyMs ?? 5000);
        });
    };
    tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.round;
  }

  /** One round: every host told the shapes of every VM, at once. */
  async tellAll(): Promise<void> {
    const [hosts, vms] = await Promise.all([
      scanJson<HostRecord>(this.store, KEYS.hostPrefix),
      scanJson<VmRecord>(this.store, KEYS.vmPrefix),
    ]);
    const shapes = vmShapes(vms);
    await Promise.all(hosts.filter((h) => !h.asleep).map((h) => this.tell(h, shapes)));
  }

  private async tell(host: HostRecord, shapes: VmSpec[]): Promise<void> {
    let outcome: string;
    try {
      const r = await this.pages
        .get(host.page_server_address)
        .warmIncoming(shapes, this.opts.deadlineMs ?? 2000);
      outcome = `${r.served} of ${shapes.length} shapes served (max ${r.maxWarm})`;
    } catch (err) {
      outcome = `not told: ${(err as Error).message}`;
    }
    if (this.last.get(host.host_id) === outcome) return;
    this.last.set(host.host_id, outcome);
    this.opts.log.info("warm incoming QEMUs", { host: host.host_id, outcome });
  }
}
