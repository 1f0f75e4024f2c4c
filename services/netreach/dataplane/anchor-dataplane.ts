// The anchor's kernel state: per binding, SRv6 encap routes for the home addresses and proxy
// ARP/NDP entries on the home link; once, its own decapsulation SIDs for reverse-tunnelled traffic.
import type { Binding } from "../binding/types.js";
import { anchorBindingCommands, decapSids, deleteHostRoutes, deleteProxyNeighbours } from "./commands.js";
import { IpBatch, idempotent } from "./ip-batch.js";

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

export class AnchorDataplane {
  private constructor(
    private readonly cfg: AnchorDataplaneConfig,
    private readonly batch: IpBatch,
  ) {}

  static async open(cfg: AnchorDataplaneConfig): Promise<AnchorDataplane> {
    const batch = new IpBatch(cfg.netns);
    await batch.apply([`sr tunsrc set ${cfg.tunnelSource}`, ...decapSids(cfg.sids, cfg.homeDev)]);
    return new AnchorDataplane(cfg, batch);
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
    return this.batch.close();
  }
}
