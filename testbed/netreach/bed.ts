// A netreach test bed in network namespaces:
//
//   cn ── home link ── anchor ══ WAN ══ site1 … siteN        (sites also meshed with each other)
//                                         │vport     │vport
//                                   patch panel (bridge) ── vm
//
// The correspondent (cn) and the VM's home addresses share the home link subnet; the anchor
// proxies ARP/NDP for them there and tunnels to the VM's current site (SRv6 or VXLAN-GPE). The VM
// namespace keeps its addresses, routes and link for the whole run. Every site has a port
// (`vport`, like a destination tap prepared before switch-over); a bridge in the patch-panel
// namespace connects the VM to exactly one of them, and re-patching it is the switch-over. WAN
// links are pluggable (`WanLinker`) so a delaying one can replace plain veth; the binding
// update's one-way delay is applied by `delayedAnchorLink`.

import { type Logger, silentLogger } from "../../services/common/log.js";
import { MemoryStore } from "../../services/common/store/index.js";
import { Anchor } from "../../services/netreach/anchor/anchor.js";
import type { Outcome } from "../../services/netreach/binding/cache.js";
import type { BindingKv } from "../../services/netreach/binding/kv.js";
import type { UpdateRequest } from "../../services/netreach/binding/types.js";
import { IpBatch } from "../../services/netreach/dataplane/ip-batch.js";
import { chooseDataplane, probeKernel } from "../../services/netreach/dataplane/probe.js";
import type { DataplaneKind } from "../../services/netreach/dataplane/tunnel.js";
import {
  type HandoverMode,
  MigrationHooks,
  type MigrationNet,
} from "../../services/netreach/migration-hooks.js";
import { type AnchorLink, SiteAgent, type VmNet } from "../../services/netreach/site/agent.js";
import {
  addAddress,
  createNetns,
  createVeth,
  destroyNetnsWithPrefix,
  deviceRouterSysctls,
  hostSysctls,
  ip,
  macOf,
  routerSysctls,
  runIn,
  setSysctls,
} from "../netns.js";
import { type RelayedWan, relayedWan } from "./relayed-wan.js";

export const GATEWAY_MAC = "02:00:00:00:00:01";
export const HOME = { gw6: "2001:db8:100::1", gw4: "10.77.0.1", cn6: "2001:db8:100::2", cn4: "10.77.0.2" };
export const VM: VmNet & { mac: string } = {
  vmId: "vm-1",
  mac: "52:54:00:00:01:00",
  homeIpv6: ["2001:db8:100::100"],
  homeIpv4: ["10.77.0.100"],
};
const PORT = "vport";

/** Node k (0 = anchor, 1.. = sites): locator fc00:k::/48, tunnel source ::a, SIDs ::d6 and ::d4. */
export function sidsOf(k: number): { tunsrc: string; sid6: string; sid4: string } {
  return { tunsrc: `fc00:${k}::a`, sid6: `fc00:${k}::d6`, sid4: `fc00:${k}::d4` };
}

export interface WanEnd {
  ns: string;
  dev: string;
  /** The end's address on the link, with prefix length. */
  addr6: string;
}

/** Connects two routers; returns a function that tears down whatever it started. */
export type WanLinker = (a: WanEnd, b: WanEnd) => Promise<() => Promise<void>>;

/** A plain veth pair: no delay. */
export const vethWan: WanLinker = async (a, b) => {
  await createVeth({ ns: a.ns, name: a.dev }, { ns: b.ns, name: b.dev });
  await addAddress(a.ns, a.dev, a.addr6);
  await addAddress(b.ns, b.dev, b.addr6);
  return async () => {};
};

/** Delays the binding update and its answer by `oneWayMs` each way, as the WAN would. */
export function delayedAnchorLink(anchor: () => Anchor, oneWayMs: number): AnchorLink {
  const wait = () => new Promise<void>((r) => setTimeout(r, oneWayMs));
  return {
    async updateBinding(req: UpdateRequest): Promise<Outcome> {
      if (oneWayMs > 0) await wait();
      const o = await anchor().updateBinding(req);
      if (oneWayMs > 0) await wait();
      return o;
    },
    async refresh(vmId: string, generation: number, lifetimeSeconds?: number): Promise<Outcome> {
      if (oneWayMs > 0) await wait();
      const o = await anchor().refresh(vmId, generation, lifetimeSeconds);
      if (oneWayMs > 0) await wait();
      return o;
    },
  };
}

