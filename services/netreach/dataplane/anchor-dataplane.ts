// The anchor's kernel state: per binding, SRv6 encap routes for the home addresses and proxy
// ARP/NDP entries on the home link; once, its own decapsulation SIDs for reverse-tunnelled traffic.

import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { Binding } from "../binding/types.js";
import { gratuitousArp, unsolicitedNa } from "./announce-frames.js";
import { anchorBindingCommands, decapSids, deleteHostRoutes, deleteProxyNeighbours } from "./commands.js";
import { IpBatch, idempotent } from "./ip-batch.js";
import { RawLink } from "./raw-link.js";

export interface AnchorDataplaneConfig {
  /** Namespace holding the anchor's kernel state (absent: the current one). */
  netns?: string;
  /** Home link device: proxy ARP/NDP, and where decapsulated traffic is delivered. */
  homeDev: string;
  /** WAN device for the encap routes. */
  wanDev: string;
  /** The anchor's own SIDs, where sites reverse-tunnel to. */
  sids: { sid6: string; sid4: string };
  /** Source address of the outer IPv6 header (`ip sr tunsrc`). */
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

  private constructor(
    private readonly cfg: AnchorDataplaneConfig,
    private readonly batch: IpBatch,
    private readonly home: HomeLink,
  ) {}

  static async open(cfg: AnchorDataplaneConfig): Promise<AnchorDataplane> {
    const home = await readHomeLink(cfg.netns, cfg.homeDev);
    const batch = new IpBatch(cfg.netns);
    await batch.apply([`sr tunsrc set ${cfg.tunnelSource}`, ...decapSids(cfg.sids, cfg.homeDev)]);
    return new AnchorDataplane(cfg, batch, home);
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
    return this.batch.apply(anchorBindingCommands(b, this.cfg.homeDev, this.cfg.wanDev));
  }

  /** Removes the binding's routes and proxy entries (absent ones are fine). */
  remove(b: Binding): Promise<void> {
    return this.batch.apply([...deleteHostRoutes(b), ...deleteProxyNeighbours(b, this.cfg.homeDev)], {
      tolerate: idempotent,
    });
  }

  close(): Promise<void> {
    this.raw?.close();
    return this.batch.close();
  }
}
