// The anchor's kernel state: per binding, encap routes for the home addresses (SRv6 or VXLAN,
// tunnel.ts) and proxy ARP/NDP entries on the home link; once, its own decapsulation endpoints
// for reverse-tunnelled traffic.

import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { Binding, SiteEndpoint } from "../binding/types.js";
import { gratuitousArp, unsolicitedNa } from "./announce-frames.js";
import { idempotent } from "./batch-process.js";
import {
  anchorBindingCommands,
  bicastElements,
  bicastRoutes,
  bicastTables,
  deleteHostRoutes,
  deleteProxyNeighbours,
} from "./commands.js";
import { IpBatch } from "./ip-batch.js";
import { NftBatch } from "./nft-batch.js";
import { RawLink } from "./raw-link.js";
import { type DataplaneKind, makeTunnel, setupTolerates, type Tunnel } from "./tunnel.js";

export interface AnchorDataplaneConfig {
  /** Namespace holding the anchor's kernel state (absent: the current one). */
  netns?: string;
  /** Home link device: proxy ARP/NDP, and where decapsulated traffic is delivered. */
  homeDev: string;
  /** The data plane (chosen at start from what the kernel offers: probe.ts). */
  kind: DataplaneKind;
  /** WAN device named in the encap routes (srv6 only). */
  wanDev?: string;
  /** The anchor's own endpoint addresses (SRv6 SIDs), where sites reverse-tunnel to. */
  sids: { sid6: string; sid4: string };
  /** Source address of the outer IPv6 header. */
  tunnelSource: string;
}

interface HomeLink {
  mac: string;
  linkLocal: string;
}

/** The home device's MAC and link-local address (read once, at start). */
async function readHomeLink(netns: string | undefined, dev: string): Promise<HomeLink> {
  const { stdout: out } = await promisify(execFile)("ip", [
    ...(netns ? ["-n", netns] : []),
    "-j",
    "addr",
    "show",
    "dev",
    dev,
  ]);
  const [link] = JSON.parse(out) as Array<{
    address: string;
    addr_info: Array<{ family: string; local: string; scope: string }>;
  }>;
  const ll = link.addr_info.find((a) => a.family === "inet6" && a.scope === "link");
  if (!ll) throw new Error(`home device ${dev} has no IPv6 link-local address`);
  return { mac: link.address, linkLocal: ll.local };
}

export class AnchorDataplane {
  private raw?: RawLink;
  /** Bicasting VMs and their key slots (see bicastKeys). */
  private readonly bicasts = new Map<string, number>();

  private constructor(
    private readonly cfg: AnchorDataplaneConfig,
    private readonly batch: IpBatch,
    private readonly nft: NftBatch,
    private readonly home: HomeLink,
    private readonly tunnel: Tunnel,
  ) {}

  get kind(): DataplaneKind {
    return this.tunnel.kind;
  }

  static async open(cfg: AnchorDataplaneConfig): Promise<AnchorDataplane> {
    const tunnel = makeTunnel(cfg.kind, { ...cfg, decapDev: cfg.homeDev });
    const home = await readHomeLink(cfg.netns, cfg.homeDev);
    const batch = new IpBatch(cfg.netns);
    const nft = new NftBatch(cfg.netns);
    try {
      await batch.apply(tunnel.setup(cfg.sids), { tolerate: setupTolerates });
      // Bicasts do not survive a restart: a move in progress falls back to plain make-before-break.
      await nft.apply(bicastTables());
    } catch (err) {
      await Promise.all([batch.close(), nft.close()]);
      throw err;
    }
    return new AnchorDataplane(cfg, batch, nft, home, tunnel);
  }

  /**
   * Tells the home link that the binding's addresses are now at the anchor's MAC (gratuitous
   * ARP, unsolicited NA with Override), so neighbours that cached the VM's own MAC switch over.
   */
  announce(b: Binding): void {
    this.raw ??= new RawLink(this.cfg.homeDev, this.cfg.netns);
    for (const a of b.homeIpv4) this.raw.send(gratuitousArp(this.home.mac, a));
    for (const a of b.homeIpv6) this.raw.send(unsolicitedNa(this.home.mac, this.home.linkLocal, a));
  }

  /** Points the binding's home addresses at its site (idempotent; route replace is atomic). */
  install(b: Binding): Promise<void> {
    return this.batch.apply(anchorBindingCommands(b, this.cfg.homeDev, this.tunnel));
  }

  /** Removes the binding's routes and proxy entries (absent ones are fine). */
  async remove(b: Binding): Promise<void> {
    await this.stopBicast(b);
    await this.batch.apply([...deleteHostRoutes(b), ...deleteProxyNeighbours(b, this.cfg.homeDev)], {
      tolerate: idempotent,
    });
  }

  /**
   * Until stopBicast, every packet for the binding's home addresses also goes to `to` (the site
   * a VM moves to), so it is there the moment the VM runs there. Replaces an earlier bicast.
   */
  async bicast(b: Binding, to: SiteEndpoint): Promise<void> {
    await this.stopBicast(b);
    const used = new Set(this.bicasts.values());
    let slot = 0;
    while (used.has(slot)) slot++;
    this.bicasts.set(b.vmId, slot);
    await this.batch.apply(bicastRoutes(slot, to, this.tunnel));
    await this.nft.apply(bicastElements(b, slot, "add"));
  }

  async stopBicast(b: Binding): Promise<void> {
    const slot = this.bicasts.get(b.vmId);
    if (slot === undefined) return;
    this.bicasts.delete(b.vmId);
    await this.nft.apply(bicastElements(b, slot, "delete"), { tolerate: idempotent });
  }

  async close(): Promise<void> {
    this.raw?.close();
    await Promise.all([this.batch.close(), this.nft.close()]);
  }
}