export type { HandoverMode } from "../../services/netreach/migration-hooks.js";

export interface BedOptions {
  /** Unique namespace prefix, e.g. "nr-t1-"; everything with it is deleted on destroy. */
  prefix: string;
  sites?: number;
  wan?: WanLinker;
  /**
   * One-way WAN delay: router links become VXLAN through a userspace delay relay (see
   * relayed-wan.ts), and binding updates are delayed as much. Ignored when `wan` is given.
   */
  wanDelayMs?: number;
  /** With wanDelayMs: each WAN link's rate in each direction (bits/s; default unlimited). */
  wanRateBitsPerSecond?: number;
  /** One-way delay applied to binding updates; default wanDelayMs (or 0). */
  signallingDelayMs?: number;
  kv?: BindingKv;
  log?: Logger;
  /** The data plane of the anchor and sites; default: SRv6 if the kernel has it, else VXLAN. */
  dataplane?: DataplaneKind;
  /**
   * false: build the namespaces only, for an anchor and site agents run as services
   * (`vmhop netreach anchor|site serve`) and a VM moved with `plug()`. Default true.
   */
  agents?: boolean;
}

export class NetreachBed {
  readonly ns: { anchor: string; cn: string; vm: string; patch: string; sites: string[] };
  anchor!: Anchor;
  sites: SiteAgent[] = [];
  /** Index (0-based) of the site the VM is at, or -1 before placement. */
  at = -1;
  generation = 0;
  kv: BindingKv;
  /** Resolved in create(): what the anchor and sites program. */
  dataplane: DataplaneKind = "vxlan";
  private readonly teardowns: Array<() => Promise<void>> = [];
  private relayed?: RelayedWan;
  private patch?: IpBatch;
  private last?: MigrationNet;
  private readonly log: Logger;

  private constructor(readonly opts: BedOptions) {
    const p = opts.prefix;
    const n = opts.sites ?? 2;
    if (n < 2 || n > 9) throw new Error(`a bed has 2..9 sites, got ${n}`);
    this.ns = {
      anchor: `${p}anchor`,
      cn: `${p}cn`,
      vm: `${p}vm`,
      patch: `${p}patch`,
      sites: Array.from({ length: n }, (_, i) => `${p}s${i + 1}`),
    };
    this.kv = opts.kv ?? new MemoryStore();
    this.log = opts.log ?? silentLogger;
  }

  static async create(opts: BedOptions): Promise<NetreachBed> {
    if (!/^nr-[a-z0-9-]{1,20}$/.test(opts.prefix))
      throw new Error(`bed prefix must look like 'nr-xyz-', got '${opts.prefix}'`);
    const bed = new NetreachBed(opts);
    bed.dataplane = chooseDataplane(opts.dataplane ?? "auto", await probeKernel());
    try {
      await bed.build();
    } catch (err) {
      await bed.destroy();
      throw err;
    }
    return bed;
  }

