// A site agent: makes its site a place where a VM's home addresses work. It decapsulates what
// the anchor (or another site's forwarding pointer) sends, gives the VM a port that looks like
// the home link, reverse-tunnels the VM's traffic to the anchor, and sends the binding update
// when the VM arrives. When a VM leaves, it leaves a forwarding pointer to the new site (never
// back to the anchor, whose route may still point here) until the binding settles.
import { type Logger, silentLogger } from "../../common/log.js";
import type { Outcome } from "../binding/cache.js";
import type { SiteEndpoint, UpdateRequest } from "../binding/types.js";
import { idempotent } from "../dataplane/batch-process.js";
import {
  deleteHostRoutes,
  deliverHomeAddresses,
  type HomeAddresses,
  type HomeLinkImitation,
  holdHomeAddresses,
  reverseTunnelRules,
  reverseTunnelTable,
  STAGED_METRIC,
  tunnelRoutes,
  vmPortCommands,
} from "../dataplane/commands.js";
import { IpBatch } from "../dataplane/ip-batch.js";
import { type DataplaneKind, makeTunnel, setupTolerates, type Tunnel } from "../dataplane/tunnel.js";
import { countSiteUpdate } from "../metrics.js";

/** What the site agent needs to reach the anchor: in-process here, gRPC in the mesh. */
export interface AnchorLink {
  updateBinding(req: UpdateRequest): Promise<Outcome>;
  refresh(vmId: string, generation: number, lifetimeSeconds?: number): Promise<Outcome>;
}

export interface SiteConfig extends SiteEndpoint {
  netns?: string;
  /** The data plane (the anchor's; chosen at start from what the kernel offers: probe.ts). */
  dataplane: DataplaneKind;
  /** WAN device for the encap routes and decapsulation SIDs (srv6 only). */
  wanDev?: string;
  tunnelSource: string;
  /** Where reverse-tunnelled traffic goes: the anchor's endpoint addresses (SIDs). */
  anchorSids: { sid6: string; sid4: string };
  homeLink: HomeLinkImitation;
  /** Routing table for the reverse tunnel, and the rule preference; defaults 100 / 100. */
  reverseTable?: number;
  rulePref?: number;
  log?: Logger;
}

export interface VmNet extends HomeAddresses {
  vmId: string;
}

export interface PrepareOptions {
  /**
   * Drop the home addresses' traffic here until attach (the anchor bicasts meanwhile). Without,
   * a port given to prepare delivers them at once.
   */
  hold?: boolean;
}

export class SiteAgent {
  private readonly table: number;
  private readonly pref: number;
  private readonly log: Logger;
  /** VMs prepared here (reverse-tunnel rules in place). */
  private readonly prepared = new Set<string>();
  /** VMs whose port here is configured, and its name. */
  private readonly ports = new Map<string, string>();
  /** Lifetime refresh timers of the VMs bound here. */
  private readonly refreshers = new Map<string, NodeJS.Timeout>();
  /** VMs that left, with a forwarding pointer in place. */
  private readonly pointers = new Map<string, VmNet>();
  /** VMs still here with a forwarding pointer staged for their departure. */
  private readonly staged = new Set<string>();
  /** Port names `batch` has resolved since it started (see fresh()). */
  private readonly portNames = new Set<string>();

  private constructor(
    readonly cfg: SiteConfig,
    private readonly anchor: AnchorLink,
    private batch: IpBatch,
    private readonly batch6: IpBatch,
    private readonly tunnel: Tunnel,
  ) {
    this.table = cfg.reverseTable ?? 100;
    this.pref = cfg.rulePref ?? 100;
    this.log = (cfg.log ?? silentLogger).child({ component: "site", site: cfg.site });
  }

