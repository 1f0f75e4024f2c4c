// The anchor (home agent): the binding cache plus its kernel data plane. Every accepted change
// to a binding is written to the store first, then to the kernel, one VM at a time in order.
// After a restart, start() puts every live binding back into the kernel.
import { EventEmitter } from "node:events";
import { type Logger, silentLogger } from "../../common/log.js";
import { BindingCache, type Outcome } from "../binding/cache.js";
import type { BindingKv } from "../binding/kv.js";
import type { Binding, RegisterRequest, SiteEndpoint, UpdateRequest } from "../binding/types.js";
import { AnchorDataplane, type AnchorDataplaneConfig } from "../dataplane/anchor-dataplane.js";
import type { DataplaneKind } from "../dataplane/tunnel.js";
import { countAnchorUpdate } from "../metrics.js";

export interface HandoverEvent {
  vmId: string;
  fromSite: string;
  toSite: string;
  generation: number;
  /** When the anchor's route pointed at the new site (epoch ms). */
  timeUnixMs: number;
  /** From the VM running at the new site (as the site reported) to the route; -1 if unknown. */
  gapMs: number;
  /** From receiving the update to the kernel route. */
  installMs: number;
}

export interface AnchorOptions {
  kv: BindingKv;
  dataplane: AnchorDataplaneConfig;
  log?: Logger;
  /** How often lifetimes are checked; default 1000 ms. */
  expiryCheckMs?: number;
}

export class Anchor extends EventEmitter<{ handover: [HandoverEvent] }> {
  private readonly chains = new Map<string, Promise<unknown>>();
  private timer?: NodeJS.Timeout;

  private constructor(
    readonly cache: BindingCache,
    private readonly dp: AnchorDataplane,
    private readonly log: Logger,
  ) {
    super();
  }

  static async start(opts: AnchorOptions): Promise<Anchor> {
    const log = (opts.log ?? silentLogger).child({ component: "anchor" });
    const dp = await AnchorDataplane.open(opts.dataplane);
    const a = new Anchor(new BindingCache(opts.kv), dp, log);
    const restored = await a.restore();
    log.info("anchor started", { restored, dataplane: dp.kind });
    a.timer = setInterval(
      () => void a.expire().catch((e) => log.error("expiry failed", { err: e })),
      opts.expiryCheckMs ?? 1000,
    );
    a.timer.unref();
    return a;
  }

  /** The kernel data plane in use ("srv6" or "vxlan"). */
  get dataplane(): DataplaneKind {
    return this.dp.kind;
  }

  /** Runs fn after every earlier change of the same VM, so the kernel sees them in store order. */
  private serial<T>(vmId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.chains.get(vmId) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    this.chains.set(
      vmId,
      next.catch(() => undefined),
    );
    return next;
  }

  private async restore(): Promise<number> {
    let n = 0;
    for (const b of await this.cache.list()) {
      if (b.state === "expired") await this.dp.remove(b);
      else {
        await this.dp.install(b);
        n++;
      }
    }
    return n;
  }

  register(req: RegisterRequest): Promise<Outcome> {
    return this.serial(req.vmId, async () => {
      const o = await this.cache.register(req);
      if (!o.accepted) return o;
      // Re-point first (atomic replace), then drop only the addresses the VM no longer has.
      await this.dp.install(o.binding);
      if (o.previous) {
        const b = o.binding;
        await this.dp.remove({
          ...o.previous,
          homeIpv6: o.previous.homeIpv6.filter((a) => !b.homeIpv6.includes(a)),
          homeIpv4: o.previous.homeIpv4.filter((a) => !b.homeIpv4.includes(a)),
        });
      }
      // First registration: neighbours may still cache the VM's own MAC from the home link.
      if (!o.previous) {
        try {
          this.dp.announce(o.binding);
        } catch (err) {
          this.log.warn("announce failed", { vm: req.vmId, err });
        }
      }
      this.log.info("registered", { vm: req.vmId, site: req.site, generation: req.generation });
      return o;
    });
  }

  /** A binding update from a site: re-points the VM if the generation is newer. */
  updateBinding(req: UpdateRequest): Promise<Outcome> {
    const receivedAt = performance.now();
    return this.serial(req.vmId, async () => {
      const o = await this.cache.update(req);
      if (!o.accepted) {
        countAnchorUpdate(false);
        this.log.warn("binding update refused", {
          vm: req.vmId,
          generation: req.generation,
          reason: o.reason,
        });
        return o;
      }
      await this.dp.install(o.binding);
      const installedAt = performance.timeOrigin + performance.now();
      // The route reaches the new site now; the copies would only be duplicates.
      await this.dp.stopBicast(o.binding);
      const ev: HandoverEvent = {
        vmId: req.vmId,
        fromSite: o.previous?.site ?? "",
        toSite: req.site,
        generation: req.generation,
        timeUnixMs: Math.round(installedAt),
        gapMs: req.attachedAtMs ? installedAt - req.attachedAtMs : -1,
        installMs: performance.now() - receivedAt,
      };
      countAnchorUpdate(true, ev);
      this.emit("handover", ev);
      return o;
    });
  }

  prepareAttach(vmId: string, site: string): Promise<Outcome> {
    return this.serial(vmId, () => this.cache.prepare(vmId, site));
  }

  /**
   * Make-before-break with bicasting: until its binding update arrives, packets for a VM that is
   * moving (prepareAttach) also go to the destination, prepared to receive them.
   */
  startBicast(vmId: string, to: SiteEndpoint): Promise<void> {
    return this.serial(vmId, async () => {
      const b = await this.cache.get(vmId);
      if (b?.state !== "moving" || b.movingTo !== to.site)
        throw new Error(`cannot bicast ${vmId} to ${to.site}: it is not moving there`);
      await this.dp.bicast(b, to);
    });
  }

  /**
   * Ends a prepared move to `site` that will not happen: the binding is active where it was and
   * the bicast stops. Idempotent: a binding not moving there is left as it is (accepted).
   */
  cancelMove(vmId: string, site: string): Promise<Outcome> {
    return this.serial(vmId, async () => {
      const b = await this.cache.get(vmId);
      if (b?.state !== "moving" || b.movingTo !== site) {
        if (b) await this.dp.stopBicast(b);
        return b
          ? { accepted: true, binding: b, previous: b }
          : {
              accepted: false,
              status: "not-registered",
              reason: `vm ${vmId} is not registered`,
              binding: null,
            };
      }
      const o = await this.cache.cancel(vmId);
      if (o.accepted) await this.dp.stopBicast(o.binding);
      return o;
    });
  }

  refresh(vmId: string, generation: number, lifetimeSeconds?: number): Promise<Outcome> {
    return this.serial(vmId, () => this.cache.refresh(vmId, generation, lifetimeSeconds));
  }

  deregister(vmId: string): Promise<Binding | null> {
    return this.serial(vmId, async () => {
      const b = await this.cache.deregister(vmId);
      if (b) await this.dp.remove(b);
      return b;
    });
  }

  list(): Promise<Binding[]> {
    return this.cache.list();
  }

  private async expire(): Promise<void> {
    for (const b of await this.cache.expireDue()) {
      // An update may have revived it meanwhile: remove only what is still expired.
      await this.serial(b.vmId, async () => {
        const cur = await this.cache.get(b.vmId);
        if (cur?.state !== "expired") return;
        await this.dp.remove(cur);
        this.log.warn("binding expired", { vm: b.vmId, generation: b.generation });
      });
    }
  }

  /** Stops the anchor process-side; the kernel keeps forwarding with the last state. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await Promise.all([...this.chains.values()]);
    await this.dp.close();
  }
}