  private async build(): Promise<void> {
    const { anchor, cn, vm, sites } = this.ns;
    for (const r of [anchor, ...sites]) await createNetns(r, { sysctls: routerSysctls });
    // Sites answer ARP for the home subnet on the VM's port (the guest thinks peers are on-link),
    // and skip routes through a port that lost its link: a staged forwarding pointer then takes
    // over in the kernel the moment the VM's port goes dark (SiteAgent.stageForwarding).
    for (const s of sites)
      await setSysctls(s, {
        "net.ipv4.conf.default.proxy_arp": "1",
        "net.ipv4.conf.default.ignore_routes_with_linkdown": "1",
        "net.ipv6.conf.default.ignore_routes_with_linkdown": "1",
      });
    for (const h of [cn, vm]) await createNetns(h, { sysctls: hostSysctls });

    // Home link.
    await createVeth({ ns: anchor, name: "home0", mac: GATEWAY_MAC }, { ns: cn, name: "cn0" });
    await setSysctls(anchor, deviceRouterSysctls("home0"));
    await addAddress(anchor, "home0", `${HOME.gw6}/64`);
    await addAddress(anchor, "home0", `${HOME.gw4}/24`);
    await addAddress(cn, "cn0", `${HOME.cn6}/64`);
    await addAddress(cn, "cn0", `${HOME.cn4}/24`);

    // WAN: a full mesh of point-to-point links; link a<b is fd00:0:a:b::/64 with ::1 at a, ::2 at b.
    const routers = [anchor, ...sites];
    let wan = this.opts.wan ?? vethWan;
    if (!this.opts.wan && this.opts.wanDelayMs !== undefined) {
      const relayed = relayedWan({
        netns: `${this.opts.prefix}wan`,
        delayMs: this.opts.wanDelayMs,
        rateBitsPerSecond: this.opts.wanRateBitsPerSecond,
      });
      this.teardowns.push(relayed.close);
      this.relayed = relayed;
      wan = relayed.linker;
    }
    for (let a = 0; a < routers.length; a++)
      for (let b = a + 1; b < routers.length; b++) {
        const net = `fd00:0:${a}:${b}::`;
        this.teardowns.push(
          await wan(
            { ns: routers[a], dev: `w${b}`, addr6: `${net}1/64` },
            { ns: routers[b], dev: `w${a}`, addr6: `${net}2/64` },
          ),
        );
        // A WAN link's neighbours are resolved in steady state: pin them, so the first packet of
        // a forwarding pointer does not wait a round trip for neighbour discovery.
        const [macA, macB] = [await macOf(routers[a], `w${b}`), await macOf(routers[b], `w${a}`)];
        await ip(
          routers[a],
          "neigh",
          "replace",
          `${net}2`,
          "lladdr",
          macB,
          "dev",
          `w${b}`,
          "nud",
          "permanent",
        );
        await ip(
          routers[b],
          "neigh",
          "replace",
          `${net}1`,
          "lladdr",
          macA,
          "dev",
          `w${a}`,
          "nud",
          "permanent",
        );
        await ip(routers[a], "-6", "route", "add", `fc00:${b}::/48`, "via", `${net}2`, "dev", `w${b}`);
        await ip(routers[b], "-6", "route", "add", `fc00:${a}::/48`, "via", `${net}1`, "dev", `w${a}`);
      }
    for (let k = 0; k < routers.length; k++) await addAddress(routers[k], "lo", `${sidsOf(k).tunsrc}/128`);

    // The VM: home addresses, default routes to the home gateway, a link to the patch panel.
    await createNetns(this.ns.patch, { sysctls: { "net.ipv6.conf.default.disable_ipv6": "1" } });
    await ip(this.ns.patch, "link", "add", "br0", "type", "bridge", "stp_state", "0");
    await ip(this.ns.patch, "link", "set", "br0", "up");
    await createVeth({ ns: vm, name: "eth0", mac: VM.mac }, { ns: this.ns.patch, name: "pvm" });
    await ip(this.ns.patch, "link", "set", "pvm", "master", "br0");
    for (let i = 0; i < sites.length; i++) await this.createPort(i);
    await addAddress(vm, "eth0", `${VM.homeIpv6[0]}/64`, { noPrefixRoute: true });
    await addAddress(vm, "eth0", `${VM.homeIpv4[0]}/24`);
    await ip(vm, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0");
    await ip(vm, "-4", "route", "add", "default", "via", HOME.gw4, "dev", "eth0");

    this.patch = new IpBatch(this.ns.patch);
    if (this.opts.agents === false) return;
    await this.startAnchor();
    const link = delayedAnchorLink(
      () => this.anchor,
      this.opts.signallingDelayMs ?? this.opts.wanDelayMs ?? 0,
    );
    for (let i = 0; i < sites.length; i++) {
      const k = i + 1;
      const s = sidsOf(k);
      this.sites.push(
        await SiteAgent.start(
          {
            netns: sites[i],
            site: `s${k}`,
            sid6: s.sid6,
            sid4: s.sid4,
            tunnelSource: s.tunsrc,
            dataplane: this.dataplane,
            wanDev: "w0",
            anchorSids: sidsOf(0),
            homeLink: { gatewayMac: GATEWAY_MAC, gatewayIpv4: HOME.gw4 },
            log: this.log,
          },
          link,
        ),
      );
    }
  }

  /** What the anchor's and a site agent's serve arguments share: node k's namespace and SIDs. */
  /**
   * Cuts the relayed WAN link between two routers' namespaces (both directions: everything on it
   * dropped silently, as a cable pulled) or restores it; only with `wanDelayMs` (a relayed WAN).
   */
  async cutWan(a: string, b: string, on: boolean): Promise<void> {
    if (!this.relayed) throw new Error("cutWan needs the relayed WAN (wanDelayMs)");
    await this.relayed.cut(a, b, on);
  }

  private nodeArgs(k: number, netns: string, wanDev: string): string[] {
    const s = sidsOf(k);
    const flags = { netns, dataplane: this.dataplane, "wan-dev": wanDev, sid6: s.sid6, sid4: s.sid4 };
    return [...Object.entries(flags).flatMap(([f, v]) => [`--${f}`, v]), "--tunnel-source", s.tunsrc];
  }

  /**
   * `vmhop netreach anchor serve` arguments (after "netreach") for an anchor service that drives
   * this bed's anchor namespace (a bed built with `agents: false`).
   */
  anchorServeArgs(listen: string, extra: string[] = []): string[] {
    return [
      "anchor",
      "serve",
      "--listen",
      listen,
      ...this.nodeArgs(0, this.ns.anchor, "w1"),
      "--home-dev",
      "home0",
      ...extra,
    ];
  }

  /** `vmhop netreach site serve` arguments (after "netreach") for site k (1-based) of this bed. */
  siteServeArgs(k: number, anchorAddress: string, listen = "127.0.0.1:0"): string[] {
    const a = sidsOf(0);
    return [
      "site",
      "serve",
      "--listen",
      listen,
      "--anchor",
      anchorAddress,
      "--site",
      `s${k}`,
      ...this.nodeArgs(k, this.ns.sites[k - 1], "w0"),
      "--anchor-sid6",
      a.sid6,
      "--anchor-sid4",
      a.sid4,
      "--gateway-mac",
      GATEWAY_MAC,
      "--gateway-ipv4",
      HOME.gw4,
    ];
  }

  /** Starts (or restarts) the anchor on the bed's store; restores bindings into the kernel. */
  async startAnchor(): Promise<void> {
    const s = sidsOf(0);
    this.anchor = await Anchor.start({
      kv: this.kv,
      dataplane: {
        kind: this.dataplane,
        netns: this.ns.anchor,
        homeDev: "home0",
        wanDev: "w1",
        sids: s,
        tunnelSource: s.tunsrc,
      },
      log: this.log,
    });
  }

  /** Stops the anchor process-side (the kernel keeps its routes) and starts a new one on `kv`. */
  async restartAnchor(kv: BindingKv = this.kv): Promise<void> {
    await this.anchor.stop();
    this.kv = kv;
    await this.startAnchor();
  }

  /** Site i's port (`vport` there, `p<i>` on the patch panel): no link until a VM is due there. */
  private async createPort(i: number): Promise<void> {
    await createVeth({ ns: this.ns.sites[i], name: PORT }, { ns: this.ns.patch, name: `p${i}` });
    await ip(this.ns.patch, "link", "set", `p${i}`, "down");
  }

  /** Site i's port gets its link, as a destination tap does once the incoming QEMU holds it. */
  private async linkUp(i: number): Promise<void> {
    await this.patch!.apply([`link set dev p${i} up`]);
  }

  /**
   * Connects the VM to site i's port: the switch-over itself, one batch of netlink changes. The
   * new port joins first (so that what a staged forwarding pointer sends there finds the VM
   * even with no WAN delay); then the old port leaves the bridge and loses its link, as when
   * the source's tap goes away: the kernel stops using routes through it, so a forwarding
   * pointer staged there carries on without waiting for any agent.
   */
  private async plugInto(i: number): Promise<void> {
    const out =
      this.at >= 0 && this.at !== i
        ? [`link set dev p${this.at} nomaster`, `link set dev p${this.at} down`]
        : [];
    await this.patch!.apply([`link set dev p${i} master br0`, ...out]);
  }

  /** Connects the VM to site i's port (for a bed driven from outside: `agents: false`). */
  async plug(i: number): Promise<void> {
    if (i < 0 || i >= this.ns.sites.length) throw new Error(`no site ${i + 1} in this bed`);
    await this.linkUp(i);
    await this.plugInto(i);
    this.at = i;
  }

  /** First placement: the port goes to site i, the anchor registers the VM there. */
  async place(i: number, lifetimeSeconds = 300): Promise<Outcome> {
    const site = this.sites[i];
    await this.linkUp(i);
    await site.prepare(VM, PORT);
    await this.plugInto(i);
    this.at = i;
    this.generation++;
    const o = await this.anchor.register({
      ...VM,
      ...site.endpoint,
      generation: this.generation,
      lifetimeSeconds,
    });
    if (o.accepted) site.keepAlive(VM.vmId, this.generation, lifetimeSeconds);
    return o;
  }

  /**
   * Moves the VM from its site to site `to`: prepare, `leadMs` later (default: one round trip
   * of the WAN plus 10 ms) switch over. Returns the anchor's answer, and `switchAtMs`, the epoch
   * ms of the switch-over (the port leaving the old site).
   */
  async move(
    to: number,
    mode: HandoverMode,
    leadMs = 2 * (this.opts.wanDelayMs ?? 0) + 10,
  ): Promise<{ outcome: Outcome; switchAtMs: number }> {
    if (this.at < 0) throw new Error("the VM has not been placed yet");
    if (to === this.at) throw new Error(`the VM is already at site ${to + 1}`);
    const m = { vm: VM, from: this.sites[this.at], to: this.sites[to], port: PORT, mode };
    const generation = ++this.generation;
    const hooks = new MigrationHooks(this.anchor);
    // The destination tap has its link before the network is prepared (the incoming QEMU holds it).
    await this.linkUp(to);
    await hooks.prepareNetwork(m);
    // A real migration runs between preparation and switch-over; here it takes `leadMs`.
    if (leadMs > 0) await new Promise((r) => setTimeout(r, leadMs));
    const switchAtMs = performance.timeOrigin + performance.now();
    await this.plugInto(to);
    this.at = to;
    this.last = m;
    return { outcome: await hooks.switchOver(m, generation), switchAtMs };
  }

  /**
   * The test bed's floor: the port is unplugged and plugged back into the same site, so nothing
   * needs re-pointing. A move cannot have a smaller gap than this.
   */
  async replug(): Promise<void> {
    if (this.at < 0) throw new Error("the VM has not been placed yet");
    await this.patch!.apply([`link set dev p${this.at} nomaster`, `link set dev p${this.at} master br0`]);
  }

  /** The anchor's bicast map elements, both families, each as JSON (none: nothing is copied). */
  async bicastElements(): Promise<string[]> {
    const out: string[] = [];
    for (const fam of ["ip6", "ip"]) {
      const nft = JSON.parse(
        await runIn(this.ns.anchor, "nft", ["-j", "list", "map", fam, "nr_bicast", "to"]),
      );
      const map = (nft.nftables as Array<{ map?: { elem?: unknown[] } }>).find((x) => x.map)?.map;
      for (const e of map?.elem ?? []) out.push(JSON.stringify(e));
    }
    return out;
  }

  /** After the binding settled: the old site drops its forwarding pointer. */
  async settle(): Promise<void> {
    if (this.last) await new MigrationHooks(this.anchor).cleanup(this.last);
    this.last = undefined;
  }

  async destroy(): Promise<void> {
    await this.anchor?.stop().catch(() => undefined);
    for (const s of this.sites) await s.close().catch(() => undefined);
    await this.patch?.close().catch(() => undefined);
    for (const t of this.teardowns) await t().catch(() => undefined);
    await destroyNetnsWithPrefix(this.opts.prefix);
  }
}