  static async start(cfg: SiteConfig, anchor: AnchorLink): Promise<SiteAgent> {
    const tunnel = makeTunnel(cfg.dataplane, { ...cfg, decapDev: cfg.wanDev });
    const batch = new IpBatch(cfg.netns);
    const s = new SiteAgent(cfg, anchor, batch, new IpBatch(cfg.netns, ["-6"]), tunnel);
    try {
      await batch.apply([...tunnel.setup(cfg), ...reverseTunnelTable(cfg.anchorSids, tunnel, s.table)], {
        tolerate: setupTolerates,
      });
    } catch (err) {
      await s.close();
      throw err;
    }
    return s;
  }

  get dataplane(): DataplaneKind {
    return this.tunnel.kind;
  }

  get endpoint(): SiteEndpoint {
    return { site: this.cfg.site, sid6: this.cfg.sid6, sid4: this.cfg.sid4 };
  }

  private async rules(vm: VmNet, op: "add" | "del"): Promise<void> {
    const r = reverseTunnelRules(vm, this.table, this.pref, op);
    await Promise.all([
      this.batch6.apply(r.v6, { tolerate: idempotent }),
      this.batch.apply(r.v4, { tolerate: idempotent }),
    ]);
  }

  /**
   * Before switch-over: the reverse tunnel for the VM's home addresses and, when the VM's port
   * already exists here (as a destination tap does before the VM resumes), the port made to look
   * like the home link, delivering the home addresses unless `hold`. Idempotent.
   */
  async prepare(vm: VmNet, port?: string, opts: PrepareOptions = {}): Promise<void> {
    await this.rules(vm, "add");
    this.prepared.add(vm.vmId);
    // A VM that comes back replaces the pointer it left here with its own routes.
    if (opts.hold || port) this.pointers.delete(vm.vmId);
    if (opts.hold) await this.batch.apply(holdHomeAddresses(vm));
    if (port) await this.configurePort(vm, port, !opts.hold);
  }

  /**
   * `ip -batch` caches each device name's ifindex for its lifetime, so a port re-created under a
   * name it resolved before (a VM's tap at a site it comes back to, or after a rolled-back move)
   * would be addressed by the old, gone index ("No such device"; `ntable` even ends the
   * process). Such a port gets a fresh process; the old one finishes what it was given.
   */
  private async fresh(port: string): Promise<void> {
    if (!this.portNames.has(port)) {
      this.portNames.add(port);
      return;
    }
    const old = this.batch;
    this.batch = new IpBatch(this.cfg.netns);
    this.portNames.clear();
    this.portNames.add(port);
    await old.close();
  }

  private async configurePort(vm: VmNet, port: string, deliver: boolean): Promise<void> {
    await this.fresh(port);
    await this.batch.apply([
      ...vmPortCommands(port, this.cfg.homeLink),
      ...(deliver ? deliverHomeAddresses(vm, port) : []),
    ]);
    this.ports.set(vm.vmId, port);
  }

  /**
   * The VM runs here now: finish what prepare() did not do, then tell the anchor. Returns the
   * anchor's answer.
   */
  async attach(vm: VmNet, port: string, generation: number, lifetimeSeconds?: number): Promise<Outcome> {
    const attachedAtMs = performance.timeOrigin + performance.now();
    await this.attachPort(vm, port);
    const o = await this.anchor.updateBinding({
      vmId: vm.vmId,
      generation,
      lifetimeSeconds,
      attachedAtMs,
      ...this.endpoint,
    });
    countSiteUpdate(o.accepted);
    if (!o.accepted) this.log.warn("binding update refused", { vm: vm.vmId, reason: o.reason });
    else this.keepAlive(vm.vmId, generation, o.binding.lifetimeSeconds);
    return o;
  }

  /**
   * First placement: the anchor registered the binding here with `generation` (no update to
   * send); the port delivers the home addresses and the binding is kept alive. Idempotent.
   */
  async place(vm: VmNet, port: string, generation: number, lifetimeSeconds: number): Promise<void> {
    await this.attachPort(vm, port);
    this.keepAlive(vm.vmId, generation, lifetimeSeconds);
  }

  /**
   * Refreshes the binding (this generation) every third of its lifetime while the VM is here;
   * stops when the anchor refuses (a newer binding exists) or the VM leaves.
   */
  keepAlive(vmId: string, generation: number, lifetimeSeconds: number): void {
    this.stopRefresh(vmId);
    const timer = setInterval(
      () => {
        this.anchor.refresh(vmId, generation).then(
          (o) => {
            if (o.accepted) return;
            this.log.warn("refresh refused", { vm: vmId, generation, reason: o.reason });
            if (this.refreshers.get(vmId) === timer) this.stopRefresh(vmId);
          },
          (err) => this.log.warn("refresh failed", { vm: vmId, err }),
        );
      },
      (lifetimeSeconds * 1000) / 3,
    );
    timer.unref();
    this.refreshers.set(vmId, timer);
  }

  stopRefresh(vmId: string): void {
    clearInterval(this.refreshers.get(vmId));
    this.refreshers.delete(vmId);
  }

  /**
   * Makes the port look like the home link and delivers the home addresses on it, without
   * telling the anchor (first placement; attach() then tells it).
   */
  async attachPort(vm: VmNet, port: string): Promise<void> {
    if (!this.prepared.has(vm.vmId)) await this.rules(vm, "add");
    this.prepared.add(vm.vmId);
    this.pointers.delete(vm.vmId);
    if (this.ports.get(vm.vmId) !== port) await this.configurePort(vm, port, true);
    // Idempotent; ends a hold.
    else await this.batch.apply(deliverHomeAddresses(vm, port));
  }

  /**
   * Before switch-over, while the VM still runs here: the forwarding pointer to `to` as a fallback
   * route behind the VM's port routes. When the VM's port loses its link or goes away (the
   * source tap closing), the kernel falls back to the pointer by itself: nothing waits for this
   * agent to hear of the switch-over, so what arrives here meanwhile is forwarded, not dropped.
   * A port that loses its link needs `ignore_routes_with_linkdown` on it (the test bed sets the
   * namespace default); the kernel applies a carrier change from a work queue, within about a
   * millisecond on a quiet machine. leave() makes the pointer the main route.
   */
  async stageForwarding(vm: VmNet, to: SiteEndpoint): Promise<void> {
    await this.batch.apply(tunnelRoutes(vm, to, this.tunnel, STAGED_METRIC));
    this.staged.add(vm.vmId);
  }

  /**
   * The VM left (its port is gone). With `forwardTo`, packets still arriving here for it are
   * re-encapsulated to the new site; without, they are dropped (break-before-make).
   */
  async leave(vm: VmNet, forwardTo?: SiteEndpoint): Promise<void> {
    this.stopRefresh(vm.vmId);
    if (forwardTo) {
      await this.batch.apply(tunnelRoutes(vm, forwardTo, this.tunnel));
      this.pointers.set(vm.vmId, vm);
    } else {
      await this.batch.apply(deleteHostRoutes(vm), { tolerate: idempotent });
    }
    // The pointer is in the main routes now (or forwarding was not wanted): the staged one goes.
    if (this.staged.delete(vm.vmId))
      await this.batch.apply(deleteHostRoutes(vm, STAGED_METRIC), { tolerate: idempotent });
    await this.rules(vm, "del");
    this.prepared.delete(vm.vmId);
    this.ports.delete(vm.vmId);
  }

  /**
   * After the binding settled: removes the forwarding pointer. A pointer staged for a move that
   * did not happen (cancelled before switch-over) goes too.
   */
  async cleanup(vm: VmNet): Promise<void> {
    if (this.staged.delete(vm.vmId))
      await this.batch.apply(deleteHostRoutes(vm, STAGED_METRIC), { tolerate: idempotent });
    if (!this.pointers.has(vm.vmId)) return;
    this.pointers.delete(vm.vmId);
    await this.batch.apply(deleteHostRoutes(vm), { tolerate: idempotent });
  }

  hasForwardingPointer(vmId: string): boolean {
    return this.pointers.has(vmId);
  }

  async close(): Promise<void> {
    for (const id of [...this.refreshers.keys()]) this.stopRefresh(id);
    await Promise.all([this.batch.close(), this.batch6.close()]);
  }
}
